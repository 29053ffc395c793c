"""What a lake file holds: the typed columns of each format and how a document fills them.

Every file has ``timestamp`` (event time, UTC), ``event_id`` ("SEC.MSEC:SERIAL"), ``host`` and
``document`` (the whole JSON document: nothing is lost, a new field needs no schema change),
plus the columns people filter and group on. ECS columns are picked by path from the document;
panther columns are Panther's schema fields (generated: ``panther_columns.py``) and its ``p_``
fields. docs/lake.md lists them with their types.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import pyarrow as pa

from auditpipe.lake.panther_columns import SCHEMA_FIELDS
from auditpipe.normalize.panther_schema import P_FIELDS

__all__ = ["BASE", "Column", "ECS_COLUMNS", "FORMATS", "PANTHER_COLUMNS", "TIMESTAMP", "doc_hash", "json_schema",
           "schema_of"]

TIMESTAMP = pa.timestamp("us", tz="UTC")
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_US = timedelta(microseconds=1)
STR, INT, STRS = pa.string(), pa.int64(), pa.list_(pa.string())


@dataclass(frozen=True, slots=True)
class Column:
    """A typed column. ``get`` fills it from a decoded document (the reference path); ``path``
    and ``src`` (the JSON type found there) let the batch path read it with Arrow's JSON reader,
    ``vec`` converting that array to ``type`` when the two differ."""

    name: str
    type: pa.DataType
    get: Callable[[dict], Any]
    doc: str = ""
    path: tuple[str, ...] = ()
    src: pa.DataType | None = None
    vec: Callable[[Any], Any] | None = None


def doc_hash(payload: bytes) -> int:
    """64 bits of BLAKE2b: tells a re-sent document from another event of the same serial."""
    return int.from_bytes(hashlib.blake2b(payload, digest_size=8).digest(), "big", signed=True)


def _path(*keys: str) -> Callable[[dict], Any]:
    """A getter for a nested key; None where any level is missing or not an object."""
    def get(d: dict) -> Any:
        for k in keys:
            if not isinstance(d, dict):
                return None
            d = d.get(k)  # type: ignore[assignment]
        return d
    return get


def _as_int(get: Callable[[dict], Any]) -> Callable[[dict], Any]:
    """Numbers that arrive as strings ("60", "-13") become integers; others become None."""
    def conv(d: dict) -> Any:
        v = get(d)
        if isinstance(v, bool) or v is None:
            return None
        if isinstance(v, int):
            return v
        try:
            return int(v)
        except (TypeError, ValueError):
            return None
    return conv


def _as_str(get: Callable[[dict], Any]) -> Callable[[dict], Any]:
    def conv(d: dict) -> Any:
        v = get(d)
        if v is None or isinstance(v, str):
            return v
        if isinstance(v, (dict, list)):
            return orjson.dumps(v).decode()
        return str(v)
    return conv


def _as_strs(get: Callable[[dict], Any]) -> Callable[[dict], Any]:
    def conv(d: dict) -> Any:
        v = get(d)
        if v is None:
            return None
        if isinstance(v, list):
            return [x if isinstance(x, str) else str(x) for x in v]
        return [v if isinstance(v, str) else str(v)]
    return conv


def _types_of(lines: Any) -> Any:
    if not isinstance(lines, list):
        return None
    out = []
    for line in lines:
        if isinstance(line, str):
            i = line.find("type=")
            if i >= 0:
                out.append(line[i + 5:].split(" ", 1)[0])
    return out


def _record_types(d: dict) -> Any:
    """The types of the event's records, when the document keeps its lines (event.original)."""
    return _types_of(_path("event", "original")(d))


def _record_types_vec(arr: Any) -> Any:
    if arr.null_count == len(arr):
        return pa.nulls(len(arr), STRS)
    return pa.array([_types_of(v) for v in arr.to_pylist()], STRS)


def _int_of_str_vec(arr: Any) -> Any:
    """"60", "-13" → integers; anything else → null (as ``_as_int`` does one by one)."""
    import pyarrow.compute as pc

    ok = pc.fill_null(pc.match_substring_regex(arr, r"^-?[0-9]{1,18}$"), False)
    return pc.if_else(ok, pc.cast(pc.if_else(ok, arr, "0"), INT), pa.scalar(None, INT))


def _ecs(name: str, typ: pa.DataType, *path: str, doc: str = "", src: pa.DataType | None = None,
         vec: Callable[[Any], Any] | None = None) -> Column:
    conv = {INT: _as_int, STRS: _as_strs}.get(typ, _as_str)
    return Column(name, typ, conv(_path(*path)), doc or ".".join(path), path, src, vec)


#: ECS documents (and alerts): the fields people filter and group on — column, type, document path.
_ECS_SPEC = """
    sequence                    int   auditd.sequence
    kind                        str   event.kind
    action                      str   event.action
    category                    strs  event.category
    event_type                  strs  event.type
    outcome                     str   event.outcome
    message_type                str   auditd.message_type
    result                      str   auditd.result
    session                     str   auditd.session
    tags                        strs  tags
    user_id                     str   user.id
    user_name                   str   user.name
    effective_user_id           str   user.effective.id
    effective_user_name         str   user.effective.name
    audit_user_id               str   user.audit.id
    audit_user_name             str   user.audit.name
    target_user_id              str   user.target.id
    target_user_name            str   user.target.name
    group_id                    str   group.id
    group_name                  str   group.name
    process_pid                 int   process.pid
    process_ppid                int   process.parent.pid
    process_executable          str   process.executable
    process_name                str   process.name
    process_args                strs  process.args
    process_title               str   process.title
    process_working_directory   str   process.working_directory
    process_exit_code           int   process.exit_code
    syscall                     str   auditd.data.syscall
    file_path                   str   file.path
    source_ip                   str   source.ip
    source_port                 int   source.port
    destination_ip              str   destination.ip
    destination_port            int   destination.port
    summary_actor_primary       str   auditd.summary.actor.primary
    summary_actor_secondary     str   auditd.summary.actor.secondary
    summary_object_primary      str   auditd.summary.object.primary
    summary_object_secondary    str   auditd.summary.object.secondary
    summary_object_type         str   auditd.summary.object.type
    summary_how                 str   auditd.summary.how
    rule_name                   str   rule.name
    rule_id                     str   rule.id
"""
_TYPES = {"str": STR, "int": INT, "strs": STRS}


def _ecs_columns() -> tuple[Column, ...]:
    rows = [line.split() for line in _ECS_SPEC.strip().splitlines()]
    cols = [_ecs(name, _TYPES[typ], *path.split(".")) for name, typ, path in rows]
    at = [c.name for c in cols].index("syscall")
    cols.insert(at + 1, _ecs("syscall_exit", INT, "auditd", "data", "exit", src=STR, vec=_int_of_str_vec))
    cols.insert(1, Column("record_types", STRS, _record_types, "from event.original, when kept (--include-raw)",
                          ("event", "original"), STRS, _record_types_vec))
    return tuple(cols)


ECS_COLUMNS: tuple[Column, ...] = _ecs_columns()


def _p_field(name: str) -> Column:
    """Panther's standard fields: p_any_* are lists, p_*_time timestamps, the rest strings."""
    if name.startswith("p_any_"):
        return Column(name, STRS, _as_strs(_path(name)), "Panther standard field")
    if name.endswith("_time"):
        return Column(name, TIMESTAMP, _panther_time(name), "Panther standard field")
    return Column(name, STR, _as_str(_path(name)), "Panther standard field")


def _panther_time(key: str) -> Callable[[dict], Any]:
    """"YYYY-MM-DD HH:MM:SS.fff" (UTC) → microseconds since the epoch."""
    def get(d: dict) -> Any:
        v = d.get(key)
        if not isinstance(v, str):
            return None
        try:
            t = datetime.fromisoformat(v).replace(tzinfo=UTC)
        except ValueError:
            return None
        return (t - _EPOCH) // _US
    return get


def _schema_column(name: str, typ: str) -> Column | None:
    if name == "timestamp":  # the lake's own timestamp column is this field
        return None
    return Column(name, STR, _as_str(_path(name)), f"Panther schema ({typ})")


#: panther rows: every field of Panther's schema, then its p_ fields.
PANTHER_COLUMNS: tuple[Column, ...] = tuple(
    c for c in (_schema_column(n, t) for n, t in SCHEMA_FIELDS) if c is not None
) + tuple(_p_field(n) for n in sorted(P_FIELDS))

#: The columns every lake file starts with (filled by the writer, not by a getter).
#: doc_hash: 64 bits of BLAKE2b over the document's bytes. One audit serial can give two events
#: (auparse splits some groups), so a re-sent document is known by (event_id, doc_hash).
BASE: tuple[tuple[str, pa.DataType], ...] = (
    ("timestamp", TIMESTAMP), ("event_id", STR), ("host", STR), ("doc_hash", INT))

#: the lake's top-level folders and the columns of each
FORMATS: dict[str, tuple[Column, ...]] = {"ecs": ECS_COLUMNS, "panther": PANTHER_COLUMNS, "alerts": ECS_COLUMNS}


def json_schema(columns: tuple[Column, ...], extra: dict[tuple[str, ...], pa.DataType]) -> pa.Schema:
    """The nested Arrow schema the JSON reader needs to read ``columns`` (and ``extra`` paths)
    out of documents, ignoring every other field."""
    tree: dict[str, Any] = {}
    leaves = {c.path: c.src or c.type for c in columns if c.path} | extra
    for path, typ in leaves.items():
        node = tree
        for k in path[:-1]:
            node = node.setdefault(k, {})
            if not isinstance(node, dict):
                raise ValueError(f"{'.'.join(path)}: a leaf and an object at once")
        node[path[-1]] = typ

    def build(node: dict[str, Any]) -> list[pa.Field]:
        return [pa.field(k, pa.struct(build(v)) if isinstance(v, dict) else v) for k, v in node.items()]

    return pa.schema(build(tree))


def schema_of(fmt: str) -> pa.Schema:
    """The Arrow schema of every file under ``<lake>/<fmt>/`` (the same for all of them, so any
    engine reads the folder as one table)."""
    cols = [pa.field(n, t) for n, t in BASE]
    cols += [pa.field(c.name, c.type) for c in FORMATS[fmt]]
    cols.append(pa.field("document", STR))
    return pa.schema(cols)

