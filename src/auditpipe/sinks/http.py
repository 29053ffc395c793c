"""HTTP shipper: POST batches from the durable queue; acknowledge only after a 2xx.

The queue holds one serialized JSON line per record, already in the body format (events as
documents, or raw records as Fluent Bit sends them: ``{"date": <float>, "log": "<line>"}``,
date first), so the shipper only frames, compresses, signs and sends. Because the queue is
durable, transient failures (connection errors, 408, 429, 5xx) are retried without limit by
default with exponential backoff and jitter; a 3xx/4xx is a permanent refusal of *this* batch:
it goes to the dead-letter file with the response and is acknowledged so it cannot block the
queue. Batches close on count, on bytes (default under 1 MB, Panther's payload limit,
measured before compression) or after ``max_wait`` seconds.
"""

from __future__ import annotations

import gzip
import logging
import random
import ssl
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import httpx

from auditpipe.sinks.auth import client_headers
from auditpipe.sinks.encode import dumps_line
from auditpipe.sinks.file import FileSink
from auditpipe.sinks.queue import DiskQueue

__all__ = ["HttpConfig", "HttpShipper", "QueueSink", "raw_record", "build_client", "is_retryable"]

log = logging.getLogger(__name__)
# httpx logs every request at INFO ("HTTP Request: POST … 200 OK"), one line per batch sent;
# failures are ours to report (retries, dead letters)
for _name in ("httpx", "httpcore"):
    logging.getLogger(_name).setLevel(logging.WARNING)

CONTENT_TYPE = "application/x-ndjson"


@dataclass
class HttpConfig:
    url: str
    format: str = "json_lines"  # "json_lines" (events) | "raw" (Fluent Bit records)
    auth: str = "none"  # none | shared-secret | hmac | bearer | basic
    auth_header: str | None = None  # default: see sinks.auth.DEFAULT_HEADER
    secret: str | None = None  # basic: "user:password"
    gzip: bool = True
    tls: bool = True  # plain http:// must be asked for with tls=False
    tls_verify: bool = True
    ca_file: str | None = None
    client_cert: str | None = None
    client_key: str | None = None
    max_events: int = 500
    max_bytes: int = 1_000_000 - 4096  # uncompressed body; under Panther's 1 MB
    max_wait: float = 1.0
    timeout: float = 10.0
    backoff_initial: float = 0.5
    backoff_max: float = 30.0
    max_retries: int | None = None  # None: retry transient failures forever
    dead_letter: str | None = None  # JSON-lines file for refused batches
    headers: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.format not in ("json_lines", "raw"):
            raise ValueError("format must be 'json_lines' or 'raw'")
        client_headers(self.auth, self.secret, b"", self.auth_header)  # validates auth/secret
        scheme = self.url.split(":", 1)[0].lower()
        if scheme not in ("http", "https"):
            raise ValueError(f"url must be http(s)://, not {self.url!r}")
        if scheme == "http" and self.tls:
            raise ValueError("TLS is on by default: use an https:// url or set tls=False")


def raw_record(line: str, date: float | None = None) -> bytes:
    """One raw audit line as Fluent Bit's tail input ships it (``date`` first), no newline."""
    return dumps_line({"date": time.time() if date is None else date, "log": line.rstrip("\n")})[:-1]


class QueueSink:
    """Pipeline-side writer: puts documents (or raw lines) into the durable queue.

    ``write(docs)`` has the FileSink signature, so the pipeline's output can be pointed at
    either; ``write_raw(lines)`` is the raw-forwarding path.
    """

    def __init__(self, queue: DiskQueue) -> None:
        self.queue = queue

    def write(self, items: Iterable[Any]) -> int:
        lines = [dumps_line(o)[:-1] for o in items]
        if lines:
            self.queue.put_many(lines)
        return len(lines)

    def write_raw(self, lines: Iterable[str], date: float | None = None) -> int:
        now = time.time() if date is None else date
        recs = [raw_record(ln, now) for ln in lines if ln.strip()]
        if recs:
            self.queue.put_many(recs)
        return len(recs)

    def flush(self) -> None:
        pass

    def close(self) -> None:
        pass


def build_client(cfg: HttpConfig) -> httpx.Client:
    verify: bool | ssl.SSLContext = False
    if cfg.tls_verify:
        verify = ssl.create_default_context(cafile=cfg.ca_file)
    if cfg.client_cert:
        if not isinstance(verify, ssl.SSLContext):
            verify = ssl.create_default_context()
            verify.check_hostname = False
            verify.verify_mode = ssl.CERT_NONE
        verify.load_cert_chain(cfg.client_cert, cfg.client_key)
    return httpx.Client(verify=verify, timeout=cfg.timeout, follow_redirects=False)


def is_retryable(status: int) -> bool:
    return status in (408, 429) or status >= 500


def _retry_after(resp: httpx.Response) -> float | None:
    v = resp.headers.get("retry-after")
    if v is None:
        return None
    try:
        return max(0.0, float(v))
    except ValueError:
        return None


class HttpShipper:
    """Read batches from ``queue``, POST them to ``cfg.url``, ack after 2xx.

    ``step()`` does one batch (tests drive it directly); ``start()`` runs it in a thread until
    ``stop()``. Counters: ``sent_events``, ``sent_batches``, ``retries``, ``dead_events``,
    ``dead_batches``, ``last_error``.
    """

    def __init__(
        self,
        queue: DiskQueue,
        cfg: HttpConfig,
        *,
        client: httpx.Client | None = None,
        rng: Callable[[], float] = random.random,
    ) -> None:
        self.queue = queue
        self.cfg = cfg
        self.client = client or build_client(cfg)
        self.rng = rng
        self.stop_event = threading.Event()
        self.sent_events = 0
        self.sent_batches = 0
        self.sent_bytes = 0
        self.retries = 0
        self.dead_events = 0
        self.dead_batches = 0
        self.last_error: str | None = None
        self._dead: FileSink | None = None
        self._thread: threading.Thread | None = None

    # ---- batching --------------------------------------------------------------------------
    def next_batch(self, poll: float = 0.2) -> list[tuple[int, bytes]]:
        """Up to ``max_events`` records within ``max_bytes``, waiting ``max_wait`` to fill."""
        cfg = self.cfg
        budget = cfg.max_bytes - cfg.max_events  # newlines
        batch = self.queue.get_batch(cfg.max_events, budget, timeout=poll)
        if not batch:
            return batch
        used = sum(len(p) for _, p in batch)
        deadline = time.monotonic() + cfg.max_wait
        while len(batch) < cfg.max_events and used < budget and not self.stop_event.is_set():
            left = deadline - time.monotonic()
            if left <= 0:
                break
            more = self.queue.get_batch(cfg.max_events - len(batch), budget - used,
                                        timeout=min(left, poll), at_least_one=False)
            if not more:
                if self.queue.has_unread():  # the next record does not fit: the batch is full
                    break
                continue
            batch += more
            used += sum(len(p) for _, p in more)
        return batch

    def encode(self, batch: list[tuple[int, bytes]]) -> tuple[bytes, dict[str, str]]:
        body = b"\n".join(p for _, p in batch) + b"\n"
        headers = {"Content-Type": CONTENT_TYPE, **self.cfg.headers}
        if self.cfg.gzip:
            body = gzip.compress(body, compresslevel=5)
            headers["Content-Encoding"] = "gzip"
        headers.update(client_headers(self.cfg.auth, self.cfg.secret, body, self.cfg.auth_header))
        return body, headers

    # ---- sending ---------------------------------------------------------------------------
    def backoff(self, attempt: int) -> float:
        """Exponential backoff with "equal jitter": half fixed, half random."""
        base = min(self.cfg.backoff_max, self.cfg.backoff_initial * (2 ** attempt))
        return base / 2 + base / 2 * self.rng()

    def send(self, batch: list[tuple[int, bytes]]) -> bool:
        """Deliver one batch (retrying); True when it was acknowledged (sent or dead-lettered)."""
        body, headers = self.encode(batch)
        attempt = 0
        while True:
            delay = None
            try:
                resp = self.client.post(self.cfg.url, content=body, headers=headers)
            except httpx.TransportError as e:
                self.last_error = f"{type(e).__name__}: {e}"
            else:
                if 200 <= resp.status_code < 300:
                    self.queue.ack(batch[-1][0])
                    self.sent_events += len(batch)
                    self.sent_batches += 1
                    self.sent_bytes += len(body)
                    return True
                self.last_error = f"HTTP {resp.status_code}"
                if not is_retryable(resp.status_code):
                    self._dead_letter(batch, resp.status_code, resp.text)
                    return True
                delay = _retry_after(resp)
            if self.cfg.max_retries is not None and attempt >= self.cfg.max_retries:
                self._dead_letter(batch, None, f"retries exhausted: {self.last_error}")
                return True
            wait = self.backoff(attempt)
            if delay is not None:
                wait = min(max(wait, delay), self.cfg.backoff_max)
            attempt += 1
            self.retries += 1
            log.warning("http sink: %s, retry %d in %.1fs", self.last_error, attempt, wait)
            if self.stop_event.wait(wait):
                self.queue.rewind()  # not acknowledged: resent after restart or on next start
                return False

    def _dead_letter(self, batch: list[tuple[int, bytes]], status: int | None, response: str) -> None:
        self.dead_events += len(batch)
        self.dead_batches += 1
        if self.cfg.dead_letter:
            if self._dead is None:
                self._dead = FileSink(self.cfg.dead_letter, fsync="batch", max_bytes=0)
            lines = [p.decode("utf-8", "surrogateescape") for _, p in batch]
            self._dead.write([{
                "time": time.time(), "url": self.cfg.url, "status": status,
                "response": response[:65536], "events": len(batch), "body": lines,
            }])
        else:
            log.error("http sink: batch of %d refused (%s) and no dead-letter file", len(batch), status)
        self.queue.ack(batch[-1][0])

    def step(self, poll: float = 0.2) -> int:
        """Send one batch if there is one; returns the number of records it held."""
        batch = self.next_batch(poll)
        if not batch:
            return 0
        self.send(batch)
        return len(batch)

    # ---- thread ----------------------------------------------------------------------------
    def run(self) -> None:
        while not self.stop_event.is_set():
            try:
                self.step()
            except Exception:  # keep shipping; the queue keeps the data
                log.exception("http sink: unexpected error")
                self.queue.rewind()
                self.stop_event.wait(1.0)

    def start(self) -> threading.Thread:
        self._thread = threading.Thread(target=self.run, name="auditpipe-http-sink", daemon=True)
        self._thread.start()
        return self._thread

    def drain(self, timeout: float) -> bool:
        """Wait until everything in the queue is acknowledged (or ``timeout``)."""
        end = time.monotonic() + timeout
        while self.queue.pending and time.monotonic() < end:
            time.sleep(0.02)
        return self.queue.pending == 0

    def stop(self, timeout: float = 5.0) -> None:
        self.stop_event.set()
        if self._thread is not None:
            self._thread.join(timeout)
        if self._dead is not None:
            self._dead.close()
        self.client.close()
