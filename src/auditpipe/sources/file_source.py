"""`[source] type = "file"`: follow an audit.log (``auditpipe.sources.tail``) instead of the kernel.

A reader thread polls the tailer (``Tailer.poll_offsets``) and puts one batch per poll in the
bounded queue: a :class:`~auditpipe.sources.base.FileChunk` per file read (a poll that meets a
rotation has two), then a :class:`~auditpipe.sources.base.PollEnd`. The queue blocks when full:
a file can wait, nothing is dropped, and nothing is read far ahead of what the outputs accepted.
The worker decides which positions may be committed
(:class:`~auditpipe.pipeline.checkpoint.FileCheckpoint`) and calls :meth:`commit`. Nothing in the
kernel is touched.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

from auditpipe.sources.backpressure import BoundedQueue, ReaderThread
from auditpipe.sources.base import FileChunk, PollEnd
from auditpipe.sources.tail import Tailer

__all__ = ["FileTailSource"]

log = logging.getLogger("auditpipe.file")

#: polls held between the reader and the worker (each up to the tailer's read budget)
QUEUED_POLLS = 4
#: queue items one poll usually makes (a chunk per file read, the end mark): the reader polls only
#: when that much room is left, so it waits in its own loop (and stops promptly), not in put()
POLL_ITEMS = 3


class FileTailSource(ReaderThread):
    kind = "file"
    item_type = FileChunk

    def __init__(self, path: str, checkpoint: str | None = None, *, interval: float = 0.25,
                 start: str = "end") -> None:
        self.path = path
        self.checkpoint = checkpoint
        self.interval = interval
        self.start_at = start  # "end" | "head": where to begin without a checkpoint
        self.queue = BoundedQueue(QUEUED_POLLS * 2, "block")
        self.messages = 0
        self.tailer: Tailer | None = None
        self.reader_error: BaseException | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self, ruleset: Any = None) -> None:
        if ruleset is not None:
            log.info("source = file: rule files are not installed (the kernel is left alone)")
        self.tailer = Tailer([self.path], start=self.start_at, state_file=self.checkpoint)
        self._thread = threading.Thread(target=self._read_loop, name="auditpipe-tail-reader", daemon=True)
        self._thread.start()
        log.info("following %s%s", self.path, f" (checkpoint {self.checkpoint})" if self.checkpoint else "")

    def _read_loop(self) -> None:
        t = self.tailer
        assert t is not None
        q = self.queue
        try:
            while not self._stop.is_set():
                if q.capacity - len(q) < POLL_ITEMS:  # the worker is behind, or held
                    self._stop.wait(self.interval)
                    continue
                got = t.poll_offsets()
                if got:
                    chunks = [FileChunk(*g) for g in got]
                    self.messages += sum(len(c.lines) for c in chunks)
                    batch: list[FileChunk | PollEnd] = [*chunks, PollEnd(t.snapshot())]
                    self.queue.put(batch)  # a few items a poll: the queue holds a few polls
                else:
                    self._stop.wait(self.interval)
        except BaseException as e:  # noqa: BLE001 - surfaced by the worker
            if not self._stop.is_set():
                self.reader_error = e
                log.error("file reader stopped: %s", e)
            self.queue.close()

    def commit(self, positions: dict[str, dict[str, Any]]) -> None:
        if self.tailer is not None and self.checkpoint:
            try:
                self.tailer.commit(positions)
            except OSError as e:
                log.warning("checkpoint %s: %s", self.checkpoint, e)

    def poll(self) -> None:
        pass

    def release(self) -> list[str]:
        return []

    def reconfigure(self, cfg: Any, ruleset: Any) -> None:
        pass

    def counters(self) -> dict[str, int]:
        return {"records_received": self.messages, "source_queue_depth": len(self.queue),
                "source_queue_peak": self.queue.peak, "source_queue_blocked": self.queue.blocked}

    def describe(self) -> dict[str, Any]:
        return {"mode": "file", "path": self.path, "checkpoint": self.checkpoint}

    def close(self) -> list[str]:
        self.stop_reader()
        if self.tailer is not None:
            self.tailer.close()
        return []
