"""Generated audit facts (record types, arches, syscalls, errno, signals, field types, rule and
netlink constants) with small lookup helpers.

The data lives in :mod:`auditpipe.tables.generated`, made by ``scripts/gen_tables.py`` from the
installed kernel/libaudit headers, ``ausyscall``, python3-audit and libaudit's current tables
(the newest source of each table wins; ``TABLE_SOURCES`` says which); never edit it by hand.
"""

from __future__ import annotations

import re
from types import SimpleNamespace

from .generated import *  # noqa: F401,F403  (AUDIT_FIRST_*/AUDIT_LAST_* range constants)
from .generated import (
    ARCH_NAMES,
    ARCH_NUMBERS,
    AUDIT_CONSTANTS,
    CAPABILITIES,
    ENCODED_FIELDS,
    ENCODED_TYPES,
    ERRNO_NAMES,
    ERRNO_NUMBERS,
    FIELD_TYPES,
    FSTYPES,
    K_NAMES,
    MACHINES,
    RECORD_TYPE_NAMES,
    RECORD_TYPE_NUMBERS,
    RULE_FIELDS,
    SIGNAL_NAMES,
    SIGNAL_NUMBERS,
    SYSCALLS,
    TABLE_SOURCES,
    URING_OPS,
)

__all__ = [
    "ARCH_NAMES", "ARCH_NUMBERS", "AUDIT_CONSTANTS", "CAPABILITIES", "ENCODED_FIELDS",
    "ENCODED_TYPES", "ERRNO_NAMES", "ERRNO_NUMBERS", "FIELD_TYPES", "FSTYPES", "K", "MACHINES",
    "RECORD_TYPE_NAMES", "RECORD_TYPE_NUMBERS", "RULE_FIELDS", "SIGNAL_NAMES", "SIGNAL_NUMBERS",
    "SYSCALLS", "SYSCALL_NUMBERS", "TABLE_SOURCES", "URING_OPS", "URING_OP_NUMBERS",
    "arch_name", "arch_number", "errno_name", "field_type", "is_encoded", "record_type_name",
    "record_type_number", "signal_name", "syscall_name", "syscall_number",
]

#: Every audit.h/libaudit.h constant by its name without the ``AUDIT_`` prefix:
#: ``K.FILTER_EXIT``, ``K.ALWAYS``, ``K.EQUAL``, ``K.UID``, ``K.NLGRP_READLOG``, ``K.ARCH_X86_64``...
K = SimpleNamespace(**{short: AUDIT_CONSTANTS[full] for short, full in K_NAMES.items()})

#: arch name -> {syscall name: number}
SYSCALL_NUMBERS: dict[str, dict[str, int]] = {
    arch: {name: num for num, name in sorted(table.items(), reverse=True)}
    for arch, table in SYSCALLS.items()
}

#: io_uring op name -> number (auditctl 4's ``-S`` names on the io_uring list)
URING_OP_NUMBERS: dict[str, int] = {name: num for num, name in URING_OPS.items()}

_UNKNOWN_TYPE = re.compile(r"UNKNOWN\[(\d+)\]")


def record_type_name(num: int) -> str:
    """1300 -> "SYSCALL"; "UNKNOWN[n]" (as auditd writes it) when the number has no name."""
    name = RECORD_TYPE_NAMES.get(num)
    return name if name is not None else f"UNKNOWN[{num}]"


def record_type_number(name: str) -> int | None:
    """"SYSCALL" -> 1300; "UNKNOWN[1338]" -> 1338; None when unknown."""
    num = RECORD_TYPE_NUMBERS.get(name)
    if num is None and (m := _UNKNOWN_TYPE.fullmatch(name)):
        return int(m.group(1))
    return num


def _arch_key(arch: int | str) -> str | None:
    """Canonical arch name (a SYSCALLS key where there is one) for a number, hex string or name."""
    if isinstance(arch, int):
        return ARCH_NAMES.get(arch)
    if arch in SYSCALLS:
        return arch
    num = ARCH_NUMBERS.get(arch)
    if num is None:
        num = ARCH_NUMBERS.get(arch.lower())
    if num is None:
        try:  # "c000003e" as written in SYSCALL records
            num = int(arch, 16)
        except ValueError:
            return None
    return ARCH_NAMES.get(num)


def arch_name(num: int | str) -> str | None:
    """0xc000003e (or "c000003e") -> "x86_64"; None when unknown."""
    if isinstance(num, str):
        try:
            num = int(num, 16)
        except ValueError:
            return None
    return ARCH_NAMES.get(num)


def arch_number(name: str) -> int | None:
    """"x86_64" -> 0xc000003e; accepts the header names too ("arm", "armeb", "i386")."""
    return ARCH_NUMBERS.get(name, ARCH_NUMBERS.get(name.lower()))


def syscall_name(arch_num_or_name: int | str, num: int | str) -> str | None:
    """(0xc000003e | "x86_64" | "c000003e", 59) -> "execve"; None when unknown."""
    key = _arch_key(arch_num_or_name)
    table = SYSCALLS.get(key) if key else None
    if table is None:
        return None
    try:
        return table.get(int(num))
    except (TypeError, ValueError):
        return None


def syscall_number(arch_num_or_name: int | str, name: str) -> int | None:
    """("x86_64", "execve") -> 59; None when unknown."""
    key = _arch_key(arch_num_or_name)
    table = SYSCALL_NUMBERS.get(key) if key else None
    return table.get(name) if table else None


def errno_name(num: int) -> str | None:
    """13 or -13 -> "EACCES"."""
    return ERRNO_NAMES.get(abs(num))


def signal_name(num: int) -> str | None:
    """9 -> "SIGKILL"."""
    return SIGNAL_NAMES.get(num)


# auparse adjusts a few field types by record type (auparse_interp_adjust_type() in auparse's
# interpret.c): EXECVE arguments a0, a1, a2[3]... are escaped (but not argc / aN_len), USER_TTY
# msg is escaped, KERN_MODULE name is escaped; acct is escaped when quoted or all hex.
_EXECVE_ARG = re.compile(r"a\d+(\[\d+\])?")


def field_type(name: str, record_type: str | None = None) -> str | None:
    """auparse interpretation type of a field ("uid", "escaped", "sockaddr", ...), or None."""
    if record_type == "EXECVE" and _EXECVE_ARG.fullmatch(name):
        return "escaped"
    if (record_type, name) in (("USER_TTY", "msg"), ("KERN_MODULE", "name")):
        return "escaped"
    if (record_type, name) in (("AVC", "saddr"), ("CRYPTO_KEY_USER", "fp")):
        return None
    return FIELD_TYPES.get(name)


def is_encoded(name: str, record_type: str | None = None) -> bool:
    """True when the field's value is hex-encoded whenever it holds special characters."""
    if record_type is None:
        return name in ENCODED_FIELDS
    return field_type(name, record_type) in ENCODED_TYPES
