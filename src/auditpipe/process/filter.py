"""``FilterStage``: drop or keep events by process label, rule key, executable or a regex on the
raw records, in the order the ``[[filter.rules]]`` are written (the first rule that matches
decides; no match keeps the event). ``keep_first`` keeps the first N matching events of each
process and drops the rest (a noisy process is seen once, not a thousand times).

Works on every format: it reads the event's records, not the documents.
"""

from __future__ import annotations

import re
from collections.abc import Callable

from auditpipe import tables
from auditpipe.process.config import FilterConfig, FilterRule
from auditpipe.reassembly import Event

__all__ = ["FilterStage", "build_filter_stage"]

_SYSCALL = tables.RECORD_TYPE_NUMBERS["SYSCALL"]
_KEY_SEP = "\x01"  # the kernel joins several rule keys with ^A
_MAX_TRACKED = 65536
_EMPTY: dict = {}


class _Rule:
    __slots__ = ("action", "exe", "first", "key", "label", "name", "raw")

    def __init__(self, r: FilterRule) -> None:
        self.name, self.action, self.label, self.key, self.first = r.name, r.action, r.label, r.key, r.first
        self.exe = re.compile(r.executable) if r.executable is not None else None
        self.raw = re.compile(r.raw) if r.raw is not None else None


class FilterStage:
    """Stage, after the process stage. ``labels``: the labels of an event's process (default:
    ``process.labels`` of the event's ECS document, ``context.process.labels`` of a coalesced
    one, as the process stage wrote them; for Panther rows, which carry no context, the process
    stage's :meth:`~auditpipe.process.stage.ProcessStage.labels_of`, linked by :meth:`link`; none
    with the process stage off: a rule on a label then never matches). ``identity``: what "one
    process" is for keep_first (default: the document's ``process.entity_id``, for Panther rows
    the process stage's, else node and pid)."""

    name = "filter"

    def __init__(self, cfg: FilterConfig, fmt: str,
                 labels: Callable[[Event], frozenset[str]] | None = None,
                 identity: Callable[[Event], object] | None = None) -> None:
        self.fmt = fmt
        self.rules = [_Rule(r) for r in cfg.rules]
        self.labels = labels
        self.identity = identity
        self.dropped = dict.fromkeys((r.name for r in self.rules), 0)
        self._seen: dict[tuple[str, object], int] = {}

    def link(self, stages: list) -> None:
        """Documents that do not carry the process context (Panther rows): ask the process
        stage before this one, which then keeps what it is asked about."""
        if self.labels is not None:
            return
        for st in stages:
            if st is self:
                return
            if getattr(st, "context_in_documents", True) is False:
                self.labels, self.identity = st.labels_of, st.identity_of

    def process(self, event: Event, docs: list[dict], now: float) -> list[dict]:
        if not self.rules:
            return docs
        main = _main_fields(event)
        for rule in self.rules:
            if not self._matches(rule, event, main, docs):
                continue
            if rule.action == "keep" or (rule.action == "keep_first" and self._first(rule, event, main, docs)):
                return docs
            self.dropped[rule.name] += 1
            return []
        return docs

    def _matches(self, rule: _Rule, event: Event, main: dict, docs: list[dict]) -> bool:
        if rule.key is not None:
            key = main.get("key")
            if type(key) is not str or rule.key not in key.split(_KEY_SEP):
                return False
        if rule.exe is not None:
            exe = main.get("exe")
            if type(exe) is not str or rule.exe.search(exe) is None:
                return False
        if rule.label is not None:
            labels = self.labels(event) if self.labels is not None else _doc_process(docs).get("labels", ())
            if rule.label not in labels:
                return False
        if rule.raw is not None:
            rx = rule.raw
            if not any(rx.search(r.raw) for r in event.records):
                return False
        return True

    def _first(self, rule: _Rule, event: Event, main: dict, docs: list[dict]) -> bool:
        """Whether this is one of the first ``rule.first`` matching events of its process."""
        who = self.identity(event) if self.identity is not None else _doc_process(docs).get("entity_id")
        if who is None:
            who = (event.node, main.get("pid"))
        k = (rule.name, who)
        n = self._seen.get(k, 0) + 1
        if len(self._seen) >= _MAX_TRACKED and k not in self._seen:
            self._seen.clear()  # bounded: a process forgotten here is kept once more
        self._seen[k] = n
        return n <= rule.first

    def tick(self, now: float) -> list[dict]:
        return []

    def close(self, now: float) -> list[dict]:
        return []

    def metrics(self) -> dict[str, int | float]:
        out: dict[str, int | float] = {f"dropped.{k}": v for k, v in self.dropped.items()}
        out["dropped"] = sum(self.dropped.values())
        return out


def _doc_process(docs: list[dict]) -> dict:
    """The process object the process stage wrote into the event's (first) document."""
    if not docs:
        return _EMPTY
    d = docs[0]
    p = d.get("process")
    if p is None:
        p = d.get("context", _EMPTY).get("process")
    return p if type(p) is dict else _EMPTY


def build_filter_stage(cfg) -> FilterStage | None:
    """``[filter]`` → the stage (None without rules); for ``assembly.STAGE_BUILDERS``, after
    the process stage's builder."""
    if not cfg.filter.rules:
        return None
    return FilterStage(cfg.filter, cfg.normalize.format)


def _main_fields(event: Event) -> dict:
    """The fields that say who did it: the SYSCALL record's, else the first record's."""
    recs = event.records
    for r in recs:
        if r.type_num == _SYSCALL:
            return r.fields
    return recs[0].fields if recs else {}
