"""What a source is: the written-down protocol between a source and the runtime.

A source owns a reader thread that puts *batches* of typed items in a bounded queue
(:class:`~auditpipe.sources.backpressure.BoundedQueue`); the worker takes them. Which items a
source yields is declared by its ``item_type``:

* :data:`KernelRecord` — ``(type, payload)`` of one netlink message, as received (a plain tuple:
  the kernel path handles hundreds of thousands a second and allocates nothing more per record);
* :class:`FileChunk` — lines of one file with the byte offset after each (its *resume point*),
  and the checkpoint entry of that file; then :class:`PollEnd` — the positions after a whole poll;
* :class:`HttpBatch` — the lines of one request with the identity of its sender (``serve``).

Kernel *control* (status fields, rules, the journal of what to put back) is not part of
receiving: it lives in :class:`~auditpipe.sources.kernel_control.KernelControl` and the kernel
source drives it at start, reload and stop.
"""

from __future__ import annotations

from typing import Any, NamedTuple, Protocol

from auditpipe.sources.backpressure import BoundedQueue

__all__ = ["FileChunk", "HttpBatch", "KernelRecord", "PollEnd", "Source"]

#: one netlink message: (record type, payload bytes)
KernelRecord = tuple[int, bytes]


class FileChunk(NamedTuple):
    """Lines read from one file of a followed ``name``. ``offsets[i]`` is the byte position just
    after ``lines[i]``; ``{**entry, "offset": offsets[i]}`` is the checkpoint that resumes right
    after that line (also when the file was rotated away since)."""

    name: str
    entry: dict[str, Any]
    lines: list[str]
    offsets: list[int]


class PollEnd(NamedTuple):
    """After every chunk of one poll: the positions at its end (``Tailer.snapshot()``)."""

    positions: dict[str, dict[str, Any]]


class HttpBatch(NamedTuple):
    """The lines of one HTTP request and who sent them (the reassembly key of ``serve``)."""

    sender: str
    lines: list[str]


class Source(Protocol):
    """A live source as the runtime drives it (``auditpipe run``)."""

    #: "kernel" | "file": for the status file and logs
    kind: str
    #: the class of the items its batches hold (KernelRecord's ``tuple``, or FileChunk)
    item_type: type
    queue: BoundedQueue
    #: what stopped the reader thread, if it died
    reader_error: BaseException | None

    def start(self, ruleset: Any) -> None:
        """Make the changes it needs (kernel: status, rules) and start the reader thread."""

    def reader_alive(self) -> bool: ...

    def poll(self) -> None:
        """Periodic, on the worker thread (kernel: fetch the status for ``lost``/``backlog``)."""

    def commit(self, positions: dict[str, dict[str, Any]]) -> None:
        """Persist resume points whose lines were all accepted by the outputs (file source)."""

    def release(self) -> list[str]:
        """At stop, while the reader still runs: undo what ``start`` changed that produces
        records of its own (kernel: our rules deleted, status put back). Returns problems."""

    def stop_reader(self) -> None: ...

    def reconfigure(self, cfg: Any, ruleset: Any) -> None:
        """SIGHUP: apply the new configuration's source settings (kernel: status and rules)."""

    def close(self) -> list[str]:
        """Stop the reader and undo everything; safe twice. Returns problems."""

    def counters(self) -> dict[str, int | float]:
        """records_received, kernel_lost, enobufs, userspace_drops, queue_depth, ..."""

    def describe(self) -> dict[str, Any]:
        """mode, other_daemon, backpressure_strategy, kernel_status: for the status file."""
