"""HTTP output: a transport for the generic queue shipper (``sinks.shipper``).

The queue holds one serialized JSON document per record, already in the body format (events as
documents, or raw records as Fluent Bit sends them: ``{"date": <float>, "log": "<line>"}``,
date first), so the transport only frames, compresses, signs and POSTs. ``json_lines`` bodies
are ``application/x-ndjson``; ``raw`` bodies are ``application/json`` with one JSON object per
line, which is what Fluent Bit's ``in_http`` accepts (it answers 400 to ``x-ndjson``).
Because the queue is durable, connection errors, 408, 429, 502, 503 and 504 are retried without
limit by default; any other 5xx is retried ``max_retries_5xx`` times (a body that crashes the
receiver must not block the queue for ever) and then dead-lettered; any other 3xx/4xx is a permanent refusal of
*this* batch and goes to the dead-letter file with the response. Batches close on count, on
bytes (default under 1 MB, Panther's payload limit, measured before compression) or after
``max_wait`` seconds.
"""

from __future__ import annotations

import gzip
import logging
import os
import random
import secrets
import socket
import ssl
from collections.abc import Callable
from dataclasses import dataclass, field

import httpx
import orjson

from auditpipe.sinks.auth import client_headers
from auditpipe.sinks.queue import DiskQueue
from auditpipe.sinks.shipper import (
    Batching,
    QueueShipper,
    QueueSink,
    RetryPolicy,
    raw_record,
)
from auditpipe.sinks.transport import (
    Outcome,
    PermanentError,
    ServerError,
    TransientError,
)

__all__ = ["RANGE_HEADER", "SENDER_HEADER", "HttpConfig", "HttpShipper", "HttpTransport", "QueueSink", "build_client",
           "is_retryable", "raw_record", "sender_identity"]

log = logging.getLogger(__name__)
# httpx logs every request at INFO ("HTTP Request: POST … 200 OK"), one line per batch sent;
# failures are ours to report (retries, dead letters)
for _name in ("httpx", "httpcore"):
    logging.getLogger(_name).setLevel(logging.WARNING)

#: who sends (``<host>/<instance id>``) and which span of its queue a request holds: the receiver
#: reassembles per sender and knows where each request stands (docs/serve.md)
SENDER_HEADER = "X-Auditpipe-Sender"
RANGE_HEADER = "X-Auditpipe-Range"
SENDER_FILE = "SENDER"
CONTENT_TYPE = "application/x-ndjson"
#: Fluent Bit's in_http takes application/json bodies of one JSON object per line (not x-ndjson)
RAW_CONTENT_TYPE = "application/json"


@dataclass
class HttpConfig:
    url: str
    format: str = "json_lines"  # "json_lines" (events) | "raw" (Fluent Bit records) | "webhook" (alerts)
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
    max_retries_5xx: int | None = 10  # a 5xx answer: this many retries, then dead-letter
    dead_letter: str | None = None  # JSON-lines file for refused batches
    headers: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.format not in ("json_lines", "raw", "webhook"):
            raise ValueError("format must be 'json_lines', 'raw' or 'webhook'")
        client_headers(self.auth, self.secret, b"", self.auth_header)  # validates auth/secret
        scheme = self.url.split(":", 1)[0].lower()
        if scheme not in ("http", "https"):
            raise ValueError(f"url must be http(s)://, not {self.url!r}")
        if scheme == "http" and self.tls:
            raise ValueError("TLS is on by default: use an https:// url or set tls=False")
        self._check_numbers()

    def _check_numbers(self) -> None:
        """Values that pass the types but could never deliver (issue 8, item 10)."""
        if self.max_events < 1:
            raise ValueError("max_events must be at least 1 (0 would never send)")
        if self.max_bytes < 1024:
            raise ValueError("max_bytes must be at least 1024 (a batch must hold a document)")
        if not self.timeout > 0:
            raise ValueError("timeout must be more than 0 seconds (0 would never deliver)")
        if self.max_wait < 0 or not self.backoff_initial > 0 or self.backoff_max < self.backoff_initial:
            raise ValueError("need max_wait >= 0 and 0 < backoff_initial <= backoff_max")
        for name in ("max_retries", "max_retries_5xx"):
            v = getattr(self, name)
            if v is not None and v < 0:
                raise ValueError(f"{name} must be 0 or more (or unset: retry for ever)")


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


#: "not now" answers: the receiver is overloaded, down behind a proxy or cannot write its output
#: (``serve`` answers 503 until its disk has room) — retried for as long as connection errors
UNAVAILABLE = frozenset({408, 429, 502, 503, 504})


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


def sender_identity(queue_dir: str) -> str:
    """``<host>/<instance id>`` of the output whose queue is ``queue_dir``: made once and kept in
    its ``SENDER`` file, so a restarted shipper is the same sender (its held records at the
    receiver join what it sends after the restart) and two outputs on one host are two."""
    path = os.path.join(queue_dir, SENDER_FILE)
    try:
        with open(path, encoding="ascii") as f:
            name = f.read().strip()
        if name:
            return name
    except (OSError, UnicodeDecodeError):
        pass
    host = "".join(c for c in socket.gethostname() if "!" <= c <= "~" and c != "/")[:150] or "host"
    name = f"{host}/{secrets.token_hex(8)}"
    tmp = f"{path}.tmp"
    with open(tmp, "w", encoding="ascii") as f:
        f.write(name + "\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    return name


class HttpTransport:
    """POST one batch as a body of JSON lines. 2xx: delivered; connection errors and the
    :data:`UNAVAILABLE` statuses: transient; any other 5xx (the receiver failed on this body):
    transient but bounded (:class:`ServerError`); any other status: permanent.

    With ``sender`` (``sender_identity``) each request names its sender and the queue span it
    holds (``X-Auditpipe-Sender``, ``X-Auditpipe-Range``: the shipper calls :meth:`at`)."""

    def __init__(self, cfg: HttpConfig, client: httpx.Client | None = None, sender: str | None = None) -> None:
        self.cfg = cfg
        self.name = f"http {cfg.url}"
        self.client = client or build_client(cfg)
        self.content_type = RAW_CONTENT_TYPE if cfg.format in ("raw", "webhook") else CONTENT_TYPE
        self.sender = sender if cfg.format != "webhook" else None
        self.span: tuple[int, int] | None = None
        self.sent_bytes = 0
        self._ok = 0

    def at(self, first: int, end: int) -> None:
        self.span = (first, end)

    def encode(self, payloads: list[bytes]) -> tuple[bytes, dict[str, str]]:
        body = b"\n".join(payloads) + b"\n"
        headers = {"Content-Type": self.content_type, **self.cfg.headers}
        if self.sender:
            headers[SENDER_HEADER] = self.sender
            if self.span is not None:
                headers[RANGE_HEADER] = f"{self.span[0]}-{self.span[1]}"
        if self.cfg.gzip:
            body = gzip.compress(body, compresslevel=5, mtime=0)  # the same bytes on every retry
            headers["Content-Encoding"] = "gzip"
        headers.update(client_headers(self.cfg.auth, self.cfg.secret, body, self.cfg.auth_header))
        return body, headers

    def send(self, payloads: list[bytes]) -> Outcome:
        if self.cfg.format == "webhook":
            return self._send_webhooks(payloads)
        self._post(*self.encode(payloads))
        self._ok += 1
        return Outcome()

    def _post(self, body: bytes, headers: dict[str, str]) -> None:
        """One POST; returns on a 2xx, else raises what the status means for a retry."""
        try:
            resp = self.client.post(self.cfg.url, content=body, headers=headers)
        except httpx.TransportError as e:
            raise TransientError(f"{type(e).__name__}: {e}") from None
        status = resp.status_code
        if 200 <= status < 300:
            self.sent_bytes += len(body)
            return
        reason = f"HTTP {status}: {resp.text[:65536]}"
        if status in UNAVAILABLE:
            raise TransientError(reason, _retry_after(resp))
        if status >= 500:
            raise ServerError(reason, _retry_after(resp))
        raise PermanentError(reason)

    def _send_webhooks(self, payloads: list[bytes]) -> Outcome:
        """Incoming webhooks take one message per request: each alert is posted on its own, in
        order. A message refused (4xx) is dead-lettered alone; when one cannot be sent now (429
        with Retry-After, 5xx, connection), it and those after it are retried."""
        from auditpipe.detect.alerts import webhook_payload

        out = Outcome()
        for i, p in enumerate(payloads):
            body = orjson.dumps(webhook_payload(orjson.loads(p)))
            headers = {"Content-Type": "application/json", **self.cfg.headers,
                       **client_headers(self.cfg.auth, self.cfg.secret, body, self.cfg.auth_header)}
            try:
                self._post(body, headers)
            except PermanentError as e:
                out.refused.append((i, str(e)))
            except TransientError as e:
                if i == 0:
                    raise
                out.retry, out.retry_after = list(range(i, len(payloads))), e.retry_after
                break
        self._ok += 1
        return out

    def committed(self) -> int:
        return self._ok  # a 2xx means the receiver has it

    def close(self) -> None:
        self.client.close()


def batching_of(cfg: HttpConfig) -> Batching:
    return Batching(cfg.max_events, cfg.max_bytes, cfg.max_wait)


def retry_of(cfg: HttpConfig) -> RetryPolicy:
    return RetryPolicy(cfg.backoff_initial, cfg.backoff_max, cfg.max_retries, cfg.max_retries_5xx)


class HttpShipper(QueueShipper):
    """The queue shipper with an :class:`HttpTransport`, configured from one ``HttpConfig``."""

    def __init__(self, queue: DiskQueue, cfg: HttpConfig, *, client: httpx.Client | None = None,
                 rng: Callable[[], float] = random.random) -> None:
        super().__init__(queue, HttpTransport(cfg, client), batching_of(cfg), cfg.dead_letter,
                         retry_of(cfg), rng=rng)
        self.cfg = cfg
