"""The per-line loop of :meth:`Pipeline.feed_lines <auditpipe.pipeline.core.Pipeline.feed_lines>`.

A module of its own so that mypyc compiles it (scripts/compiled_modules.txt) while ``Pipeline``
stays a plain class: the HTTP receiver gives a pipeline a stand-in for its reassembler, and
tests replace a pipeline's methods, which a compiled class refuses.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from auditpipe.parsing import ParseError, Parser, Record, parse_line

__all__ = ["feed_lines"]


def feed_lines(lines: Sequence[str], memo: Parser, feed: Callable[[Record, float | None], list],
               normalize: Callable[[Any], list], counters: Any, on_reject: Callable[[str, str, str], None],
               where: str, first_lineno: int, now: float | None) -> tuple[list, int]:
    """(documents, records parsed) of ``lines``; blank lines are skipped, a line that does not
    parse is counted in ``counters.rejects`` and handed to ``on_reject``."""
    docs: list = []
    records = 0
    for i, line in enumerate(lines):
        if not line:
            continue
        try:
            rec = parse_line(line, memo)
        except ParseError as e:
            counters.rejects += 1
            on_reject(f"{where}:{first_lineno + i}", line, e.reason)
            continue
        records += 1
        events = feed(rec, now)
        if events:
            for ev in events:
                docs += normalize(ev)
    return docs, records
