"""The lake output as ``run`` and ``serve`` open it: the durable queue, then a shipper thread
feeding :class:`~auditpipe.lake.writer.LakeWriter`."""

from __future__ import annotations

import os

from auditpipe.lake.config import LakeOutput
from auditpipe.lake.writer import LakeWriter
from auditpipe.sinks.queue import DiskQueue
from auditpipe.sinks.shipper import Batching, QueuedOutput

__all__ = ["open_lake_output", "queue_dir_of"]

#: large batches: one send is one pass over the partitions' buffers
LAKE_BATCHING = Batching(max_events=5000, max_bytes=16 << 20, max_wait=1.0)


def queue_dir_of(cfg: LakeOutput) -> str:
    """``queue_dir``, else ``<lake>/.queue`` for a local lake (engines skip dot-folders)."""
    if cfg.queue_dir:
        return cfg.queue_dir
    if "://" in cfg.path:
        raise ValueError("a lake on a remote filesystem needs a local queue_dir")
    return os.path.join(cfg.path, ".queue")


def open_lake_output(cfg: LakeOutput, *, start: bool = True) -> QueuedOutput:
    qdir = queue_dir_of(cfg)
    queue = DiskQueue(qdir, max_bytes=cfg.queue_max_bytes, full_policy="block")
    dead = qdir.rstrip("/") + "-dead-letter.jsonl"  # beside the queue: <lake>/.queue-dead-letter.jsonl
    return QueuedOutput(queue, LakeWriter(cfg), LAKE_BATCHING, dead, start=start)
