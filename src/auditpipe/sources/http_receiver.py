"""HTTP receiving endpoint (``auditpipe serve``): a Panther-style HTTP log source on aiohttp.

Accepted POST bodies (any path but ``/healthz`` and ``/metrics``):

* Fluent Bit ``json_lines``: ``{"date": 1700000000.123456, "log": "type=… msg=audit(…): …"}``
  per line — the ``log`` value is a raw audit record;
* a JSON array of such objects (Fluent Bit's ``json`` format) or of raw lines as strings;
* ``text/plain``: raw audit lines;
* JSON lines of events already normalized by another auditpipe: written through unchanged.

``msgpack`` and any other content type → 415; objects with neither ``log`` nor the marks of an
auditpipe event (GELF…) → 400 as an unknown shape, so the sender keeps them.

**Senders.** Raw records are reassembled per *sender*, never across senders: the
``X-Auditpipe-Sender`` header when present (``<host>/<instance id>``; several connections may
carry one sender), else the connection (one keep-alive connection = one sender), else the peer
address. Records are held per sender and event key in a ``ReorderBuffer`` until their event is
provably complete or ``reorder_window`` seconds of wall clock pass (see ``receiver/reorder.py``).
``X-Auditpipe-Range: <first>-<end>`` (the span of the sender's stream the request holds, end
exclusive: our shipper's queue sequence numbers; the next request starts at ``end``) lets a
sender say exactly where a request stands in its stream.

**Order of checks**, cheapest and safest first: connection bounds and header deadline
(``receiver/limits.py``) → auth headers (401) → output writable (503 + Retry-After) → declared
and received wire size (413) within the body deadline (408) → HMAC over the wire bytes (401) →
capped streaming inflate (413) → body decode (400/415). Lines that fail to parse are counted and
reported in the response; the rest are accepted.

**Output unavailable.** Documents go to the receiver's *outputs*: ``serve`` gives it the same
``pipeline.outputs.Outputs`` as ``run`` (every ``[[outputs]]`` type, routing by ``documents``),
a bare sink is wrapped in :class:`SingleSink`. An output that cannot accept a write keeps the
documents pending in memory and writes them first as soon as it can; until then every POST is
answered 503 with ``Retry-After`` before its body is read, so nothing is accepted that cannot be
written and nothing is written twice.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Protocol

import orjson
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, generate_latest

from auditpipe.parsing import parse_line
from auditpipe.sinks import auth as authmod
from auditpipe.sinks.encode import dumps_line
from auditpipe.sinks.errors import OutputUnavailable
from auditpipe.sources.receiver.body import BodyError, decode_body, decode_stream, inflate_capped, parse_size
from auditpipe.sources.receiver.limits import ConnectionLimits, LimitsConfig
from auditpipe.sources.receiver.reorder import Chunk, ReorderBuffer
from auditpipe.sources.receiver.site import make_ssl_context, raise_fd_limit, serve, start_site
from auditpipe.sources.receiver.workers import WorkerLost, WorkerPool

__all__ = [
    "DEFAULT_MAX_BODY",
    "RANGE_HEADER",
    "SENDER_HEADER",
    "BodyError",
    "Receiver",
    "ReceiverConfig",
    "ReceiverOutputs",
    "SingleSink",
    "decode_body",
    "inflate_capped",
    "make_ssl_context",
    "parse_size",
    "raise_fd_limit",
    "serve",
    "start_site",
]

log = logging.getLogger("auditpipe.serve")
MAX_ERRORS_REPORTED = 20
SENDER_HEADER = "X-Auditpipe-Sender"
RANGE_HEADER = "X-Auditpipe-Range"
# Fluent Bit posts chunks of up to ~2.2 MB as JSON (its chunks hold ~2 MB of msgpack) and drops
# a chunk refused with 413 instead of retrying it: 8 MiB leaves room for that, and for gzip'd
# bodies (the cap applies after decompression); memory stays a small multiple of it.
DEFAULT_MAX_BODY = 8 << 20
SLICE = 4096  # records parsed and written per step of a large body
_SENDER_OK = re.compile(r"[\x21-\x7e]{1,200}")
_RANGE = re.compile(r"\s*(\d{1,18})\s*-\s*(\d{1,18})\s*")


@dataclass
class ReceiverConfig:
    auth: str  # required: "none" must be asked for
    secret: str | None = None
    auth_header: str | None = None
    max_body: int = DEFAULT_MAX_BODY
    reorder_window: float = 30.0  # seconds (wall clock) a held event waits for out-of-order records
    event_wait: float = 2.0  # the same for an event of an in-order sender (see receiver/reorder.py)
    event_timeout: float = 2.0  # audit-time horizon for in-order senders (as Reassembler.timeout)
    wall_timeout: float | None = None  # older name of event_wait (kept for callers)
    tick_interval: float = 0.5
    sender_idle: float = 600.0  # a sender not heard from for this long is flushed and forgotten
    max_senders: int = 10_000
    max_held_records: int = 100_000  # per sender; beyond it the oldest held events leave incomplete
    retry_after: int = 5  # seconds, in the 503 answered while the output cannot be written
    limits: LimitsConfig | None = None
    state: str | None = None  # file keeping named senders' held records across a restart

    def __post_init__(self) -> None:
        authmod.client_headers(self.auth, self.secret, b"", self.auth_header)  # validates
        if self.wall_timeout is not None:
            self.event_wait = self.wall_timeout
        if min(self.reorder_window, self.event_wait, self.event_timeout) < 0:
            raise ValueError("reorder_window, event_wait and event_timeout must be >= 0")
        if self.limits is None:
            self.limits = LimitsConfig()


class ReceiverOutputs(Protocol):
    """Where the receiver's documents go (``pipeline.outputs.Outputs`` has this shape): ``write``
    and ``retry`` return True once nothing is pending; ``wants_raw``: some output forwards the
    records as read."""

    wants_raw: bool

    @property
    def held(self) -> bool: ...

    def write(self, docs: list, raw: list[str] | None = None, date: float | None = None) -> bool: ...

    def retry(self, force: bool = False) -> bool: ...

    def held_cause(self) -> str | None: ...

    def pending_documents(self) -> int: ...


class SingleSink:
    """One bare sink (``write(items)``, ``flush()``) as the receiver's outputs: what it refused
    stays pending and is written first on the next attempt."""

    wants_raw = False

    def __init__(self, sink: Any) -> None:
        self.sink = sink
        self.pending: list = []
        self.cause: str | None = None

    @property
    def held(self) -> bool:
        return bool(self.pending)

    def write(self, docs: list, raw: list[str] | None = None, date: float | None = None) -> bool:
        self.pending += [dumps_line(d) for d in docs] if self.pending else docs
        return self.retry()

    def retry(self, force: bool = False) -> bool:
        if not self.pending:
            return True
        try:
            self.sink.write(self.pending)
        except (OutputUnavailable, OSError) as e:
            self.cause = str(getattr(e, "cause", None) or e)
            return False
        self.pending, self.cause = [], None
        return True

    def held_cause(self) -> str | None:
        return self.cause

    def pending_documents(self) -> int:
        return len(self.pending)

    def flush(self) -> None:
        self.sink.flush()


class _Reordering:
    """Stands in for a pipeline's reassembler: ``feed`` holds records in the sender's
    ``ReorderBuffer``; ``tick`` releases what is complete (or expired) as events."""

    def __init__(self, buffer: ReorderBuffer) -> None:
        self.buffer = buffer
        self.chunk: Chunk | None = None
        self.at: tuple[float | None, int] = (None, 0)

    def feed(self, record: Any, now: float | None = None) -> list:
        assert self.chunk is not None
        self.chunk.records.append((record, self.at[0], self.at[1]))
        return []

    def tick(self, now: float) -> list:
        out: list = []
        chunk = self.chunk
        if chunk is not None and chunk.records:
            out = self.buffer.add(chunk, now)
            chunk.records = []
        return out + self.buffer.expire(now)

    def flush(self) -> list:
        now = time.monotonic()
        return self.tick(now) + self.buffer.flush(now)

    # what Pipeline.stats() and the metrics read
    @property
    def in_flight(self) -> int:
        return self.buffer.held_events + (len(self.chunk.records) if self.chunk else 0)

    def __getattr__(self, name: str) -> Any:  # events, partial, late, lost, serials …
        return getattr(self.buffer.reassembler, name)


class _Sender:
    __slots__ = (
        "by_connection",
        "errors",
        "key",
        "last_seen",
        "pipeline",
        "range_ends",
        "refused_at",
        "reorder",
        "requests",
    )

    def __init__(self, key: str, pipeline: Any, reorder: _Reordering, by_connection: bool) -> None:
        self.key = key
        self.pipeline = pipeline
        self.reorder = reorder
        self.last_seen = time.monotonic()
        self.errors: list[tuple[str, str]] = []
        self.requests = 0
        self.range_ends: deque[int] = deque(maxlen=4096)
        self.refused_at = -1e18
        self.by_connection = by_connection


@dataclass(slots=True)
class _Ident:
    key: str
    base: int | None = None
    by_connection: bool = False
    end: int | None = None  # the range's end: where the sender's next request starts


class _Unavailable(Exception):
    pass


class Receiver:
    """The endpoint's state: per-sender pipelines, the sink, metrics.

    ``pipeline_factory(on_reject)`` builds one ``auditpipe.pipeline.Pipeline`` per sender (its
    parser, normalizer and stages are used; its reassembler is replaced by the sender's
    reordering buffer); ``outputs`` is a :class:`ReceiverOutputs` (``serve``: the
    ``pipeline.outputs.Outputs`` of ``[[outputs]]``) or a bare sink (``write(items)``, ``flush()``).
    ``normalizer_for_host(host)``: the normalizer for a sender that names its host
    (``X-Auditpipe-Sender: <host>/…``), so its events without ``node=`` carry that host, not ours.
    ``pool`` (``serve --workers N``, N > 1): the senders live in worker processes, each a Receiver
    of its own (``receiver/workers.py``); this one is the front: it routes each body to its
    sender's worker, writes what comes back to ``outputs`` and keeps the request metrics.
    """

    #: log when the outputs stop and start taking writes (a worker that owns its outputs leaves
    #: that to the front, which answers the 503s)
    log_outputs = True

    def __init__(self, cfg: ReceiverConfig, pipeline_factory: Callable[[Callable], Any] | None, outputs: Any,
                 registry: CollectorRegistry | None = None,
                 normalizer_for_host: Callable[[str], Any] | None = None, pool: WorkerPool | None = None) -> None:
        self.cfg = cfg
        self.pool = pool
        self.fatal: str | None = None  # why the front stopped acknowledging (a worker died)
        self.on_fatal: Callable[[], None] | None = None  # serve(): stop the run loop
        self._loop: asyncio.AbstractEventLoop | None = None
        self.pipeline_factory = pipeline_factory
        self.normalizer_for_host = normalizer_for_host
        self.outputs: ReceiverOutputs = outputs if hasattr(outputs, "retry") else SingleSink(outputs)
        self.senders: dict[str, _Sender] = {}
        assert cfg.limits is not None
        self.limits = ConnectionLimits(cfg.limits)
        self.unavailable: str | None = None  # the outputs' cause while they hold documents
        self.forgotten: dict[str, int] = {}  # pipeline counters of senders no longer kept
        self.registry = registry or CollectorRegistry()
        self._metrics(self.registry)
        self.inflated_bytes = 0
        # Decoding, parsing and writing run on this one thread, in arrival order: the event loop
        # stays free for other requests while a large body is parsed, and the per-sender
        # reassembly state and the sink are only ever touched from one thread.
        self._worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="auditpipe-receiver")

    def _metrics(self, r: CollectorRegistry) -> None:
        self.m_requests = Counter("auditpipe_receiver_requests", "POST requests by status", ["code"], registry=r)
        self.m_wire = Counter("auditpipe_receiver_wire_bytes", "request body bytes as received", registry=r)
        self.m_inflated = Counter("auditpipe_receiver_inflated_bytes", "bytes produced by decompression",
                                  registry=r)
        self.m_records = Counter("auditpipe_receiver_records", "raw audit records received", registry=r)
        self.m_events_in = Counter("auditpipe_receiver_events_in", "already normalized events received",
                                   registry=r)
        self.m_docs = Counter("auditpipe_receiver_documents", "documents written to the output", registry=r)
        self.m_rejects = Counter("auditpipe_receiver_rejected_lines", "lines that failed to decode or parse",
                                 registry=r)
        self.m_refused = Counter("auditpipe_receiver_refused_bodies", "bodies refused whole, by reason",
                                 ["reason"], registry=r)
        self.m_conn = Counter("auditpipe_receiver_connection_events", "connection limit and deadline actions",
                              ["what"], registry=r)
        senders = Gauge("auditpipe_receiver_senders", "senders with reassembly state", registry=r)
        senders.set_function(lambda: self._gauge("senders"))
        held = Gauge("auditpipe_receiver_open_events", "events waiting for more records", registry=r)
        held.set_function(lambda: self._gauge("open_events"))
        held_records = Gauge("auditpipe_receiver_held_records", "records held for reordering", registry=r)
        held_records.set_function(lambda: self._gauge("held_records"))
        conns = Gauge("auditpipe_receiver_connections", "open connections", registry=r)
        conns.set_function(lambda: self.limits.open)
        pending = Gauge("auditpipe_receiver_pending_documents", "documents waiting for the output", registry=r)
        pending.set_function(lambda: self.outputs.pending_documents())
        down = Gauge("auditpipe_receiver_output_unavailable", "1 while the output cannot be written", registry=r)
        down.set_function(lambda: 1 if self.unavailable else 0)

    # ---- app -------------------------------------------------------------------------------
    def app(self) -> web.Application:
        app = web.Application(client_max_size=self.cfg.max_body, middlewares=[self._track])
        app.router.add_get("/healthz", self.healthz)
        app.router.add_get("/metrics", self.metrics)
        app.router.add_post("/{tail:.*}", self.ingest)
        app.cleanup_ctx.append(self._background_ctx)
        return app

    @web.middleware
    async def _track(self, request: web.Request, handler: Callable) -> web.StreamResponse:
        conn = self.limits.connection_of(request.protocol)
        if conn is None:
            return await handler(request)
        self.limits.request_started(conn)
        try:
            return await handler(request)
        finally:
            self.limits.request_done(conn)

    async def _background_ctx(self, app: web.Application):
        self._loop = loop = asyncio.get_running_loop()
        if self.pool is not None:
            await self._start_pool(self.pool)
        tasks = [asyncio.create_task(self._ticker()), asyncio.create_task(self.limits.run_sweeper())]
        yield
        self.limits.close_all()
        for task in tasks:
            task.cancel()
            try:
                await task
            except asyncio.CancelledError:
                pass
        if self.pool is None:
            await loop.run_in_executor(self._worker, self.flush_all)
        else:
            await self._flush_pool(self.pool)
        self._worker.shutdown(wait=False)

    async def _ticker(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(self.cfg.tick_interval)
            try:
                if self.pool is None:
                    await loop.run_in_executor(self._worker, self.tick, time.monotonic())
                elif await self._drain_from_loop(False):
                    await self.pool.tick(time.monotonic())
            except Exception:
                log.exception("receiver tick failed")

    # ---- the front of worker processes (``serve --workers N``) ---------------------------------
    async def _start_pool(self, pool: WorkerPool) -> None:
        loop = asyncio.get_running_loop()

        async def deliver(docs: list, raw: list[str]) -> None:
            await loop.run_in_executor(self._worker, self._write, docs, raw or None)

        def lost(why: str) -> None:
            if self.fatal is None:
                self.fatal = why
                log.error("no request is acknowledged any more; serve stops (exit 1) so that its "
                          "supervisor restarts it")
                if self.on_fatal is not None:
                    self.on_fatal()

        pool.deliver, pool.on_lost = deliver, lost
        await pool.connect(self.outputs.wants_raw)
        await self._load_state_into(pool)

    async def _load_state_into(self, pool: WorkerPool) -> None:
        state = self._read_state()
        if state is None:
            return
        parts: list[dict] = [{} for _ in range(pool.n)]
        for key, v in state.items():
            parts[pool.index(key)][key] = v
        loaded = sum(r[1] for r in await asyncio.gather(*(pool.call(i, ("load", part))
                                                            for i, part in enumerate(parts))))
        self._state_loaded(loaded, len(state))

    async def _flush_pool(self, pool: WorkerPool) -> None:
        """At shutdown: every live worker flushes its senders (named ones' held records kept when
        ``state`` is set) through the outputs, then the outputs are drained and flushed."""
        keep = bool(self.cfg.state)
        state: dict[str, Any] = {}
        for w, reply in await pool.gather(("flush", keep)):
            if reply is None:
                log.error("serve worker %d could not be flushed at shutdown", w.index)
            else:
                state.update(reply[1])
        if keep:
            self._write_state(state)
        await asyncio.get_running_loop().run_in_executor(self._worker, self._finish_outputs)
        await pool.close()

    async def _remote(self, pool: WorkerPool, wire: bytearray, encoding: str, content_type: str,
                      ident: _Ident) -> dict:
        """``_process`` in the sender's worker; its documents are written (by the worker itself,
        or by the pool's delivery here) before the answer comes back. Raises BodyError,
        _Unavailable or WorkerLost."""
        if self.outputs.held and not await self._drain_from_loop():
            raise _Unavailable
        status, value, inflated = await pool.call(pool.index(ident.key), ("body", wire, encoding, content_type, ident))
        self.inflated_bytes += inflated
        self.m_inflated.inc(inflated)
        if self.outputs.held:  # outputs the workers own: one of them could not write
            self._went_down(self.outputs.held_cause() or "output refused the write")
        if status == "err":
            raise BodyError(*value)
        if status == "unavailable":
            raise _Unavailable
        self._count(value["records"], value["events"], value["rejected"])
        value["pending"] = self.outputs.pending_documents()
        return value

    async def _drain_from_loop(self, force: bool = True) -> bool:
        """``_drain_pending`` from the event loop: on the receiver's thread, or, for outputs the
        workers own (``WorkerOutputs``), by asking the workers that hold documents."""
        drain = getattr(self.outputs, "drain", None)
        if drain is None:
            return await asyncio.get_running_loop().run_in_executor(self._worker, self._drain_pending, force)
        if not self.outputs.held:  # perhaps written by the workers' own retries meanwhile
            return self._drained(True, 0)
        n = self.outputs.pending_documents()
        return self._drained(await drain(force), n)

    def output_state(self) -> dict[str, Any]:
        """A worker that owns its outputs tells the front their state with every answer."""
        o = self.outputs
        status = getattr(o, "status", None)
        return {"pending": o.pending_documents(), "cause": self.unavailable, "documents": int(self.m_docs._value.get()),
                "write_failures": getattr(o, "write_failures", 0), "held_seconds": getattr(o, "held_seconds", 0.0),
                "status": [{k: v for k, v in st.items() if k in ("type", "target", "documents", "pending", "stats")}
                           for st in (status() if callable(status) else [])]}

    def _sync_documents(self) -> None:
        """Outputs the workers own: the documents counter is the sum of theirs."""
        total = getattr(self.outputs, "documents", None)
        if isinstance(total, int) and total > self.m_docs._value.get():
            self.m_docs.inc(total - self.m_docs._value.get())

    def _gauge(self, name: str) -> int:
        return self.pool.total(name) if self.pool is not None else self._gauges()[name]

    def _gauges(self) -> dict[str, int]:
        senders = list(self.senders.values())
        return {"senders": len(senders), "open_events": sum(s.reorder.in_flight for s in senders),
                "held_records": sum(s.reorder.buffer.held_records for s in senders)}

    def snapshot(self) -> dict[str, Any]:
        """What a worker reports to the front: its pipeline counters and its gauges."""
        return {"counters": self.pipeline_counters(), **self._gauges()}

    def refused(self, key: str, at: float) -> None:
        s = self.senders.get(key)
        if s is not None:
            s.refused_at = at

    def _refresh(self) -> None:
        """The workers' counters, now (from another thread than the loop's, e.g. the metrics
        server's); on the loop's own thread the last tick's."""
        loop = self._loop
        if self.pool is None or loop is None or not loop.is_running():
            return
        try:
            if asyncio.get_running_loop() is loop:
                return
        except RuntimeError:
            pass
        try:
            asyncio.run_coroutine_threadsafe(self.pool.refresh(), loop).result(timeout=5)
        except Exception as e:  # noqa: BLE001 -- the last known counters serve
            log.warning("could not refresh the workers' counters: %s", e)

    def tick(self, now: float) -> int:
        """Write what the output refused before; release events whose window passed; forget idle
        senders. Returns documents written."""
        if not self._drain_pending(force=False):
            return 0
        written = 0
        for key, s in list(self.senders.items()):
            written += self._write(s.pipeline.tick(now))
            if now - s.last_seen > self.cfg.sender_idle:
                written += self._write(s.pipeline.flush())
                self._forget(key)
        return written

    def flush_all(self) -> int:
        """At shutdown: held records of named senders go to the state file (when one is set), so
        the next start joins them with what those senders send after the restart; everything else
        is written out as it is."""
        before = self.m_docs._value.get()
        state = self.flush_senders(keep_state=bool(self.cfg.state))
        if self.cfg.state:
            self._write_state(state)
        self._finish_outputs()
        return int(self.m_docs._value.get() - before)

    def flush_senders(self, keep_state: bool) -> dict[str, Any]:
        """Write out every sender's held events, except (``keep_state``) the held records of
        named senders, which are returned (the state file's ``senders``)."""
        now, wall = time.monotonic(), time.time()
        state = {key: {"held": s.reorder.buffer.dump(now, wall), "range_ends": list(s.range_ends)}
                 for key, s in self.senders.items() if keep_state and key.startswith("sender:")}
        for key, s in self.senders.items():
            if key not in state:
                self._write(s.pipeline.flush())
        return state

    def _finish_outputs(self) -> None:
        if not self._drain_pending():
            log.error("shutting down with %d documents the output never took (%s)",
                      self.outputs.pending_documents(), self.unavailable)
        flush = getattr(self.outputs, "flush", None)
        if flush is not None:
            try:
                flush()
            except OSError as e:
                log.error("output flush failed: %s", e)

    def _write_state(self, state: dict[str, Any]) -> None:
        path = self.cfg.state
        assert path
        tmp = f"{path}.tmp"
        with open(tmp, "wb") as f:
            f.write(orjson.dumps({"version": 1, "senders": state}))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        held = sum(len(g[3]) for v in state.values() for g in v["held"])
        log.info("kept %d held records of %d senders in %s for the next start", held, len(state), path)

    def load_state(self) -> int:
        """At start: take back what the last process kept (then the file is removed: its records
        are in memory now, and a crash must not bring them back twice). Returns records loaded.
        With worker processes this happens when they are connected (``_load_state_into``)."""
        state = None if self.pool is not None else self._read_state()
        if state is None:
            return 0
        loaded = self.load_senders(state)
        self._state_loaded(loaded, len(state))
        return loaded

    def _read_state(self) -> dict[str, Any] | None:
        path = self.cfg.state
        if not path or not os.path.exists(path):
            return None
        with open(path, "rb") as f:
            senders: dict[str, Any] = orjson.loads(f.read()).get("senders", {})
        return senders

    def _state_loaded(self, loaded: int, senders: int) -> None:
        assert self.cfg.state
        os.unlink(self.cfg.state)
        log.info("took back %d held records of %d senders from %s", loaded, senders, self.cfg.state)

    def load_senders(self, senders: dict[str, Any]) -> int:
        """Held records (the state file's ``senders``) back into their senders; returns records."""
        now, wall = time.monotonic(), time.time()
        loaded = 0
        for key, v in senders.items():
            s = self._sender(_Ident(key))
            s.reorder.buffer.load(v["held"], now, wall, parse_line)
            s.range_ends.extend(v["range_ends"])
            loaded += s.reorder.buffer.held_records
        return loaded

    # ---- output ------------------------------------------------------------------------------
    def _write(self, items: list, raw: list[str] | None = None) -> int:
        """Hand documents (and, for raw outputs, the records as read) to the outputs; what they
        cannot take now stays pending there. Returns the documents handed over."""
        if not items and not raw:
            return 0
        if not self.outputs.write(items, raw if raw and self.outputs.wants_raw else None):
            self._went_down(self.outputs.held_cause() or "output refused the write")
        self.m_docs.inc(len(items))
        return len(items)

    def _drain_pending(self, force: bool = True) -> bool:
        """Write what is pending; True when nothing is pending any more."""
        if not self.outputs.held:
            return True
        n = self.outputs.pending_documents()
        return self._drained(self.outputs.retry(force=force), n)

    def _drained(self, ok: bool, n: int) -> bool:
        """After an attempt to write the ``n`` pending documents: log and keep the transition."""
        if not ok:
            self._went_down(self.outputs.held_cause() or "output refused the write")
            return False
        if self.unavailable is not None and self.log_outputs:
            log.warning("output writable again: %d pending documents written", n)
        self.unavailable = None
        return True

    def _went_down(self, cause: str) -> None:
        if self.unavailable is None and self.log_outputs:
            log.error("output unavailable (%s): POSTs are answered 503 until it can be written", cause)
        self.unavailable = cause

    # ---- senders -----------------------------------------------------------------------------
    def _sender(self, ident: _Ident) -> _Sender:
        s = self.senders.get(ident.key)
        if s is None:
            if len(self.senders) >= self.cfg.max_senders:
                self._forget_oldest_sender()
            holder: list[_Sender] = []
            assert self.pipeline_factory is not None, "the front of worker processes holds no senders"
            pipeline = self.pipeline_factory(lambda where, line, reason: holder[0].errors.append((where, reason)))
            cfg = self.cfg
            reorder = _Reordering(ReorderBuffer(cfg.reorder_window, cfg.max_held_records, cfg.event_wait,
                                                cfg.event_timeout))
            pipeline.reassembler = reorder
            if self.normalizer_for_host is not None and ident.key.startswith("sender:"):
                pipeline.normalize = self.normalizer_for_host(ident.key[7:].split("/", 1)[0])
            s = self.senders[ident.key] = _Sender(ident.key, pipeline, reorder, ident.by_connection)
            holder.append(s)
        return s

    def _forget_oldest_sender(self) -> None:
        key = min(self.senders, key=lambda k: self.senders[k].last_seen)
        self._write(self.senders[key].pipeline.flush())
        self._forget(key)

    def _forget(self, key: str) -> None:
        for k, v in self.senders.pop(key).pipeline.stats().items():
            self.forgotten[k] = self.forgotten.get(k, 0) + v

    def _ident(self, request: web.Request) -> _Ident:
        """Who sent this: the sender header, else the connection, else the address."""
        name = request.headers.get(SENDER_HEADER)
        if name is not None:
            name = name.strip()
            if not _SENDER_OK.fullmatch(name):
                raise BodyError(400, f"{SENDER_HEADER} must be 1-200 printable characters without spaces")
            base = end = None
            rng = request.headers.get(RANGE_HEADER)
            if rng is not None:
                m = _RANGE.fullmatch(rng)
                if not m or int(m.group(2)) < int(m.group(1)):
                    raise BodyError(400, f"{RANGE_HEADER} must be FIRST-END (record positions, END exclusive)")
                base, end = int(m.group(1)), int(m.group(2))
            return _Ident(f"sender:{name}", base, end=end)
        conn = self.limits.connection_of(request.protocol)
        if conn is not None:
            return _Ident(f"connection:{conn.cid}:{conn.peer}", by_connection=True)
        return _Ident(f"address:{request.remote or '-'}")

    def _in_order(self, s: _Sender, now: float) -> bool:
        """One HTTP/1.1 connection carries its requests one after the other: in order, unless we
        refused one lately (the sender may send it again after newer ones)."""
        return s.by_connection and now - s.refused_at > self.cfg.reorder_window

    @staticmethod
    def _head_known(s: _Sender, ident: _Ident) -> bool:
        """Whether the request before this one in the sender's stream has arrived (by range)."""
        return ident.base is not None and (ident.base == 0 or ident.base in s.range_ends)

    def counters(self) -> dict[str, int | float]:
        """The pipeline counters of every sender (and of those forgotten), the stages' and the
        outputs', in the names ``run`` uses (``metrics.prom.METRICS``), for ``--metrics-listen``.
        With worker processes: the sum of theirs (each worker's stages are its own)."""
        if self.pool is None:
            totals = self.pipeline_counters()
        else:
            self._refresh()
            self._sync_documents()
            totals = {}
            for w in self.pool.workers:
                for k, v in w.snapshot.get("counters", {}).items():
                    # the rule counts describe the configuration, the same in every worker
                    totals[k] = max(totals.get(k, 0), v) if "detect.rules_" in k else totals.get(k, 0) + v
        outputs = self.outputs
        totals["output_errors"] = getattr(outputs, "write_failures", 0)
        totals["source_held_seconds"] = getattr(outputs, "held_seconds", 0.0)
        status = getattr(outputs, "status", None)
        for i, o in enumerate(status() if callable(status) else [], 1):
            st = o.get("stats") or {}
            part = f"{i}-{o['type']}"
            totals[f"output_pending.{part}"] = o["pending"]
            for key, name in (("queued", "queue_depth"), ("retries", "retries"),
                              ("dead_letter_events", "dead_lettered"), ("skipped_frames", "skipped_frames")):
                if isinstance(st.get(key), int):
                    totals[f"{name}.{part}"] = st[key]
        return totals

    def pipeline_counters(self) -> dict[str, int | float]:
        """The senders' pipeline, stage and reorder counters (those of forgotten senders too)."""
        totals: dict[str, int | float] = dict(self.forgotten)
        senders = list(self.senders.values())
        for s in senders:
            for k, v in s.pipeline.stats().items():
                totals[k] = totals.get(k, 0) + v
        if senders:
            totals.update(senders[0].pipeline.stage_metrics())  # the stages are shared
        totals["reorder_duplicates"] = sum(s.reorder.buffer.duplicates for s in senders)
        totals["reorder_expired"] = sum(s.reorder.buffer.expired for s in senders)
        return totals

    # ---- handlers --------------------------------------------------------------------------
    async def healthz(self, request: web.Request) -> web.Response:
        if self.fatal:
            return web.json_response({"status": "failed", "error": self.fatal}, status=503)
        # with workers: their last report (each tick), so that a health check never waits
        # behind the bodies queued for a worker
        senders = len(self.senders) if self.pool is None else self.pool.total("senders")
        return web.json_response({"status": "ok", "senders": senders, "connections": self.limits.open,
                                  "output": "unavailable" if self.unavailable else "ok"})

    async def metrics(self, request: web.Request) -> web.Response:
        if self.pool is not None:
            await self.pool.refresh()
            self._sync_documents()
        for what, n in self.limits.counts.items():
            c = self.m_conn.labels(what=what)
            c.inc(n - c._value.get())
        return web.Response(body=generate_latest(self.registry), headers={"Content-Type": CONTENT_TYPE_LATEST})

    def _fail(self, status: int, reason: str, headers: dict | None = None) -> web.Response:
        self.m_requests.labels(code=str(status)).inc()
        return web.json_response({"error": reason}, status=status, headers=headers)

    async def ingest(self, request: web.Request) -> web.Response:
        cfg = self.cfg
        if cfg.auth not in ("none", "hmac") and not authmod.check(cfg.auth, cfg.secret, request.headers,
                                                                   None, cfg.auth_header):
            return self._fail(401, "missing or bad credentials")
        if cfg.auth == "hmac" and authmod.header_for("hmac", cfg.auth_header) not in request.headers:
            return self._fail(401, "missing signature")
        try:
            ident = self._ident(request)
        except BodyError as e:
            return self._fail(e.status, e.reason)
        if self.fatal:
            return self._fail(503, self.fatal, headers={"Retry-After": str(self.cfg.retry_after)})
        loop = asyncio.get_running_loop()
        if self.outputs.held and not await self._drain_from_loop():
            return self._unavailable()
        if request.content_length is not None and request.content_length > cfg.max_body:
            return self._refuse(ident, 413, f"body larger than {cfg.max_body} bytes")
        try:
            wire = await self._read_body(request)
        except TimeoutError:
            self.limits.body_timed_out(request.remote or "-")
            timeout = cfg.limits.body_timeout if cfg.limits else 0
            response = self._fail(408, f"request body not complete within {timeout:g} s")
            response.force_close()  # the rest of the body is not waited for
            return response
        if wire is None:
            return self._refuse(ident, 413, f"body larger than {cfg.max_body} bytes")
        self.m_wire.inc(len(wire))
        if cfg.auth == "hmac" and not authmod.check("hmac", cfg.secret, request.headers, bytes(wire),
                                                    cfg.auth_header):
            return self._fail(401, "bad signature")
        encoding = request.headers.get("Content-Encoding", "identity").strip().lower()
        if encoding not in ("gzip", "x-gzip", "deflate", "identity", ""):
            return self._refuse(ident, 415, f"unsupported Content-Encoding {encoding!r}")
        content_type = request.headers.get("Content-Type", "")
        try:
            if self.pool is None:
                result = await loop.run_in_executor(self._worker, self._process, wire, encoding, content_type, ident)
            else:
                result = await self._remote(self.pool, wire, encoding, content_type, ident)
        except WorkerLost as e:
            return self._fail(503, str(e), headers={"Retry-After": str(self.cfg.retry_after)})
        except BodyError as e:
            if e.status == 413:
                self.inflated_bytes += cfg.max_body + 1
                self.m_inflated.inc(cfg.max_body + 1)
            return self._refuse(ident, e.status, e.reason)
        except _Unavailable:
            return self._unavailable()
        return web.json_response(result)

    async def _read_body(self, request: web.Request) -> bytearray | None:
        """The body as sent, or None past ``max_body``; TimeoutError past the body deadline."""
        assert self.cfg.limits is not None
        body = bytearray()
        async with asyncio.timeout(self.cfg.limits.body_timeout):
            while True:
                chunk = await request.content.read(65536)
                if not chunk:
                    return body
                if len(body) + len(chunk) > self.cfg.max_body:
                    return None
                body += chunk

    def _unavailable(self) -> web.Response:
        return self._fail(503, f"output unavailable: {self.unavailable}",
                          headers={"Retry-After": str(self.cfg.retry_after)})

    def _refuse(self, ident: _Ident, status: int, reason: str) -> web.Response:
        """A body refused whole: the sender may send it again later, after newer ones."""
        if self.pool is None:
            self.refused(ident.key, time.monotonic())
        else:
            sent = self.pool.send(self.pool.index(ident.key), ("refused", ident.key, time.monotonic()))
            sent.add_done_callback(lambda f: f.exception())  # a lost worker is reported by the pool
        self.m_refused.labels(reason=str(status)).inc()
        return self._fail(status, reason)

    # ---- on the worker thread --------------------------------------------------------------------
    def _process(self, wire: bytearray, encoding: str, content_type: str, ident: _Ident) -> dict:
        """Inflate (capped), decode, parse, write. Raises BodyError or _Unavailable."""
        if not self._drain_pending():
            raise _Unavailable
        body: bytes | bytearray = wire
        if encoding in ("gzip", "x-gzip", "deflate"):
            body, inflated = inflate_capped(wire, encoding, self.cfg.max_body)
            del wire
            self.inflated_bytes += inflated
            self.m_inflated.inc(inflated)
        decoded = decode_stream(body, content_type)
        return self._accept(ident, decoded.items())

    def _accept(self, ident: _Ident, items: Any) -> dict:
        now = time.monotonic()
        s = self._sender(ident)
        s.last_seen = now
        s.requests += 1
        reorder = s.reorder
        # a request whose range continues what arrived before is in order too (our shipper sends
        # one batch after the other): nothing before it is missing
        head_known = self._head_known(s, ident)
        reorder.chunk = Chunk([], s.requests, ident.base, head_known, head_known or self._in_order(s, now))
        pipeline = s.pipeline
        before = pipeline.counters.rejects
        records = events = written = crashed = 0
        errors: list[tuple[Any, str]] = []
        docs: list = []
        raw: list[str] | None = [] if self.outputs.wants_raw else None
        for item in items:
            kind = item[0]
            if kind == "raw":
                records += 1
                if raw is not None:
                    raw.append(item[1])
                reorder.at = (item[2], item[3])
                where = f"{ident.key}:{item[3] + 1}"
                try:
                    pipeline.feed_line(item[1], where, now)
                except Exception as e:  # noqa: BLE001 -- a parser bug must cost one line, not the request
                    crashed += 1
                    s.errors.append((where, f"internal error: {type(e).__name__}: {e}"))
                if records % SLICE == 0:
                    written += self._write(docs + pipeline.tick(now), raw)
                    docs, raw = [], [] if raw is not None else None
            elif kind == "event":
                events += 1
                docs.append(item[1])
            else:
                errors.append((item[1], item[2]))
        written += self._write(docs + pipeline.tick(now), raw)
        if ident.end is not None:
            s.range_ends.append(ident.end)
        return self._report(s, records, events, written, errors, pipeline.counters.rejects - before + crashed)

    def _count(self, records: int, events: int, rejected: int) -> None:
        self.m_records.inc(records)
        self.m_events_in.inc(events)
        self.m_rejects.inc(rejected)
        self.m_requests.labels(code="200").inc()

    def _report(self, s: _Sender, records: int, events: int, written: int, errors: list, bad: int) -> dict:
        rejected = len(errors) + bad
        report = [{"line": n, "reason": r} for n, r in errors[:MAX_ERRORS_REPORTED]]
        for where, reason in s.errors[:max(0, MAX_ERRORS_REPORTED - len(report))]:
            report.append({"line": where, "reason": reason})
        s.errors.clear()
        self._count(records, events, rejected)
        return {"accepted": records + events - bad, "records": records, "events": events, "documents": written,
                "rejected": rejected, "pending": self.outputs.pending_documents(), "errors": report}
