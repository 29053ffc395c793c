"""`[source] type = "file"`: follow an audit.log (``auditpipe.sources.tail``) instead of the kernel.

Same interface as :class:`auditpipe.sources.kernel.KernelSource` for the live loop: a reader thread
polls the tailer (``Tailer.poll_offsets``) and puts one batch per poll in the bounded queue. A
batch holds ``(line, offset)`` items — ``offset``: the byte position just after the line in its
file — and markers ``(None, marker)``:

* ``("at", name, entry)`` before the lines of each file read (a poll that meets a rotation has
  two): ``entry`` is the checkpoint entry of that file for the followed ``name``; the worker makes
  the checkpoint after a line of it by setting the line's offset in it;
* ``("end", positions)`` last: the positions after the whole poll (``Tailer.snapshot``).

The worker (``pipeline.live``) commits the position after a line once that line and every line
before it have left in events the outputs accepted, so a SIGKILL resends at most what the
outputs had accepted but not yet confirmed; at a clean stop, after the flush, the end positions
are committed. Nothing in the kernel is touched.
"""

from __future__ import annotations

import logging
import threading

from auditpipe.pipeline.backpressure import BoundedQueue, ReaderThread, Strategy

__all__ = ["FileTailSource"]

log = logging.getLogger("auditpipe.file")


class FileTailSource(ReaderThread):
    kind = "file"

    def __init__(self, path: str, checkpoint: str | None = None, queue_size: int = 65536,
                 interval: float = 0.25, start: str | None = None) -> None:
        self.path = path
        self.checkpoint = checkpoint
        self.interval = interval
        self.start_at = start  # "end" | "head" without a checkpoint; None: [source] start, else "end"
        self.queue = BoundedQueue(queue_size, "block")  # a file can wait; nothing is dropped
        self.mode = "file"
        self.strategy = Strategy("none", "block", None, None)
        self.other_daemon = None
        self.status: dict = {}
        self.kernel_lost = 0
        self.enobufs = 0
        self.messages = 0
        self.installed: list = []
        self.rules_refused = 0
        self.keep_rules_on_exit = False
        self.exclude_self = False
        self.tailer = None
        self.reader_error: BaseException | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self, ruleset=None) -> None:
        from auditpipe.sources.tail import Tailer

        if ruleset is not None:
            log.info("source = file: rule files are not installed (the kernel is left alone)")
        self.tailer = Tailer([self.path], start=self.start_at or "end", state_file=self.checkpoint)
        self._thread = threading.Thread(target=self._read_loop, name="auditpipe-tail-reader", daemon=True)
        self._thread.start()
        log.info("following %s%s", self.path, f" (checkpoint {self.checkpoint})" if self.checkpoint else "")

    def _read_loop(self) -> None:
        t = self.tailer
        try:
            while not self._stop.is_set():
                got = t.poll_offsets()
                if got:
                    batch: list = []
                    for name, entry, lines, offsets in got:
                        batch.append((None, ("at", name, entry)))
                        batch += zip(lines, offsets)
                        self.messages += len(lines)
                    batch.append((None, ("end", t.snapshot())))
                    self.queue.put(batch)
                else:
                    self._stop.wait(self.interval)
        except BaseException as e:  # noqa: BLE001 - surfaced by the worker
            if not self._stop.is_set():
                self.reader_error = e
                log.error("file reader stopped: %s", e)
            self.queue.close()

    def commit(self, positions: dict) -> None:
        if self.tailer is not None and self.checkpoint:
            try:
                self.tailer.commit(positions)
            except OSError as e:
                log.warning("checkpoint %s: %s", self.checkpoint, e)

    def poll_status(self) -> dict:
        return self.status

    def restore_rules_and_status(self) -> list[str]:
        return []

    def reload(self, ruleset, settings=None) -> None:
        pass

    def close(self) -> list[str]:
        self.stop_reader()
        if self.tailer is not None:
            self.tailer.close()
        return []
