"""The one acknowledgement/checkpoint object of a followed file: what is durable when.

Contract: a position is committed (written atomically by the source's ``commit``) only when

1. every record before it belongs to an event that has left the reassembler, and
2. every document of those events was *accepted* by every output (``write`` returned: a file
   output has the lines in its file; an HTTP output has them in its durable queue on disk), and
   nothing is pending in any output (:class:`~auditpipe.pipeline.outputs.Outputs.held`).

So a SIGKILL at any moment resends at most what was accepted but not yet committed (one write
slice), and never skips a record. How (1) is known without per-line bookkeeping in the
reassembler: after a line, if the reassembler is *settled* (no record that arrives later can join
an event with a record from before it), the line's end is a *resume point* tagged with
``created`` — the number of events opened so far. Events leave in the order they were opened, so
once ``events >= created`` every event that holds a record before the point has left.
When a poll ends with nothing in flight, its end positions are the point (it also covers blank
lines and a rotated file's tail).

With raw outputs only (records forwarded as read), nothing needs reassembling: every line's end
is a resume point as soon as the line is accepted.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from typing import Any

from auditpipe.reassembly import Reassembler

__all__ = ["FileCheckpoint"]

Positions = dict[str, dict[str, Any]]


class FileCheckpoint:
    def __init__(self, reassembler: Reassembler, commit: Callable[[Positions], None],
                 raw_only: bool = False) -> None:
        self.reassembler = reassembler
        self._commit = commit
        self.raw_only = raw_only
        # resume points, oldest first: (created, name, checkpoint entry, offset)
        self._safe: deque[tuple[int, str, dict[str, Any], int]] = deque()
        self._poll_end: Positions | None = None
        self._name = ""
        self._entry: dict[str, Any] = {}
        self.commits = 0

    def reading(self, name: str, entry: dict[str, Any]) -> None:
        """The lines that follow are of ``name``'s file described by ``entry``."""
        self._name, self._entry = name, entry
        self._poll_end = None

    def line_done(self, offset: int) -> None:
        """A line ending at ``offset`` went into the reassembler: note a resume point if it is one."""
        ra = self.reassembler
        if not (self.raw_only or ra.settled()):
            return
        c = 0 if self.raw_only else ra.created
        safe = self._safe
        if safe and safe[-1][0] == c and safe[-1][1] == self._name:
            safe[-1] = (c, self._name, self._entry, offset)  # same events, further on
        else:
            safe.append((c, self._name, self._entry, offset))

    def poll_end(self, positions: Positions) -> None:
        self._poll_end = positions

    @property
    def has_points(self) -> bool:
        return bool(self._safe) or self._poll_end is not None

    def accepted(self) -> None:
        """Every document emitted so far was accepted by every output: commit the newest point
        that is behind all of them."""
        safe = self._safe
        emitted = self.reassembler.events
        newest: dict[str, tuple[dict[str, Any], int]] = {}
        while safe and safe[0][0] <= emitted:
            _, name, entry, off = safe.popleft()
            newest[name] = (entry, off)
        positions: Positions
        if self._poll_end is not None and self.reassembler.in_flight == 0:
            positions, self._poll_end = self._poll_end, None
            safe.clear()
        else:
            positions = {name: {**entry, "offset": off} for name, (entry, off) in newest.items()}
        if positions:
            self._commit(positions)
            self.commits += 1
