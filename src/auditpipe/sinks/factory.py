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

import msgspec

from auditpipe.config import DEFAULT_QUEUE_DIR, FileOutput, OutputConfig, StdoutOutput
from auditpipe.sinks.file import FileSink
from auditpipe.sinks.http import HttpConfig, HttpShipper, QueueSink
from auditpipe.sinks.queue import DiskQueue
from auditpipe.sinks.stdout import StdoutSink

__all__ = ["open_output", "open_sink", "output_config", "HttpSink", "DEFAULT_QUEUE_DIR"]



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


def open_output(cfg: OutputConfig) -> Any:
    """The sink for one typed ``[[outputs]]`` table."""
    if isinstance(cfg, StdoutOutput) or (isinstance(cfg, FileOutput) and cfg.path == "-"):
        return StdoutSink()
    if isinstance(cfg, FileOutput):
        return FileSink(cfg.path, max_bytes=cfg.max_bytes, generations=cfg.generations, mode=cfg.file_mode(),
                        fsync=cfg.fsync, fsync_interval=cfg.fsync_interval)
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
