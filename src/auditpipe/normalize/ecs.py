"""`--format ecs`: one ECS document per event, shaped like auditbeat's auditd module (Auditd
Manager), so its dashboards, detection rules and ingest pipelines apply unchanged.

Coalescing follows go-libaudit's aucoalesce: the first record, when it is not a SYSCALL, says
what kind of event this is; the SYSCALL record says who did it; PATH records become
auditd.paths and file.*, SOCKADDR becomes source/destination, EXECVE process.args, and the other
records' fields join auditd.data. The meaning (action, ECS categorization, summary) comes from
the normalization table (normalize/data). Documented differences from auditbeat are in
tests/test_ecs.py.

Hot path (a busy host is mostly execve events): dict literals for the kernel's standard SYSCALL
record, whole-dict merges for auxiliary records, per-syscall facts, names per identity and
timestamp text per second cached, plain dicts out (the per-kind category/type lists are shared
between documents and must not be mutated).
"""

from __future__ import annotations

import time
from typing import Any

from auditpipe import tables
from auditpipe.normalize.agent import document_id
from auditpipe.normalize.coalesced import IsoTimestamps
from auditpipe.normalize.ecs_fields import (
    Names,
    apply_entities,
    build_address,
    build_file,
    build_user,
    drop_redundant_effective,
)
from auditpipe.normalize.ecs_table import DEFAULT_SYSCALL_NORM, RECORD_NORMS, SYSCALL_NORMS, Norm
from auditpipe.normalize.ecs_walk import DROP, all_kept, execve_args, merge_fields, split_context, walk_main
from auditpipe.normalize.summary import summarize
from auditpipe.parsing import Record, decode_sockaddr, execve_argv, parse_body

__all__ = ["make_ecs_normalizer", "ECS_VERSION"]

ECS_VERSION = "8.0.0"

_T = tables.RECORD_TYPE_NUMBERS
_SYSCALL = _T["SYSCALL"]
_PATH = _T["PATH"]
_CWD = _T["CWD"]
_EXECVE = _T["EXECVE"]
_PROCTITLE = _T["PROCTITLE"]
_SOCKADDR = _T["SOCKADDR"]
_EOE = _T["EOE"]
_LOGIN = _T["LOGIN"]

# Records that only describe a part of a syscall event.
_PARTS = frozenset(_T[n] for n in (
    "PATH", "CWD", "EXECVE", "PROCTITLE", "SOCKADDR", "BPRM_FCAPS", "OBJ_PID", "CAPSET", "MMAP", "FD_PAIR",
    "IPC", "IPC_SET_PERM", "MQ_OPEN", "MQ_SENDRECV", "MQ_NOTIFY", "MQ_GETSETATTR", "SOCKETCALL", "OPENAT2",
    "EOE") if n in _T)
_ERRNO = tables.ERRNO_NAMES
_ARCH_NAMES = tables.ARCH_NAMES
_ARCH_NAME_SET = frozenset(_ARCH_NAMES.values())
#: SOCKADDR families as auditbeat names them in auditd.data.socket
_SOCKET_FAMILY = {"inet": "ipv4", "inet6": "ipv6"}


def _login_fields(rec) -> dict:
    """Old LOGIN lines say `old auid=… new auid=…`; read them as old_auid/new_auid (as auparse)."""
    body = rec.raw.partition("): ")[2].partition("\x1d")[0]
    body = body.replace("old ", "old_", 2).replace("new ", "new_", 2)
    return parse_body(body, rec.type_num)[0]


class _SyscallFacts:
    __slots__ = ("arch", "name", "norm")

    def __init__(self, arch: str | None, name: str | None, norm: Norm) -> None:
        self.arch = arch
        self.name = name
        self.norm = norm


def _syscall_facts(_facts_cache: dict, arch_hex: str | None, num: str | None,
                   enriched: dict | None) -> _SyscallFacts:
    """Arch name, syscall name and its normalization, cached per (arch, number) in the
    normalizer's own ``_facts_cache``."""
    if enriched is not None:
        arch_name = enriched.get("ARCH")
        sc_name = enriched.get("SYSCALL")
        if arch_name is not None and sc_name is not None and "(" not in sc_name:  # not unknown-syscall(N)
            named = (arch_name, sc_name, 1)
            f = _facts_cache.get(named)
            if f is None:
                if len(_facts_cache) > 16384:
                    _facts_cache.clear()
                norm = SYSCALL_NORMS.get(sc_name, DEFAULT_SYSCALL_NORM)
                f = _facts_cache[named] = _SyscallFacts(arch_name, sc_name, norm)
            return f
    key = (arch_hex, num)
    f = _facts_cache.get(key)
    if f is None:
        if len(_facts_cache) > 16384:  # only a crafted log has this many (arch, syscall) pairs
            _facts_cache.clear()
        arch_name = None
        if arch_hex is not None:
            try:
                arch_name = _ARCH_NAMES.get(int(arch_hex, 16))
            except ValueError:  # interpreted input (ausearch -i): arch=x86_64
                arch_name = arch_hex if arch_hex in _ARCH_NAME_SET else None
        sc_name = None
        if num is not None and arch_name is not None and num.isdecimal():
            try:
                sc_name = tables.syscall_name(arch_name, int(num))
            except (KeyError, ValueError):
                sc_name = None
        elif num is not None and num.isidentifier():  # interpreted input: syscall=execve
            sc_name = num
        norm = SYSCALL_NORMS.get(sc_name, DEFAULT_SYSCALL_NORM) if sc_name else DEFAULT_SYSCALL_NORM
        f = _facts_cache[key] = _SyscallFacts(arch_name or arch_hex, sc_name or num, norm)
    return f


def _exit_name(v: str) -> str:
    if v[:1] == "-" and v[1:].isdecimal():
        return _ERRNO.get(int(v[1:]), v)
    return v


def _signed32(hexval: str) -> int | None:
    try:
        n = int(hexval, 16)
    except ValueError:
        return None
    return ((n + 0x80000000) & 0xFFFFFFFF) - 0x80000000


def _path_fields(f: dict) -> dict:
    """A PATH record's fields for auditd.paths: dropped values out, obj split into obj_*."""
    if "obj" not in f and "msg" not in f and all_kept(f.values()):
        return f  # shared with the record: nothing to change
    out = {}
    for k, v in f.items():
        if type(v) is not str:  # a nested msg='…' in a damaged PATH line: kept as it is
            out[k] = v
            continue
        if v in DROP:
            continue
        if k == "obj":
            for part, pv in split_context(v).items():
                out["obj_" + part] = pv
        else:
            out[k] = v
    return out


def make_ecs_normalizer(resolver=None, include_raw: bool = False, include_warnings: bool = False, extra_tags=None,
                        host_metadata=None, document_ids: bool = False, clock=time.monotonic):
    """A normalizer `Event -> [ECS document]`.

    resolver: an `IdResolver` (or None: names only from ENRICHED input).
    include_raw: event.original holds the event's lines as read.
    include_warnings: auditd.warnings lists what could not be normalized.
    extra_tags: appended to tags (after the rule keys); None: the host metadata's default tags
    (the integration's), or none.
    host_metadata: a `normalize.agent.HostMetadata`: data_stream.*, event.dataset, host.*, agent.*
    as Elastic Agent adds them.
    document_ids: each document starts with `_id`, the event's stable id (`agent.document_id`),
    which the Elasticsearch output takes off and uses as the bulk `_id`.
    clock: monotonic seconds, for the age of the name memo (see `Names`).

    Documents share some values with each other and with the event's records (the per-kind
    event.category/type lists, PATH field dicts that needed no change): treat them as read-only.
    """
    if extra_tags is None:
        extra_tags = host_metadata.tags if host_metadata is not None else ()
    extra_tags = list(extra_tags)
    meta = host_metadata
    iso_timestamp = IsoTimestamps()
    facts_cache: dict = {}  # (arch, syscall) → _SyscallFacts, this normalizer's
    names = Names(resolver, clock=clock)
    # closure cells: cheaper than module globals on the hot path
    SYSCALL, PATH, EXECVE, CWD, PROCTITLE, SOCKADDR, EOE, LOGIN = (
        _SYSCALL, _PATH, _EXECVE, _CWD, _PROCTITLE, _SOCKADDR, _EOE, _LOGIN)
    drop = DROP
    record_norms = RECORD_NORMS
    parts = _PARTS
    lower: dict[str, str] = {}

    def normalize(event) -> list[dict]:
        warnings: list[str] | None = [] if include_warnings else None
        recs: list[Record] = event.records
        first: Record | None = None
        syscall: Record | None = None
        for r in recs:
            t = r.type_num
            if t == EOE:
                continue
            if first is None:
                first = r
            if t == SYSCALL:
                syscall = r
                break
        if first is None:  # only EOE: nothing but the fact that an event happened
            first = recs[0]
        main = syscall if syscall is not None else first
        # a record before the SYSCALL says what the event is about (CONFIG_CHANGE, AVC, ...);
        # the parts of a syscall event (PATH, CWD, ...) never do, whatever their order
        special = first if first is not main and first.type_num not in parts else None

        # -- the main record: who, how, result ---------------------------------------------------
        fields = main.fields
        if main.type_num in parts:
            fields = {}  # the SYSCALL was lost: the records are all parts, read below as such
            main_part = True
        else:
            main_part = False
            if main.type_num == LOGIN and "text" in fields:
                fields = _login_fields(main)
        data, ids, proc, session, result, tags, selinux = walk_main(fields, main.type_num)

        enriched = main.enriched
        if syscall is not None:
            facts = _syscall_facts(facts_cache, data.get("arch"), data.get("syscall"), enriched)
            if facts.arch is not None:
                data["arch"] = facts.arch
            if facts.name is not None:
                data["syscall"] = facts.name
            v = data.get("exit")
            if v is not None and v[:1] == "-":
                data["exit"] = _exit_name(v)
            sc_norm: Norm | None = facts.norm
        else:
            sc_norm = None

        # -- the other records -------------------------------------------------------------------
        paths: list[dict] = []  # PATH records' fields, in item order (with their records)
        path_recs: list[Record] = []
        execs: list[Record] | None = None
        sock: dict | None = None
        for r in recs:
            if r is main and not main_part:
                continue
            t = r.type_num
            if t == PATH:
                paths.append(_path_fields(r.fields))  # a native call (not through a closure cell)
                path_recs.append(r)
            elif t == EXECVE:
                if execs is None:
                    execs = [r]
                else:
                    execs.append(r)
            elif t == CWD:
                v = r.fields.get("cwd")
                if v is not None and v not in drop:
                    proc["cwd"] = v
            elif t == PROCTITLE:
                v = r.fields.get("proctitle")
                if v is not None:  # NUL-separated arguments, as proctitle_argv reads them
                    proc["proctitle"] = v.rstrip("\0").replace("\0", " ")
            elif t == SOCKADDR:
                v = r.fields.get("saddr")
                if v is not None:
                    sock = decode_sockaddr(v)
                    data["socket"] = _socket_data(sock, v)
            elif t != EOE:  # a repeat of the leading record (a second AVC) is read as it is
                lead = special is not None and (r is special or t == special.type_num)
                tags = merge_fields(r, data, ids, lead, tags, warnings)
        if execs is not None:
            argc, argv = execve_args(execs, execve_argv)
            if argc is not None:
                data["argc"] = str(argc)
            proc["args"] = argv
        if syscall is not None and (paths or _records_besides_eoe(recs) > 1):
            data.pop("items", None)

        # -- meaning -------------------------------------------------------------------------------
        kind = special if special is not None else main
        norm: Norm | None
        category: list[str] | None
        etype: list[str] | None
        if kind is syscall and sc_norm is not None:
            norm = sc_norm
            category = norm.category
            etype = norm.type
        else:
            variants = record_norms.get(kind.type)
            norm = None
            if variants is not None:
                for n in variants:
                    if all(h in data for h in n.has_fields):
                        norm = n
                        break
            if norm is None:
                category = etype = None
                if warnings is not None:
                    warnings.append("no normalization found for event")
            else:
                category = norm.category
                etype = norm.type
                if sc_norm is not None and sc_norm is not norm:
                    # a record about a syscall: both kinds of categorization apply
                    category = category + [c for c in sc_norm.category if c not in category]
                    etype = etype + [c for c in sc_norm.type if c not in etype]

        # -- the document --------------------------------------------------------------------------
        ev: dict[str, Any] = {"kind": "event", "module": "auditd",
                              "outcome": "failure" if result == "fail" else result}
        doc: dict[str, Any]
        if document_ids:
            doc = {"_id": _event_id(event, meta), "@timestamp": iso_timestamp(event.sec, event.msec), "event": ev}
        else:
            doc = {"@timestamp": iso_timestamp(event.sec, event.msec), "event": ev}
        ktype = kind.type
        mtype = lower.get(ktype)
        if mtype is None:
            if len(lower) > 4096:
                lower.clear()
            mtype = lower[ktype] = ktype.lower()
        auditd: dict[str, Any] = {"message_type": mtype, "sequence": event.serial, "result": result, "data": data}
        doc["auditd"] = auditd
        if session != "unset":
            auditd["session"] = session
        if category is not None:
            ev["category"] = category
            ev["type"] = etype
        if include_raw:
            ev["original"] = [r.raw for r in recs]

        names.tick()
        id_names: dict[str, str] = {}
        final = norm is None or not norm.users  # nothing but build_user writes user.*
        user = build_user(ids, names, enriched, selinux, id_names, final)

        if norm is not None:
            s = summarize(norm, data, proc, ids, paths, sock, warnings)
            if norm.action:
                ev["action"] = norm.action
            summ: dict[str, Any] = {}
            v = s.actor_primary
            v2 = s.actor_secondary
            if v is not None or v2 is not None:
                actor = summ["actor"] = {}
                if v is not None:
                    if v.isdecimal():
                        k = s.actor_primary_key
                        v = id_names.get(k) or (None if k in ids else names.of_id(k, v, False, enriched)) or v
                    actor["primary"] = v
                if v2 is not None:
                    if v2.isdecimal():
                        k = s.actor_secondary_key
                        v2 = id_names.get(k) or (None if k in ids else names.of_id(k, v2, False, enriched)) or v2
                    actor["secondary"] = v2
            obj = {}
            if s.object_primary is not None:
                obj["primary"] = s.object_primary
            if s.object_secondary is not None:
                obj["secondary"] = s.object_secondary
            if s.object_type is not None:
                obj["type"] = s.object_type
            if obj:
                summ["object"] = obj
            if s.how is not None:
                summ["how"] = s.how
            auditd["summary"] = summ
            i = s.path_item
            if i is not None:
                doc["file"] = build_file(paths[i], path_recs[i].enriched, names)
            if s.source_ip is not None:
                doc["source"] = {"ip": s.source_ip, "address": s.source_ip}
                doc["network"] = {"direction": "ingress"}
            side = norm.sockaddr
            if side is not None:  # the direction is the syscall's, with or without an address
                addr = build_address(sock) if sock is not None else None
                if addr is not None:
                    doc[side] = addr
                doc["network"] = {"direction": "ingress" if side == "source" else "egress"}
            if norm.users:
                apply_entities(doc, user, norm, s, data, ids, names, enriched)
            if norm.exit_code:
                v = data.get("a0")
                if v is not None:
                    proc["exit_code"] = _signed32(v)
        if user:
            if not final:
                drop_redundant_effective(user)
            doc["user"] = user
        if paths:
            auditd["paths"] = paths
        if proc:
            doc["process"] = _process(proc)
        if tags or extra_tags:
            doc["tags"] = (tags or []) + extra_tags
        if event.partial and warnings is not None:
            warnings.append("event incomplete: some of its records were lost or arrived too late")
        if warnings:
            auditd["warnings"] = warnings
            if not include_raw:  # as auditbeat: what could not be read is kept to be looked at
                ev["original"] = [r.raw for r in recs]
        doc["service"] = {"type": "auditd"}
        doc["ecs"] = {"version": ECS_VERSION}
        if meta is not None:
            ev["dataset"] = meta.dataset
            doc["data_stream"] = meta.data_stream()
            doc["host"] = meta.host_fields(event.node)
            doc["agent"] = meta.agent_fields()
        elif event.node is not None:
            doc["host"] = {"name": event.node}
        return [doc]

    return normalize


def _records_besides_eoe(recs) -> int:
    return sum(1 for r in recs if r.type_num != _EOE)


def _socket_data(sock: dict, saddr: str) -> dict:
    """auditd.data.socket as auditbeat writes it: ipv4/ipv6 families; netlink as its raw saddr."""
    fam = sock.get("family")
    if fam == "netlink":
        return {"family": "netlink", "saddr": saddr}
    out = {k: str(x) for k, x in sock.items()}
    if fam in _SOCKET_FAMILY:
        out["family"] = _SOCKET_FAMILY[fam]
    return out


def _event_id(event, meta) -> str:
    host = meta.id_host(event.node) if meta is not None else (event.node or "")
    return document_id(host, event.sec, event.msec, event.serial, [r.type for r in event.records])


def _process(proc: dict) -> dict:
    """process.* from the process fields gathered from the records (direct reads: per event)."""
    out: dict[str, Any] = {}
    n = proc.get("pid")  # isinstance narrows: isdecimal and int() below are str primitives
    if isinstance(n, str) and n.isdecimal():
        out["pid"] = int(n)
    n = proc.get("ppid")
    if isinstance(n, str) and n.isdecimal():
        out["parent"] = {"pid": int(n)}
    v = proc.get("proctitle")
    if v is not None:
        out["title"] = v
    v = proc.get("comm")
    if v is not None:
        out["name"] = v
    v = proc.get("exe")
    if v is not None:
        out["executable"] = v
    v = proc.get("cwd")
    if v is not None:
        out["working_directory"] = v
    v = proc.get("args")
    if v:
        out["args"] = v
        out["args_count"] = len(v)
    v = proc.get("exit_code")
    if v is not None:
        out["exit_code"] = v
    return out
