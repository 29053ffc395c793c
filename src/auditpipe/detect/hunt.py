"""Sigma over history: the same compiled rules, run over the lake with DuckDB.

Category rules (process_creation, file_event, network_connection) become SQL: the condition tree
that the stream evaluates is converted here against the SQL side of
:data:`auditpipe.detect.views.ECS_SOURCES`, with the same string semantics (case-insensitive,
wildcards, ``|re``, numbers as text or value, CIDR as pySigma's wildcard prefixes).

Auditd rules are per *record* and the lake stores per-event ECS documents: they are hunted over
the records kept in ``event.original`` (written when ``include_raw`` is on). SQL selects the
candidate events (time range, record types the rule needs, as text), and the very predicate the
stream uses evaluates them — so a hunt and the stream agree by construction. Events stored
without ``event.original`` cannot be hunted by auditd rules; they are counted and reported.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import orjson
from sigma.conditions import (
    ConditionAND,
    ConditionFieldEqualsValueExpression,
    ConditionNOT,
    ConditionOR,
    ConditionValueExpression,
)
from sigma.types import (
    SigmaBool,
    SigmaCIDRExpression,
    SigmaCompareExpression,
    SigmaExists,
    SigmaNull,
    SigmaNumber,
    SigmaRegularExpression,
    SigmaRegularExpressionFlag,
    SigmaString,
)

from auditpipe.detect.engine import Engine, RuleSet
from auditpipe.detect.sigma_match import Unsupported, string_pattern
from auditpipe.detect.sigma_rules import SigmaDetection
from auditpipe.detect.views import ECS_SOURCES, Interpreter
from auditpipe.parsing import ParseError, parse_line
from auditpipe.reassembly import Reassembler

__all__ = ["CATEGORY_SQL", "hunt", "parse_since", "rule_sql"]

#: the SQL twin of :func:`auditpipe.detect.engine.category_applies`
CATEGORY_SQL = {
    "process_creation": "json_extract(document, '$.process.args') IS NOT NULL",
    "file_event": "list_contains(json_extract_string(document, '$.auditd.paths[*].nametype'), 'CREATE')",
    "network_connection": "json_extract_string(document, '$.destination.ip') IS NOT NULL",
}
_SQL_COMPARE = {"LT": "<", "LTE": "<=", "GT": ">", "GTE": ">=", "NEQ": "<>"}
_UNITS = {"d": 86400, "h": 3600, "m": 60, "s": 1}


def parse_since(text: str, now: float) -> float | None:
    """'30d', '12h', '90m', '45s' → the earliest timestamp; 'all' → None."""
    if text == "all":
        return None
    m = re.fullmatch(r"(\d+)([dhms])", text.strip())
    if m is None:
        raise ValueError(f"--since {text!r}: expected a number and d/h/m/s (e.g. 30d) or 'all'")
    return now - int(m.group(1)) * _UNITS[m.group(2)]


def _lit(s: str) -> str:
    return "'" + s.replace("'", "''") + "'"


def _string_sql(expr: str, value: SigmaString) -> str:
    kind, v = string_pattern(value)
    if kind == "eq":
        return f"lower({expr}) = {_lit(v)}"
    if kind == "regex":
        return f"regexp_full_match({expr}, {_lit(v)}, 'is')"
    esc = v.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    pattern = {"contains": f"%{esc}%", "startswith": f"{esc}%", "endswith": f"%{esc}"}[kind]
    return f"lower({expr}) LIKE {_lit(pattern)} ESCAPE '\\'"


def _value_sql(expr: str, value: Any) -> str:
    if isinstance(value, SigmaString):
        return _string_sql(expr, value)
    if isinstance(value, SigmaBool):
        return f"lower({expr}) = {_lit('true' if value.boolean else 'false')}"
    if isinstance(value, SigmaNumber):
        return f"({expr} = {_lit(str(value.number))} OR TRY_CAST({expr} AS DOUBLE) = {value.number})"
    if isinstance(value, SigmaCompareExpression):
        return f"TRY_CAST({expr} AS DOUBLE) {_SQL_COMPARE[value.op.name]} {value.number.number}"
    if isinstance(value, SigmaRegularExpression):
        flags = "".join({SigmaRegularExpressionFlag.IGNORECASE: "i", SigmaRegularExpressionFlag.MULTILINE: "m",
                         SigmaRegularExpressionFlag.DOTALL: "s"}[f] for f in value.flags)
        rx = value.regexp.to_plain_regex() if isinstance(value.regexp, SigmaString) else str(value.regexp)
        return f"regexp_matches({expr}, {_lit(rx)}{', ' + _lit(flags) if flags else ''})"
    if isinstance(value, SigmaCIDRExpression):
        # pySigma expands a network into wildcard prefixes (10.0.*, fe8?:*): exact for addresses
        return "(" + " OR ".join(_string_sql(expr, SigmaString(p)) for p in value.expand()) + ")"
    raise Unsupported(f"value type {type(value).__name__} has no SQL form")


def _node_sql(node: Any) -> str:
    if isinstance(node, ConditionAND):
        return "(" + " AND ".join(_node_sql(a) for a in node.args) + ")"
    if isinstance(node, ConditionOR):
        return "(" + " OR ".join(_node_sql(a) for a in node.args) + ")"
    if isinstance(node, ConditionNOT):
        return f"(NOT coalesce({_node_sql(node.args[0])}, false))"
    if isinstance(node, ConditionFieldEqualsValueExpression):
        expr = ECS_SOURCES[node.field][1]
        if isinstance(node.value, SigmaNull):
            return f"coalesce({expr}, '') = ''"
        if isinstance(node.value, SigmaExists):
            return f"({expr} IS {'NOT ' if node.value.exists else ''}NULL)"
        return f"coalesce({_value_sql(expr, node.value)}, false)"
    if isinstance(node, ConditionValueExpression):
        text = "lower(concat_ws(chr(10), " + ", ".join(sql for _, sql in ECS_SOURCES.values()) + "))"
        value = node.value if isinstance(node.value, SigmaString) else SigmaString(str(node.value))
        kind, v = string_pattern(value)
        if kind == "regex":
            return f"regexp_full_match({text}, {_lit('.*' + v + '.*')}, 'is')"
        esc = v.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
        return f"({text} LIKE {_lit('%' + esc + '%')} ESCAPE '\\')"
    raise Unsupported(f"condition element {type(node).__name__} has no SQL form")


def rule_sql(rule: SigmaDetection) -> str:
    """The WHERE clause of a category rule over the lake's ``document`` column."""
    trees = rule.condition_sql
    cond = " OR ".join(_node_sql(t) for t in trees)
    return f"({CATEGORY_SQL[rule.category]}) AND ({cond})"


def _connect(lake: str):
    import duckdb

    con = duckdb.connect()
    glob = str(Path(lake) / "ecs" / "**" / "*.parquet")
    con.execute(f"CREATE VIEW events AS SELECT * FROM read_parquet({_lit(glob)}, hive_partitioning=true, "
                "union_by_name=true)")
    return con


def hunt(rules: list[SigmaDetection], lake: str, since: float | None) -> tuple[list[dict], list[str]]:
    """Matches of ``rules`` in the lake since ``since`` (epoch seconds; None: everything), and
    what could not be hunted. Each match: timestamp, host, event_id, rule_id, rule."""
    if not any(Path(lake, "ecs").rglob("*.parquet")):
        return [], [f"{lake}: no ECS Parquet files under ecs/"]
    con = _connect(lake)
    where_time = "" if since is None else f"timestamp >= to_timestamp({since}) AND "
    matches: list[dict] = []
    problems: list[str] = []
    for r in (r for r in rules if r.kind == "ecs"):
        try:
            sql = rule_sql(r)
        except Unsupported as e:
            problems.append(f"{r.title}: {e}")
            continue
        rows = con.execute(f"SELECT timestamp, host, event_id FROM events WHERE {where_time}{sql} "
                           "ORDER BY timestamp, event_id").fetchall()
        matches.extend(_match(ts, host, eid, r) for ts, host, eid in rows)
    record_rules = [r for r in rules if r.kind == "record"]
    if record_rules:
        _hunt_records(con, record_rules, where_time, matches, problems)
    matches.sort(key=lambda m: (m["timestamp"], m["event_id"], m["rule_id"]))
    return matches, problems


def _match(ts: Any, host: str, event_id: str, rule: Any) -> dict:
    return {"timestamp": ts.isoformat() if hasattr(ts, "isoformat") else str(ts), "host": host,
            "event_id": event_id, "rule_id": rule.id, "rule": rule.title}


def _hunt_records(con: Any, rules: list[SigmaDetection], where_time: str, matches: list[dict],
                  problems: list[str]) -> None:
    """Auditd rules over the records kept in event.original (see the module docstring)."""
    types: set[str] | None = set()
    for r in rules:
        if r.types is None:
            types = None
            break
        types |= r.types  # type: ignore[operator]
    like = "" if types is None else " AND (" + " OR ".join(
        f"document LIKE {_lit('%type=' + t + ' %')}" for t in sorted(types)) + ")"
    missing = con.execute(f"SELECT count(*) FROM events WHERE {where_time}"
                          "json_extract(document, '$.event.original') IS NULL").fetchone()[0]
    if missing:
        problems.append(f"{missing} events stored without event.original (include_raw off): auditd rules "
                        "cannot see their records")
    engine = Engine(RuleSet(rules, [], []), Interpreter(None))
    cur = con.execute(f"SELECT timestamp, host, event_id, json_extract(document, '$.event.original') FROM events "
                      f"WHERE {where_time}json_extract(document, '$.event.original') IS NOT NULL{like}")
    while batch := cur.fetchmany(2048):
        for ts, host, eid, original in batch:
            for ev in _events_of(orjson.loads(original)):
                matches.extend(_match(ts, host, eid, h.rule) for h in engine.evaluate(ev, []))


def _events_of(lines: list[str]) -> list:
    r = Reassembler(timeout=float("inf"))
    out = []
    for line in lines:
        try:
            out.extend(r.feed(parse_line(line)))
        except ParseError:
            continue  # the stream rejected it too
    out.extend(r.flush())
    return out
