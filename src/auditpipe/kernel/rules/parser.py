"""auditctl rule text -> ``audit_rule_data`` bytes and control actions, without I/O.

The few facts that depend on the host come in as arguments: ``resolve(kind, name)`` for user
and group names (default: pwd/grp), ``is_dir(path)`` for ``-w`` (auditctl stats the path and
watches a directory as a tree), ``machine`` for the default syscall table (uname -m).

Semantics follow auditctl 3.0.9 (option order matters as in getopt: ``-F arch`` must precede
``-S``; keys are collected and appended last; ``-w`` strips trailing slashes). Deliberate
differences: numbers must be whole numbers (auditctl reads "12abc" as 12 and "inet" as 0);
quotes group a token ('a b', "a b") besides auditctl's ``\\ `` escape; io_uring rules take
op names as auditctl 4 does (``-a always,io_uring -S openat``); ``fstype`` takes libaudit's names;
and the compiled mask is the kernel's stored form (see :mod:`.ruledata`).
"""

from __future__ import annotations

import grp
import os
import platform
import pwd
import re
from collections.abc import Callable
from dataclasses import dataclass, field

from auditpipe.tables import (
    ARCH_NAMES,
    ERRNO_NUMBERS,
    FSTYPES,
    RECORD_TYPE_NUMBERS,
    SYSCALL_NUMBERS,
    URING_OP_NUMBERS,
    K,
)

from .names import (
    ACTION_NAMES,
    ARG_FIELDS,
    COMPARISONS,
    COMPAT_32,
    EXCLUDE_FIELDS,
    EXIT_ONLY_FIELDS,
    FIELD_NAMES,
    FILETYPES,
    GID_FIELDS,
    LIST_NAMES,
    OPERATORS,
    PERM_ALL,
    PERM_LETTERS,
    STRING_FIELDS,
    UID_FIELDS,
    arch_of,
    is_64bit,
    machine_key,
    table_of,
)
from .ruledata import MAX_FIELDS, MAX_SYSCALL, Field, RuleData
from .syntax import CONTROL_OPTS, NOT_IN_FILES, Problem, c_number, control, options, split_line, u32

Resolver = Callable[[str, str], "int | None"]
PATH_MAX = 4096  # linux/limits.h, as auditctl checks it
NAME_MAX = 255


class RuleError(ValueError):
    """A problem in a rules file, located: ``str()`` is ``file:line: message``."""

    def __init__(self, file: str, line: int, message: str) -> None:
        super().__init__(f"{file}:{line}: {message}")
        self.file, self.line, self.message = file, line, message


class RuleErrors(ValueError):
    """Every problem found in one or more rules files."""

    def __init__(self, errors: list[RuleError]) -> None:
        super().__init__("\n".join(str(e) for e in errors))
        self.errors = errors


@dataclass(frozen=True)
class RuleItem:
    """One effective line of a rules file.

    ``op`` is "add" or "delete" (with ``data``, the audit_rule_data bytes) or "control" (with
    ``control`` naming it and ``value``): delete_all (value: key or None), enabled, failure,
    rate_limit, backlog_limit, backlog_wait_time, loginuid_immutable, reset_lost,
    reset_backlog_wait_time_actual, ignore_errors, continue_on_error."""

    file: str
    line: int
    text: str
    op: str
    data: bytes | None = None
    control: str | None = None
    value: int | str | None = None
    warnings: tuple[str, ...] = ()

    @property
    def rule(self) -> RuleData | None:
        return RuleData.from_bytes(self.data) if self.data is not None else None


def default_resolver(kind: str, name: str) -> int | None:
    """Look a user ("user") or group ("group") name up in the local databases."""
    try:
        return (pwd.getpwnam(name).pw_uid if kind == "user" else grp.getgrnam(name).gr_gid)
    except KeyError:
        return None


# ----------------------------------------------------------------------------- one rule
@dataclass
class _Builder:
    machine: str
    resolve: Resolver
    is_dir: Callable[[str], bool]
    problems: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    op: str | None = None  # "add" | "delete"
    flags: int | None = None
    action: int | None = None
    rule: RuleData = field(default_factory=lambda: RuleData(0, 0))
    keys: list[str] = field(default_factory=list)
    arch: int = 0  # AUDIT_ARCH_* the syscalls are resolved for (0: not chosen yet)
    arch_given: bool = False
    syscall_added: bool = False
    perm_added: bool = False
    exe_added: bool = False
    fs_added: bool = False
    syscall_args: list[str] = field(default_factory=list)

    # -a / -A / -d
    def list_action(self, opt: str, val: str) -> None:
        if self.op is not None:
            raise Problem("only one -a, -A, -d, -w or -W per rule")
        parts = val.split(",")
        if len(parts) != 2:
            raise Problem(f"-{opt} {val}: expected LIST,ACTION (e.g. always,exit)")
        a, b = parts
        if a in ("possible",) or b in ("possible",):
            raise Problem("the 'possible' action is deprecated; use always")
        if "entry" in (a, b):
            raise Problem("the 'entry' list is deprecated; use exit")
        if a in ACTION_NAMES and b in LIST_NAMES:
            a, b = b, a
        if a not in LIST_NAMES or b not in ACTION_NAMES:
            raise Problem(f"-{opt} {val}: expected LIST,ACTION with LIST one of "
                           f"{', '.join(LIST_NAMES)} and ACTION always or never")
        self.flags = LIST_NAMES[a] | (K.FILTER_PREPEND if opt == "A" else 0)
        self.action = ACTION_NAMES[b]
        self.op = "delete" if opt == "d" else "add"

    @property
    def list(self) -> int | None:
        return None if self.flags is None else self.flags & K.FILTER_MASK

    # -S
    def syscalls(self, val: str) -> None:
        if self.list in (K.FILTER_TASK, K.FILTER_USER, K.FILTER_FS, K.FILTER_EXCLUDE):
            raise Problem(f"syscalls cannot be used on the {_list_name(self.list)} list")
        if self.list == K.FILTER_URING_EXIT:
            for name in val.split(","):
                if name == "all":
                    self.rule.set_all_syscalls()
                else:
                    self.rule.add_syscall(self._number(
                        name, "io_uring operation", URING_OP_NUMBERS, "(see auditpipe.tables."
                        "URING_OPS)"))
            self.syscall_added = True
            return
        if not self.arch:
            self.arch = arch_of(self.machine) or 0
            if not self.arch:
                raise Problem(f"unknown machine {self.machine!r}; give -F arch=")
        table = table_of(self.arch)
        names = SYSCALL_NUMBERS.get(table) if table else None
        for name in val.split(","):
            if name == "all":
                self.rule.set_all_syscalls()
            else:
                self.rule.add_syscall(self._number(
                    name, "syscall", names, f"for arch {table}" if table else
                    f"(no syscall table for arch 0x{self.arch:x}; use numbers)"))
        self.syscall_added = True
        self.syscall_args.append(val)

    @staticmethod
    def _number(name: str, what: str, names: dict[str, int] | None, hint: str) -> int:
        nr = names.get(name) if names else None
        if nr is None:
            nr = c_number(name) if name[:1].isdigit() else None
        if nr is None:
            raise Problem(f"unknown {what} {name!r} {hint}")
        if not 0 <= nr < MAX_SYSCALL:
            raise Problem(f"{what} number {nr} is out of range (0..{MAX_SYSCALL - 1})")
        return nr

    def _add(self, f: Field) -> None:
        if len(self.rule.fields) >= MAX_FIELDS - 1:
            raise Problem(f"too many fields (the kernel takes {MAX_FIELDS - 1} plus the key)")
        self.rule.fields.append(f)

    # -F
    def field_pair(self, pair: str) -> None:
        if self.op is None:
            raise Problem("a list (-a, -A or -d) must be given before -F")
        if pair.startswith("key="):
            self.key(pair[4:], checked=False)
            return
        for sym, op in OPERATORS:  # noqa: B007 - the operator found is used after the loop
            name, found, value = pair.partition(sym)
            if found:
                break
        else:
            raise Problem(f"-F {pair}: missing operator (= != < > <= >= & &=)")
        if not name:
            raise Problem(f"-F {pair}: missing field name")
        if not value:
            raise Problem(f"-F {pair}: missing value")
        num = FIELD_NAMES.get(name)
        if num is None or num == K.FIELD_COMPARE:
            raise Problem(f"-F unknown field: {name}" + (" (use -C)" if num else ""))
        lst = self.list
        where = f"-F {name}"
        if lst == K.FILTER_EXCLUDE and num not in EXCLUDE_FIELDS:
            raise Problem(f"{where} cannot be used on the exclude list (only pid, uid, gid, "
                           "auid, msgtype, subj_*, exe)")
        if lst == K.FILTER_FS and num != K.FSTYPE:
            raise Problem(f"{where} cannot be used on the filesystem list (only fstype, key)")
        if num in EXIT_ONLY_FIELDS and lst != K.FILTER_EXIT:
            raise Problem(f"{name} can only be used with the exit list")
        if num in STRING_FIELDS:
            self._string(num, op, name, value)
            return
        self._add(Field(num, op, self._value(num, op, name, value)))

    def _string(self, num: int, op: int, name: str, value: str) -> None:
        raw = value.encode("utf-8", "surrogateescape")
        if len(raw) > PATH_MAX:
            raise Problem(f"-F {name}: value longer than {PATH_MAX} bytes")
        if num in (K.WATCH, K.DIR):
            if op != K.EQUAL:
                raise Problem(f"-F {name} only takes the = operator")
            if not value.startswith("/"):
                raise Problem(f"-F {name}={value}: the path must start with '/'")
            if num == K.WATCH and value.endswith("/"):
                raise Problem(f"-F path={value}: a path must not end with '/' (use dir=)")
            if any(f.field in (K.WATCH, K.DIR) for f in self.rule.fields):
                raise Problem("only one path/dir (or -w) per rule")
            self.perm_added = True
        if num == K.EXE:
            if op not in (K.EQUAL, K.NOT_EQUAL):
                raise Problem("-F exe only takes the = and != operators")
            self.exe_added = True
        elif op not in (K.EQUAL, K.NOT_EQUAL):
            raise Problem(f"-F {name} only takes the = and != operators")
        self._add(Field(num, op, len(raw), raw))

    def _value(self, num: int, op: int, name: str, v: str) -> int:
        where = f"-F {name}={v}"
        if num in UID_FIELDS or num in GID_FIELDS:
            kind = "user" if num in UID_FIELDS else "group"
            if v == "unset" and kind == "user":
                return K.UID_UNSET
            n = c_number(v) if (v[:1].isdigit() or (kind == "user" and v[:1] == "-")) else None
            if n is None:
                if v[:1].isdigit() or v[:1] == "-":
                    raise Problem(f"{where}: not a number")
                n = self.resolve(kind, v)
                if n is None:
                    raise Problem(f"unknown {kind}: {v}")
            return u32(n, where)
        if num == K.EXIT:
            n = c_number(v)
            if n is None:
                neg = v.startswith("-")
                n = ERRNO_NUMBERS.get(v[1:] if neg else v)
                if n is None:
                    raise Problem(f"{where}: unknown errno name or number")
                n = -n if neg else n
            return u32(n, where)
        if num == K.MSGTYPE:
            if self.list not in (K.FILTER_EXCLUDE, K.FILTER_USER):
                raise Problem("msgtype can only be used with the exclude or user list")
            n = c_number(v) if v[:1].isdigit() else RECORD_TYPE_NUMBERS.get(v)
            if n is None:
                raise Problem(f"{where}: unknown message type")
            return u32(n, where)
        if num == K.ARCH:
            return self._arch(op, v)
        if num == K.PERM:
            if op != K.EQUAL:
                raise Problem("-F perm only takes the = operator")
            self.perm_added = True
            return _perm(v)
        if num == K.FILETYPE:
            if v not in FILETYPES:
                raise Problem(f"{where}: unknown file type (one of {', '.join(FILETYPES)})")
            return FILETYPES[v]
        if num in ARG_FIELDS:
            n = c_number(v)
            if n is None:
                raise Problem(f"{where}: not a number")
            return u32(n, where)
        if num == K.SESSIONID:
            if self.list not in (K.FILTER_EXCLUDE, K.FILTER_USER, K.FILTER_EXIT):
                raise Problem("sessionid can only be used with the exit, user or exclude list")
            n = K.SID_UNSET if v == "unset" else c_number(v)
            if n is None:
                raise Problem(f"{where}: not a number")
            return u32(n, where)
        if num == K.FSTYPE:
            self.fs_added = True
        if num in (K.INODE, K.FSTYPE) and op not in (K.EQUAL, K.NOT_EQUAL):
            raise Problem(f"-F {name} only takes the = and != operators")
        if num == K.FSTYPE and not v[:1].isdigit():
            if v not in FSTYPES:
                raise Problem(f"{where}: unknown file system type (one of "
                              f"{', '.join(sorted(FSTYPES))}, or a magic number)")
            return FSTYPES[v]
        n = c_number(v) if v[:1].isdigit() else None
        if n is None:
            raise Problem(f"{where}: not a (non-negative) number")
        return u32(n, where)

    def _arch(self, op: int, v: str) -> int:
        if self.syscall_added:
            raise Problem("-F arch must be given before -S")
        if op not in (K.EQUAL, K.NOT_EQUAL):
            raise Problem("-F arch only takes the = and != operators")
        machine = machine_key(self.machine)
        if v in ("b64", "b32"):
            if machine is None:
                raise Problem(f"-F arch={v}: unknown machine {self.machine!r}")
            m64 = is_64bit(arch_of(machine) or 0)
            if v == "b64":
                if not m64:
                    raise Problem(f"-F arch=b64 is not possible on {machine}")
                arch = arch_of(machine)
            else:
                compat = machine if not m64 else COMPAT_32.get(machine)
                if compat is None:
                    raise Problem(f"-F arch=b32: {machine} has no 32-bit syscall arch")
                arch = arch_of(compat)
        else:
            arch = c_number(v) if v[:1].isdigit() else arch_of(v)
            if arch is None and re.fullmatch(r"[0-9a-fA-F]+", v):
                arch = int(v, 16)  # "c000003e": auditctl retries an unknown name as hex
        if arch not in ARCH_NAMES:
            raise Problem(f"-F arch={v}: unknown arch")
        self.arch, self.arch_given = arch, True
        return arch

    # -C
    def compare(self, pair: str) -> None:
        if self.op is None:
            raise Problem("a list (-a, -A or -d) must be given before -C")
        for sym, op in (("!=", K.NOT_EQUAL), ("=", K.EQUAL)):  # noqa: B007 - used after the loop
            a, found, b = pair.partition(sym)
            if found:
                break
        else:
            raise Problem(f"-C {pair}: expected FIELD=FIELD or FIELD!=FIELD")
        if not a or not b:
            raise Problem(f"-C {pair}: missing field name")
        for n in (a, b):
            if n not in FIELD_NAMES:
                raise Problem(f"-C unknown field: {n}")
        if self.list != K.FILTER_EXIT:
            raise Problem("-C can only be used with the exit list")
        value = COMPARISONS.get(frozenset({FIELD_NAMES[a], FIELD_NAMES[b]}))
        if value is None:
            raise Problem(f"-C {pair}: the kernel cannot compare {a} with {b}")
        self._add(Field(K.FIELD_COMPARE, op, value))

    # -w / -W
    def watch(self, opt: str, path: str) -> None:
        if self.op is not None:
            raise Problem(f"-{opt} cannot be combined with -a, -A or -d")
        if self.rule.fields:
            raise Problem(f"-{opt} must come before -F/-C")
        if len(path.encode("utf-8", "surrogateescape")) >= PATH_MAX:
            raise Problem("the watch path is too long")
        if not path.startswith("/"):
            raise Problem(f"the watch path must start with '/': {path}")
        if len(os.path.basename(path.rstrip("/"))) > NAME_MAX:
            raise Problem("the base name of the watch path is too long")
        if ".." in path:
            self.warnings.append("relative path notation (..) is not supported")
        if "*" in path or "?" in path:
            self.warnings.append("wildcards are not supported in watch paths")
        if len(path) > 2:
            path = path.rstrip("/") or "/"
        kind = K.DIR if self.is_dir(path) else K.WATCH
        raw = path.encode("utf-8", "surrogateescape")
        self.op = "delete" if opt == "W" else "add"
        self.flags, self.action = K.FILTER_EXIT, K.ALWAYS
        self.rule.set_all_syscalls()
        self.rule.fields[:] = [Field(kind, K.EQUAL, len(raw), raw),
                               Field(K.PERM, K.EQUAL, PERM_ALL)]
        self.syscall_added = self.perm_added = True

    # -p
    def perms(self, val: str) -> None:
        if self.op is None:
            raise Problem("-p needs a watch (-w) or a list given before it")
        value = _perm(val)
        for i, f in enumerate(self.rule.fields):
            if f.field == K.PERM:
                self.rule.fields[i] = f._replace(value=value)
                break
        else:
            self._add(Field(K.PERM, K.EQUAL, value))
        self.perm_added = True

    # -k / -F key=
    def key(self, val: str, checked: bool = True) -> None:
        if checked and (self.op is None or not (self.syscall_added or self.perm_added
                                                or self.exe_added or self.fs_added)):
            raise Problem("-k needs a watch, syscall, exe or fstype given before it")
        if not val:
            raise Problem("empty key")
        if chr(K.KEY_SEPARATOR) in val:
            raise Problem("key contains the key separator \\x01")
        joined = chr(K.KEY_SEPARATOR).join([*self.keys, val])
        if len(joined.encode("utf-8", "surrogateescape")) > K.MAX_KEY_LEN:
            raise Problem(f"keys exceed {K.MAX_KEY_LEN} bytes")
        self.keys.append(val)

    def finish(self) -> RuleData:
        if self.op is None:
            raise Problem("no list given (-a, -A, -d, -w or -W)")
        r = self.rule
        r.flags, r.action = self.flags, self.action
        lst = self.list
        if self.syscall_added and lst in (K.FILTER_TASK, K.FILTER_USER, K.FILTER_FS,
                                          K.FILTER_EXCLUDE):
            raise Problem(f"syscalls cannot be used on the {_list_name(lst)} list")
        if self.keys:
            if not (self.syscall_added or self.perm_added or self.exe_added or self.fs_added):
                raise Problem("a key needs a watch, syscall, exe or fstype in the rule")
            text = chr(K.KEY_SEPARATOR).join(self.keys).encode("utf-8", "surrogateescape")
            r.fields.append(Field(K.FILTERKEY, K.EQUAL, len(text), text))
        if lst != K.FILTER_TASK and not self.syscall_added:
            r.set_all_syscalls()
        if self.syscall_args and not self.arch_given and self.op == "add":
            self._mismatch_warning()
        return r

    def _mismatch_warning(self) -> None:
        machine = machine_key(self.machine)
        compat = COMPAT_32.get(machine or "")
        if not compat or self.rule.all_syscalls():
            return
        other = RuleData(0, 0)
        for arg in self.syscall_args:
            for name in arg.split(","):
                nr = SYSCALL_NUMBERS[compat].get(name)
                if nr is None and name[:1].isdigit():
                    nr = c_number(name)
                if nr is not None and 0 <= nr < MAX_SYSCALL:
                    other.add_syscall(nr)
        if other.mask != self.rule.mask:
            self.warnings.append("32/64 bit syscall mismatch: the rule only covers "
                                 f"{machine} syscalls; give -F arch=b64 / -F arch=b32")


def _perm(v: str) -> int:
    if len(v) > 4:
        raise Problem(f"permission {v!r} is too long (r, w, x, a)")
    value = 0
    for c in v.lower():
        bit = dict(PERM_LETTERS).get(c)
        if bit is None:
            raise Problem(f"permission {c!r} is not one of r, w, x, a")
        value |= bit
    if not value:
        raise Problem("empty permission")
    return value


def _list_name(lst: int | None) -> str:
    return {v: k for k, v in LIST_NAMES.items()}.get(lst or 0, str(lst))


def compile_line(line: str, *, file: str = "<rules>", lineno: int = 1, machine: str | None = None,
                 resolve: Resolver = default_resolver,
                 is_dir: Callable[[str], bool] = os.path.isdir) -> list[RuleItem]:
    """One rules-file line -> its items (none for blanks/comments). Raises :class:`RuleErrors`
    with one :class:`RuleError` per problem on the line."""
    def err(msg: str) -> RuleErrors:
        return RuleErrors([RuleError(file, lineno, msg)])

    text = line.strip()
    if not text or text.startswith("#"):
        return []
    try:
        tokens = split_line(line.rstrip("\n"))
    except ValueError as e:
        raise err(str(e)) from None
    if not tokens or tokens[0].startswith("#"):
        return []
    try:
        opts = options(tokens)
    except Problem as e:
        raise err(str(e)) from None
    for opt, _ in opts:
        if opt in NOT_IN_FILES:
            raise err(f"{NOT_IN_FILES[opt]} is not supported in rules files")
    controls = [(o, v) for o, v in opts if o in CONTROL_OPTS]
    if controls:
        if opts[0][0] == "D" and len(opts) == 2 and opts[1][0] == "k":
            return [RuleItem(file, lineno, text, "control", control="delete_all",
                             value=opts[1][1])]
        if len(controls) != len(opts):
            raise err("control options (-D -b -e -f -r -i -c --backlog_wait_time ...) "
                      "cannot be mixed with a rule on one line")
        items, problems = [], []
        for o, v in controls:
            try:
                name, value = control(o, v)
                items.append(RuleItem(file, lineno, text, "control", control=name, value=value))
            except Problem as e:
                problems.append(RuleError(file, lineno, str(e)))
        if problems:
            raise RuleErrors(problems)
        return items
    b = _Builder(machine or platform.machine(), resolve, is_dir)
    handlers = {"a": b.list_action, "A": b.list_action, "d": b.list_action,
                "w": b.watch, "W": b.watch}
    for opt, val in opts:
        assert val is not None
        try:
            if opt in handlers:
                handlers[opt](opt, val)
            elif opt == "S":
                b.syscalls(val)
            elif opt == "F":
                b.field_pair(val)
            elif opt == "C":
                b.compare(val)
            elif opt == "p":
                b.perms(val)
            elif opt == "k":
                b.key(val)
        except Problem as e:
            b.problems.append(str(e))
            if opt in handlers:  # without a list or watch the rest cannot be judged
                break
    if not b.problems:
        try:
            rule = b.finish()
        except Problem as e:
            b.problems.append(str(e))
    if b.problems:
        raise RuleErrors([RuleError(file, lineno, p) for p in b.problems])
    return [RuleItem(file, lineno, text, b.op or "add", data=rule.to_bytes(),
                     warnings=tuple(b.warnings))]


def parse_rules(text: str, file: str = "<rules>", **opts) -> tuple[list[RuleItem],
                                                                   list[RuleError]]:
    """Compile a whole rules text; never raises for rule problems: returns (items, errors)."""
    items: list[RuleItem] = []
    errors: list[RuleError] = []
    for n, line in enumerate(text.splitlines(), 1):
        try:
            items.extend(compile_line(line, file=file, lineno=n, **opts))
        except RuleErrors as e:
            errors.extend(e.errors)
    return items, errors


def compile_rules(text: str, file: str = "<rules>", **opts) -> list[RuleItem]:
    """Like :func:`parse_rules` but raises :class:`RuleErrors` listing every problem."""
    items, errors = parse_rules(text, file, **opts)
    if errors:
        raise RuleErrors(errors)
    return items
