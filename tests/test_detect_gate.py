"""The engine's dispatch (per-type specialization, basename indexes, literal gates) never drops a
match: on every event it fires exactly the rules a plain evaluation of every rule's own
predicate on every record (and on the ECS document) fires.

Events: the three shared corpora, and events crafted from the rules themselves — for every
auditd and category rule, records satisfying each branch of its condition, with variants that
exercise where a value can come from (upper case, the SYSCALL record, a user-space ``msg``, an
EXECVE argument the kernel split in two)."""

from __future__ import annotations

import gzip
import itertools
import re
from collections.abc import Iterator
from typing import Any

import pytest
from sigma.conditions import (
    ConditionAND,
    ConditionFieldEqualsValueExpression,
    ConditionNOT,
    ConditionOR,
    ConditionValueExpression,
)
from sigma.types import (
    SigmaCIDRExpression,
    SigmaExists,
    SigmaNumber,
    SigmaString,
    SpecialChars,
)

from auditpipe.detect.engine import Engine, RuleSet, category_applies, load_rules
from auditpipe.detect.sigma_match import regex_literals
from auditpipe.detect.sigma_rules import SigmaDetection
from auditpipe.detect.views import EcsView, Interpreter, RecordView
from auditpipe.normalize.ecs import make_ecs_normalizer
from auditpipe.normalize.idresolve import IdResolver
from auditpipe.parsing import parse_line
from auditpipe.parsing.record import Record
from auditpipe.reassembly import Reassembler
from auditpipe.reassembly.reassembler import Event
from conftest import shared_path


@pytest.fixture(scope="module")
def rules() -> RuleSet:
    linux = shared_path("sigma", "rules", "linux")
    return load_rules([str(linux / c) for c in ("auditd", "process_creation", "file_event", "network_connection")])


def reference(rules: RuleSet, interp: Interpreter, event: Any, doc: dict | None) -> set[int]:
    """Every rule's own predicate on every record, then on the document: no specialization,
    index or gate. A rule bound to no record type is tried on the records holding a field it
    needs (the engine's stated semantics)."""
    records = event.records
    syscall = next((r for r in records if r.type == "SYSCALL"), None)
    sc_view = RecordView(syscall, None, interp) if syscall is not None else None
    views = [sc_view if r is syscall else RecordView(r, sc_view, interp) for r in records]
    fired = set()
    for rule in rules.sigma:
        if rule.kind == "record":
            for rec, view in zip(records, views, strict=True):
                if rule.types is None and rule.required is not None and rule.required.isdisjoint(rec.fields):
                    continue
                if rule.predicate(view):
                    fired.add(id(rule))
                    break
        elif doc is not None and category_applies(rule.category, doc) and rule.predicate(EcsView(doc)):
            fired.add(id(rule))
    return fired


def assert_agree(rules: RuleSet, events: Iterator[tuple[Any, dict | None]]) -> tuple[int, set[int]]:
    """Engine == reference on every event, hits once each in rule load order; (events, rules fired)."""
    interp = Interpreter(IdResolver())
    engine = Engine(rules, interp)
    n = 0
    fired: set[int] = set()
    names = {id(r): r.title for r in rules.sigma}
    rank = {id(r): i for i, r in enumerate(rules.sigma)}
    for ev, doc in events:
        hits = engine.evaluate(ev, [doc] if doc is not None else [])
        order = [rank[id(h.rule)] for h in hits]
        assert order == sorted(set(order)), f"{ev!r}: hits not once each in rule load order"
        got = {id(h.rule) for h in hits}
        want = reference(rules, interp, ev, doc)
        extra, missed = sorted(names[i] for i in got - want), sorted(names[i] for i in want - got)
        assert got == want, f"{ev!r} {[r.fields for r in ev.records]}: engine fired {extra} too many, missed {missed}"
        n += 1
        fired |= got
    return n, fired


def corpus_events(name: str) -> Iterator[tuple[Any, dict | None]]:
    path = shared_path("corpus", name)
    opener = gzip.open if name.endswith(".gz") else open
    with opener(path, "rt", encoding="utf-8", errors="surrogateescape", newline="\n") as f:
        lines = f.read().split("\n")
    r = Reassembler()
    norm = make_ecs_normalizer(resolver=IdResolver())
    for line in lines:
        if line:
            for ev in r.feed(parse_line(line)):
                docs = norm(ev)
                yield ev, docs[0] if docs else None
    for ev in r.flush():
        docs = norm(ev)
        yield ev, docs[0] if docs else None


@pytest.mark.parametrize("name", ["enriched.log", "raw-node.log",
                                  pytest.param("bench.log.gz", marks=pytest.mark.slow)])
def test_gate_agrees_with_plain_evaluation_on_the_corpora(rules, name):
    n, fired = assert_agree(rules, corpus_events(name))
    assert n > 100 and fired  # the corpora's workload fires rules (docs/detect.md lists them)


# ------------------------------------------------------------------ events crafted from the rules
def _example(value: Any) -> str | None:
    """A string the test accepts (None: the test asks for something this generator skips)."""
    if isinstance(value, SigmaString):
        return "".join(p if isinstance(p, str) else ("" if p is SpecialChars.WILDCARD_MULTI else "x")
                       for p in value.s)
    if isinstance(value, SigmaNumber):
        return str(value.number)
    if isinstance(value, SigmaCIDRExpression):
        return str(value.network.network_address)
    if isinstance(value, SigmaExists):
        return "1" if value.exists else None
    return None


def satisfying(node: Any, limit: int = 24) -> list[dict[str, str]]:
    """Field assignments meant to satisfy the condition, one per branch of each OR (negations
    and values this generator cannot invert are left open: the reference decides)."""
    if isinstance(node, ConditionOR):
        return [a for arg in node.args for a in satisfying(arg, limit)][:limit]
    if isinstance(node, ConditionAND):
        parts = [satisfying(arg, limit) for arg in node.args]
        return [_merge(combo) for combo in itertools.islice(itertools.product(*parts), limit)]
    if isinstance(node, ConditionNOT):
        return [{}]
    if isinstance(node, ConditionFieldEqualsValueExpression):
        v = _example(node.value)
        if v is None:
            return [{}]
        # contains/startswith/endswith: the literal inside a longer value
        return [{node.field: f"/zz/{v}" if str(node.value).startswith("*") else v}]
    if isinstance(node, ConditionValueExpression):
        v = _example(node.value)
        return [{"\x00kw": v}] if v is not None else [{}]
    return [{}]


def _merge(parts: tuple[dict[str, str], ...]) -> dict[str, str]:
    """One assignment from several: tests of one field (``|contains|all``) share its value."""
    out: dict[str, str] = {}
    for d in parts:
        for k, v in d.items():
            out[k] = f"{out[k]} {v}" if k in out and v not in out[k] else v
    return out


_BASE_SYSCALL = {"arch": "c000003e", "syscall": "59", "success": "yes", "exit": "0", "a0": "55ae0faa9330",
                 "a1": "7ffd1", "a2": "7ffd2", "a3": "8", "items": "1", "ppid": "1", "pid": "2", "auid": "1000",
                 "uid": "1000", "euid": "1000", "ses": "3", "comm": "true", "exe": "/usr/bin/true", "key": "exec"}


def _record(rtype: str, fields: dict, enriched: dict | None, serial: int) -> Record:
    return Record(None, rtype, 0, "1700000000.000", 1700000000, 0, serial, fields, enriched, "")


def _event(records: list[Record], serial: int) -> Event:
    ev = Event(None, "1700000000.000", 1700000000, 0, serial)
    ev.records.extend(records)
    return ev


def record_events(rule: SigmaDetection, serial: Iterator[int]) -> Iterator[tuple[Any, None]]:
    """Events holding a record crafted from each branch of an auditd rule, and its variants."""
    for tree in rule.condition_sql:
        for a in satisfying(tree):
            rtype = a.pop("type", None) or min(rule.types or {"SYSCALL"})
            rtype = rtype.upper()
            kw = a.pop("\x00kw", None)
            low = {k: v for k, v in a.items() if not k[:1].isupper()}
            up = {k: v for k, v in a.items() if k[:1].isupper()} or None
            if kw is not None:
                low["kwfield"] = kw
            # numbers written as float() still reads them (the number index must not miss them)
            variants = [low, {k: v.upper() for k, v in low.items()},
                        {k: f" +{v}.0" if v.isdecimal() else v for k, v in low.items()}]
            for fields in variants:
                yield _pair(rtype, dict(fields), up, {}, next(serial))
            if rtype != "SYSCALL":  # a field the record lacks comes from its SYSCALL
                yield _pair(rtype, {}, up, low, next(serial))
                yield _pair(rtype, {"msg": dict(low)}, up, {}, next(serial))  # user-space msg='…'
            if rtype == "EXECVE":  # the kernel splits a long argument in pieces
                split = {}
                for k, v in low.items():
                    if k[:1] == "a" and k[1:].isdigit() and len(v) > 1:
                        h = len(v) // 2
                        split.update({f"{k}_len": str(len(v)), f"{k}[0]": v[:h], f"{k}[1]": v[h:]})
                    else:
                        split[k] = v
                yield _pair(rtype, {"argc": "8", **split}, up, {}, next(serial))


def _pair(rtype: str, fields: dict, enriched: dict | None, sc_extra: dict, serial: int) -> tuple[Any, None]:
    syscall = {**_BASE_SYSCALL, **sc_extra}
    if rtype == "SYSCALL":
        return _event([_record("SYSCALL", {**syscall, **fields}, enriched, serial)], serial), None
    return _event([_record("SYSCALL", syscall, None, serial), _record(rtype, fields, enriched, serial)], serial), None


def _doc(a: dict[str, str]) -> dict:
    doc: dict = {}
    for path, v in a.items():
        cur = doc
        *parents, last = path.split(".")
        for p in parents:
            cur = cur.setdefault(p, {})
        cur[last] = v
    proc = doc.setdefault("process", {})
    proc.setdefault("args", (proc.get("command_line") or proc.get("executable") or "x").split())
    if "network" in doc and "initiated" in doc["network"]:
        doc["network"]["direction"] = "egress" if doc["network"].pop("initiated") == "true" else "ingress"
    return doc


def category_events(rule: SigmaDetection, serial: Iterator[int]) -> Iterator[tuple[Any, dict]]:
    """An event per branch of a category rule: the gate's record (EXECVE, a CREATE PATH, a
    SOCKADDR) and an ECS document crafted to satisfy the branch."""
    rtype = {"process_creation": "EXECVE", "file_event": "PATH", "network_connection": "SOCKADDR"}[rule.category]
    for tree in rule.condition_sql:
        for a in satisfying(tree):
            a.pop("\x00kw", None)
            for values in (a, {k: v.upper() for k, v in a.items()}):
                doc = _doc(values)
                if rule.category == "file_event":
                    doc.setdefault("auditd", {})["paths"] = [{"nametype": "CREATE"}]
                if rule.category == "network_connection":
                    doc.setdefault("destination", {}).setdefault("ip", "10.0.0.1")
                s = next(serial)
                yield _event([_record("SYSCALL", dict(_BASE_SYSCALL), None, s), _record(rtype, {}, None, s)], s), doc


def test_gate_agrees_with_plain_evaluation_on_events_crafted_from_every_rule(rules):
    serial = itertools.count(1)
    crafted = [p for r in rules.sigma
               for p in (record_events(r, serial) if r.kind == "record" else category_events(r, serial))]
    n, fired = assert_agree(rules, iter(crafted))
    missed = sorted(r.title for r in rules.sigma if id(r) not in fired)
    # the crafted events hit nearly every rule: the agreement is about matches, not misses
    assert n > 1000 and len(missed) <= len(rules.sigma) // 20, missed


def test_gate_agrees_on_regex_rules_gated_by_their_literals(rules):
    """A ``|re`` rule is gated on the literals its regex requires (Pnscan's ``-(W|R)…``: -w or
    -r): it still fires on every command line its regex finds, in either case of the rest."""
    pnscan = next(r for r in rules.sigma if r.title.startswith("Pnscan"))
    lines = ['pnscan -W "0a 1b 2c" 10.0.0.0/8', "pnscan -R '4142434445' host", "PNSCAN -R 41 42 43 x",
             "tar -r -w x", "pnscan -w 0a1b2c x", "rm -rf /tmp/x"]
    serial = itertools.count(1)
    events = []
    for line in lines:
        s = next(serial)
        doc = _doc({"process.command_line": line, "process.executable": "/usr/bin/pnscan"})
        events.append((_event([_record("SYSCALL", dict(_BASE_SYSCALL), None, s), _record("EXECVE", {}, None, s)], s),
                       doc))
    _, fired = assert_agree(rules, iter(events))
    assert id(pnscan) in fired


@pytest.mark.parametrize(("pattern", "flags", "literals", "matches"), [
    (r"""-(W|R)\s?(\s|"|')([0-9a-fA-F]{2}\s?){2,20}(\s|"|')""", 0, {"-w", "-r"}, ['x -W "0a 0b"']),
    ("foo.*bar", 0, {"foo"}, ["xxFOOfoo bar"]),
    ("(?:wget|curl) http", 0, {"wget http", "curl http"}, ["curl http://x"]),
    ("(abc)+x", 0, {"abc"}, ["abcabcx"]),
    ("a?b", 0, {"b"}, ["b"]),
    ("x{3}yz", 0, {"yz"}, ["xxxyz"]),
    ("[a-z]+", 0, None, ["q"]),
    ("a|.b", 0, {"a", "b"}, ["zb", "a"]),
    # under IGNORECASE, s, k and i also match ſ, K (Kelvin) and İ: no literal holding them is trusted
    ("(?i)kiss", 0, None, ["\u212a\u0130\u017f\u017f"]),
    ("sk", re.IGNORECASE, None, ["\u017f\u212a"]),
    ("(?i:ab)Z", 0, {"abz"}, ["ABZ"]),
])
def test_regex_literals_are_in_every_match(pattern, flags, literals, matches):
    """The literals a regex is gated on: exactly those expected, and one of them is in the
    lower-cased text of every string the regex finds (examples include the awkward ones)."""
    got = regex_literals(pattern, flags)
    assert got == (frozenset(literals) if literals is not None else None)
    for text in matches:
        assert re.search(pattern, text, flags), text
        assert got is None or any(lit in text.lower() for lit in got), (pattern, text)


def test_two_dispatches_with_the_same_literals_on_other_fields(tmp_path):
    """A gate is a compiled pattern, shared by every dispatch with the same literals: the
    SYSCALL search remembered for one set of fields must not answer for another set."""
    for name, rtype, prefix in (("a", "PATH", "f"), ("b", "CWD", "g")):
        sels = "".join(f"  s{i}:\n    type: {rtype}\n    {prefix}{c}|contains: {lit}\n"
                       for i, (c, lit) in enumerate(zip("abc", ("qqone", "qqtwo", "qqthree"), strict=True)))
        (tmp_path / f"{name}.yml").write_text(
            f"title: rule {name}\nid: 00000000-0000-4000-8000-00000000000{name}\nstatus: test\n"
            f"logsource:\n  product: linux\n  service: auditd\ndetection:\n{sels}  condition: 1 of s*\n"
            "level: high\n")
    rules = load_rules([str(tmp_path)])
    assert len(rules.sigma) == 2
    for order in (("PATH", "CWD"), ("CWD", "PATH")):
        recs = [_record("SYSCALL", {"syscall": "open", "ga": "xqqonex"}, None, 1)]
        recs += [_record(t, {"item": "0"} if t == "PATH" else {"cwd": "/"}, None, 1) for t in order]
        _, fired = assert_agree(rules, iter([(_event(recs, 1), None)]))
        assert {r.title for r in rules.sigma if id(r) in fired} == {"rule b"}, order
