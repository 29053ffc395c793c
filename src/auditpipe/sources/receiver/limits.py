"""Connection bounds and read deadlines in front of aiohttp's protocol.

aiohttp has no header read timeout (its keep-alive timer is the only guard, and a connection
that has sent half a request line counts as busy), no bound on connections, and asyncio logs a
traceback per refused accept once file descriptors run out. So every accepted connection goes
through a small ``asyncio.Protocol`` proxy (``_Guarded``) registered with ``ConnectionLimits``:

* **header deadline**: from accept (or from the first byte after a response) until a request's
  headers are complete, ``header_timeout`` seconds; an idle keep-alive connection may wait
  ``keepalive_timeout``. A sweeper closes what passed its deadline, about twice a second.
* **bounds**: at most ``max_connections`` in total and ``max_per_address`` from one address.
  A new connection over a bound evicts the oldest connection (of that address, or overall) that
  is not inside a request and has not sent a request's complete headers, one that never completed
  a request first (an idle keep-alive shipper is kept as long as possible). A flood of idle or
  half-sent connections pushes out its own oldest members, never a request being served nor a
  health check whose request is in; a new connection is refused only if every connection is
  inside a request.
* each condition is logged once (with counts) per ``log_every`` seconds, never per connection.

The body deadline is the handler's (``Receiver.ingest``): it knows when a body is complete.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, cast

__all__ = ["ConnectionLimits", "LimitsConfig"]

log = logging.getLogger("auditpipe.serve")


@dataclass(slots=True)
class LimitsConfig:
    header_timeout: float = 10.0
    body_timeout: float = 60.0
    keepalive_timeout: float = 75.0
    max_connections: int = 1024
    max_per_address: int = 256
    log_every: float = 60.0


class _Guarded(asyncio.Protocol):
    """Forwards everything to aiohttp's protocol, which is only made when the first bytes arrive
    (an idle connection costs little); keeps the state the limits need."""

    __slots__ = (
        "busy",
        "cid",
        "headers_in",
        "idle_since",
        "inner",
        "limits",
        "make",
        "peer",
        "served",
        "transport",
        "waiting_since",
    )

    def __init__(self, make: Callable[[], Any], limits: ConnectionLimits) -> None:
        self.make = make
        self.inner: Any = None
        self.limits = limits
        self.transport: asyncio.Transport | None = None
        self.peer = "-"
        self.cid = 0
        self.busy = 0
        now = time.monotonic()
        self.waiting_since: float | None = now  # a request is due: its headers must come in time
        self.idle_since = now
        self.headers_in = False  # the end of a request's headers arrived: it is about to start
        self.served = 0  # requests started on this connection

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        peer = transport.get_extra_info("peername")
        self.peer = str(peer[0]) if isinstance(peer, tuple) else str(peer or "-")
        if not self.limits.admit(self):
            self.transport.abort()

    def data_received(self, data: bytes) -> None:
        if not self.cid:
            return
        if self.inner is None:
            self.inner = self.make()
            self.inner.connection_made(self.transport)
            self.limits.track(self)
        if not self.busy:
            if self.waiting_since is None:
                self.waiting_since = time.monotonic()
            if b"\r\n\r\n" in data or b"\n\n" in data:
                self.headers_in = True
        self.inner.data_received(data)

    def eof_received(self) -> bool | None:
        return self.inner.eof_received() if self.inner is not None else None

    def connection_lost(self, exc: Exception | None) -> None:
        self.limits.forget(self)
        if self.inner is not None:
            self.inner.connection_lost(exc)

    def pause_writing(self) -> None:
        if self.inner is not None:
            self.inner.pause_writing()

    def resume_writing(self) -> None:
        if self.inner is not None:
            self.inner.resume_writing()


class ConnectionLimits:
    def __init__(self, cfg: LimitsConfig) -> None:
        self.cfg = cfg
        self._all: dict[_Guarded, None] = {}
        self._by_addr: dict[str, dict[_Guarded, None]] = {}
        self._by_inner: dict[Any, _Guarded] = {}
        self._next_id = 0
        self.counts: dict[str, int] = {"header_timeout": 0, "idle_timeout": 0, "evicted": 0, "refused": 0,
                                       "body_timeout": 0}
        self._unlogged: dict[str, int] = {}
        self._last_log: dict[str, float] = {}

    # ---- accounting -----------------------------------------------------------------------
    def factory(self, make_inner: Callable[[], Any]) -> Callable[[], _Guarded]:
        return lambda: _Guarded(make_inner, self)

    @property
    def open(self) -> int:
        return len(self._all)

    def admit(self, g: _Guarded) -> bool:
        peers = self._by_addr.setdefault(g.peer, {})
        if len(peers) >= self.cfg.max_per_address and not self._evict(peers, "per-address"):
            self._note("refused", f"connection refused: every connection from {g.peer} is inside a request "
                                  f"(max {self.cfg.max_per_address} per address)")
            return False
        if len(self._all) >= self.cfg.max_connections and not self._evict(self._all, "total"):
            self._note("refused", f"connection refused: all {self.cfg.max_connections} connections are inside a "
                                  "request")
            return False
        self._next_id += 1
        g.cid = self._next_id
        self._all[g] = None
        peers[g] = None
        return True

    def track(self, g: _Guarded) -> None:
        self._by_inner[g.inner] = g

    def forget(self, g: _Guarded) -> None:
        self._all.pop(g, None)
        peers = self._by_addr.get(g.peer)
        if peers is not None:
            peers.pop(g, None)
            if not peers:
                del self._by_addr[g.peer]
        if g.inner is not None:
            self._by_inner.pop(g.inner, None)

    def _evict(self, pool: dict[_Guarded, None], which: str) -> bool:
        # oldest first, and a connection that never completed a request before an idle keep-alive
        # one (a shipper's: with connection identity, a new connection is a new sender)
        victim = next((g for g in pool if not g.busy and not g.headers_in and not g.served), None)
        if victim is None:
            victim = next((g for g in pool if not g.busy and not g.headers_in), None)
        if victim is None:
            return False
        self._close(victim)
        self._note("evicted", f"connection limit ({which}: {self.cfg.max_connections} in total, "
                              f"{self.cfg.max_per_address} per address) reached: the oldest connections "
                              "not inside a request are closed")
        return True

    def close_all(self) -> None:
        """At shutdown: connections that never sent a byte are unknown to aiohttp; close them too."""
        for g in list(self._all):
            if g.inner is None:
                self._close(g)

    def _close(self, g: _Guarded) -> None:
        self.forget(g)
        if g.transport is not None:
            g.transport.abort()

    # ---- requests -------------------------------------------------------------------------
    def connection_of(self, protocol: Any) -> _Guarded | None:
        return self._by_inner.get(protocol)

    def request_started(self, g: _Guarded) -> None:
        g.busy += 1
        g.served += 1
        g.waiting_since = None
        g.headers_in = False

    def request_done(self, g: _Guarded) -> None:
        g.busy -= 1
        g.idle_since = time.monotonic()

    def body_timed_out(self, peer: str) -> None:
        self._note("body_timeout", f"request bodies not complete within {self.cfg.body_timeout:g} s: answered "
                                   "408 and closed")

    # ---- deadlines ------------------------------------------------------------------------
    def sweep(self, now: float) -> None:
        cfg = self.cfg
        for g in list(self._all):
            if g.busy:
                continue
            if g.waiting_since is not None and now - g.waiting_since > cfg.header_timeout:
                self._close(g)
                self._note("header_timeout", f"connections without complete request headers within "
                                             f"{cfg.header_timeout:g} s are closed")
            elif g.waiting_since is None and now - g.idle_since > cfg.keepalive_timeout:
                self._close(g)
                self.counts["idle_timeout"] += 1
        self._flush_notes(now)

    async def run_sweeper(self, interval: float = 0.5) -> None:
        while True:
            await asyncio.sleep(interval)
            self.sweep(time.monotonic())

    def _note(self, condition: str, message: str) -> None:
        self.counts[condition] += 1
        now = time.monotonic()
        last = self._last_log.get(condition)
        if last is None or now - last >= self.cfg.log_every:
            extra = self._unlogged.pop(condition, 0)
            log.warning("%s%s", message, f" ({extra} more since the last report)" if extra else "")
            self._last_log[condition] = now
        else:
            self._unlogged[condition] = self._unlogged.get(condition, 0) + 1

    def _flush_notes(self, now: float) -> None:
        for condition, n in list(self._unlogged.items()):
            if now - self._last_log.get(condition, 0.0) >= self.cfg.log_every:
                log.warning("%s: %d more", condition.replace("_", " "), n)
                del self._unlogged[condition]
                self._last_log[condition] = now
