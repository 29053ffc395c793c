"""Build a sink from configuration: the one entry point ``run`` and ``serve`` need.

Every sink has ``write(items) -> int`` (dicts or serialized JSON lines), ``flush()`` and
``close()``. A network sink is the durable queue plus a shipper thread: ``write`` returns once
the documents are on disk, delivery happens behind it, ``close(drain_timeout)`` gives the
shipper a chance to empty the queue (what is left is resent on the next start).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from dataclasses import fields
from typing import Any

from auditpipe.sinks.file import FileSink
from auditpipe.sinks.http import HttpConfig, HttpShipper, QueueSink
from auditpipe.sinks.queue import DiskQueue
from auditpipe.sinks.stdout import StdoutSink

__all__ = ["open_sink", "HttpSink", "DEFAULT_QUEUE_DIR"]

DEFAULT_QUEUE_DIR = "/var/lib/auditpipe/queue"


class HttpSink:
    """Durable queue + HTTP shipper thread, with the FileSink interface on the pipeline side."""

    def __init__(self, cfg: HttpConfig, queue_dir: str, *, queue_max_bytes: int = 256 << 20,
                 full_policy: str = "block", queue_fsync: str = "batch", start: bool = True) -> None:
        self.queue = DiskQueue(queue_dir, max_bytes=queue_max_bytes, full_policy=full_policy, fsync=queue_fsync)
        self.writer = QueueSink(self.queue)
        self.shipper = HttpShipper(self.queue, cfg)
        self.drain_timeout = 5.0
        if start:
            self.shipper.start()

    def write(self, items: Iterable[Any]) -> int:
        return self.writer.write(items)

    def write_raw(self, lines: Iterable[str], date: float | None = None) -> int:
        return self.writer.write_raw(lines, date)

    def flush(self) -> None:
        pass  # accepted means on disk already

    def stats(self) -> dict[str, Any]:
        s, q = self.shipper, self.queue
        return {"queued": q.pending, "accepted": q.accepted, "dropped": q.dropped, "torn": q.torn,
                "sent_events": s.sent_events, "sent_batches": s.sent_batches, "retries": s.retries,
                "dead_letter_events": s.dead_events, "last_error": s.last_error}

    def close(self, drain_timeout: float | None = None) -> None:
        self.shipper.drain(self.drain_timeout if drain_timeout is None else drain_timeout)
        self.shipper.stop()
        self.queue.close()


def open_sink(cfg: Mapping[str, Any]) -> Any:
    """``{"type": "file"|"stdout"|"http", ...}`` → a sink.

    file: ``path``, ``max_bytes``, ``generations``, ``mode``, ``fsync``, ``fsync_interval``.
    http: the fields of ``HttpConfig`` (``url``, ``format``, ``auth``, ``secret``, …) plus
    ``queue_dir``, ``queue_max_bytes``, ``full_policy`` (block | drop_oldest), ``queue_fsync``.
    """
    cfg = dict(cfg)
    kind = cfg.pop("type", "file")
    if kind == "stdout":
        return StdoutSink()
    if kind == "file":
        path = cfg.pop("path")
        if path == "-":
            return StdoutSink()
        return FileSink(path, **cfg)
    if kind == "http":
        qkw = {k: cfg.pop(k) for k in ("queue_max_bytes", "full_policy", "queue_fsync") if k in cfg}
        queue_dir = cfg.pop("queue_dir", DEFAULT_QUEUE_DIR)
        drain = cfg.pop("drain_timeout", 5.0)
        known = {f.name for f in fields(HttpConfig)}
        unknown = set(cfg) - known
        if unknown:
            raise ValueError(f"unknown http sink options: {', '.join(sorted(unknown))}")
        sink = HttpSink(HttpConfig(**cfg), os.fspath(queue_dir), **qkw)
        sink.drain_timeout = drain
        return sink
    raise ValueError(f"unknown sink type {kind!r}")
