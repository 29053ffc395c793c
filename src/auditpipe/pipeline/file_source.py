"""`[source] type = "file"`: follow an audit.log (``auditpipe.sources.tail``) instead of the kernel.

Same interface as :class:`auditpipe.sources.kernel.KernelSource` for the live loop: a reader thread
polls the tailer and puts batches of lines in the bounded queue, each batch ending with a
``(None, positions)`` marker. The worker commits those positions (the checkpoint) once every line
before them has left in an event (nothing in flight), so a restart resumes without losing or
repeating an event; at a clean stop, after the flush, the last positions are committed.
Nothing in the kernel is touched.
"""

from __future__ import annotations

import logging
import threading

from auditpipe.pipeline.backpressure import BoundedQueue, Strategy

__all__ = ["FileTailSource"]

log = logging.getLogger("auditpipe.file")


class FileTailSource:
    kind = "file"

    def __init__(self, path: str, checkpoint: str | None = None, queue_size: int = 65536,
                 interval: float = 0.25, start: str = "end") -> None:
        self.path = path
        self.checkpoint = checkpoint
        self.interval = interval
        self.start_at = start
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
        self.tailer = Tailer([self.path], start=self.start_at, state_file=self.checkpoint)
        self._thread = threading.Thread(target=self._read_loop, name="auditpipe-tail-reader", daemon=True)
        self._thread.start()
        log.info("following %s%s", self.path, f" (checkpoint {self.checkpoint})" if self.checkpoint else "")

    def _read_loop(self) -> None:
        t = self.tailer
        try:
            while not self._stop.is_set():
                got = t.poll()
                if got:
                    batch: list = []
                    for _path, lines in got:
                        batch.extend(lines)
                    self.messages += len(batch)
                    batch.append((None, t.snapshot()))
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

    def reader_alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def stop_reader(self, timeout: float = 2.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def close(self) -> list[str]:
        self.stop_reader()
        if self.tailer is not None:
            self.tailer.close()
        return []
