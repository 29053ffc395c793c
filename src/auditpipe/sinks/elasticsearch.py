"""Elasticsearch output: a transport (sinks/transport.py) that bulk-``create``s the queued ECS
documents into the data stream ``logs-<dataset>-<namespace>``, where Auditd Manager's land.

It sits behind the durable queue like the HTTP output: the generic shipper batches, retries and
dead-letters; this module only turns one batch into one ``_bulk`` request through the official
client and reads the answer item by item. Data streams accept only ``create``; each document
carries a stable ``_id`` (see ``normalize.agent.document_id``), so a batch sent again after a
crash or a partial failure answers ``409 version_conflict_engine_exception`` for what is
already there, which counts as delivered: at least once, without duplicates.

The request is sent with ``compatible-with=8`` media types (the 9.x client would say 9), which
8.x clusters take as their own and 9.x clusters accept through REST compatibility.
"""

from __future__ import annotations

import hashlib
import logging
import zlib
from typing import TYPE_CHECKING, Any, cast

import orjson

from auditpipe.config import ElasticsearchOutput
from auditpipe.normalize.es_indexed import to_indexed
from auditpipe.sinks.transport import (
    Outcome,
    PermanentError,
    ServerError,
    TransientError,
)

if TYPE_CHECKING:
    from elastic_transport import Serializer
    from elasticsearch import Elasticsearch

    from auditpipe.sinks.shipper import QueuedOutput

__all__ = ["COMPAT_HEADERS", "ElasticsearchOutput", "ElasticsearchTransport", "build_client",
           "data_stream_name", "item_outcome", "open_elasticsearch"]

log = logging.getLogger(__name__)
# the client logs every request at INFO ("POST …/_bulk [status:200 …]"), one line per batch;
# failures are ours to report (retries, dead letters)
logging.getLogger("elastic_transport.transport").setLevel(logging.WARNING)

COMPAT_HEADERS = {
    "accept": "application/vnd.elasticsearch+json; compatible-with=8",
    "content-type": "application/vnd.elasticsearch+x-ndjson; compatible-with=8",
}
def data_stream_name(cfg: ElasticsearchOutput) -> str:
    return f"logs-{cfg.dataset}-{cfg.namespace}"


def build_client(cfg: ElasticsearchOutput) -> Elasticsearch:
    """The official client, with its own retries off: the shipper retries, from the queue."""
    from elasticsearch import Elasticsearch

    kw: dict[str, Any] = {}
    if cfg.api_key is not None:
        kw["api_key"] = cfg.api_key
    elif cfg.username is not None:
        kw["basic_auth"] = (cfg.username, cfg.password)
    elif cfg.bearer is not None:
        kw["bearer_auth"] = cfg.bearer
    if any(h.lower().startswith("https") for h in cfg.hosts):
        kw.update(verify_certs=cfg.tls_verify, ca_certs=cfg.ca_file, client_cert=cfg.client_cert,
                  client_key=cfg.client_key)
        if not cfg.tls_verify:
            kw["ssl_show_warn"] = False
    return Elasticsearch(list(cfg.hosts), request_timeout=cfg.timeout, max_retries=0, retry_on_status=(),
                         retry_on_timeout=False, serializers={_Encoded.mimetype: cast("Serializer", _Encoded())}, **kw)


def _encoded_serializer_base() -> type:
    from elastic_transport import NdjsonSerializer

    return NdjsonSerializer


class _Encoded:
    """The bulk body is built (and compressed) here: bytes go out as they are (the client's
    NDJSON serializer would append a newline to them, and compresses at level 9 when asked)."""

    mimetype = "application/vnd.elasticsearch+x-ndjson"  # looked up without its parameters

    def __init__(self) -> None:
        self._ndjson = _encoded_serializer_base()()

    def dumps(self, data: Any) -> bytes:
        return data if isinstance(data, bytes) else self._ndjson.dumps(data)

    def loads(self, data: bytes) -> Any:
        return self._ndjson.loads(data)


def item_outcome(item: dict[str, Any]) -> tuple[str, str | None]:
    """One ``_bulk`` response item → ("ok" | "duplicate" | "retry" | "refused", reason)."""
    res: dict[str, Any] = item.get("create") or next(iter(item.values()), {})
    status = int(res.get("status", 0))
    if 200 <= status < 300:
        return "ok", None
    err = res.get("error") or {}
    etype = err.get("type", "") if isinstance(err, dict) else str(err)
    reason = f"{status} {etype}: {err.get('reason', '') if isinstance(err, dict) else ''}".strip()
    if status == 409 and etype == "version_conflict_engine_exception":
        return "duplicate", None
    if status == 429 or status >= 500 or status == 0:
        return "retry", reason
    return "refused", reason


_ID_PREFIX = b'{"_id":"'


def split_id(payload: bytes) -> tuple[str, bytes]:
    """The document's ``_id`` (a leading ``"_id"`` key, put there by the normalizer) and the
    document without it; without one, an id from the payload's digest (stable for a record
    sent again from the queue)."""
    if payload.startswith(_ID_PREFIX):
        end = payload.find(b'"', len(_ID_PREFIX))
        if end > 0:
            doc_id = payload[len(_ID_PREFIX):end].decode("ascii", "replace")
            rest = payload[end + 1:]
            return doc_id, b"{" + (rest[1:] if rest[:1] == b"," else rest)
    return hashlib.blake2b(payload, digest_size=15).hexdigest(), payload


def _shape_indexed(payload: bytes) -> tuple[str, bytes]:
    doc = orjson.loads(payload)
    doc_id = doc.pop("_id", None)
    if not isinstance(doc_id, str):
        doc_id = hashlib.blake2b(payload, digest_size=15).hexdigest()
    return doc_id, orjson.dumps(to_indexed(doc))


class ElasticsearchTransport:
    """One ``send`` = one ``_bulk`` request of ``create`` actions into the data stream."""

    def __init__(self, cfg: ElasticsearchOutput, client: Elasticsearch | None = None) -> None:
        self.cfg = cfg
        self.index = data_stream_name(cfg)
        self.name = f"elasticsearch {cfg.hosts[0]} {self.index}"
        self._client = client if client is not None else build_client(cfg)
        self._params: dict[str, str] = {"pipeline": cfg.pipeline} if cfg.pipeline else {}
        self._prepare = _shape_indexed if cfg.shape == "indexed" else split_id
        self._headers = dict(COMPAT_HEADERS)
        self._gzip = cfg.compression_level if cfg.compression == "gzip" else 0
        if self._gzip:
            self._headers["content-encoding"] = "gzip"
        self._done = 0
        self.counts = {"created": 0, "duplicates": 0, "retried_items": 0, "refused_items": 0}

    def body(self, payloads: list[bytes]) -> bytes:
        parts = []
        for p in payloads:
            doc_id, doc = self._prepare(p)
            parts.append(b'{"create":{"_id":"%s"}}\n%s\n' % (doc_id.encode(), doc))
        return b"".join(parts)

    def send(self, payloads: list[bytes]) -> Outcome:
        from elastic_transport import TransportError
        from elasticsearch import ApiError, UnsupportedProductError

        body = self.body(payloads)
        if self._gzip:
            z = zlib.compressobj(self._gzip, zlib.DEFLATED, 31)  # 31: gzip framing
            body = z.compress(body) + z.flush()
        try:
            resp = self._client.perform_request(
                "POST", f"/{self.index}/_bulk", params=self._params or None,
                headers=self._headers, body=body)
        except UnsupportedProductError as e:  # something else answers there: keep the events
            raise TransientError(f"not Elasticsearch: {e}") from None
        except ApiError as e:
            raise _request_error(e.meta.status, e.meta.headers, str(e)) from None
        except TransportError as e:  # connection refused/reset, timeout, TLS
            raise TransientError(f"{type(e).__name__}: {e}") from None
        out = self._outcome(resp.body, len(payloads))
        self._done += 1
        return out

    def _outcome(self, resp: Any, n: int) -> Outcome:
        out = Outcome()
        items = resp.get("items") if isinstance(resp, dict) else None
        if not isinstance(items, list):
            raise TransientError(f"bulk response without items: {str(resp)[:200]}")
        if len(items) < n:  # never from a sound cluster; what has no answer is sent again
            out.retry.extend(range(len(items), n))
        c = self.counts
        if not resp.get("errors") and not out.retry:
            c["created"] += len(items)
            return out
        for i, item in enumerate(items):
            kind, reason = item_outcome(item)
            if kind == "ok":
                c["created"] += 1
            elif kind == "duplicate":
                c["duplicates"] += 1
            elif kind == "retry":
                c["retried_items"] += 1
                out.retry.append(i)
            else:
                c["refused_items"] += 1
                out.refused.append((i, reason or "refused"))
        return out

    def committed(self) -> int:
        return self._done

    def stats(self) -> dict[str, int]:
        return dict(self.counts)

    def close(self) -> None:
        self._client.close()


def _request_error(status: int, headers: Any, text: str) -> Exception:
    """The whole request failed: retry (429, 5xx, 408, and 401/403, a credential being fixed
    must not dead-letter the queue) or refuse the batch for good (other 4xx)."""
    if status in (401, 403, 408, 429) or status >= 500:
        retry_after = None
        try:
            v = headers.get("retry-after") if headers is not None else None
            retry_after = float(v) if v is not None else None
        except ValueError:
            pass
        kind = ServerError if status >= 500 and status not in (502, 503, 504) else TransientError
        return kind(f"HTTP {status}: {text[:300]}", retry_after)
    return PermanentError(f"HTTP {status}: {text[:300]}")


def open_elasticsearch(cfg: ElasticsearchOutput, *, start: bool = True) -> QueuedOutput:
    """The output as ``run``/``serve`` use it: the durable queue in ``queue_dir`` and a shipper
    thread delivering it through :class:`ElasticsearchTransport`; ``stats()`` adds the cluster's
    answers item by item (created, duplicates, retried_items, refused_items)."""
    from auditpipe.sinks.queue import DiskQueue
    from auditpipe.sinks.shipper import Batching, QueuedOutput, RetryPolicy

    class ElasticsearchSink(QueuedOutput):
        def stats(self) -> dict[str, Any]:
            return {**super().stats(), **transport.stats()}

    queue = DiskQueue(cfg.queue_dir, max_bytes=cfg.queue_max_bytes, full_policy=cfg.full_policy,
                      fsync=cfg.queue_fsync)
    try:
        transport = ElasticsearchTransport(cfg)
    except BaseException:
        queue.close()
        raise
    return ElasticsearchSink(queue, transport, Batching(cfg.max_events, cfg.max_bytes, cfg.max_wait),
                             cfg.dead_letter,
                             RetryPolicy(cfg.backoff_initial, cfg.backoff_max, cfg.max_retries, cfg.max_retries_5xx),
                             drain_timeout=cfg.drain_timeout, start=start)
