"""Rules-file lint: what a rule set will do on the hosts it is meant for, before it is loaded.

Compiling says whether each line is valid *here*; the lint also says

* **per arch**: a syscall that does not exist on an arch the rules are meant for (``open``,
  ``chmod``, … on aarch64, a common reason rule sets fail on ARM hosts). The arches are the
  ones asked for plus every arch a file names with ``-F arch=NAME``;
* **duplicates** (the kernel refuses the second copy) and **shadowed rules**: the kernel takes
  the first rule of a list that matches, so a later rule whose every event an earlier rule
  (``never``, or the same rule with another key) already matches can never fire;
* rules that audit **every syscall** (``-S all`` without a filter: a log flood);
* lines after ``-e 2``: the kernel is locked from there on and refuses them.

Findings are errors (the line will fail or never work) or warnings, each with file:line.
"""

from __future__ import annotations

import platform
import re
from collections.abc import Iterable
from dataclasses import dataclass

from auditpipe.tables import MACHINES, K

from .listing import list_order
from .parser import RuleItem, parse_rules
from .ruledata import MASK_ALL, Field, RuleData

_ARCH_NAME = re.compile(r"-F\s*arch\s*=\s*([A-Za-z0-9_]+)")
_NOT_A_FILTER = frozenset({K.FILTERKEY, K.ARCH})
_INODE_FIELDS = frozenset({K.WATCH, K.DIR, K.INODE})


@dataclass(frozen=True, order=True)
class Finding:
    file: str
    line: int
    severity: str  # "error" | "warning"
    message: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line}: {self.severity}: {self.message}"


def named_arches(text: str) -> list[str]:
    """Machine names a rules text gives with ``-F arch=NAME`` (not b32/b64), as table names."""
    found = [MACHINES.get(m.group(1).lower()) for m in _ARCH_NAME.finditer(text)]
    return sorted({a for a in found if a})


def lint(files: Iterable[tuple[str, str]], arches: Iterable[str] = (),
         machine: str | None = None) -> list[Finding]:
    """Lint rules texts ``(file name, text)`` as one rule set, loaded in the given order, for
    ``machine`` (default: this host) and every arch in ``arches`` and named in the files."""
    files = list(files)
    host = MACHINES.get(machine or platform.machine(), machine or platform.machine())
    targets = set(arches) | {a for _, text in files for a in named_arches(text)}
    findings: set[Finding] = set()
    items: list[RuleItem] = []
    for name, text in files:
        got, errors = parse_rules(text, name, machine=host)
        items.extend(got)
        host_errors = {(e.line, e.message) for e in errors}
        for arch in sorted(targets - {host}):
            lines_seen: set[int] = set()
            for e in parse_rules(text, name, machine=arch)[1]:
                # the first new problem of a line; the rest follow from it (-k after a bad -S)
                if (e.line, e.message) not in host_errors and e.line not in lines_seen:
                    lines_seen.add(e.line)
                    findings.add(Finding(name, e.line, "error", f"on {arch}: {e.message}"))
    findings.update(_after_lock(items))
    findings.update(_everything(items))
    findings.update(_shadowed(items))
    return sorted(findings)


def _after_lock(items: list[RuleItem]) -> Iterable[Finding]:
    locked_at: RuleItem | None = None
    for it in items:
        if locked_at is not None:
            yield Finding(it.file, it.line, "error",
                          f"after -e 2 ({locked_at.file}:{locked_at.line}): the kernel is "
                          "locked by then and refuses this line")
        elif it.op == "control" and it.control == "enabled" and it.value == 2:
            locked_at = it


def _everything(items: list[RuleItem]) -> Iterable[Finding]:
    for it in items:
        r = it.rule
        if (r is not None and it.op == "add" and r.action == K.ALWAYS
                and r.list == K.FILTER_EXIT and r.mask == list(MASK_ALL)
                and not _filters(r)):
            yield Finding(it.file, it.line, "warning",
                          "audits every syscall (-S all without a filter): a log flood; add "
                          "-F filters (auid, exe, path, success, ...)")


def _filters(r: RuleData) -> frozenset[Field]:
    """The conditions a rule tests (its key and arch alone do not narrow -S all)."""
    return frozenset(f for f in r.fields if f.field & ~K.OPERATORS not in _NOT_A_FILTER)


def _conditions(r: RuleData) -> frozenset[Field]:
    return frozenset(f for f in r.fields if f.field & ~K.OPERATORS != K.FILTERKEY)


def _inode_rule(r: RuleData) -> bool:
    """Watches and inode rules are matched through the kernel's inode lists, apart from the
    ordered syscall-rule walk, so order says nothing about them."""
    return any(f.field & ~K.OPERATORS in _INODE_FIELDS for f in r.fields)


def _catches(first: RuleData, later: RuleData) -> bool:
    """True when ``first`` matches every event ``later`` matches: same list, a syscall mask
    covering it, and no condition ``later`` does not also test."""
    if first.list != later.list or _inode_rule(first) or _inode_rule(later):
        return False
    if any(a & b != b for a, b in zip(first.mask, later.mask, strict=True)):
        return False
    return _conditions(first) <= _conditions(later)


def _effective(items: list[RuleItem]) -> list[tuple[RuleItem, RuleData]]:
    """The rules loaded after all lines, each with the line that added it (-D, -d, -A apply)."""
    loaded: list[tuple[RuleItem, RuleData]] = []
    for it in items:
        if it.op == "control" and it.control == "delete_all" and it.value is None:
            loaded = []
        elif it.op == "add":
            loaded.append((it, RuleData.from_bytes(it.data or b"")))
        elif it.op == "delete":
            gone = _unflagged(RuleData.from_bytes(it.data or b""))
            loaded = [(i, r) for i, r in loaded if _unflagged(r) != gone]
    by_rule = {id(r): i for i, r in loaded}
    return [(by_rule[id(r)], r) for r in list_order([r for _, r in loaded])]


def _unflagged(r: RuleData) -> RuleData:
    return RuleData(r.list, r.action, list(r.mask), list(r.fields))


def _shadowed(items: list[RuleItem]) -> Iterable[Finding]:
    seen: list[tuple[RuleItem, RuleData]] = []
    for it, r in _effective(items):
        for first_it, first in seen:
            where = f"{first_it.file}:{first_it.line}"
            if _unflagged(first) == _unflagged(r):
                yield Finding(it.file, it.line, "error",
                              f"duplicate of {where}: the kernel refuses the second copy")
                break
            if _catches(first, r):
                how = ("its 'never' rule drops them" if first.action == K.NEVER else
                       "it matches first, so the events carry its key")
                yield Finding(it.file, it.line, "warning",
                              f"can never match: {where} catches every event it would; {how}")
                break
        seen.append((it, r))
