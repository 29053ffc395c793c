"""Build a sink from configuration: the one entry point ``run`` and ``serve`` need.

Every sink has ``write(items) -> int`` (dicts or serialized JSON lines), ``flush()`` and
``close()``. A network sink is the durable queue plus a shipper thread: ``write`` returns once
the documents are on disk, delivery happens behind it, ``close(drain_timeout)`` gives the
shipper a chance to empty the queue (what is left is resent on the next start).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import fields
from typing import Any

from auditpipe.sinks.file import FileSink
from auditpipe.sinks.http import HttpConfig, HttpTransport, batching_of, retry_of
from auditpipe.sinks.queue import DiskQueue
from auditpipe.sinks.shipper import QueuedOutput
from auditpipe.sinks.stdout import StdoutSink

__all__ = ["open_sink", "HttpSink", "DEFAULT_QUEUE_DIR"]

DEFAULT_QUEUE_DIR = "/var/lib/auditpipe/queue"


class HttpSink(QueuedOutput):
    """Durable queue + HTTP shipper thread, with the FileSink interface on the pipeline side."""

    def __init__(self, cfg: HttpConfig, queue_dir: str, *, queue_max_bytes: int = 256 << 20,
                 full_policy: str = "block", queue_fsync: str = "batch", start: bool = True) -> None:
        queue = DiskQueue(queue_dir, max_bytes=queue_max_bytes, full_policy=full_policy, fsync=queue_fsync)
        super().__init__(queue, HttpTransport(cfg), batching_of(cfg), cfg.dead_letter, retry_of(cfg),
                         start=start)


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
