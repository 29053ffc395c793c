"""The audit rule compiler: auditctl rule text <-> kernel ``audit_rule_data``, without I/O.

``compile_rules(text, file)`` / ``parse_rules`` turn a rules file into :class:`RuleItem` s
(rule bytes or control actions, each with its file and line); ``format_rule(bytes)`` prints a
rule the way ``auditctl -l`` does; ``expected_listing(items)`` predicts what the kernel will
list after loading the items.
"""

from __future__ import annotations

from .listing import format_rule, is_watch, list_order
from .parser import (
    RuleError,
    RuleErrors,
    RuleItem,
    compile_line,
    compile_rules,
    default_resolver,
    parse_rules,
    split_line,
)
from .ruledata import Field, RuleData

__all__ = [
    "Field", "RuleData", "RuleError", "RuleErrors", "RuleItem", "compile_file", "compile_line",
    "compile_rules", "default_resolver", "expected_listing", "format_rule", "is_watch",
    "list_order", "parse_rules", "split_line",
]


def compile_file(path: str, **opts) -> list[RuleItem]:
    """Read and compile one rules file (raises :class:`RuleErrors` with every problem)."""
    with open(path, encoding="utf-8", errors="surrogateescape") as f:
        return compile_rules(f.read(), path, **opts)


def expected_listing(items: list[RuleItem], machine: str | None = None) -> list[str]:
    """The ``auditctl -l`` lines after applying ``items`` to an empty rule set, in the kernel's
    list order: -D clears, -d removes the same rule, -A prepends."""
    loaded: list[RuleData] = []
    for it in items:
        if it.op == "control" and it.control == "delete_all":
            key = it.value
            loaded = [r for r in loaded if key is not None and not _has_key(r, str(key))]
        elif it.op == "add":
            loaded.append(RuleData.from_bytes(it.data))
        elif it.op == "delete":
            gone = _strip_prepend(RuleData.from_bytes(it.data))
            loaded = [r for r in loaded if _strip_prepend(r) != gone]
    return [format_rule(r, machine) for r in list_order(loaded)]


def _strip_prepend(r: RuleData) -> RuleData:
    return RuleData(r.list, r.action, list(r.mask), list(r.fields))


def _has_key(r: RuleData, key: str) -> bool:
    from auditpipe.tables import K
    return any(f.field == K.FILTERKEY and key.encode() in (f.text or b"") for f in r.fields)
