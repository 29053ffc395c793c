"""auditctl's vocabulary: field, list, action, operator, comparison, machine and file-type names,
each mapped to the kernel constants from :mod:`auditpipe.tables` (never typed in by hand)."""

from __future__ import annotations

import stat

from auditpipe.tables import ARCH_NAMES, ARCH_NUMBERS, MACHINES, RULE_FIELDS, SYSCALLS, K

# -F field names from libaudit's fieldtab.h (generated). The first name of a number is the one
# `auditctl -l` prints (loginuid prints as "auid").
FIELD_NAMES: dict[str, int] = dict(RULE_FIELDS)
FIELD_BY_NUM: dict[int, str] = {}
for _name, _num in FIELD_NAMES.items():
    FIELD_BY_NUM.setdefault(_num, _name)

UID_FIELDS = frozenset({K.UID, K.EUID, K.SUID, K.FSUID, K.LOGINUID, K.OBJ_UID})
GID_FIELDS = frozenset({K.GID, K.EGID, K.SGID, K.FSGID, K.OBJ_GID})
LSM_FIELDS = frozenset(range(K.SUBJ_USER, K.OBJ_LEV_HIGH + 1)) - {K.PPID}
#: fields whose value is a string carried in the rule's buf (kernel audit_krule_to_data)
STRING_FIELDS = LSM_FIELDS | {K.WATCH, K.DIR, K.FILTERKEY, K.EXE}
#: fields auditctl only accepts on the exit list
EXIT_ONLY_FIELDS = frozenset({K.EXIT, K.OBJ_USER, K.OBJ_ROLE, K.OBJ_TYPE, K.OBJ_LEV_LOW,
                              K.OBJ_LEV_HIGH, K.WATCH, K.DIR, K.PERM, K.FILETYPE, K.DEVMAJOR,
                              K.DEVMINOR, K.INODE, K.SUCCESS, K.PPID})
#: fields the kernel accepts on the exclude list (audit_field_valid)
EXCLUDE_FIELDS = frozenset({K.PID, K.UID, K.GID, K.LOGINUID, K.MSGTYPE, K.EXE}) | (
    frozenset(range(K.SUBJ_USER, K.SUBJ_CLR + 1)))
ARG_FIELDS = frozenset({K.ARG0, K.ARG1, K.ARG2, K.ARG3})

# -a/-d list names and `auditctl -l` names (flag_to_name); entry (2) and watch (3) are gone.
LIST_NAMES: dict[str, int] = {
    "task": K.FILTER_TASK, "exit": K.FILTER_EXIT, "user": K.FILTER_USER,
    "exclude": K.FILTER_EXCLUDE, "filesystem": K.FILTER_FS, "io_uring": K.FILTER_URING_EXIT,
}
LIST_BY_NUM = {v: k for k, v in LIST_NAMES.items()} | {K.FILTER_ENTRY: "entry"}
ACTION_NAMES = {"never": K.NEVER, "always": K.ALWAYS}
ACTION_BY_NUM = {K.NEVER: "never", K.POSSIBLE: "possible", K.ALWAYS: "always"}

# Operators in the order libaudit looks for them: the first one found anywhere in "f<op>v"
# wins, so "a0&=1" is &= and not &.
OPERATORS: tuple[tuple[str, int], ...] = (
    ("!=", K.NOT_EQUAL), (">=", K.GREATER_THAN_OR_EQUAL), ("<=", K.LESS_THAN_OR_EQUAL),
    ("&=", K.BIT_TEST), ("=", K.EQUAL), (">", K.GREATER_THAN), ("<", K.LESS_THAN),
    ("&", K.BIT_MASK),
)
OP_SYMBOLS = {num: sym for sym, num in OPERATORS}

# -C comparisons, derived from the COMPARE_<A>_TO_<B> constant names (either order is accepted;
# `auditctl -l` prints a and b in the constant's order).
COMPARISONS: dict[frozenset[int], int] = {}
COMPARISON_NAMES: dict[int, tuple[str, str]] = {}
for _kname, _val in sorted(vars(K).items()):
    if _kname.startswith("COMPARE_") and "_TO_" in _kname:
        _a, _b = (s.lower() for s in _kname[len("COMPARE_"):].split("_TO_"))
        COMPARISONS[frozenset({FIELD_NAMES[_a], FIELD_NAMES[_b]})] = _val
        COMPARISON_NAMES[_val] = (_a, _b)

PERM_LETTERS = (("r", K.PERM_READ), ("w", K.PERM_WRITE), ("x", K.PERM_EXEC), ("a", K.PERM_ATTR))
PERM_ALL = K.PERM_READ | K.PERM_WRITE | K.PERM_EXEC | K.PERM_ATTR

# -F filetype= names (libaudit ftypetab.h) -> S_IF* from the C library, via the stat module.
FILETYPES = {"block": stat.S_IFBLK, "character": stat.S_IFCHR, "dir": stat.S_IFDIR,
             "fifo": stat.S_IFIFO, "file": stat.S_IFREG, "link": stat.S_IFLNK,
             "socket": stat.S_IFSOCK}

# the 32-bit compat arch of a 64-bit machine, for -F arch=b32 (audit_determine_machine)
COMPAT_32 = {"x86_64": "i386", "ppc64": "ppc", "s390x": "s390", "aarch64": "armeb"}


def machine_key(machine: str) -> str | None:
    """A uname machine ("x86_64", "i686", "armv7l") -> its syscall table name, or None."""
    return MACHINES.get(machine)


def arch_of(name: str) -> int | None:
    """An arch name ("x86_64", "i686", "aarch64") -> AUDIT_ARCH_* value, or None."""
    key = name.lower()
    return ARCH_NUMBERS.get(MACHINES.get(key, key))


def is_64bit(arch: int) -> bool:
    return bool(arch & K.ARCH_64BIT)


def table_of(arch: int) -> str | None:
    """AUDIT_ARCH_* value -> syscall table name (a SYSCALLS key), None without a table."""
    name = ARCH_NAMES.get(arch)
    return name if name in SYSCALLS else None
