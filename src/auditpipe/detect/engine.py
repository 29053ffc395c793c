"""The detection engine: compiled rules, an event in, alerts out; and the pipeline stage.

Cost is bounded by dispatch: auditd rules are indexed by the record types they can match (a
record is tested only against rules naming its type, plus the few bound to no type, after a
field-presence check); category rules run only on events that carry what they need (an EXECVE
for process_creation, a created PATH for file_event, a SOCKADDR for network_connection), and the
ECS document they read is built only then when the pipeline's format is not ECS.
"""

from __future__ import annotations

import logging
import re
import socket
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from auditpipe.config import ConfigError
from auditpipe.detect.alerts import Deduper, build_alert
from auditpipe.detect.config import DetectConfig
from auditpipe.detect.pyrules import PythonRule, RuleEvent, load_python_rules
from auditpipe.detect.sigma_match import (
    TEXT,
    assume,
    basename,
    compile_condition,
    required_literals,
    required_numbers,
)
from auditpipe.detect.sigma_rules import (
    INDEX_FIELDS,
    Problem,
    SigmaDetection,
    index_of,
    load_sigma,
)
from auditpipe.detect.views import EcsView, Interpreter, RecordView, deep_get, found_in

__all__ = ["DetectStage", "Engine", "Hit", "RuleSet", "category_applies", "load_rules"]

log = logging.getLogger("auditpipe.detect")

#: the record type an event must hold before a category's rules are worth an ECS document
_GATES = {"process_creation": "EXECVE", "file_event": "PATH", "network_connection": "SOCKADDR"}


def category_applies(category: str, doc: dict) -> bool:
    """Whether an ECS document is an event of this Sigma log source category (the hunt's SQL
    states the same in :mod:`auditpipe.detect.hunt`)."""
    if category == "process_creation":
        return deep_get(doc, "process", "args") is not None
    if category == "file_event":
        return any(isinstance(p, dict) and p.get("nametype") == "CREATE"
                   for p in deep_get(doc, "auditd", "paths", default=[]))
    if category == "network_connection":
        return deep_get(doc, "destination", "ip") is not None
    return False


@dataclass
class RuleSet:
    sigma: list[SigmaDetection]
    python: list[PythonRule]
    problems: list[Problem]


def load_rules(paths: list[str], context: frozenset[str] = frozenset()) -> RuleSet:
    """Sigma (.yml/.yaml) and Python (.py) rules from files and folders."""
    sigma_paths = [p for p in paths if Path(p).is_dir() or Path(p).suffix in (".yml", ".yaml")]
    py_paths = [p for p in paths if Path(p).is_dir() or Path(p).suffix == ".py"]
    missing = [p for p in paths if not Path(p).exists()]
    if missing:
        raise FileNotFoundError(f"{missing[0]}: no such rule file or folder")
    sigma_files = [p for p in sigma_paths if not _python_only(p)]
    s = load_sigma(sigma_files, context)
    py, py_problems = load_python_rules(py_paths)
    return RuleSet(s.rules, py, s.problems + py_problems)


def _python_only(p: str) -> bool:
    """A folder of Python rules: its YAML files are their metadata, not Sigma rules."""
    d = Path(p)
    return d.is_dir() and any(d.rglob("*.py"))


#: record dispatch: literals of lower-case fields and keywords, looked for in the record's values
#: of those fields or its text (RecordView.gate_text) and its SYSCALL's values (.syscall_text)
_CONTEXT = "\x00context"


#: a rule and its predicate (specialized for a record type); literal → rules; basename → rules
_Cand = tuple[SigmaDetection, Any]
_Lits = dict[str, list[_Cand]]
_Gate = Callable[[str], Any]
_Nums = dict[float, list[_Cand]]


class _Dispatch:
    """Rules with their predicates, indexed.

    Index: a rule filed under basenames of one of its fields is tried only on views whose value
    of that field has one of those basenames; one that needs a number (:func:`required_numbers`)
    only on views with a field of that value; an unindexed rule with required literals
    (:func:`required_literals`) only on views holding one of them (one regex per field finds
    whether any is there). What one field's value lets through is remembered per value
    (programs, paths and names repeat); verdicts are not: records carry pids, pointers and
    counters, and on events the key (every field the rules name) cost more than the
    prefiltered evaluation it saved (measured: 22 hits in 20k events of the bench corpus)."""

    __slots__ = ("always", "context_fields", "context_text", "gates", "keyed", "rest", "verdicts")

    def __init__(self, entries: list[tuple[SigmaDetection, Any, tuple[str, frozenset[str]] | None, Any]],
                 records: bool = False) -> None:
        self.rest = [(r, p) for r, p, keys, _ in entries if keys is None]
        by_field: dict[str, _Lits] = {}
        for r, p, keys, _ in entries:
            if keys is not None:
                field, names = keys
                index = by_field.setdefault(field, {})
                for k in names:
                    index.setdefault(k, []).append((r, p))
        numbers: dict[str, dict[float, list[_Cand]]] = {}
        literals = self._split_rest([t for r, p, keys, t in entries if keys is None], records, numbers)
        #: keywords and folded record literals: one regex of all literals over the text
        self.gates: list[tuple[str, _Gate, _Lits]] = [(field, _any_of(lits), lits) for field, lits in literals.items()
                                                      if field in (TEXT, _CONTEXT)]
        #: the fields whose value alone gates or indexes rules: (field, regex of its literals,
        #: its literals, its basename index, its number index, memo of value → candidates)
        keyed = sorted({f for f in literals if f not in (TEXT, _CONTEXT)} | set(by_field) | set(numbers))
        self.keyed: list[tuple[str, _Gate | None, _Lits, _Lits, _Nums, dict[str, tuple[_Cand, ...]]]] = [
            (f, _any_of(literals[f]) if f in literals else None, literals.get(f, {}), by_field.get(f, {}),
             numbers.get(f, {}), {})
            for f in keyed]

    def _split_rest(self, trees: list[list[Any]], records: bool,
                    numbers: dict[str, _Nums]) -> dict[str, _Lits]:
        """Unindexed rules: those that need a number are filed under each (field, number) in
        ``numbers`` (an equality is rarer than a substring); those with required literals under
        each (field, literal) (record views: under the record's text when :func:`_fold` says so
        — the record's and its SYSCALL's text hold every value a lower-case field can take);
        the others always run."""
        self.always: list[_Cand] = []
        #: the fields the folded literals are in; whether keywords are (then the record's text)
        self.context_fields: tuple[str, ...] = ()
        self.context_text = False
        #: the gate's verdict per values' text (a SYSCALL's a0–a3 and key repeat: 433 texts in
        #: the bench corpus's 20k events), bounded as the memos of values are
        self.verdicts: dict[str, bool] = {}
        literals: dict[str, _Lits] = {}
        nums = [_union_required(ts, required_numbers) for ts in trees]
        reqs = [None if n is not None else _union_required(ts, required_literals)
                for ts, n in zip(trees, nums, strict=True)]
        fold = records and _fold(reqs)
        if fold:
            folded = {f for req in reqs if req is not None for f, _ in req if f == TEXT or f[:1].islower()}
            self.context_text = TEXT in folded
            self.context_fields = tuple(sorted(folded - {TEXT}))
        for entry, req, num in zip(self.rest, reqs, nums, strict=True):
            if num is not None:
                for field, x in num:
                    bucket = numbers.setdefault(field, {}).setdefault(x, [])
                    if entry not in bucket:
                        bucket.append(entry)
                continue
            if req is None:
                self.always.append(entry)
                continue
            for field, lit in req:
                if fold and (field == TEXT or field[:1].islower()):
                    field = _CONTEXT
                bucket = literals.setdefault(field, {}).setdefault(lit, [])
                if entry not in bucket:
                    bucket.append(entry)
        return literals

    def __bool__(self) -> bool:
        return bool(self.rest or self.keyed)

    def candidates(self, view: Any) -> list[_Cand]:
        """The rules worth evaluating on ``view`` (each once)."""
        seen: dict[int, _Cand] = {}
        for field, gate, lits in self.gates:
            if field == TEXT:
                v = view.text()
                if gate(v) is None:
                    continue
            else:  # the record's values, and its SYSCALL's (searched once per event)
                v = view.gate_text(self.context_fields, self.context_text)
                sc = view.syscall_text(gate, self.context_fields, self.verdicts)
                if not (found_in(gate, v, self.verdicts) if not self.context_text else gate(v) is not None):
                    if sc is None:
                        continue
                    v = sc
                elif sc is not None:
                    v = v + "\n" + sc
            _literal_hits(v, lits, seen)
        for field, field_gate, field_lits, index, nums, memo in self.keyed:
            raw = view.get(field)
            if raw is None:
                continue
            if raw.__class__ is str:
                found = memo.get(raw)
                if found is None:
                    if len(memo) >= _MEMO_SIZE:
                        memo.clear()
                    found = memo[raw] = _value_candidates(raw.lower(), True, field_gate, field_lits, index,
                                                          _number_hits(nums, [raw]))
            else:  # a list (ECS): gated on its lines, not indexed by basename
                found = _value_candidates("\n".join(str(x).lower() for x in raw), False, field_gate, field_lits,
                                          index, _number_hits(nums, [str(x) for x in raw]))
            for e in found:
                seen[id(e[0])] = e
        if not seen:
            return self.always
        return self.always + list(seen.values())

    def matches(self, view: Any) -> list[SigmaDetection]:
        return [r for r, pred in self.candidates(view) if pred(view)]


#: distinct values remembered per field and dispatch (then forgotten at once: a bound, not an LRU)
_MEMO_SIZE = 4096


def _literal_hits(v: str, lits: dict[str, list[_Cand]],
                  seen: dict[int, _Cand]) -> None:
    for lit, entries in lits.items():
        if lit in v:
            for e in entries:
                seen[id(e[0])] = e


def _number_hits(nums: _Nums, values: list[str]) -> list[_Cand]:
    """The rules filed under the number one of ``values`` reads as (as a Sigma number test reads it)."""
    out: list[_Cand] = []
    if nums:
        for v in values:
            if _may_be_number(v):
                try:
                    out.extend(nums.get(float(v), ()))
                except ValueError:
                    pass
    return out


#: what float() accepts besides decimal digits, once stripped and lower-cased
_NUMBER_MARKS = str.maketrans("", "", "._e+-")


def _may_be_number(v: str) -> bool:
    """Whether ``float(v)`` may succeed (a cheap superset: a hex pointer or a name is not tried)."""
    t = v.strip().lower()
    return t.translate(_NUMBER_MARKS).isdecimal() or t.lstrip("+-") in ("inf", "infinity", "nan")


def _value_candidates(low: str, indexed: bool, gate: Callable[[str], Any] | None,
                      lits: dict[str, list[_Cand]],
                      index: dict[str, list[_Cand]], by_number: list[_Cand]) -> tuple[_Cand, ...]:
    """The rules one field's lower-cased value lets through: by its literals, by its basename,
    by its number."""
    seen: dict[int, _Cand] = {id(e[0]): e for e in by_number}
    if gate is not None and gate(low) is not None:
        _literal_hits(low, lits, seen)
    if indexed:
        for e in index.get(basename(low), ()):
            seen[id(e[0])] = e
    return tuple(seen.values())


def _any_of(literals: dict[str, Any]) -> Callable[[str], Any]:
    """``search`` of a regex that finds any of the literals (None: none occurs). The regex is a
    trie (common prefixes factored out): the regex engine tries each branch in turn at every
    position where the first character matches, so a flat alternation of 60 literals costs two
    to three times as much."""
    return re.compile(_trie_pattern(sorted(literals))).search


def _trie_pattern(literals: list[str]) -> str:
    """A regex matching where any of ``literals`` (non-empty) occurs. A literal that is a
    prefix of another ends the branch: the longer one adds no new place to be found."""
    if "" in literals:
        return ""
    if len(literals) == 1:
        return re.escape(literals[0])
    groups: dict[str, list[str]] = {}
    for lit in literals:
        groups.setdefault(lit[0], []).append(lit[1:])
    alts = [re.escape(c) + _trie_pattern(rest) for c, rest in groups.items()]
    return alts[0] if len(alts) == 1 else "(?:" + "|".join(alts) + ")"


def _fold(reqs: list[frozenset[tuple[str, str]] | None]) -> bool:
    """Whether a record's literals are looked for in its text (and its SYSCALL's) rather than
    in each field's value: when the rules search the text anyway (keywords) or name more than
    two lower-case fields (a text search costs about as much as two field lookups)."""
    fields = {f for req in reqs if req is not None for f, _ in req if f == TEXT or f[:1].islower()}
    return TEXT in fields or len(fields) > 2


def _union_required(trees: list[Any], required: Callable[[Any], frozenset | None]) -> frozenset | None:
    """What one of a rule's conditions requires (None: one requires nothing known)."""
    if not trees:  # a rule decided by its type alone
        return None
    acc: frozenset = frozenset()
    for t in trees:
        k = required(t)
        if k is None:
            return None
        acc |= k
    return acc


_Entry = tuple[SigmaDetection, Any, tuple[str, frozenset[str]] | None, Any]


def _specialized(rules: list[SigmaDetection], rtype: str) -> tuple[list[_Entry], list[_Entry]]:
    """The auditd rules that can match records of ``rtype``, each simplified for that type:
    those bound to a type, and those bound to none (tried on records that hold a field they
    need)."""
    entries: list[_Entry] = []
    untyped: list[_Entry] = []
    for r in rules:
        trees = [assume(t, "type", rtype) for t in r.condition_sql]
        if all(t is False for t in trees):
            continue
        live = [t for t in trees if not isinstance(t, bool)]
        if any(t is True for t in trees):
            pred: Any = _always
        else:
            preds = [compile_condition(t) for t in live]
            pred = preds[0] if len(preds) == 1 else (lambda v, ps=preds: any(p(v) for p in ps))
        keys = index_of(live, INDEX_FIELDS["record"]) if pred is not _always else None
        (untyped if r.types is None else entries).append((r, pred, keys, live if pred is not _always else []))
    return entries, untyped


def _needs(untyped: list[_Entry]) -> frozenset[str] | None:
    """Fields one of which a record must hold for any rule bound to no type to apply (None:
    any record)."""
    acc: frozenset[str] = frozenset()
    for r, _, _, _ in untyped:
        if r.required is None:
            return None
        acc |= r.required
    return acc


def _always(view: Any) -> bool:
    return True


@dataclass(slots=True)
class Hit:
    rule: Any  # SigmaDetection | PythonRule
    title: str | None = None
    level: str | None = None
    context: dict | None = None
    dedup: str | None = None


class Engine:
    """Evaluates one event against every rule. ``ecs_normalize`` builds the ECS document for
    events whose documents are in another format (None: ``docs`` are ECS)."""

    def __init__(self, rules: RuleSet, interp: Interpreter, ecs_normalize: Callable[[Any], list[dict]] | None = None):
        self.interp = interp
        self.ecs_normalize = ecs_normalize
        self.python = rules.python
        self._record_rules = [r for r in rules.sigma if r.kind == "record"]
        #: per record type: (dispatch of the typed rules, of typed and untyped rules, fields a
        #: record needs for the second, bits of the categories it opens) — one gate per record
        self._plans: dict[str, tuple[_Dispatch | None, _Dispatch | None, frozenset[str] | None, int]] = {}
        by_category: dict[str, list[SigmaDetection]] = {}
        for r in rules.sigma:
            if r.kind == "ecs":
                by_category.setdefault(r.category, []).append(r)
        self._by_category = {c: _Dispatch([(r, r.predicate, r.keys, r.condition_sql) for r in rs])
                             for c, rs in by_category.items()}
        #: (category, its bit in a plan) for the categories with rules, in _GATES order
        self._categories = [(c, 1 << i) for i, c in enumerate(_GATES) if c in self._by_category]
        self._rank = {id(r): i for i, r in enumerate(rules.sigma)}
        self.rule_errors = 0
        self.evaluated = 0

    def _plan(self, rtype: str) -> tuple[_Dispatch | None, _Dispatch | None, frozenset[str] | None, int]:
        """(dispatch of the rules bound to ``rtype``, of those and the rules bound to no type —
        None when there are none —, fields one of which a record needs for the second: None,
        any record; the bits of the categories whose events hold a record of this type). A
        record of a type no rule can match costs one dict lookup."""
        typed, untyped = _specialized(self._record_rules, rtype)
        bits = sum(bit for c, bit in self._categories if _GATES[c] == rtype)
        plan = self._plans[rtype] = (_Dispatch(typed, records=True) if typed else None,
                                     _Dispatch(typed + untyped, records=True) if untyped else None, _needs(untyped),
                                     bits)
        return plan

    def evaluate(self, event: Any, docs: list[dict]) -> list[Hit]:
        self.evaluated += 1
        hits: list[Hit] = []
        fired: set[int] = set()
        records = event.records
        syscall = None
        for r in records:
            if r.type == "SYSCALL":
                syscall = r
                break
        interp = self.interp
        sc_view = RecordView(syscall, None, interp) if syscall is not None else None
        plans = self._plans
        opened = 0  # the categories the event's record types open
        for rec in records:
            plan = plans.get(rec.type)
            if plan is None:
                plan = self._plan(rec.type)
            d, merged, needs, bits = plan
            opened |= bits
            fields = rec.fields
            # (a dict's keys view iterates the smaller side; frozenset.isdisjoint(dict) the dict)
            if merged is not None and (needs is None or not fields.keys().isdisjoint(needs)):
                d = merged
            if d is None:
                continue
            view = sc_view if rec is syscall else RecordView(rec, sc_view, interp)
            for rule, pred in d.candidates(view):
                if rule.types is None:  # bound to no type: only records holding a field it needs
                    req = rule.required
                    if req is not None and fields.keys().isdisjoint(req):
                        continue
                if pred(view) and id(rule) not in fired:
                    fired.add(id(rule))
                    hits.append(Hit(rule))
        doc = self.ecs_doc(event, docs) if opened or self.python else None
        if doc is not None and opened:
            ecs = EcsView(doc)
            for c, bit in self._categories:
                if opened & bit and category_applies(c, doc):
                    hits.extend(Hit(r) for r in self._by_category[c].matches(ecs))
        if len(hits) > 1:  # in the order the rules were loaded, whatever the dispatch's
            rank = self._rank
            hits.sort(key=lambda h: rank[id(h.rule)])
        if self.python and doc is not None:
            self._evaluate_python(event, doc, hits)
        return hits

    def ecs_doc(self, event: Any, docs: list[dict]) -> dict | None:
        if self.ecs_normalize is None:
            return docs[0] if docs else None
        out = self.ecs_normalize(event)
        return out[0] if out else None

    def _evaluate_python(self, event: Any, doc: dict, hits: list[Hit]) -> None:
        ev = RuleEvent(doc)
        for r in self.python:
            try:
                if not r.matches(ev):
                    continue
                level = r.hook("severity", ev)
                hits.append(Hit(r, title=r.hook("title", ev), level=str(level).lower() if level else None,
                                context=r.hook("alert_context", ev), dedup=r.hook("dedup", ev)))
            except Exception as e:  # noqa: BLE001 - user code: counted and logged with the event, the stream goes on
                r.errors += 1
                self.rule_errors += 1
                log.warning("rule %s raised %s: %s (event %s:%s)", r.id, type(e).__name__, e, event.time,
                            event.serial)


def default_dedup(event: Any, host: str | None) -> str:
    """One activity: the same program in the same login session (host, auid, ses, exe). A tool
    that forks helpers (useradd → nscd, sss_cache) or writes many files is one alert per rule,
    and so is a user-space record (ADD_USER) that names the tool."""
    auid = ses = exe = ""
    for r in event.records:
        f = r.fields
        auid = auid or f.get("auid") or ""
        ses = ses or f.get("ses") or ""
        msg = f.get("msg")
        exe = exe or f.get("exe") or (msg.get("exe") if isinstance(msg, dict) else None) or ""
        if auid and ses and exe:
            break
    return f"{host or ''}|{auid}|{ses}|{exe}"


class DetectStage:
    """The detection stage (`pipeline.stages.Stage`): passes documents on and appends alerts."""

    name = "detect"

    def __init__(self, cfg: DetectConfig, fmt: str, resolver: Any = None, context: frozenset[str] = frozenset(),
                 rules: RuleSet | None = None) -> None:
        self.cfg = cfg
        try:
            self.rules = rules if rules is not None else load_rules(cfg.rules, context)
        except FileNotFoundError as e:
            raise ConfigError(str(e), where="[detect] rules") from None
        if cfg.strict and self.rules.problems:
            p = self.rules.problems[0]
            raise ConfigError(f"{p.path}: {p.title}: {p.reason} ({len(self.rules.problems)} rules cannot run; "
                              "strict = true)", where="[detect] rules")
        for p in self.rules.problems:
            log.info("detect: rule not run: %s (%s): %s", p.title, p.path, p.reason)
        ecs_normalize = None
        if fmt != "ecs":
            from auditpipe.normalize.ecs import make_ecs_normalizer

            ecs_normalize = make_ecs_normalizer(resolver=resolver)
        self.engine = Engine(self.rules, Interpreter(resolver), ecs_normalize)
        self.host = cfg.host or socket.gethostname()
        self.dedup = Deduper(window=cfg.dedup_minutes * 60.0)
        self.alerts = 0
        self._latest = 0.0

    def process(self, event: Any, docs: list[dict], now: float) -> list[dict]:
        hits = self.engine.evaluate(event, docs)
        if not hits:
            return docs
        host = event.node or self.host
        t = event.ts
        self._latest = max(self._latest, t)
        out = list(docs)
        embedded = docs[0] if docs else None
        for h in hits:
            key = h.dedup if h.dedup is not None else default_dedup(event, host)
            minutes = getattr(h.rule, "dedup_minutes", None)
            if not self.dedup.admit(h.rule.id, str(key), t, None if minutes is None else float(minutes) * 60.0):
                continue
            out.append(build_alert(h.rule, event.id, embedded, host, now, title=h.title, level=h.level,
                                   context=h.context, dedup_key=str(key)))
            self.alerts += 1
        return out

    def tick(self, now: float) -> list[dict]:
        self.dedup.expire(self._latest)
        return []

    def close(self, now: float) -> list[dict]:
        return []

    def metrics(self) -> dict[str, int | float]:
        m: dict[str, int | float] = {
            "detect.rules_sigma": len(self.rules.sigma), "detect.rules_python": len(self.rules.python),
            "detect.rules_not_run": len(self.rules.problems), "detect.alerts": self.alerts,
            "detect.suppressed": sum(self.dedup.suppressed.values()), "detect.rule_errors": self.engine.rule_errors,
            "detect.events": self.engine.evaluated,
        }
        for rid, n in self.dedup.suppressed.items():
            m[f"detect.suppressed.{rid}"] = n
        for r in self.rules.python:
            if r.errors:
                m[f"detect.rule_errors.{r.id}"] = r.errors
        return m
