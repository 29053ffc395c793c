"""HTTP receiving endpoint (``auditpipe serve``): a Panther-style HTTP log source on aiohttp.

Accepted POST bodies (any path but ``/healthz`` and ``/metrics``):

* Fluent Bit ``json_lines``: ``{"date": 1700000000.123456, "log": "type=… msg=audit(…): …"}``
  per line (``date`` first or absent) — the ``log`` value is a raw audit record;
* a JSON array of such objects (Fluent Bit's ``json`` format) or of raw lines as strings;
* ``text/plain``: raw audit lines;
* JSON lines of events already normalized by another auditpipe: written through unchanged.

Raw records are parsed and reassembled per sender (the peer address: the records of one event
may arrive in separate requests), normalized and written to the sink. Events left open wait
``wall_timeout`` seconds of wall clock for their last records (a ticker closes them).

Order of checks, cheapest and safest first: auth headers (401) → declared and received wire size
(413) → HMAC over the wire bytes (401) → capped streaming inflate (413: a gzip bomb is refused
after at most ``max_body + 1`` inflated bytes) → decode (400 with a reason). Lines that fail to
parse are counted and reported in the response; the rest are accepted.
"""

from __future__ import annotations

import asyncio
import json
import logging
import ssl
import time
import zlib
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import orjson
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, generate_latest

from auditpipe.sinks import auth as authmod

__all__ = ["ReceiverConfig", "Receiver", "BodyError", "inflate_capped", "decode_body", "parse_size",
           "serve", "make_ssl_context"]

log = logging.getLogger(__name__)
MAX_ERRORS_REPORTED = 20


def parse_size(text: str | int) -> int:
    """``"1MB"`` → 1048576 (K/M/G are binary, as in nginx' client_max_body_size)."""
    if isinstance(text, int):
        return text
    t = text.strip().upper().removesuffix("B").removesuffix("I")
    mult = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}.get(t[-1:], 1)
    num = t[:-1] if t[-1:] in "KMG" and t else t
    value = int(float(num) * mult)
    if value <= 0:
        raise ValueError(f"size must be positive: {text!r}")
    return value


class BodyError(Exception):
    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


def inflate_capped(data: bytes, encoding: str, cap: int) -> tuple[bytes, int]:
    """Decompress ``data`` (gzip, possibly multi-member, or deflate), refusing past ``cap`` bytes.

    Returns (body, inflated byte count). Never produces more than ``cap + 1`` bytes, whatever the
    ratio: a bomb costs at most that much memory and CPU.
    """
    wbits = {"gzip": 31, "x-gzip": 31, "deflate": 15}[encoding]
    out: list[bytes] = []
    total = 0
    buf = data
    while buf:
        d = zlib.decompressobj(wbits)
        while True:
            try:
                chunk = d.decompress(buf, cap - total + 1)
            except zlib.error as e:
                raise BodyError(400, f"undecodable {encoding} body: {e}") from None
            total += len(chunk)
            if total > cap:
                raise BodyError(413, f"body larger than {cap} bytes once decompressed")
            out.append(chunk)
            buf = d.unconsumed_tail
            if d.eof or not buf:
                break
        if not d.eof:
            raise BodyError(400, f"truncated {encoding} body")
        buf = d.unused_data
        if wbits == 15:
            break
    return b"".join(out), total


def _loads(b: bytes) -> Any:
    try:
        return orjson.loads(b)
    except orjson.JSONDecodeError:
        # orjson refuses \\udcXX escapes (non-UTF-8 bytes carried as lone surrogates); json does not
        return json.loads(b.decode("utf-8", "surrogateescape"))


def decode_body(body: bytes, content_type: str) -> tuple[list[str], list[bytes], list[tuple[int, str]]]:
    """Body → (raw audit lines, normalized event lines as bytes, [(line number, error)]).

    Raises ``BodyError(400)`` when the body as a whole cannot be decoded.
    """
    raw: list[str] = []
    events: list[bytes] = []
    errors: list[tuple[int, str]] = []
    ctype = content_type.split(";")[0].strip().lower()
    head = body.lstrip()[:1]
    if ctype == "text/plain" or head not in (b"[", b"{"):
        if ctype in ("application/json", "application/x-ndjson") and head:
            raise BodyError(400, f"{ctype} body does not start with '[' or '{{'")
        # split on "\n" only: str.splitlines() would also cut at 0x1D, the ENRICHED separator
        for line in body.decode("utf-8", "surrogateescape").split("\n"):
            line = line.rstrip("\r")
            if line.strip():
                raw.append(line)
        return raw, events, errors

    def item(obj: Any, n: int, line: bytes | None) -> None:
        if isinstance(obj, str):
            raw.append(obj.rstrip("\n"))
        elif isinstance(obj, dict):
            log_value = obj.get("log")
            if isinstance(log_value, str):
                raw.append(log_value.rstrip("\n"))
            elif "log" in obj:
                errors.append((n, "'log' is not a string"))
            else:
                events.append(line if line is not None else orjson.dumps(obj, default=str))
        else:
            errors.append((n, f"expected an object or a string, got {type(obj).__name__}"))

    if head == b"[":
        try:
            arr = _loads(body)
        except (ValueError, UnicodeDecodeError) as e:
            raise BodyError(400, f"undecodable JSON array: {e}") from None
        if not isinstance(arr, list):
            raise BodyError(400, "expected a JSON array")
        for i, obj in enumerate(arr, 1):
            item(obj, i, None)
        return raw, events, errors
    decoded = 0
    for n, line in enumerate(body.splitlines(), 1):
        line = line.strip()
        if not line:
            continue
        try:
            obj = _loads(line)
        except (ValueError, UnicodeDecodeError) as e:
            errors.append((n, f"not JSON: {e}"))
            continue
        decoded += 1
        item(obj, n, line)
    if not decoded:
        raise BodyError(400, "no line of the body is JSON")
    return raw, events, errors


@dataclass
class ReceiverConfig:
    auth: str  # required: "none" must be asked for
    secret: str | None = None
    auth_header: str | None = None
    max_body: int = 1 << 20
    wall_timeout: float = 2.0  # seconds an open event waits for records from later requests
    event_timeout: float = 2.0  # audit-time horizon (Reassembler.timeout)
    tick_interval: float = 0.5
    sender_idle: float = 600.0

    def __post_init__(self) -> None:
        authmod.client_headers(self.auth, self.secret, b"", self.auth_header)  # validates


class _Sender:
    __slots__ = ("pipeline", "last_seen", "errors")

    def __init__(self, pipeline: Any) -> None:
        self.pipeline = pipeline
        self.last_seen = time.monotonic()
        self.errors: list[tuple[str, str]] = []


class Receiver:
    """The endpoint's state: per-sender pipelines, the sink, metrics.

    ``pipeline_factory(on_reject)`` builds one ``auditpipe.pipeline.Pipeline`` per sender;
    ``sink`` has ``write(items)`` (dicts or serialized lines) and ``flush()``.
    """

    def __init__(self, cfg: ReceiverConfig, pipeline_factory: Callable[[Callable], Any], sink: Any,
                 registry: CollectorRegistry | None = None) -> None:
        self.cfg = cfg
        self.pipeline_factory = pipeline_factory
        self.sink = sink
        self.senders: dict[str, _Sender] = {}
        self.registry = registry or CollectorRegistry()
        r = self.registry
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
        self.m_senders = Gauge("auditpipe_receiver_senders", "senders with reassembly state", registry=r)
        self.m_open = Gauge("auditpipe_receiver_open_events", "events waiting for more records", registry=r)
        self.m_open.set_function(lambda: sum(s.pipeline.reassembler.in_flight for s in list(self.senders.values())))
        self.m_senders.set_function(lambda: len(self.senders))
        self.inflated_bytes = 0
        # Decoding, parsing and writing run on this one thread, in arrival order: the event loop
        # stays free for other requests while a large body is parsed, and the per-sender
        # reassembly state and the sink are only ever touched from one thread.
        self._worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="auditpipe-receiver")

    # ---- app -------------------------------------------------------------------------------
    def app(self) -> web.Application:
        app = web.Application(client_max_size=self.cfg.max_body)
        app.router.add_get("/healthz", self.healthz)
        app.router.add_get("/metrics", self.metrics)
        app.router.add_post("/{tail:.*}", self.ingest)
        app.cleanup_ctx.append(self._ticker_ctx)
        return app

    async def _ticker_ctx(self, app: web.Application):
        task = asyncio.create_task(self._ticker())
        yield
        task.cancel()
        try:
            await task
        except asyncio.CancelledError:
            pass
        await asyncio.get_running_loop().run_in_executor(self._worker, self.flush_all)
        self._worker.shutdown(wait=False)

    async def _ticker(self) -> None:
        while True:
            await asyncio.sleep(self.cfg.tick_interval)
            try:
                await asyncio.get_running_loop().run_in_executor(self._worker, self.tick, time.monotonic())
            except Exception:
                log.exception("receiver tick failed")

    def tick(self, now: float) -> int:
        """Close events that waited too long; forget idle senders. Returns documents written."""
        written = 0
        for key, s in list(self.senders.items()):
            docs = s.pipeline.tick(now)
            if docs:
                written += self._write(docs)
            if now - s.last_seen > self.cfg.sender_idle:
                written += self._write(s.pipeline.flush())
                del self.senders[key]
        return written

    def flush_all(self) -> int:
        written = 0
        for s in self.senders.values():
            written += self._write(s.pipeline.flush())
        self.sink.flush()
        return written

    def _write(self, items: list) -> int:
        if not items:
            return 0
        n = self.sink.write(items)
        self.m_docs.inc(n)
        return n

    def _sender(self, key: str) -> _Sender:
        s = self.senders.get(key)
        if s is None:
            holder: list[_Sender] = []
            pipeline = self.pipeline_factory(lambda where, line, reason: holder[0].errors.append((where, reason)))
            s = self.senders[key] = _Sender(pipeline)
            holder.append(s)
        return s

    # ---- handlers --------------------------------------------------------------------------
    async def healthz(self, request: web.Request) -> web.Response:
        return web.json_response({"status": "ok", "senders": len(self.senders)})

    async def metrics(self, request: web.Request) -> web.Response:
        return web.Response(body=generate_latest(self.registry), headers={"Content-Type": CONTENT_TYPE_LATEST})

    def _fail(self, status: int, reason: str) -> web.Response:
        self.m_requests.labels(code=str(status)).inc()
        return web.json_response({"error": reason}, status=status)

    async def ingest(self, request: web.Request) -> web.Response:
        cfg = self.cfg
        if cfg.auth not in ("none", "hmac") and not authmod.check(cfg.auth, cfg.secret, request.headers,
                                                                   None, cfg.auth_header):
            return self._fail(401, "missing or bad credentials")
        if cfg.auth == "hmac" and authmod.header_for("hmac", cfg.auth_header) not in request.headers:
            return self._fail(401, "missing signature")
        if request.content_length is not None and request.content_length > cfg.max_body:
            return self._fail(413, f"body larger than {cfg.max_body} bytes")
        chunks: list[bytes] = []
        size = 0
        while True:
            chunk = await request.content.read(65536)
            if not chunk:
                break
            size += len(chunk)
            if size > cfg.max_body:
                return self._fail(413, f"body larger than {cfg.max_body} bytes")
            chunks.append(chunk)
        wire = b"".join(chunks)
        self.m_wire.inc(len(wire))
        if cfg.auth == "hmac" and not authmod.check("hmac", cfg.secret, request.headers, wire, cfg.auth_header):
            return self._fail(401, "bad signature")
        encoding = request.headers.get("Content-Encoding", "identity").strip().lower()
        if encoding not in ("gzip", "x-gzip", "deflate", "identity", ""):
            return self._fail(415, f"unsupported Content-Encoding {encoding!r}")
        try:
            result = await asyncio.get_running_loop().run_in_executor(
                self._worker, self._process, wire, encoding, request.headers.get("Content-Type", ""),
                request.remote or "-")
        except BodyError as e:
            if e.status == 413:
                self.inflated_bytes += cfg.max_body + 1
                self.m_inflated.inc(cfg.max_body + 1)
            return self._fail(e.status, e.reason)
        return web.json_response(result)

    def _process(self, wire: bytes, encoding: str, content_type: str, peer: str) -> dict:
        """On the worker thread: inflate (capped), decode, parse, write. Raises BodyError."""
        if encoding in ("gzip", "x-gzip", "deflate"):
            body, inflated = inflate_capped(wire, encoding, self.cfg.max_body)
            self.inflated_bytes += inflated
            self.m_inflated.inc(inflated)
        else:
            body = wire
        raw, events, errors = decode_body(body, content_type)
        return self._accept(peer, raw, events, errors)

    def _accept(self, peer: str, raw: list[str], events: list[bytes], errors: list[tuple[int, str]]) -> dict:
        docs: list = list(events)
        rejected = len(errors)
        report = [{"line": n, "reason": r} for n, r in errors[:MAX_ERRORS_REPORTED]]
        if raw:
            s = self._sender(peer)
            s.last_seen = time.monotonic()
            before = s.pipeline.counters.rejects
            crashed = 0
            feed, now = s.pipeline.feed_line, s.last_seen
            for i, line in enumerate(raw, 1):
                try:
                    docs += feed(line, f"{peer}:{i}", now)
                except Exception as e:  # a parser bug must cost one line, not the request
                    crashed += 1
                    s.errors.append((f"{peer}:{i}", f"internal error: {type(e).__name__}: {e}"))
            bad = s.pipeline.counters.rejects - before + crashed
            rejected += bad
            for where, reason in s.errors[:max(0, MAX_ERRORS_REPORTED - len(report))]:
                report.append({"line": where, "reason": reason})
            s.errors.clear()
        written = self._write(docs)
        self.m_records.inc(len(raw))
        self.m_events_in.inc(len(events))
        self.m_rejects.inc(rejected)
        self.m_requests.labels(code="200").inc()
        return {"accepted": len(raw) + len(events) - (rejected - len(errors)), "records": len(raw),
                "events": len(events), "documents": written, "rejected": rejected, "errors": report}


def make_ssl_context(cert: str, key: str | None = None, client_ca: str | None = None) -> ssl.SSLContext:
    """Server TLS context; with ``client_ca`` a client certificate is required (mutual TLS)."""
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(cert, key)
    if client_ca:
        ctx.load_verify_locations(client_ca)
        ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx


async def start_site(receiver: Receiver, host: str, port: int, ssl_context: ssl.SSLContext | None = None
                     ) -> tuple[web.AppRunner, int]:
    """Start listening; returns the runner (``await runner.cleanup()`` to stop) and the bound port.

    ``auto_decompress=False``: the handler must see the wire bytes (size cap, HMAC) and inflate
    with its own cap.
    """
    runner = web.AppRunner(receiver.app(), auto_decompress=False, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, port, ssl_context=ssl_context)
    await site.start()
    sockets = site._server.sockets if site._server else []  # type: ignore[union-attr]
    bound = sockets[0].getsockname()[1] if sockets else port
    return runner, bound


def serve(receiver: Receiver, host: str, port: int, ssl_context: ssl.SSLContext | None = None,
          ready: Callable[[int], None] | None = None) -> None:
    """Run until SIGINT/SIGTERM; open events are flushed to the sink on the way out."""
    import signal

    async def main() -> None:
        runner, bound = await start_site(receiver, host, port, ssl_context)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        if ready:
            ready(bound)
        try:
            await stop.wait()
        finally:
            await runner.cleanup()

    asyncio.run(main())
