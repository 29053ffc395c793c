"""Exact accounting of lost kernel serial numbers, per node.

The kernel numbers its events with a 32-bit counter that wraps. Events interleave and arrive
out of order, so a serial ahead of the next expected one is held back (`window` of them) before
the gap in front of it is declared lost; a serial that turns up after its gap was counted is
taken off the count again. A jump backwards far beyond the window is a restart of the counter
(a reboot, or another log), not a loss.
"""

from __future__ import annotations

from typing import Any, Protocol

__all__ = ["SerialTracker", "SerialSink"]

_MOD = 1 << 32
_HALF = 1 << 31


class _Sequence:
    __slots__ = ("expected", "ahead", "recent_lost")

    def __init__(self, serial: int):
        self.expected = (serial + 1) % _MOD
        self.ahead: set[int] = set()
        self.recent_lost: set[int] = set()


class SerialSink(Protocol):
    """What the reassembler tells about serials: a SerialTracker, or a stand-in that notes them
    (a parallel parse's worker, whose parent counts the whole input)."""

    lost: int

    def see(self, node: Any, serial: int) -> None: ...

    def flush(self) -> None: ...


class SerialTracker:
    def __init__(self, window: int = 4096, remember_lost: int = 65536):
        self.window = window
        self.remember_lost = remember_lost
        self.lost = 0
        self.restarts = 0
        self._nodes: dict = {}

    def see(self, node, serial: int) -> None:
        seq = self._nodes.get(node)
        if seq is None:
            self._nodes[node] = _Sequence(serial)
            return
        d = (serial - seq.expected) % _MOD
        if d == 0:
            exp = (serial + 1) % _MOD
            ahead = seq.ahead
            while ahead and exp in ahead:
                ahead.discard(exp)
                exp = (exp + 1) % _MOD
            seq.expected = exp
        elif d < _HALF:
            seq.ahead.add(serial)
            if len(seq.ahead) > self.window:
                self._skip_to_oldest(seq)
        elif serial in seq.recent_lost:
            seq.recent_lost.discard(serial)
            self.lost -= 1
        elif _MOD - d > self.window * 4:
            # far behind everything seen: the counter started again
            self.restarts += 1
            self._close(seq)
            self._nodes[node] = _Sequence(serial)
        # else: a serial seen before (or a duplicate) just behind the frontier: nothing to count

    def _skip_to_oldest(self, seq: _Sequence) -> None:
        exp = seq.expected
        oldest = min(seq.ahead, key=lambda s: (s - exp) % _MOD)
        gap = (oldest - exp) % _MOD
        self.lost += gap
        if gap <= self.remember_lost:
            rl = seq.recent_lost
            for k in range(gap):
                rl.add((exp + k) % _MOD)
            if len(rl) > self.remember_lost:
                rl.clear()  # forget the oldest: very late serials are no longer un-lost
        seq.expected = oldest
        self.see_expected(seq)

    @staticmethod
    def see_expected(seq: _Sequence) -> None:
        exp = seq.expected
        ahead = seq.ahead
        while exp in ahead:
            ahead.discard(exp)
            exp = (exp + 1) % _MOD
        seq.expected = exp

    def _close(self, seq: _Sequence) -> None:
        while seq.ahead:
            self._skip_to_oldest(seq)

    def flush(self) -> None:
        """End of input: every gap still open in front of held-back serials is lost."""
        for seq in self._nodes.values():
            self._close(seq)
