"""Reading an event's records into the parts an ECS document is built from.

`walk_main` sorts the fields of the record that says who acted into auditd.data, uid/gid
fields, process fields, session, result, rule keys and SELinux subject. It has a fast path for
the SYSCALL records the kernel writes (always the same 26-27 keys): dict literals instead of a
per-field loop, which is most of the cost of a busy exec-audited host. Both paths give the
same result (tests/test_ecs.py checks this on every corpus event).
"""

from __future__ import annotations

from typing import Any

from auditpipe.parsing import parse_body

__all__ = ["DROP", "walk_main", "merge_fields", "execve_args", "split_context", "tags_of", "all_kept"]

# auparse drops these values: "no value" in audit's spelling.
DROP = frozenset(("", "?", "?,", "(null)"))


def all_kept(values) -> bool:
    """True when every value is a string outside DROP (False also for a nested dict: the caller's
    general path handles it). Comparisons instead of `DROP.isdisjoint`, which hashes each value,
    a fresh string from the parser: this runs over every field of most records."""
    for v in values:
        if not isinstance(v, str):  # (narrows v: compiled, len and == below are str primitives)
            return False
        n = len(v)  # lengths first: most values are short numbers
        if n < 7 and (n == 0 or (n == 1 and v == "?") or (n == 6 and v == "(null)") or (n == 2 and v == "?,")):
            return False
    return True

_DATA, _ID, _PROC, _SES, _RES, _KEY, _SUBJ, _SKIP, _MSG = range(9)
ROLE = {
    "pid": _PROC, "ppid": _PROC, "comm": _PROC, "exe": _PROC, "cwd": _PROC, "proctitle": _PROC,
    "auid": _ID, "uid": _ID, "gid": _ID, "euid": _ID, "egid": _ID, "suid": _ID, "sgid": _ID,
    "fsuid": _ID, "fsgid": _ID, "ses": _SES, "res": _RES, "success": _RES, "key": _KEY, "subj": _SUBJ,
    "msg": _MSG, "text": _SKIP,
    "arch": _DATA, "syscall": _DATA, "exit": _DATA, "a0": _DATA, "a1": _DATA, "a2": _DATA, "a3": _DATA,
    "items": _DATA, "tty": _DATA, "op": _DATA, "acct": _DATA, "terminal": _DATA, "hostname": _DATA,
    "addr": _DATA, "id": _DATA,
}
_UNSET_IDS = ("auid", "old-auid")
_LEAD_KEPT = frozenset(("auid", "ses", "res"))  # as auparse: only these (and ses) spell 4294967295 "unset"
_CONTEXT_PARTS = ("user", "role", "domain", "level", "category")


def split_context(ctx: str) -> dict:
    """SELinux `user:role:domain:level[:category]` → {user, role, domain, level, category}."""
    return dict(zip(_CONTEXT_PARTS, ctx.split(":", 4), strict=False))  # fewer parts: fewer keys


def result_of(v: str) -> str:
    v = v.lower()
    return "success" if v == "yes" or v == "1" or v.startswith("suc") else "fail"


def tags_of(value: str) -> list[str]:
    """Rule keys: several are joined by \\x01 (hex-encoded in the log, decoded by the parser)."""
    if "\x01" in value:
        return [k for k in value.split("\x01") if k]
    if value.startswith("key="):
        value = value[4:]
    return [value]


#: (data, ids, proc, session, result, tags, selinux): typed, so that compiled callers use dict ops
Walked = tuple[dict[str, Any], dict[str, Any], dict[str, Any], str, str, "list[str] | None", "dict | None"]


def walk_main(fields: dict, type_num: int) -> Walked:
    """→ (data, ids, proc, session, result, tags, selinux) of the record that says who acted."""
    n = len(fields)
    if (n == 25 or (n == 26 and "subj" in fields)) and all_kept(fields.values()):
        try:  # reads all 25 of the kernel's keys: with this many fields, those are the only ones
            return _walk_syscall(fields)
        except KeyError:  # as many fields, other keys
            pass
    return _walk_any(fields, type_num)


def _walk_syscall(f: dict) -> Walked:
    """The kernel's SYSCALL record: reads every one of its 25 keys (KeyError if one is missing)."""
    auid = f["auid"]
    if auid == "4294967295" or auid == "-1":
        auid = "unset"
    ses = f["ses"]
    if ses == "4294967295" or ses == "-1":
        ses = "unset"
    data = {"arch": f["arch"], "syscall": f["syscall"], "exit": f["exit"], "a0": f["a0"], "a1": f["a1"],
            "a2": f["a2"], "a3": f["a3"], "items": f["items"], "tty": f["tty"]}
    ids = {"auid": auid, "uid": f["uid"], "gid": f["gid"], "euid": f["euid"], "suid": f["suid"],
           "fsuid": f["fsuid"], "egid": f["egid"], "sgid": f["sgid"], "fsgid": f["fsgid"]}
    proc = {"pid": f["pid"], "ppid": f["ppid"], "comm": f["comm"], "exe": f["exe"]}
    subj = f.get("subj")
    return (data, ids, proc, ses, result_of(f["success"]), tags_of(f["key"]),
            split_context(subj) if subj is not None else None)


def _walk_any(fields: dict, type_num: int) -> Walked:
    data: dict = {}
    ids: dict = {}
    proc: dict = {}
    selinux: dict | None = None
    session = ""
    result = "unknown"
    tags: list[str] | None = None
    role_get = ROLE.get
    stack: Any = None
    items = fields.items()
    while True:
        for k, v in items:
            role = role_get(k)
            if role == _MSG:
                if type(v) is str and "=" in v:  # msg=' without its closing quote
                    v = parse_body(v.strip("'"), type_num)[0]
                if type(v) is dict:
                    stack = v
                    continue
                role = _DATA
            if v in DROP:
                continue
            if role is None:
                tail = k[-3:]
                role = _ID if tail == "uid" or tail == "gid" else _DATA
            if role == _DATA:
                data[k] = v
            elif role == _ID:
                if (v == "4294967295" or v == "-1") and k in _UNSET_IDS:
                    v = "unset"
                ids[k] = v
            elif role == _PROC:
                proc[k] = v
            elif role == _SES:
                session = "unset" if v == "4294967295" or v == "-1" else v
            elif role == _RES:
                if k == "success" or result == "unknown":
                    result = result_of(v)
            elif role == _KEY:
                tags = tags_of(v)
            elif role == _SUBJ:
                selinux = split_context(v)
        if stack is None:
            break
        items = stack.items()
        stack = None
    return data, ids, proc, session, result, tags, selinux


def merge_fields(rec, data: dict, ids: dict, special: bool, tags, warnings):
    """Fields of a record that is neither the actor's nor PATH/EXECVE/... into auditd.data (the
    first value of a key wins). For the event's leading record (`special`) only its own fields
    count: identity fields repeat the SYSCALL's, and its rule key joins the tags. → tags."""
    f = rec.fields
    if not special and "msg" not in f and _none_in(f, data) and all_kept(f.values()):
        data.update(f)  # the usual case (BPRM_FCAPS, OBJ_PID...): nothing to check per field
        return tags  # (a nested msg is a dict: all_kept is False, it takes the loop below)
    role_get = ROLE.get
    for k, v in f.items():
        if type(v) is not str:
            if k == "msg" and type(v) is dict:
                for mk, mv in v.items():
                    if mv not in DROP and mk not in data and role_get(mk, _DATA) == _DATA:
                        data[mk] = mv
            continue
        if v in DROP:
            continue
        if special:
            role = role_get(k, _DATA)
            if role == _KEY:
                have = tags or []
                tags = have + [t for t in tags_of(v) if t not in have]
                continue
            if role != _DATA or k in ids:
                # the SYSCALL says who and how it ended; the leading record's own login id,
                # session and result stay beside it in auditd.data (as auditbeat keeps them)
                if k in _LEAD_KEPT and k not in data:
                    data[k] = v
                continue
        if k in data:
            if warnings is not None and data[k] != v:
                warnings.append(f"duplicate key ({k}) from {rec.type} message")
            continue
        data[k] = v
    return tags


def _none_in(f: dict, data: dict) -> bool:
    """No key of `f` is in `data` (a loop: `keys().isdisjoint` is a generic call when compiled)."""
    for k in f:
        if k in data:
            return False
    return True


def execve_args(execs: list, execve_argv) -> tuple[int | None, list[str]]:
    """(argc, argv) of the EXECVE records; one record with plain `aN` keys is read directly."""
    if len(execs) == 1:
        f = execs[0].fields
        argc = f.get("argc")
        if argc is not None and argc.isdecimal():
            n = int(argc)
            if len(f) == n + 1 and (n == 0 or ("a0" in f and f"a{n - 1}" in f)):
                values = list(f.values())
                if values[0] is argc:
                    return n, values[1:]
    return execve_argv(execs)
