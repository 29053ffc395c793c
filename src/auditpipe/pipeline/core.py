"""The sans-I/O heart of every job: lines or kernel messages in, normalized documents out.

Bad lines never stop the stream: each is counted and handed to `on_reject(where, line, reason)`
(the CLI writes it to the rejects file and reports it); everything else goes on.
"""

from __future__ import annotations

from dataclasses import dataclass

from auditpipe.parsing import ParseError, parse_kernel, parse_line
from auditpipe.reassembly import Reassembler

__all__ = ["Pipeline", "Counters"]


@dataclass
class Counters:
    lines: int = 0
    records: int = 0
    rejects: int = 0
    documents: int = 0

    def as_dict(self, reassembler: Reassembler) -> dict:
        return {
            "records": self.records,
            "events": reassembler.events,
            "partial_events": reassembler.partial,
            "late_records": reassembler.late,
            "rejects": self.rejects,
            "lost_serials": reassembler.lost,
            "documents": self.documents,
        }


def _ignore_reject(where, line, reason) -> None:
    pass


class Pipeline:
    def __init__(self, normalize, reassembler: Reassembler | None = None, on_reject=None):
        self.normalize = normalize
        self.reassembler = reassembler or Reassembler()
        self.on_reject = on_reject or _ignore_reject
        self.counters = Counters()

    def _events_out(self, events) -> list:
        docs = []
        normalize = self.normalize
        for ev in events:
            docs.extend(normalize(ev))
        self.counters.documents += len(docs)
        return docs

    def feed_lines(self, lines, where: str = "-", first_lineno: int = 1, now: float | None = None) -> list:
        """Feed many lines at once (the fast path for files). Blank lines are skipped."""
        feed = self.reassembler.feed
        normalize = self.normalize
        docs: list = []
        c = self.counters
        records = 0
        for i, line in enumerate(lines):
            if not line:
                continue
            try:
                rec = parse_line(line)
            except ParseError as e:
                c.rejects += 1
                self.on_reject(f"{where}:{first_lineno + i}", line, e.reason)
                continue
            records += 1
            events = feed(rec, now)
            if events:
                for ev in events:
                    docs += normalize(ev)
        c.records += records
        c.lines = first_lineno - 1 + len(lines)
        c.documents += len(docs)
        return docs

    def feed_line(self, line: str, where: str = "-", now: float | None = None) -> list:
        c = self.counters
        c.lines += 1
        try:
            rec = parse_line(line)
        except ParseError as e:
            c.rejects += 1
            self.on_reject(where, line, e.reason)
            return []
        c.records += 1
        return self._events_out(self.reassembler.feed(rec, now))

    def feed_kernel(self, type_num: int, payload: bytes, now: float | None = None) -> list:
        c = self.counters
        try:
            rec = parse_kernel(type_num, payload)
        except ParseError as e:
            c.rejects += 1
            self.on_reject(f"netlink type {type_num}", payload.decode("utf-8", "surrogateescape"), e.reason)
            return []
        c.records += 1
        return self._events_out(self.reassembler.feed(rec, now))

    def tick(self, now: float) -> list:
        return self._events_out(self.reassembler.tick(now))

    def flush(self) -> list:
        return self._events_out(self.reassembler.flush())

    def stats(self) -> dict:
        return self.counters.as_dict(self.reassembler)
