"""Parse with several processes and write exactly what one process writes.

The input is cut into *pieces* of whole lines, each ending after a PROCTITLE where one is near
(that record ends its event). A piece of a regular file is only a byte range: the parent finds
each cut with one small read near it, and the worker reads the range itself. Input the parent
must read anyway (stdin, .gz) goes to the workers as text. Each worker is a long-lived forked
process with its own normalizer; for each piece it runs a fresh reassembler, writes the JSON
lines into a file of its own in a temporary directory (on tmpfs where there is one), and
returns only what a fresh start could have got wrong: whether its reassembler was *settled* at
the end (no event still open), the keys it ended, the keys and times of the events it made
(those its flush writes too), the *trail* of its events (key and number of records of each, in
order), the serials it saw, its rejects and line count. The parent copies the files to the
output in input order (``sendfile``), so it never touches a document.

In order, the parent accepts a piece only if it provably starts where the one before left off:
the previous one settled, none of its events' keys among those recently ended, none of its
events older than the newest before it minus the timeout (the only state a reassembler carries
across a settled point). Otherwise a worker runs the two again as one, from the serial run's
state there (those ended keys and that newest time), taking in the next pieces until its
reassembler settles at a cut; a run of doubtful pieces longer than
``MAX_GROUP`` (a log whose events never settle, e.g. one without PROCTITLE records) stays open
in that worker, which then takes every later piece alone. Lost serials are counted by replaying
every piece's serials into one tracker, so the totals match too.

A piece's own run that ends unsettled is kept open in its worker. Once the pieces before it are
accepted, that run goes on from the serial run's state there — so it *is* the serial run from
then on — over the next pieces in a *shadow pass*: records of their headers only (all a
reassembler reads), until it settles at a cut. Its own open events leave as in the serial run
and are written; the events of the shadow records leave as the serial run makes them, and only
their trail is kept. If that trail is the next pieces' own runs' trails end to end (each run
settled, no record late, none joining the kept run's events), every record of those pieces is in
the same event in the serial run as in its own run (per key, an event takes the key's records in
input order until it ends; the same counts in the same order are the same events), so their own
outputs are the serial run's, and they are accepted without being run again. Else all of them
are run again from the kept run's start.
"""

from __future__ import annotations

import contextlib
import gc
import itertools
import multiprocessing
import os
import resource
import shutil
import sys
import tempfile
from collections import OrderedDict, deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from multiprocessing.connection import Connection, wait
from typing import IO, Any, NamedTuple

from auditpipe.normalize.jsonl import dumps_line
from auditpipe.parsing import ParseError, Parser, parse_header
from auditpipe.pipeline.core import Normalizer, Pipeline
from auditpipe.reassembly import Event, Reassembler, ends_event, looks_cut_short
from auditpipe.reassembly.serials import SerialTracker

__all__ = ["Piece", "ParallelParse", "file_pieces", "text_pieces", "is_plain_file", "piece_size", "SEGMENT"]

Key = tuple[Any, str, int]
#: the serial run's state at a settled point: its recently ended keys, its newest event time
Seed = tuple[list[tuple[Key, bool]], float]
#: the events a run emitted, in order: (key, number of records, negative if late)
Trail = list[tuple[Key, int]]
#: a doubtful run of pieces re-run together at most this long before one worker goes on alone
MAX_GROUP = 8
#: bytes of a piece of a regular file at most, and at least (unless the file is smaller)
SEGMENT = 1 << 20
MIN_SEGMENT = 64 << 10
#: bytes looked back from a piece's end for a PROCTITLE to cut after
CUT_WINDOW = 64 << 10
#: lines looked back from a text chunk's end for a PROCTITLE to cut after
CUT_LOOKBACK = 400
#: tasks queued on one worker: it finds its next piece waiting when it finishes one
QUEUED = 2


class Piece(NamedTuple):
    """Consecutive whole lines of one input file: bytes ``start``–``end`` of ``path`` (read by
    the worker) or ``text`` (read by the parent; ``lineno`` its first line's number). The parent
    moves a text into the file ``spill`` before a worker gets the piece (``text`` then ""): a task
    on the pipe stays small, so the parent never blocks sending a piece to a worker that is
    itself blocked sending it a large reply."""

    where: str
    path: str | None
    start: int
    end: int
    text: str | None = None
    lineno: int = 0
    spill: str | None = None


@dataclass
class Reply:
    """What a worker made of consecutive pieces: the output is in the file ``out`` (``size``
    bytes); the rest is what the parent checks, counts and reports."""

    task: int
    out: str = ""
    size: int = 0
    pieces: int = 0  # how many of the task's pieces it took
    lines: list[int] = field(default_factory=list)  # per piece
    long_lines: list[int] = field(default_factory=list)  # pieces (of the task's) with overlong lines skipped
    rejects: list[tuple[int, int, str, str]] = field(default_factory=list)  # piece, line in it, line, why
    serials: list[tuple[Any, int]] = field(default_factory=list)
    final: bool = True  # the run finished (else it stays open in the worker)
    kept: bool = False  # ended unsettled and not flushed: the worker keeps the run to go on with it
    counts: dict[str, int] = field(default_factory=dict)
    settled: bool = True
    ended: dict[Key, bool] = field(default_factory=dict)  # key → whether a later record is late, oldest first
    keys: set[Key] = field(default_factory=set)  # of its events; sent without those in ``ended``
    oldest: float = float("inf")
    newest: float = float("-inf")
    trail: Trail | None = None  # a finished run's events (see :func:`_entry`); a shadow pass's, None if it failed
    cpu: float = 0.0  # the worker's CPU seconds so far
    error: str = ""
    first: int = 0  # the parent's: index of the task's first piece
    parts: list[Reply] = field(default_factory=list)  # the parent's: a verified run's replies (see _take_check)
    worker: int = 0  # the parent's: which worker ran it


# ------------------------------------------------------------------------------------ cutting


def is_plain_file(path: str) -> bool:
    """A regular file that is not gzip: its pieces can be byte ranges read by the workers."""
    if path == "-" or not os.path.isfile(path):
        return False
    with open(path, "rb") as f:
        return f.read(2) != b"\x1f\x8b"


def _cut_in(window: bytes) -> int:
    """Where to cut in ``window`` (bytes just before a wanted cut): after the last whole line
    that is a PROCTITLE, else after the last newline; -1 if there is no newline."""
    end = len(window)
    while True:
        i = window.rfind(b"type=PROCTITLE ", 0, end)
        if i < 0:
            return window.rfind(b"\n") + 1 or -1
        start = window.rfind(b"\n", 0, i) + 1
        nl = window.find(b"\n", i)
        if i - start <= 105 and start > 0 and nl >= 0 and b"type=EOE " not in window[start:start + 120]:
            return nl + 1
        end = start


def piece_size(remaining: int, jobs: int) -> int:
    """Guided: a quarter of each worker's share of what is left, between :data:`MIN_SEGMENT` and
    :data:`SEGMENT` — large pieces while much is left (a piece's fixed costs stay small), ever
    smaller ones towards the end (the workers finish together) and on a small input."""
    return min(SEGMENT, max(MIN_SEGMENT, remaining // (4 * jobs)))


def file_pieces(path: str, where: str, jobs: int = 2, size: int | None = None) -> Iterator[Piece]:
    """Byte ranges of a regular file (of ``size``, or as :func:`piece_size` says), each ending
    after a PROCTITLE line where one is in the last :data:`CUT_WINDOW` bytes (after a newline
    where none is)."""
    total = os.path.getsize(path)
    fd = os.open(path, os.O_RDONLY)
    try:
        start = 0
        step = size or piece_size(total, jobs)
        target = step
        while start < total:
            if target >= total:
                yield Piece(where, path, start, total)
                return
            lo = max(start, target - CUT_WINDOW)
            cut = _cut_in(os.pread(fd, target - lo, lo))
            if cut < 0:  # no newline here (a line longer than the window): look further on
                target += step
                continue
            yield Piece(where, path, start, lo + cut)
            start = lo + cut
            step = size or piece_size(total - start, jobs)
            target = start + step
    finally:
        os.close(fd)


def _ends_event(line: str) -> bool:
    head = line[:120]
    return "type=PROCTITLE " in head and "type=EOE " not in head


def text_pieces(chunks: Iterable[tuple[str, int, list[str]]]) -> Iterator[Piece]:
    """Chunks of decoded lines (where, first line number, lines) → text pieces, each ending just
    after a PROCTITLE where one is near (never across files)."""
    carry: tuple[str, int, list[str]] | None = None
    for where, lineno, lines in chunks:
        if carry is not None:
            if carry[0] == where:
                lines, lineno = carry[2] + lines, carry[1]
            else:
                yield _text_piece(*carry)
            carry = None
        cut = len(lines)
        for i in range(len(lines) - 1, max(len(lines) - CUT_LOOKBACK, 0) - 1, -1):
            if _ends_event(lines[i]):
                cut = i + 1
                break
        if cut < len(lines):
            carry = (where, lineno + cut, lines[cut:])
        if cut:
            yield _text_piece(where, lineno, lines[:cut])
    if carry is not None:
        yield _text_piece(*carry)


def _text_piece(where: str, lineno: int, lines: list[str]) -> Piece:
    return Piece(where, None, 0, len(lines), "\n".join(lines), lineno)


# ------------------------------------------------------------------------------------ worker


class _SerialLog:
    """Stands in for the reassembler's SerialTracker in a worker: notes what it is shown."""

    def __init__(self) -> None:
        self.seen: list[tuple[Any, int]] = []
        self.lost = 0

    def see(self, node: Any, serial: int) -> None:
        self.seen.append((node, serial))

    def flush(self) -> None:
        pass


def _resume(reassembler: Reassembler, ended: list[tuple[Key, bool]], newest: float) -> None:
    """A fresh reassembler as the serial one is at a settled point: all it carries across one
    is the keys it ended recently and the newest event time (its queue holds only finished
    events, which the run before has written)."""
    reassembler._ended.update(ended)
    reassembler._newest = max(newest, 0.0)


class _Run:
    """A fresh reassembler over consecutive pieces (in a worker), noting what the parent checks."""

    def __init__(self, normalize: Normalizer, timeout: float, max_in_flight: int, max_line: int, recent_ids: int,
                 seed: Seed | None = None, parser: Parser | None = None) -> None:
        self.reply = Reply(0)
        self.max_line = max_line
        self.piece = 0  # index of the piece being fed, within the current step
        self.keys: set[Key] = set()
        self.oldest = float("inf")
        self.newest = float("-inf")
        self.trail: Trail = []
        keys, trail = self.keys, self.trail

        def noting(ev: Event) -> list:
            key = (ev.node, ev.time, ev.serial)
            keys.add(key)
            trail.append(_entry(key, ev))
            ts = ev.ts
            if ts < self.oldest:
                self.oldest = ts
            if ts > self.newest:
                self.newest = ts
            return normalize(ev)

        self.serials = _SerialLog()
        self.reassembler = Reassembler(timeout=timeout, max_in_flight=max_in_flight, recent_ids=recent_ids,
                                       serials=self.serials)
        if seed is not None:
            _resume(self.reassembler, *seed)
        self.pipeline = Pipeline(noting, self.reassembler, on_reject=self._reject)
        if parser is not None:  # the worker's, its memos warm (they only cache, as in one serial run)
            self.pipeline.parser = parser

    def _reject(self, where: str, line: str, why: str) -> None:
        self.reply.rejects.append((self.piece, int(where.rpartition(":")[2]), line, why))

    def feed(self, piece: Piece, out: IO[bytes], files: dict[str, int]) -> None:
        lines = self._lines(piece, files)
        self.reply.lines.append(len(lines))
        docs = self.pipeline.feed_lines(lines, "", 1)
        if docs:
            out.writelines(map(dumps_line, docs))
        self.reply.pieces += 1
        self.piece += 1

    def _lines(self, piece: Piece, files: dict[str, int]) -> list[str]:
        if piece.spill is not None:
            try:
                with open(piece.spill, "rb") as f:
                    return f.read().decode("utf-8", "surrogateescape").split("\n")
            except FileNotFoundError:  # written out already: only a dropped task can ask (its reply is unused)
                return []
        if piece.text is not None:
            return piece.text.split("\n")
        assert piece.path is not None
        fd = files.get(piece.path)
        if fd is None:
            fd = files[piece.path] = os.open(piece.path, os.O_RDONLY)
        data = os.pread(fd, piece.end - piece.start, piece.start)
        if len(data) != piece.end - piece.start:
            raise OSError(f"{piece.where}: {len(data)} bytes at {piece.start}, {piece.end - piece.start} expected "
                          "(the file changed while it was parsed)")
        lines = data.decode("utf-8", "surrogateescape").split("\n")
        if data.endswith(b"\n"):
            lines.pop()
        if lines and max(map(len, lines)) > self.max_line // 4:
            self._drop_long(lines)
        return lines

    def _drop_long(self, lines: list[str]) -> None:
        """Lines longer than ``max_line`` bytes become blank, as the serial reader makes them
        (the parent then has the file's damage described by that reader)."""
        for i, line in enumerate(lines):
            if len(line) > self.max_line // 4 and len(line.encode("utf-8", "surrogateescape")) > self.max_line:
                lines[i] = ""
                if self.piece not in self.reply.long_lines:
                    self.reply.long_lines.append(self.piece)

    def step(self, task: int, out: str, final: bool, kept: bool = False) -> Reply:
        """What the pieces fed since the last step gave; once ``final`` (before the flush that
        ends the run), what the parent checks the next piece against. The events still queued
        count among its keys and times: the flush after this step writes them, or (``kept``)
        the run goes on with them as a fresh start began them."""
        reply, self.reply = self.reply, Reply(0)
        reply.task, reply.out, reply.final, reply.kept = task, out, final, kept
        reply.serials, self.serials.seen = self.serials.seen, []
        if final:
            reply.settled = self.reassembler.settled()
            queued = self._open_events()
            reply.keys = self.keys | {(e.node, e.time, e.serial) for e in queued} if queued else self.keys
            times = [e.ts for e in queued]
            reply.oldest, reply.newest = min([self.oldest, *times]), max([self.newest, *times])
            reply.ended = dict(self.reassembler.recently_ended())
            reply.keys = reply.keys.difference(reply.ended)  # mostly the same keys: pickled once
            reply.trail = self.trail  # the list itself: the events of the flush after this step join it
        self.piece = 0
        return reply

    def _open_events(self) -> list[Event]:
        return [pending.event for pending in self.reassembler._queue]

    def resume(self, seed: Seed) -> None:
        """Go on from a kept run's end as the serial run is there: the keys ended before the run
        began come first (oldest first, as many as the reassembler keeps), the newest time is the
        later of the two. The parent accepted the run after ``seed``'s point, so nothing else of
        a fresh start differs from the serial run."""
        ended, newest = seed
        reassembler = self.reassembler
        merged = OrderedDict(ended)
        merged.update(reassembler._ended)
        excess = len(merged) - reassembler._recent_ids
        reassembler._ended = OrderedDict(itertools.islice(merged.items(), excess, None)) if excess > 0 else merged
        reassembler._newest = max(reassembler._newest, newest)

    def shadow(self, task: int, out: IO[bytes], pieces: list[Piece], files: dict[str, int]) -> Reply:
        """Go on (resumed) over ``pieces`` with header-only records until the reassembler is
        settled at a piece's end: this run's events leave as in the serial run and are written;
        the others (*shadow* events) are only noted in the reply's ``trail``, for the parent to
        compare with the pieces' own runs. A header is all the reassembler reads of a record but
        for :func:`looks_cut_short`, which reads only this run's own (whole) records here: a
        shadow event has no fields, so it is partial only if late. The trail is None where the
        serial run would treat those pieces otherwise than their own runs do, as far as this
        pass can tell: a shadow record of a key still queued here (it may join this run's
        event), a late record, no settled cut. Its serials and counts are the own runs' to
        report: the reply has none but this run's (its events that left here). The run is spent
        after (its reassembler holds shadow records)."""
        reassembler, parser = self.reassembler, self.pipeline.parser
        mine = len(reassembler._queue)  # this run's events, still to leave (they leave first)
        still_open = {(p.event.node, p.event.time, p.event.serial) for p in reassembler._queue}
        late, events = reassembler.late, reassembler.events
        reply, trail, leaving = Reply(task), [], []
        for piece in pieces:
            for line in self._lines(piece, files):
                try:
                    rec = parse_header(line, parser) if line else None
                except ParseError:  # a reject of the piece's own run
                    rec = None
                if rec is None:
                    continue
                key = (rec.node, rec.time, rec.serial)
                if key in still_open:
                    return reply
                for ev in reassembler.feed(rec):
                    if mine:
                        mine -= 1
                        leaving.append(ev)
                    else:
                        trail.append(_entry((ev.node, ev.time, ev.serial), ev))
            reply.pieces += 1
            if reassembler.late != late:
                return reply
            if reassembler.settled():
                break
        if mine or not reassembler.settled():
            return reply
        trail += [_entry((p.event.node, p.event.time, p.event.serial), p.event) for p in reassembler._queue]
        shadow_events = reassembler.events - events - len(leaving)
        out.writelines(map(dumps_line, self.pipeline._events_out(leaving)))
        reply.trail, reply.settled = trail, True
        reply.counts = self.pipeline.stats()
        reply.counts["events"] -= shadow_events  # the pieces' own runs count theirs
        reply.ended, reply.newest = dict(reassembler.recently_ended()), reassembler._newest
        return reply


def _entry(key: Key, ev: Event) -> tuple[Key, int]:
    """An event in a trail: its key and number of records, negative if it is *late* (its key
    had ended before it began). Its ``partial`` is that or, if it did not end with its last
    record, its records' own say (:func:`looks_cut_short`): the same records, the same answer."""
    n = len(ev.records)
    late = ev.partial and (ends_event(ev.records[-1].type_num) or not looks_cut_short(ev))
    return key, -n if late else n


class _Worker:
    """The loop of one worker process: tasks in from the parent, replies out.

    A task is ``(kind, id, pieces, settle_after, keep_open, seed, kept)``: ``run`` starts a
    fresh run over ``pieces`` (from ``seed``, the serial run's state there, if given; with
    ``settle_after``, it stops at the first cut after that many pieces where its reassembler is
    settled; with ``keep_open``, a run that did not stop stays open); ``resume`` does the same
    going on from the end of the kept run of task ``kept`` (from ``seed``); ``shadow`` goes on
    from there too, but only to check the next pieces' own runs (:meth:`_Run.shadow`); ``more``
    feeds the open run, ``end`` finishes it.

    A piece's own run that ends unsettled is *kept* unflushed (its open events would only be cut
    short), the ``keep`` latest of them: the parent, once it has written the pieces before it,
    has the run go on into the next pieces instead of running it all again."""

    def __init__(self, normalize: Normalizer, timeout: float, max_in_flight: int, max_line: int, recent_ids: int,
                 tmpdir: str, keep: int) -> None:
        self.params = (normalize, timeout, max_in_flight, max_line, recent_ids)
        self.tmpdir = tmpdir
        self.files: dict[str, int] = {}
        self.open_run: _Run | None = None
        self.kept: dict[int, _Run] = {}
        self.keep = keep
        self.parser = Parser()

    def serve(self, conn: Connection, inherited: list[Connection]) -> None:
        for other in inherited:  # the parent's ends of the other workers' pipes
            other.close()
        try:
            while True:
                task = conn.recv()
                if task is None:
                    return
                try:
                    reply = self.do(*task)
                except Exception as e:  # the parent reports it and stops
                    reply = Reply(task[1], error=f"{type(e).__name__}: {e}")
                reply.cpu = _cpu(resource.RUSAGE_SELF)
                conn.send(reply)
        except (EOFError, KeyboardInterrupt, BrokenPipeError):
            return
        finally:
            for fd in self.files.values():
                os.close(fd)

    def do(self, kind: str, task: int, pieces: list[Piece], settle_after: int | None, keep_open: bool,
           seed: Seed | None, kept: int | None = None) -> Reply:
        out_path = os.path.join(self.tmpdir, str(task))
        with open(out_path, "wb") as out:
            if kind == "shadow":
                reply = self._start_run(kind, seed, kept).shadow(task, out, pieces, self.files)
                reply.out, reply.size = out_path, out.tell()
                return reply
            keep = False
            if kind in ("run", "resume"):
                run = self._start_run(kind, seed, kept)
                final = self._stops(run, pieces, settle_after, out) or not keep_open
                own = kind == "run" and seed is None and settle_after is None and not keep_open
                keep = own and not run.reassembler.settled()
            else:
                assert self.open_run is not None, "no open run to continue"
                run = self.open_run
                for piece in pieces:
                    run.feed(piece, out, self.files)
                final = kind == "end"
            if kind in ("more", "end") or not final:  # a run of its own leaves the open one be
                self.open_run = None if final else run
            reply = run.step(task, out_path, final, keep)
            if keep:
                self._keep(task, run)
            elif final:
                out.writelines(map(dumps_line, run.pipeline.flush()))
                reply.counts = run.pipeline.stats()
            reply.size = out.tell()
        return reply

    def _start_run(self, kind: str, seed: Seed | None, kept: int | None) -> _Run:
        if kind == "run":
            return _Run(*self.params, seed, self.parser)
        assert kept is not None and seed is not None
        run = self.kept.pop(kept, None)
        if run is None:
            raise RuntimeError(f"no kept run of task {kept} to go on with")
        run.resume(seed)
        return run

    def _keep(self, task: int, run: _Run) -> None:
        """The ``keep`` latest kept runs: the parent resumes only one just before the pieces it
        has sent, and older ones were of pieces it has written or dropped."""
        self.kept[task] = run
        while len(self.kept) > self.keep:
            del self.kept[min(self.kept)]

    def _stops(self, run: _Run, pieces: list[Piece], settle_after: int | None, out: IO[bytes]) -> bool:
        """Feed ``pieces``; whether the run stopped early, settled."""
        for n, piece in enumerate(pieces, 1):
            run.feed(piece, out, self.files)
            if settle_after is not None and n >= settle_after and n < len(pieces) and run.reassembler.settled():
                return True
        return settle_after is not None and run.reassembler.settled()


def _cpu(who: int) -> float:
    ru = resource.getrusage(who)
    return ru.ru_utime + ru.ru_stime


# ------------------------------------------------------------------------------------ parent


class _Accepted:
    """What the serial run would know at the end of the pieces accepted so far: the keys it
    ended recently (in its order, as many as it keeps) and the newest event time."""

    def __init__(self, timeout: float, recent_ids: int) -> None:
        self.timeout = timeout
        self.recent_ids = recent_ids
        # ended key → whether a later record of it is late (ordered: the oldest leaves in O(1))
        self.recent: OrderedDict[Key, bool] = OrderedDict()
        self.newest = float("-inf")
        self.tracker = SerialTracker()
        self.counts: dict[str, int] = {}

    def follows(self, prev: Reply, out: Reply) -> bool:
        """Whether ``out`` (run from a fresh start) is what the serial run gives after ``prev``:
        ``prev`` settled, and none of ``out``'s events of a key ended before it or older than the
        newest minus the timeout (which a fresh reassembler would take differently)."""
        if not prev.settled:
            return False
        if out.oldest < max(self.newest, prev.newest) - self.timeout:
            return False
        keys = out.keys
        return prev.ended.keys().isdisjoint(keys) and self.recent.keys().isdisjoint(keys)

    def seed(self) -> tuple[list[tuple[Key, bool]], float]:
        """The state a run started here needs to be the serial run (see :func:`_resume`)."""
        return list(self.recent.items()), self.newest

    def accept(self, out: Reply) -> None:
        self.replay(out.serials)
        if not out.final:
            return
        recent = self.recent
        recent.update(out.ended)  # as the reassembler's own dict: a key ended again keeps its place
        for _ in range(len(recent) - self.recent_ids):
            recent.popitem(last=False)
        self.newest = max(self.newest, out.newest)
        for name, n in out.counts.items():
            self.counts[name] = self.counts.get(name, 0) + n

    def adopt(self, out: Reply) -> None:
        """The serial run's state from a run that went on from it (a shadow pass): its ended
        keys in its order (as many as it keeps) and newest time, in place of ours; its totals."""
        self.recent = OrderedDict(out.ended)
        self.newest = max(self.newest, out.newest)
        for name, n in out.counts.items():
            self.counts[name] = self.counts.get(name, 0) + n

    def replay(self, serials: list[tuple[Any, int]]) -> None:
        see = self.tracker.see
        for node, serial in serials:
            see(node, serial)

    def stats(self) -> dict[str, int]:
        self.tracker.flush()
        return {**self.counts, "lost_serials": self.tracker.lost}


def _temp_dir() -> str:
    shm = "/dev/shm"
    base = shm if os.path.isdir(shm) and os.access(shm, os.W_OK) else None
    return tempfile.mkdtemp(prefix="auditpipe-jobs-", dir=base)


class ParallelParse:
    """Pieces in, the output of one serial run out (to ``out``, a binary file), with the rejects
    to ``on_reject`` in input order and, for a file whose overlong lines a worker skipped,
    ``on_damaged(where, path, lines)`` once its last piece is out. ``jobs`` worker processes,
    forked at :meth:`run` (they inherit the imported code and ``normalize``). One use only."""

    def __init__(self, normalize: Normalizer, jobs: int, out: IO[bytes],
                 on_reject: Callable[[str, str, str], None], timeout: float = 2.0, max_in_flight: int = 4096,
                 recent_ids: int = 8192, max_group: int = MAX_GROUP, max_line: int = 1 << 20,
                 on_damaged: Callable[[str, str, int], None] | None = None,
                 on_piece: Callable[[Piece], None] | None = None, depth: int = QUEUED,
                 ahead: int | None = None) -> None:
        self.normalize = normalize
        self.jobs = jobs
        self.out = out
        self.on_reject = on_reject
        self.on_damaged = on_damaged
        self.on_piece = on_piece
        self.params = (timeout, max_in_flight, max_line, recent_ids)  # the workers' reassemblers keep as many
        self.accepted = _Accepted(timeout, recent_ids)
        self.max_group = max_group
        self.depth = depth  # tasks queued on a worker
        self.ahead = ahead or 4 * jobs  # pieces sent past the first not yet written
        self.regroups = 0  # re-runs of doubtful pieces
        self.twice = 0  # pieces whose own run was made and then run again in full
        self.shadows = 0  # shadow passes asked for (:meth:`_check`)
        self.verified = 0  # pieces whose own run a shadow pass let be written
        self.alone: int | None = None  # the worker holding the open run, once pieces never settle
        self.worker_cpu: list[float] = [0.0] * jobs  # CPU seconds of each worker (its last reply)
        self.tmpdir = ""
        self.conns: list[Connection] = []
        self.procs: list[Any] = []
        self.source: Iterator[Piece] = iter(())
        self.known: dict[int, Piece] = {}  # the pieces read and not yet written (a text piece is big)
        self.count = 0  # pieces read
        self.exhausted = False
        self.replies: dict[int, Reply] = {}
        self.queued: list[deque[int]] = [deque() for _ in range(jobs)]
        self.dispatched = 0  # pieces sent (a task of their own, or a step of the open run)
        self.next_id = -1  # ids of the other tasks (a piece's own task has the piece's index)
        self.cursor = 0  # the first piece neither written nor held
        self.held: Reply | None = None  # accepted, written once the next one follows it
        self.group: int | None = None  # the re-run awaited
        self.group_first = 0  # the first piece of that re-run
        self.check: int | None = None  # the shadow pass awaited (its own runs' first is ``cursor``)
        self.steps: deque[int] = deque()  # the open run's steps awaited, in order
        self.end_sent = False
        self.dropped: set[int] = set()
        self.lineno: dict[str, int] = {}  # per input: the number of its next line
        self.long_in: set[str] = set()  # inputs with overlong lines skipped so far

    def run(self, pieces: Iterable[Piece]) -> dict[str, int]:
        """Everything out; the totals of the whole input (as :meth:`Pipeline.stats`)."""
        self.source = iter(pieces)
        self._start()
        try:
            while True:
                self._advance()
                self._dispatch()  # after: what was written frees room ahead
                if self._done():
                    return self.accepted.stats()
                self._receive()
        finally:
            self.close()

    def _start(self) -> None:
        for stream in (self.out, sys.stdout, sys.stderr):  # a child must not inherit bytes buffered here
            stream.flush()
        self.tmpdir = _temp_dir()
        gc.freeze()  # what exists now is the workers' too: no collection of theirs walks (and copies) it
        ctx = multiprocessing.get_context("fork")
        for _ in range(self.jobs):
            parent, child = ctx.Pipe()
            worker = _Worker(self.normalize, *self.params, self.tmpdir, self.ahead + self.depth + 2)
            proc = ctx.Process(target=worker.serve, args=(child, list(self.conns)), daemon=True)
            proc.start()
            child.close()
            self.conns.append(parent)
            self.procs.append(proc)

    def _piece(self, i: int) -> bool:
        """Whether piece ``i`` exists (reading the input up to it)."""
        while self.count <= i and not self.exhausted:
            nxt = next(self.source, None)
            if nxt is None:
                self.exhausted = True
            else:
                self.known[self.count] = self._spill(nxt) if nxt.text else nxt
                self.count += 1
        return i < self.count

    def _spill(self, piece: Piece) -> Piece:
        """A text piece's text into a file of the temporary directory (see :class:`Piece`)."""
        path = os.path.join(self.tmpdir, f"in-{self.count}.txt")
        with open(path, "wb") as f:
            f.write((piece.text or "").encode("utf-8", "surrogateescape"))
        return piece._replace(text="", spill=path)

    def _done(self) -> bool:
        return (self.exhausted and self.cursor >= self.count and self.held is None and self.group is None
                and not self.steps)

    def _new_id(self) -> int:
        self.next_id -= 1
        return self.next_id + 1

    def _send(self, task: tuple, worker: int | None = None) -> None:
        if worker is None:
            worker = min(range(self.jobs), key=lambda w: len(self.queued[w]))
        self.conns[worker].send(task)
        self.queued[worker].append(task[1])

    def _dispatch(self) -> None:
        """Keep every worker ``depth`` tasks deep with the next pieces, no further than
        ``ahead`` past the first piece not yet written (the open run: its next steps)."""
        if self.alone is not None:
            return self._next_steps()
        while (min(map(len, self.queued)) < self.depth and self.dispatched < self.cursor + self.ahead
               and self._piece(self.dispatched)):
            self._send(("run", self.dispatched, [self.known[self.dispatched]], None, False, None))
            self.dispatched += 1

    def _receive(self) -> None:
        busy = [c for c, q in zip(self.conns, self.queued, strict=True) if q]
        if not busy:
            raise RuntimeError("parallel parse: nothing in flight and nothing decided")
        for conn in wait(busy):
            w = self.conns.index(conn)  # type: ignore[arg-type]
            try:
                reply: Reply = self.conns[w].recv()
            except EOFError:
                raise RuntimeError(f"parse worker {w} died (exit code {self.procs[w].exitcode})") from None
            if reply.error:
                raise RuntimeError(f"parse worker {w}: {reply.error}")
            self.queued[w].remove(reply.task)
            reply.keys.update(reply.ended)
            self.worker_cpu[w] = reply.cpu
            reply.worker = w
            if reply.task in self.dropped:
                self.dropped.discard(reply.task)
                _unlink(reply.out)
            else:
                self.replies[reply.task] = reply

    def _advance(self) -> None:
        """Write out whatever is decided, in input order."""
        while self._decide():
            pass

    def _decide(self) -> bool:
        if self.alone is not None:
            return self._take_step()
        if self.group is not None:
            return self._take_group()
        if self.check is not None:
            return self._take_check()
        return self._take_next()

    def _take_next(self) -> bool:
        i = self.cursor
        if not self._piece(i):
            if self.held is not None and self.held.kept:  # its open events out, as one run ends
                self._regroup(self.held)
                return True
            if self.held is not None:
                self._emit(self.held)
                self.held = None
            return False
        reply = self.replies.get(i)
        if reply is None:
            return False
        reply.first = i
        held = self.held
        if held is not None and not self.accepted.follows(held, reply):
            self._regroup(held)
            return True
        del self.replies[i]
        if held is not None:
            self._emit(held)
        self.held = reply
        self.cursor = i + 1
        return True

    def _regroup(self, held: Reply) -> None:
        """The piece after ``held`` does not follow it: check the next pieces with a shadow pass
        where ``held`` was kept unsettled, else run them again."""
        if held.kept and self._piece(held.first + held.pieces):
            return self._check(held)
        self._rerun(held)

    def _rerun(self, held: Reply) -> None:
        """Run again from where ``held`` began, from the serial run's state there, taking in the
        next pieces until settled (the workers go on with the pieces after them meanwhile). A
        group longer than ``max_group`` is not re-run again: that run stays open and takes the
        rest alone."""
        self.regroups += 1
        if held.kept:
            return self._resume(held)
        need = held.pieces + 1
        self._piece(held.first + max(need, self.max_group) - 1)
        group = [self.known[i] for i in range(held.first, min(held.first + max(need, self.max_group), self.count))]
        at_end = self.exhausted and held.first + len(group) >= self.count
        self.group, self.group_first = self._new_id(), held.first
        self._send(("run", self.group, group, need if need <= self.max_group else None, not at_end,
                    self.accepted.seed()))

    def _resume(self, held: Reply) -> None:
        """``held`` ended unsettled and its worker kept the run: write what it has, and have the
        run go on into the next pieces from the serial run's state before it, until settled
        (``max_group`` pieces at most; none at the end of the input, where it only ends)."""
        seed = self.accepted.seed()
        held.final = False  # its keys and totals come with the run's end
        self._emit(held)
        self.held = None
        first = self.cursor
        self._piece(first + self.max_group - 1)
        group = [self.known[i] for i in range(first, min(first + self.max_group, self.count))]
        at_end = self.exhausted and first + len(group) >= self.count
        self.group, self.group_first = self._new_id(), first
        self._send(("resume", self.group, group, 1 if group else None, not at_end, seed, held.task),
                   worker=held.worker)

    def _check(self, held: Reply) -> None:
        """``held`` ended unsettled and its worker kept the run: have it go on over the next
        pieces in a shadow pass (:meth:`_Run.shadow`, from the serial run's state before it)
        instead of running them again, and hold it until the pass is compared with those pieces'
        own runs (:meth:`_take_check`)."""
        self.shadows += 1
        first = self.cursor
        self._piece(first + self.max_group - 1)
        group = [self.known[i] for i in range(first, min(first + self.max_group, self.count))]
        self.check = self._new_id()
        self._send(("shadow", self.check, group, None, False, self.accepted.seed(), held.task), worker=held.worker)

    def _take_check(self) -> bool:
        """The shadow pass back: if its trail is the concatenation of the own runs' trails of
        the pieces it went over, the serial run makes of those pieces what their own runs made
        (the same records in the same events, none late: see :meth:`_Run.shadow`), and of the
        held run's open events what the pass wrote. Then the held run, the pass and the own runs
        are held as one (written in that order once the next piece follows them; else all run
        again), and the serial run's state at their end is the pass's (it went on from a resumed
        run, so it is that state exactly). Otherwise the held run is run again with the next
        pieces, from its start (the pass spent it)."""
        assert self.check is not None and self.held is not None
        reply = self.replies.get(self.check)
        if reply is None:
            return False
        owns = range(self.cursor, self.cursor + reply.pieces)
        if reply.trail is not None:
            while self.dispatched < owns.stop:  # in the window ahead as a rule; never waited for in vain
                self._send(("run", self.dispatched, [self.known[self.dispatched]], None, False, None))
                self.dispatched += 1
            if any(i not in self.replies for i in owns):
                return False
        del self.replies[self.check]
        self.check = None
        held = self.held
        if reply.trail is None or reply.trail != self._trails(owns):
            _unlink(reply.out)
            held.kept = False  # the pass spent the run: all of it again
            self._rerun(held)
            return True
        self.verified += len(owns)
        held.final = reply.final = False  # the totals and the state at the end: the batch's
        reply.first, reply.pieces = self.cursor, 0
        parts = [held, reply]
        for i in owns:
            parts.append(self.replies.pop(i))
            parts[-1].first = i
        self.held = Reply(reply.task, pieces=held.pieces + len(owns), settled=True, ended=reply.ended,
                          newest=reply.newest, counts=reply.counts, first=held.first, parts=parts)
        self.cursor = owns.stop
        return True

    def _trails(self, owns: range) -> Trail | None:
        """The own runs' trails one after the other; None if one ended unsettled (its open
        events are not in its output) or has none."""
        trail: Trail = []
        for i in owns:
            own = self.replies[i]
            if own.kept or own.trail is None:
                return None
            trail += own.trail
        return trail

    def _take_group(self) -> bool:
        assert self.group is not None
        reply = self.replies.pop(self.group, None)
        if reply is None:
            return False
        reply.first = drop_from = self.group_first
        if self.held is not None:  # run again from its start: its output goes (a resumed one was written)
            for part in self.held.parts or [self.held]:
                _unlink(part.out)
            drop_from += self.held.pieces  # their own runs are gone already
        self.group = self.held = None
        self.cursor = reply.first + reply.pieces
        self.twice += max(0, min(self.cursor, self.dispatched) - reply.first)  # those with an own run too
        self._drop(range(drop_from, min(self.cursor, self.dispatched)))
        self.dispatched = max(self.dispatched, self.cursor)
        if reply.final:
            self.held = reply
        else:
            self._go_alone(reply)
        return True

    def _drop(self, tasks: Iterable[int]) -> None:
        """Pieces' own runs no longer of use: their files go now, or as they come."""
        for i in tasks:
            own = self.replies.pop(i, None)
            if own is not None:
                _unlink(own.out)
            else:
                self.dropped.add(i)

    def _go_alone(self, reply: Reply) -> None:
        """Events that never settle: the worker that holds the open run takes every later piece
        (a step each) and the pieces' own runs sent already are dropped."""
        self._emit(reply)
        self._drop(range(self.cursor, self.dispatched))
        self.dispatched = self.cursor
        self.alone = reply.worker
        self._next_steps()

    def _next_steps(self) -> None:
        w = self.alone
        assert w is not None
        while not self.end_sent and len(self.queued[w]) < self.depth:
            task = self._new_id()
            if self._piece(self.dispatched):
                self._send(("more", task, [self.known[self.dispatched]], None, True, None), worker=w)
                self.dispatched += 1
            else:
                self._send(("end", task, [], None, False, None), worker=w)
                self.end_sent = True
            self.steps.append(task)

    def _take_step(self) -> bool:
        if not self.steps or (reply := self.replies.pop(self.steps[0], None)) is None:
            return False
        self.steps.popleft()
        reply.first = self.cursor
        self.cursor += reply.pieces
        self._emit(reply)
        self._next_steps()
        return True

    def _emit(self, reply: Reply) -> None:
        """One decided reply out: its rejects (numbered), its lines, its totals."""
        if reply.parts:
            for part in reply.parts:
                self._emit(part)
            return self.accepted.adopt(reply)
        rejects = iter(reply.rejects)
        rej = next(rejects, None)
        for k in range(reply.pieces):
            piece = self.known.pop(reply.first + k)
            if piece.spill is not None:
                os.unlink(piece.spill)
            base = piece.lineno or (1 if piece.start == 0 else self.lineno.get(piece.where, 1))
            while rej is not None and rej[0] == k:
                self.on_reject(f"{piece.where}:{base + rej[1] - 1}", rej[2], rej[3])
                rej = next(rejects, None)
            self.lineno[piece.where] = base + reply.lines[k]
            if self.on_piece is not None:
                self.on_piece(piece)
            if k in reply.long_lines:
                self.long_in.add(piece.where)
            if piece.where in self.long_in and piece.path is not None and self._last_of_file(piece, reply.first + k):
                self.long_in.discard(piece.where)
                if self.on_damaged is not None:
                    self.on_damaged(piece.where, piece.path, base + reply.lines[k] - 1)
        self._copy(reply.out, reply.size)
        self.accepted.accept(reply)

    def _last_of_file(self, piece: Piece, i: int) -> bool:
        return not self._piece(i + 1) or self.known[i + 1].start == 0 or self.known[i + 1].path != piece.path

    def _copy(self, path: str, size: int) -> None:
        """The worker's file onto the output (in the kernel where it can)."""
        try:
            if not size:
                return
            self.out.flush()
            with open(path, "rb") as src:
                try:
                    dst = self.out.fileno()
                except (AttributeError, OSError, ValueError):  # not a file (a test's BytesIO)
                    shutil.copyfileobj(src, self.out)
                    return
                _sendfile(dst, src, size)
        finally:
            _unlink(path)

    def close(self) -> None:
        """The end to every worker, the temporary directory away while they exit (unmapping
        their memory takes milliseconds), then the wait for each: none outlives the command. A
        worker still finishing a dropped task may write a file there meanwhile: the directory
        goes again after the wait if it is still there."""
        for conn in self.conns:
            with contextlib.suppress(OSError):
                conn.send(None)
        if self.tmpdir:
            shutil.rmtree(self.tmpdir, ignore_errors=True)
        for proc in self.procs:
            proc.join(timeout=2)
            if proc.is_alive():
                proc.terminate()
                proc.join()
        for conn in self.conns:
            conn.close()
        self.conns, self.procs = [], []
        if self.tmpdir and os.path.exists(self.tmpdir):
            shutil.rmtree(self.tmpdir, ignore_errors=True)
        self.tmpdir = ""


def _sendfile(dst: int, src: IO[bytes], size: int) -> None:
    offset = 0
    try:
        while offset < size:
            n = os.sendfile(dst, src.fileno(), offset, size - offset)
            if n == 0:
                raise OSError(f"sendfile wrote nothing at {offset} of {size}")
            offset += n
    except OSError:
        if offset:
            raise
        while block := src.read(1 << 20):  # an output sendfile cannot write to (O_APPEND): by hand
            view = memoryview(block)
            while view:
                view = view[os.write(dst, view):]


def _unlink(path: str) -> None:
    if path:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
