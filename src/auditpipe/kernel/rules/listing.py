"""``audit_rule_data`` -> the exact line ``auditctl -l`` (audit 3.0.9) prints for it.

Reproduces auditctl's quirks on purpose, so our `rules list` / `rules diff` output can be compared
with auditctl's line for line:

* a rule whose fields are only path/dir/perm/key and whose mask is "all" prints as a watch
  (``-w PATH -p PERM -k KEY``), even when it was written with ``-F path=``/``-F dir=`` or has the
  ``never`` action; a dir watch prints without its trailing ``/``;
* ``-F arch=`` prints ``b64``/``b32``, whatever name was used; a0..a3 print as hex;
  ``exit`` as ``-ENAME`` when negative; uids and other numbers as signed decimal (unset = -1);
* ``exe`` always prints with ``=`` (auditctl 3.0.9 drops a ``!=``);
* several keys print as several ``-F key=`` (``-k`` for watches).
"""

from __future__ import annotations

import platform

from auditpipe.tables import ERRNO_NAMES, FSTYPES, RECORD_TYPE_NAMES, SYSCALLS, URING_OPS, K

from .names import (
    ACTION_BY_NUM,
    ARG_FIELDS,
    COMPARISON_NAMES,
    FIELD_BY_NUM,
    LIST_BY_NUM,
    LSM_FIELDS,
    OP_SYMBOLS,
    PERM_LETTERS,
    is_64bit,
    machine_key,
    table_of,
)
from .ruledata import RuleData

_FSTYPE_NAMES = {v: k for k, v in FSTYPES.items()}
_WATCH_FIELDS = frozenset({K.PERM, K.FILTERKEY, K.DIR, K.WATCH})
_NO_SYSCALL_LISTS = frozenset({K.FILTER_USER, K.FILTER_TASK, K.FILTER_EXCLUDE, K.FILTER_FS})


def _s32(v: int) -> int:
    return v - (1 << 32) if v & 0x80000000 else v


def _text(b: bytes | None) -> str:
    return (b or b"").decode("utf-8", "surrogateescape")


def is_watch(rule: RuleData) -> bool:
    """auditctl's is_watch(): only watch-ish fields, a perm field, and (on lists that take
    syscalls) an all-syscalls mask."""
    nums = [f.field & ~K.OPERATORS for f in rule.fields]
    if any(n not in _WATCH_FIELDS for n in nums) or K.PERM not in nums:
        return False
    return rule.list in _NO_SYSCALL_LISTS or rule.all_syscalls()


def _syscalls(rule: RuleData, table: str | None) -> str:
    if rule.all_syscalls():
        return " -S all"
    nums = rule.syscalls()
    if not nums:
        return ""
    names = (URING_OPS if rule.list == K.FILTER_URING_EXIT else
             SYSCALLS.get(table, {}) if table else {})
    return " -S " + ",".join(names.get(n, str(n)) for n in nums)


def format_rule(rule: bytes | RuleData, machine: str | None = None) -> str:
    """One rule as ``auditctl -l`` prints it. ``machine`` (uname -m, default: this host) names
    syscalls of rules that carry no ``-F arch``."""
    r = rule if isinstance(rule, RuleData) else RuleData.from_bytes(rule)
    watch = is_watch(r)
    out: list[str] = []
    table = machine_key(machine or platform.machine())
    if not watch:
        lst = LIST_BY_NUM.get(r.flags & ~K.FILTER_PREPEND, "(null)")
        out.append(f"-a {ACTION_BY_NUM.get(r.action, '(null)')},{lst}")
        for f in r.fields:
            if f.field & ~K.OPERATORS == K.ARCH:
                sym = OP_SYMBOLS.get(f.op & K.OPERATORS, "")
                known = table_of(f.value) is not None
                bits = ("b64" if is_64bit(f.value) else "b32") if known else f"0x{f.value:X}"
                out.append(f" -F arch{sym}{bits}")
                table = table_of(f.value)
        if r.list not in _NO_SYSCALL_LISTS:
            out.append(_syscalls(r, table))
    for f in r.fields:
        num = f.field & ~K.OPERATORS
        sym = OP_SYMBOLS.get(f.op & K.OPERATORS, "")
        if num == K.ARCH:
            continue
        name = FIELD_BY_NUM.get(num)
        if name is None:
            out.append(f" f{f.field}{sym}{_s32(f.value)}")
        elif num == K.MSGTYPE:
            out.append(f" -F {name}{sym}{RECORD_TYPE_NAMES.get(f.value, _s32(f.value))}")
        elif num in LSM_FIELDS:
            out.append(f" -F {name}{sym}{_text(f.text)}")
        elif num == K.WATCH:
            out.append(f"-w {_text(f.text)}" if watch else f" -F path={_text(f.text)}")
        elif num == K.DIR:
            out.append(f"-w {_text(f.text)}" if watch else f" -F dir={_text(f.text)}")
        elif num == K.EXE:
            out.append(f" -F exe={_text(f.text)}")
        elif num == K.FILTERKEY:
            for key in _text(f.text).split(chr(K.KEY_SEPARATOR)):
                if key:  # strtok() skips empty pieces
                    out.append(f" -k {key}" if watch else f" -F key={key}")
        elif num == K.PERM:
            perms = "".join(c for c, bit in PERM_LETTERS if f.value & bit)
            out.append(f" -p {perms}" if watch else f" -F perm={perms}")
        elif num == K.FSTYPE and f.value in _FSTYPE_NAMES:
            out.append(f" -F {name}{sym}{_FSTYPE_NAMES[f.value]}")
        elif num == K.INODE:
            out.append(f" -F {name}{sym}{f.value}")
        elif num == K.FIELD_COMPARE:
            pair = COMPARISON_NAMES.get(f.value)
            if pair:
                out.append(f" -C {pair[0]}{sym}{pair[1]}")
        elif num in ARG_FIELDS:
            out.append(f" -F {name}{sym}0x{f.value:X}")
        elif num == K.EXIT:
            v = _s32(f.value)
            err = ERRNO_NAMES.get(-v) if v < 0 else None
            out.append(f" -F {name}{sym}-{err}" if err else f" -F {name}{sym}{v}")
        else:
            out.append(f" -F {name}{sym}{_s32(f.value)}")
    return "".join(out)


def list_order(rules: list[RuleData]) -> list[RuleData]:
    """Rules in the order the kernel lists them: by filter list number, ``-A`` rules first
    within their list (most recent first), others in load order."""
    lists: dict[int, list[RuleData]] = {}
    for r in rules:
        bucket = lists.setdefault(r.list, [])
        if r.flags & K.FILTER_PREPEND:
            bucket.insert(0, r)
        else:
            bucket.append(r)
    return [r for n in sorted(lists) for r in lists[n]]
