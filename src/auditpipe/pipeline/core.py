"""The sans-I/O heart of every job: lines or kernel messages in, normalized documents out.

Bad lines never stop the stream: each is counted and handed to `on_reject(where, line, reason)`
(the CLI writes it to the rejects file and reports it); everything else goes on.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from auditpipe.parsing import ParseError, Parser, parse_kernel, parse_line
from auditpipe.pipeline.feed import feed_lines
from auditpipe.pipeline.stages import Stage, close_stages, run_stages, stage_metrics, tick_stages
from auditpipe.reassembly import Event, Reassembler

__all__ = ["Pipeline", "Counters"]


@dataclass
class Counters:
    lines: int = 0
    records: int = 0
    rejects: int = 0
    documents: int = 0

    def as_dict(self, reassembler: Reassembler) -> dict[str, int]:
        return {
            "records": self.records,
            "events": reassembler.events,
            "partial_events": reassembler.partial,
            "late_records": reassembler.late,
            "rejects": self.rejects,
            "lost_serials": reassembler.lost,
            "documents": self.documents,
        }


Normalizer = Callable[[Event], list]
#: seconds between two calls of the stages' ``tick``
STAGE_TICK = 1.0
RejectHandler = Callable[[str, str, str], None]


def _ignore_reject(where: str, line: str, reason: str) -> None:
    pass


def _reraise(e: Exception, type_num: int, payload: bytes) -> None:
    raise e


class Pipeline:
    """Parse → reassemble → normalize → stages. ``clock`` is the wall clock the stages are given
    (``now`` of :meth:`feed_line` and friends is the reassembler's clock, monotonic when live)."""

    def __init__(self, normalize: Normalizer, reassembler: Reassembler | None = None,
                 on_reject: RejectHandler | None = None, stages: Sequence[Stage] = (),
                 clock: Callable[[], float] = time.time) -> None:
        self.reassembler = reassembler or Reassembler()
        self.on_reject = on_reject or _ignore_reject
        self.counters = Counters()
        self.parser = Parser()  # this pipeline's memos
        self.stages: tuple[Stage, ...] = tuple(stages)
        self.clock = clock
        self._next_stage_tick = 0.0
        self._normalize = normalize
        self._convert = normalize
        self.normalize = normalize

    @property
    def normalize(self) -> Normalizer:
        return self._normalize

    @normalize.setter
    def normalize(self, normalize: Normalizer) -> None:
        """Setting the normalizer keeps the stages after it (``_convert`` is what runs)."""
        self._normalize = normalize
        self._convert = normalize if not self.stages else self._with_stages

    def add_stages(self, stages: Sequence[Stage]) -> None:
        """Stages that need what exists only once the source has started (the rules it
        installed, the runner's counters) join after those built from the config."""
        self.stages += tuple(stages)
        self.normalize = self._normalize

    def _with_stages(self, ev: Event) -> list:
        return run_stages(self.stages, ev, self._normalize(ev), self.clock())

    def _events_out(self, events: Iterable[Event]) -> list:
        docs: list = []
        convert = self._convert
        for ev in events:
            docs.extend(convert(ev))
        self.counters.documents += len(docs)
        return docs

    def feed_lines(self, lines: Sequence[str], where: str = "-", first_lineno: int = 1,
                   now: float | None = None) -> list:
        """Feed many lines at once (the fast path for files). Blank lines are skipped."""
        c = self.counters
        docs, records = feed_lines(lines, self.parser, self.reassembler.feed, self._convert, c, self.on_reject,
                                   where, first_lineno, now)
        c.records += records
        c.lines = first_lineno - 1 + len(lines)
        c.documents += len(docs)
        return docs

    def feed_line(self, line: str, where: str = "-", now: float | None = None) -> list:
        c = self.counters
        c.lines += 1
        try:
            rec = parse_line(line, self.parser)
        except ParseError as e:
            c.rejects += 1
            self.on_reject(where, line, e.reason)
            return []
        c.records += 1
        return self._events_out(self.reassembler.feed(rec, now))

    def feed_kernel(self, type_num: int, payload: bytes, now: float | None = None,
                    raw: list[str] | None = None) -> list:
        """One netlink message; with ``raw``, the record's text line is appended to it (for
        outputs that forward records as read). Errors other than a reject raise."""
        return self.feed_kernel_batch(((type_num, payload),), now, raw, _reraise)

    def feed_kernel_batch(self, batch: Sequence[tuple[int, bytes]], now: float | None,
                          raw: list[str] | None, on_error: Callable[[Exception, int, bytes], None]) -> list:
        """Many netlink messages (one reader burst) at once: :meth:`feed_kernel` without two
        calls per record. A message that raises (a bug met on some input) goes to
        ``on_error(exc, type, payload)``, and the rest of the batch goes on."""
        parser, feed, convert, c = self.parser, self.reassembler.feed, self._convert, self.counters
        docs: list = []
        records = 0
        for t, p in batch:
            try:
                try:
                    rec = parse_kernel(t, p, parser)
                except ParseError as e:
                    c.rejects += 1
                    self.on_reject(f"netlink type {t}", p.decode("utf-8", "surrogateescape"), e.reason)
                    continue
                records += 1
                if raw is not None:
                    raw.append(rec.raw)
                events = feed(rec, now)
                if events:
                    for ev in events:
                        docs += convert(ev)
            except Exception as e:  # noqa: BLE001 - one bad record must not stop the agent
                on_error(e, t, p)
        c.records += records
        c.documents += len(docs)
        return docs

    def tick(self, now: float) -> list:
        """The reassembler's wall-clock timeouts (``now``: its clock); the stages' ``tick`` about
        every second of the injected wall clock."""
        docs = self._events_out(self.reassembler.tick(now))
        if self.stages:
            wall = self.clock()
            if wall >= self._next_stage_tick:
                self._next_stage_tick = wall + STAGE_TICK
                docs += self._counted(tick_stages(self.stages, wall))
        return docs

    def flush(self) -> list:
        """Every event still open, then the stages' last documents (``Stage.close``)."""
        docs = self._events_out(self.reassembler.flush())
        if self.stages:
            docs += self._counted(close_stages(self.stages, self.clock()))
        return docs

    def _counted(self, docs: list) -> list:
        self.counters.documents += len(docs)
        return docs

    def stage_metrics(self) -> dict[str, Any]:
        return stage_metrics(self.stages)

    def stats(self) -> dict[str, int]:
        return self.counters.as_dict(self.reassembler)
