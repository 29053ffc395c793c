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

import msgspec

from auditpipe.config import DEFAULT_QUEUE_DIR, ElasticsearchOutput, FileOutput, LakeOutput, OutputConfig, StdoutOutput
from auditpipe.sinks.file import FileSink
from auditpipe.sinks.http import HttpConfig, HttpTransport, batching_of, retry_of, sender_identity
from auditpipe.sinks.queue import DiskQueue
from auditpipe.sinks.shipper import QueuedOutput
from auditpipe.sinks.stdout import StdoutSink

__all__ = ["open_output", "open_sink", "output_config", "HttpSink", "DEFAULT_QUEUE_DIR"]


class HttpSink(QueuedOutput):
    """Durable queue + HTTP shipper thread, with the FileSink interface on the pipeline side."""

    def __init__(self, cfg: HttpConfig, queue_dir: str, *, queue_max_bytes: int = 256 << 20,
                 full_policy: str = "block", queue_fsync: str = "batch", start: bool = True) -> None:
        queue = DiskQueue(queue_dir, max_bytes=queue_max_bytes, full_policy=full_policy, fsync=queue_fsync)
        super().__init__(queue, HttpTransport(cfg, sender=sender_identity(queue_dir)), batching_of(cfg),
                         cfg.dead_letter, retry_of(cfg), start=start)


def open_output(cfg: OutputConfig, shared: bool = False) -> Any:
    """The sink for one typed ``[[outputs]]`` table (``shared``: a file that several processes
    append to, see ``FileSink``)."""
    if isinstance(cfg, StdoutOutput) or (isinstance(cfg, FileOutput) and cfg.path == "-"):
        return StdoutSink()
    if isinstance(cfg, ElasticsearchOutput):
        from auditpipe.sinks.elasticsearch import open_elasticsearch

        return open_elasticsearch(cfg)
    if isinstance(cfg, LakeOutput):
        from auditpipe.lake.sink import open_lake_output

        return open_lake_output(cfg)
    if isinstance(cfg, FileOutput):
        return FileSink(cfg.path, max_bytes=cfg.max_bytes, generations=cfg.generations, mode=cfg.file_mode(),
                        fsync=cfg.fsync, fsync_interval=cfg.fsync_interval, shared=shared)
    hc = HttpConfig(**{f.name: getattr(cfg, f.name) for f in fields(HttpConfig)})
    sink = HttpSink(hc, os.fspath(cfg.queue_dir), queue_max_bytes=cfg.queue_max_bytes,
                    full_policy=cfg.full_policy, queue_fsync=cfg.queue_fsync)
    sink.drain_timeout = cfg.drain_timeout
    return sink


def output_config(spec: Mapping[str, Any]) -> OutputConfig:
    """A ``{"type": ..., ...}`` dict (tests, embedding) as the typed output it describes."""
    spec = dict(spec)
    spec.setdefault("type", "file")
    try:
        return msgspec.convert(spec, OutputConfig)
    except msgspec.ValidationError as e:
        raise ValueError(f"output {spec.get('type')}: {e}") from None


def open_sink(cfg: Mapping[str, Any]) -> Any:
    """``{"type": "file"|"stdout"|"http", ...}`` → a sink (the options of the typed output)."""
    return open_output(output_config(cfg))
