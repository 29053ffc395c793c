"""Parse a file with several processes and write exactly what one process writes.

The input is cut into segments of whole lines (after a PROCTITLE where one is near, since that
ends its event). Each worker runs a fresh pipeline over its segment and returns the encoded
lines plus what a fresh start could have got wrong: whether its reassembler was *settled* at
the end (no event still open), the keys it ended, the keys and times of the events it made, and
the serials it saw. In order, the parent accepts a segment only if it provably starts where
the one before left off — the previous one settled, none of its events' keys among those
recently ended, none of its events older than the newest before it minus the timeout (the
only state a reassembler carries across a settled point). Otherwise the two are run again as
one segment; a run of doubtful segments longer than ``MAX_GROUP`` (a log whose events never
settle, e.g. one without PROCTITLE records) goes on in the parent alone. Lost serials are
counted by replaying every segment's serials into one tracker, so the totals match too.
"""

from __future__ import annotations

import io
import multiprocessing
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from auditpipe.normalize.jsonl import dumps_line
from auditpipe.pipeline.core import Normalizer, Pipeline
from auditpipe.reassembly import Event, Reassembler
from auditpipe.reassembly.serials import SerialTracker

__all__ = ["Segment", "SegmentOut", "run_segments", "ParallelParse", "cut_segments"]

#: (where, first line number, lines): one piece of one input file
Segment = tuple[str, int, list[str]]
#: a segment as sent to a worker: its lines joined by newlines (one string pickles in one copy)
Packed = tuple[str, int, str]
Key = tuple[Any, str, int]
#: a doubtful run of segments re-run together at most this long before the parent goes on alone
MAX_GROUP = 8
#: lines looked back from a segment's end for a PROCTITLE to cut after
CUT_LOOKBACK = 400


@dataclass
class SegmentOut:
    """One worker's result for consecutive segments run from a fresh pipeline."""

    data: bytes = b""
    rejects: list[tuple[str, str, str]] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)
    serials: list[tuple[Any, int]] = field(default_factory=list)
    settled: bool = True
    ended: list[tuple[Key, bool]] = field(default_factory=list)
    keys: set[Key] = field(default_factory=set)
    oldest: float = float("inf")
    newest: float = float("-inf")


class _SerialLog:
    """Stands in for the reassembler's SerialTracker in a worker: notes what it is shown."""

    def __init__(self) -> None:
        self.seen: list[tuple[Any, int]] = []
        self.lost = 0

    def see(self, node: Any, serial: int) -> None:
        self.seen.append((node, serial))

    def flush(self) -> None:
        pass


def pack(segment: Segment) -> Packed:
    return segment[0], segment[1], "\n".join(segment[2])


class SegmentRun:
    """A fresh pipeline over consecutive segments, noting what the parent checks."""

    def __init__(self, make_normalize: Callable[[], Normalizer], timeout: float, max_in_flight: int) -> None:
        self.out = out = SegmentOut()
        normalize = make_normalize()
        keys = out.keys

        def noting(ev: Event) -> list:
            keys.add((ev.node, ev.time, ev.serial))
            ts = ev.ts
            if ts < out.oldest:
                out.oldest = ts
            if ts > out.newest:
                out.newest = ts
            return normalize(ev)

        self.serials = _SerialLog()
        self.reassembler = Reassembler(timeout=timeout, max_in_flight=max_in_flight, serials=self.serials)
        self.pipeline = Pipeline(noting, self.reassembler,
                                 on_reject=lambda w, line, why: out.rejects.append((w, line, why)))
        self.buf = io.BytesIO()

    def feed(self, segment: Packed) -> None:
        where, lineno, text = segment
        self.buf.writelines(map(dumps_line, self.pipeline.feed_lines(text.split("\n"), where, lineno)))

    def settled(self) -> bool:
        return self.reassembler.settled()

    def finish(self) -> SegmentOut:
        out = self.out
        out.settled = self.reassembler.settled()
        out.ended = self.reassembler.recently_ended()
        self.buf.writelines(map(dumps_line, self.pipeline.flush()))
        out.data = self.buf.getvalue()
        out.counts = self.pipeline.stats()
        out.serials = self.serials.seen
        return out


def run_segments(make_normalize: Callable[[], Normalizer], timeout: float, max_in_flight: int,
                 segments: list[Packed]) -> SegmentOut:
    """The worker's task."""
    run = SegmentRun(make_normalize, timeout, max_in_flight)
    for seg in segments:
        run.feed(seg)
    return run.finish()


def _ends_event(line: str) -> bool:
    head = line[:120]
    return "type=PROCTITLE " in head and "type=EOE " not in head


def cut_segments(chunks: Iterable[Segment]) -> Iterator[Segment]:
    """Re-cut chunks of lines so each segment ends just after a PROCTITLE where one is near
    (never across files: a chunk from another ``where`` first sends out what is left over)."""
    carry: Segment | None = None
    for where, lineno, lines in chunks:
        if carry is not None:
            if carry[0] == where:
                lines, lineno = carry[2] + lines, carry[1]
            else:
                yield carry
            carry = None
        cut = len(lines)
        for i in range(len(lines) - 1, max(len(lines) - CUT_LOOKBACK, 0) - 1, -1):
            if _ends_event(lines[i]):
                cut = i + 1
                break
        if cut < len(lines):
            carry = (where, lineno + cut, lines[cut:])
        if cut:
            yield where, lineno, lines[:cut]
    if carry is not None:
        yield carry


class _Accepted:
    """What the serial run would know at the end of the segments accepted so far."""

    def __init__(self, timeout: float, recent_ids: int) -> None:
        self.timeout = timeout
        self.recent_ids = recent_ids
        self.ended: deque[set[Key]] = deque()  # per accepted segment, enough to cover recent_ids keys
        self.newest = float("-inf")
        self.settled = True
        self.tracker = SerialTracker()
        self.counts: dict[str, int] = {}

    def follows(self, prev: SegmentOut | None, out: SegmentOut) -> bool:
        """Whether ``out`` (run from a fresh start) is what the serial run gives after ``prev``."""
        if prev is None:
            return True
        if not prev.settled:
            return False
        if out.oldest < max(self.newest, prev.newest) - self.timeout:
            return False
        ended = [{k for k, _ in prev.ended}, *self.ended]
        return all(out.keys.isdisjoint(s) for s in ended)

    def accept(self, out: SegmentOut) -> None:
        self.ended.appendleft({k for k, _ in out.ended})
        while len(self.ended) > 1 and sum(map(len, self.ended)) - len(self.ended[-1]) >= self.recent_ids:
            self.ended.pop()
        self.newest = max(self.newest, out.newest)
        self.replay(out.serials)
        for k, v in out.counts.items():
            self.counts[k] = self.counts.get(k, 0) + v

    def replay(self, serials: list[tuple[Any, int]]) -> None:
        see = self.tracker.see
        for node, serial in serials:
            see(node, serial)

    def stats(self) -> dict[str, int]:
        self.tracker.flush()
        return {**self.counts, "lost_serials": self.tracker.lost}


class ParallelParse:
    """Feed segments in order; ``write`` gets the output bytes and ``on_reject`` the rejects,
    in input order. ``jobs`` worker processes (forked: they inherit the imported code)."""

    def __init__(self, make_normalize: Callable[[], Normalizer], jobs: int, write: Callable[[bytes], Any],
                 on_reject: Callable[[str, str, str], None], timeout: float = 2.0, max_in_flight: int = 4096,
                 recent_ids: int = 8192, max_group: int = MAX_GROUP) -> None:
        self.make_normalize = make_normalize
        self.write = write
        self.on_reject = on_reject
        self.params = (timeout, max_in_flight)
        self.accepted = _Accepted(timeout, recent_ids)
        self.pool = multiprocessing.get_context("fork").Pool(jobs)
        self.ahead = 4 * jobs  # segments in flight: the workers stay busy while the parent re-runs a pair
        self.pending: deque[tuple[Any, list[Packed]]] = deque()
        self.held: tuple[SegmentOut, list[Packed]] | None = None
        self.alone: SegmentRun | None = None  # the parent's own pipeline once segments never settle
        self.regroups = 0
        self.max_group = max_group

    def feed(self, segment: Segment) -> None:
        packed = pack(segment)
        if self.alone is not None:
            return self._feed_alone([packed])
        self.pending.append((self.pool.apply_async(run_segments, (self.make_normalize, *self.params, [packed])),
                             [packed]))
        while len(self.pending) >= self.ahead:
            self._take()

    def _take(self) -> None:
        result, segs = self.pending.popleft()
        out: SegmentOut = result.get()
        held = self.held
        if held is None or self.accepted.follows(held[0], out):
            if held is not None:
                self._emit(held[0])
            self.held = (out, segs)
            return
        # run here from where ``held`` began, taking in the next segments until settled (their
        # own results are dropped); the workers go on with the segments after them meanwhile
        self.regroups += 1
        group = held[1] + segs
        run = SegmentRun(self.make_normalize, *self.params)
        for seg in group:
            run.feed(seg)
        while not run.settled() and self.pending and len(group) <= self.max_group:
            more = self.pending.popleft()[1]
            for seg in more:
                run.feed(seg)
            group += more
        if run.settled() or len(group) <= self.max_group:
            self.held = (run.finish(), group)
        else:
            self._go_alone(run)

    def _emit(self, out: SegmentOut) -> None:
        for where, line, why in out.rejects:
            self.on_reject(where, line, why)
        if out.data:
            self.write(out.data)
        self.accepted.accept(out)

    def _go_alone(self, run: SegmentRun) -> None:
        """Events that never settle: from here on ``run`` (which began at a point that follows)
        takes every segment in the parent, and the workers stop."""
        later = [segs for _, segs in self.pending]
        self.pending.clear()
        self.held = None
        self.pool.terminate()
        out = run.out
        for where, line, why in out.rejects:
            self.on_reject(where, line, why)
        self.write(run.buf.getvalue())
        run.buf = io.BytesIO()
        self.accepted.replay(run.serials.seen)
        run.reassembler.serials = self.accepted.tracker
        run.pipeline.on_reject = self.on_reject
        self.alone = run
        for segs in later:
            self._feed_alone(segs)

    def _feed_alone(self, segments: list[Packed]) -> None:
        assert self.alone is not None
        for seg in segments:
            self.alone.feed(seg)
        self.write(self.alone.buf.getvalue())
        self.alone.buf = io.BytesIO()

    def _write_docs(self, docs: list) -> None:
        if docs:
            buf = io.BytesIO()
            buf.writelines(map(dumps_line, docs))
            self.write(buf.getvalue())

    def finish(self) -> dict[str, int]:
        """Everything out; the totals of the whole input (as :meth:`Pipeline.stats`)."""
        try:
            while self.pending and self.alone is None:
                self._take()
            if self.alone is not None:
                self._feed_alone([])
                self._write_docs(self.alone.pipeline.flush())
                stats = self.alone.pipeline.stats()
                for k, v in self.accepted.counts.items():
                    if k != "lost_serials":
                        stats[k] += v
                stats["lost_serials"] = self.accepted.tracker.lost
                return stats
            if self.held is not None:
                self._emit(self.held[0])
                self.held = None
            return self.accepted.stats()
        finally:
            self.close()

    def close(self) -> None:
        self.pool.terminate()
        self.pool.join()
