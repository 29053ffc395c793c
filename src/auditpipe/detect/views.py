"""What a rule sees: one audit record (auditd rules) or one event's ECS fields (category rules).

Records read from the kernel come RAW (no ENRICHED part), yet Sigma's auditd rules name ENRICHED
fields (``SYSCALL: mknod``, ``UID: root``). :class:`Interpreter` gives such a field the value
auditd would have written, from our tables (arch and syscall names) and the injected uid/gid
resolver, so a rule matches the same activity whichever way the record arrived.

Category rules (process_creation, file_event, network_connection) are evaluated on the ECS
document through :data:`ECS_SOURCES`: each field our Sigma field mapping can produce, with how to
read it from an ECS document in Python and in DuckDB SQL (the hunt), so stream and hunt agree.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from auditpipe import tables
from auditpipe.parsing import execve_argv

__all__ = ["ECS_SOURCES", "EcsView", "Interpreter", "RecordView", "deep_get"]

_UNSET = ("4294967295", "-1")


def deep_get(doc: Any, *keys: str, default: Any = None) -> Any:
    """``doc[k1][k2]…`` or ``default`` when any step is missing or not a mapping."""
    cur = doc
    for k in keys:
        if not isinstance(cur, dict):
            return default
        cur = cur.get(k)
        if cur is None:
            return default
    return cur


class Interpreter:
    """ENRICHED values for RAW records: ``SYSCALL``, ``ARCH``, ``UID``/``AUID``/…, ``GID``/…"""

    def __init__(self, resolver: Any = None) -> None:
        self.resolver = resolver

    def value(self, record: Any, name: str) -> str | None:
        low = name.lower()
        raw = record.fields.get(low)
        if raw is None:
            return None
        kind = tables.field_type(low, record.type)
        if kind == "syscall":
            arch = record.fields.get("arch")
            return tables.syscall_name(arch, raw) if arch is not None else None
        if kind == "arch":
            return tables.arch_name(raw)
        if kind in ("uid", "gid"):
            return self._id(raw, kind)
        return None

    def _id(self, raw: str, kind: str) -> str:
        if raw in _UNSET:
            return "unset"
        name = None
        if self.resolver is not None:
            name = self.resolver.user(raw) if kind == "uid" else self.resolver.group(raw)
        return name if name is not None else f"unknown({raw})"


class RecordView:
    """One record of an event, as Sigma's auditd rules see it: ``type``, the record's fields
    (decoded), ENRICHED names (given or interpreted), and — the event as context — a field the
    record lacks taken from the event's SYSCALL record (``key``, ``exe``, ``comm`` of a PATH)."""

    __slots__ = ("_gate", "_hits", "_low", "_text", "interp", "record", "syscall")

    def __init__(self, record: Any, syscall: RecordView | None, interp: Interpreter) -> None:
        self.record = record
        self.syscall = syscall
        self.interp = interp
        self._text: str | None = None
        self._gate: str | None = None
        self._hits: dict[tuple[Callable[[str], Any], tuple[str, ...]], str | None] | None = None
        self._low: dict[str, str | None] | None = None

    def lower(self, field: str) -> str | None:
        """``get(field)`` lower-cased, memoized: many rules test the same few fields."""
        c = self._low
        if c is None:
            c = self._low = {}
        elif field in c:
            return c[field]
        v = self.get(field)
        lv = c[field] = v.lower() if v is not None else None
        return lv

    def get(self, field: str) -> str | None:
        rec = self.record
        if field == "type":
            return rec.type
        v = rec.fields.get(field)
        if v is not None:
            return v if isinstance(v, str) else None
        msg = rec.fields.get("msg")
        if isinstance(msg, dict):  # user-space records: the fields inside msg='…' (unit=, exe=)
            v = msg.get(field)
            if isinstance(v, str):
                return v
        if field[:1].isupper():
            enriched = rec.enriched
            if enriched is not None:
                v = enriched.get(field)
                if v is not None:
                    return v
            v = self.interp.value(rec, field)
            if v is not None:
                return v
        elif rec.type == "EXECVE" and field + "_len" in rec.fields:
            return _split_arg(rec, field)
        sc = self.syscall  # the event's SYSCALL record, as a view (memoized lookups)
        if sc is not None and sc.record is not rec:
            return sc.get(field)
        return None

    def text(self) -> str:
        t = self._text
        if t is None:
            fields = self.record.fields
            try:  # the common case: every value a plain string
                t = "\n".join(fields.values())
            except TypeError:
                t = "\n".join(_values(fields))
            t = self._text = t.lower()
        return t

    def gate_text(self, fields: tuple[str, ...], with_text: bool) -> str:
        """Where the record's own value of any of ``fields`` (lower case) can be found: their
        values when all are plain strings (a few of the record's many fields: less to join and
        search); else, or for keywords, the record's text with the whole of each EXECVE argument
        the kernel split in pieces (a literal may straddle two)."""
        rec = self.record
        if not with_text and rec.type != "EXECVE":
            t = _values_of(rec.fields, fields)
            if t is not None:
                return t
        return self._full_text()

    def _full_text(self) -> str:
        t = self._gate
        if t is None:
            t = self.text()
            rec = self.record
            if rec.type == "EXECVE":
                whole = [_split_arg(rec, k[:-4]) for k in rec.fields if k.endswith("_len")]
                if whole:
                    t = "\n".join([t, *(w.lower() for w in whole if w is not None)])
            self._gate = t
        return t

    def syscall_text(self, gate: Callable[[str], Any], fields: tuple[str, ...],
                     verdicts: dict[str, bool]) -> str | None:
        """The event's SYSCALL record's values of ``fields`` (its text when they are not all
        plain strings) when ``gate`` finds something in them, else None (also for the SYSCALL
        record itself). Memoized on the SYSCALL's view, which lives for one event: the records
        of an event share one search of it per gate and set of fields; and the
        gate's verdict per text in ``verdicts`` (the values repeat across events)."""
        sc = self.syscall
        if sc is None or sc.record is self.record:
            return None
        memo = sc._hits
        key = (gate, fields)  # one gate (re caches patterns) may serve dispatches of other fields
        if memo is None:
            memo = sc._hits = {}
        elif key in memo:
            return memo[key]
        t = _values_of(sc.record.fields, fields)
        if t is None:
            t = sc.text()
        out = memo[key] = t if found_in(gate, t, verdicts) else None
        return out


#: bound of a gate's memo of verdicts (as the engine's memos of values)
_VERDICTS = 4096


def found_in(gate: Callable[[str], Any], text: str, verdicts: dict[str, bool]) -> bool:
    """Whether ``gate`` finds something in ``text``, remembered per text in ``verdicts``."""
    hit = verdicts.get(text)
    if hit is None:
        if len(verdicts) >= _VERDICTS:
            verdicts.clear()
        hit = verdicts[text] = gate(text) is not None
    return hit


def _values_of(fields: dict, names: tuple[str, ...]) -> str | None:
    """The lower-cased values of the fields ``names`` of a record, one per line; None when the
    record holds a user-space ``msg`` (its fields are inside) or a value that is not a string."""
    if "msg" in fields:
        return None
    out = []
    for n in names:
        v = fields.get(n)
        if v is not None:
            if v.__class__ is not str:
                return None
            out.append(v)
    return "\n".join(out).lower()


def _values(fields: dict) -> list[str]:
    """The record's string values in order, those of a nested ``msg`` dict in its place."""
    out = [v for v in fields.values() if v.__class__ is str]
    if len(out) == len(fields):  # the common case: all plain strings
        return out
    out = []
    for v in fields.values():
        if isinstance(v, str):
            out.append(v)
        elif isinstance(v, dict):
            out.extend(_values(v))
    return out


def _split_arg(record: Any, name: str) -> str | None:
    """An EXECVE argument the kernel split into ``aN[0]``, ``aN[1]``, … (joined as the
    normalizers join it)."""
    argv = execve_argv([record])[1]
    i = int(name[1:]) if name[1:].isdigit() else -1
    return argv[i] if 0 <= i < len(argv) else None


def _command_line(doc: dict) -> str | None:
    v = deep_get(doc, "process", "command_line")
    if v is not None:
        return v
    args = deep_get(doc, "process", "args")
    return " ".join(args) if isinstance(args, list) else None


def _initiated(doc: dict) -> str | None:
    d = deep_get(doc, "network", "direction")
    return None if d is None else ("true" if d == "egress" else "false")


def _path_getter(path: str) -> Callable[[dict], Any]:
    """``deep_get`` of a dotted path, unrolled for the two-level paths most fields have."""
    keys = tuple(path.split("."))
    if len(keys) != 2:
        return lambda doc: deep_get(doc, *keys)
    outer, inner = keys

    def get(doc: dict) -> Any:
        parent = doc.get(outer)
        return parent.get(inner) if isinstance(parent, dict) else None

    return get


def _sql_path(path: str) -> str:
    return f"json_extract_string(document, '$.{path}')"


#: our field → (read it from an ECS document, the same in DuckDB SQL over the lake's `document`)
ECS_SOURCES: dict[str, tuple[Callable[[dict], Any], str]] = {
    p: (_path_getter(p), _sql_path(p))
    for p in ("process.executable", "process.working_directory", "process.pid", "user.name", "file.path",
              "destination.ip", "destination.port", "process.parent.executable",
              "process.parent.command_line", "process.parent.pid")
}
ECS_SOURCES["process.command_line"] = (
    _command_line,
    ("coalesce(json_extract_string(document, '$.process.command_line'), "
    "array_to_string(CAST(json_extract(document, '$.process.args') AS VARCHAR[]), ' '))"))
ECS_SOURCES["network.initiated"] = (
    _initiated,
    ("CASE WHEN json_extract_string(document, '$.network.direction') IS NULL THEN NULL "
    "WHEN json_extract_string(document, '$.network.direction') = 'egress' THEN 'true' ELSE 'false' END"))


class EcsView:
    """One event's ECS document, read through :data:`ECS_SOURCES` (values memoized)."""

    __slots__ = ("_cache", "_low", "_text", "doc")

    def __init__(self, doc: dict) -> None:
        self.doc = doc
        self._cache: dict[str, Any] = {}
        self._low: dict[str, Any] = {}
        self._text: str | None = None

    def lower(self, field: str) -> Any:
        c = self._low
        if field in c:
            return c[field]
        v = self.get(field)
        if v is not None:
            v = v.lower() if isinstance(v, str) else [str(x).lower() for x in v]
        c[field] = v
        return v

    def get(self, field: str) -> Any:
        cache = self._cache
        if field in cache:
            return cache[field]
        src = ECS_SOURCES.get(field)
        v = src[0](self.doc) if src is not None else None
        if v is not None and not isinstance(v, (str, list)):
            v = str(v)
        cache[field] = v
        return v

    def text(self) -> str:
        t = self._text
        if t is None:
            t = self._text = "\n".join(str(v) for v in (self.get(f) for f in ECS_SOURCES) if v is not None).lower()
        return t
