"""The normalization table (data/syscalls.toml, data/records.toml) loaded once into `Norm`s.

The table is data so that adding a syscall or record type is an edit of facts, not code; this
module only validates it (unknown keys, ECS values outside the allowed sets and duplicate
names fail at import, not on some event in production) and precomputes tuples for the hot path.
At start-up the documents come from `ecs_table_data`, generated from the TOML files by
scripts/gen_ecs_table.py (byte code loads in a fraction of what parsing the TOML costs).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

__all__ = ["Norm", "SYSCALL_NORMS", "RECORD_NORMS", "DEFAULT_SYSCALL_NORM", "ECS_CATEGORIES", "ECS_TYPES",
           "load_table"]

DATA = Path(__file__).with_name("data")

#: ECS 8.x allowed values of event.category and event.type.
ECS_CATEGORIES = frozenset({
    "api", "authentication", "configuration", "database", "driver", "email", "file", "host", "iam",
    "intrusion_detection", "library", "malware", "network", "package", "process", "registry", "session",
    "threat", "vulnerability", "web",
})
ECS_TYPES = frozenset({
    "access", "admin", "allowed", "change", "connection", "creation", "deletion", "denied", "end", "error",
    "group", "indicator", "info", "installation", "protocol", "start", "user",
})

_USER_TARGETS = ("user", "user.effective", "user.target", "user.changes", "group")
_SUMMARY_SOURCES = ("actor.primary", "actor.secondary", "object.primary", "object.secondary")
_KEYS = {"names", "types", "use", "action", "object", "actor", "how", "category", "type", "sockaddr",
         "exit_code", "source_ip", "has_fields", "users"}
_OBJECT_KEYS = {"what", "path_index", "primary", "secondary"}
_ACTOR_KEYS = {"primary", "secondary"}


class Norm:
    """One normalization, ready for the hot path (tuples, no optional lookups)."""

    __slots__ = ("action", "what", "path_index", "actor_primary", "actor_secondary", "object_primary",
                 "object_secondary", "how", "category", "type", "sockaddr", "exit_code", "source_ip",
                 "has_fields", "users", "name")

    def __init__(self, entry: dict, name: str) -> None:
        obj = entry.get("object", {})
        actor = entry.get("actor", {})
        self.name = name
        self.action: str | None = entry.get("action")
        self.what: str | None = obj.get("what")
        self.path_index = int(obj.get("path_index", 0))
        self.actor_primary: tuple[str, ...] = tuple(actor.get("primary", ("auid",)))
        self.actor_secondary: tuple[str, ...] = tuple(actor.get("secondary", ("uid",)))
        self.object_primary: tuple[str, ...] = tuple(obj.get("primary", ()))
        self.object_secondary: tuple[str, ...] = tuple(obj.get("secondary", ()))
        self.how: tuple[str, ...] = tuple(entry.get("how", ()))
        # Lists, shared by every document of this kind: the normalizer never mutates them.
        self.category: list[str] = list(entry.get("category", ()))
        self.type: list[str] = list(entry.get("type", ()))
        self.sockaddr: str | None = entry.get("sockaddr")
        self.exit_code: bool = entry.get("exit_code") == "a0"
        self.source_ip: tuple[str, ...] = tuple(entry.get("source_ip", ()))
        self.has_fields: tuple[str, ...] = tuple(entry.get("has_fields", ()))
        users = []
        for target, source in entry.get("users", {}).items():
            kind, _, key = source.partition(".")
            users.append((target, source if kind in ("actor", "object") else kind, key))
        self.users: tuple[tuple[str, str, str], ...] = tuple(users)

    def __repr__(self) -> str:
        return f"Norm({self.name}: {self.action})"


def _merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = {**out[k], **v}
        else:
            out[k] = v
    return out


def _check(entry: dict, where: str) -> None:
    bad = set(entry) - _KEYS
    if bad:
        raise ValueError(f"{where}: unknown keys {sorted(bad)}")
    if set(entry.get("object", {})) - _OBJECT_KEYS or set(entry.get("actor", {})) - _ACTOR_KEYS:
        raise ValueError(f"{where}: unknown object/actor keys")
    for c in entry.get("category", ()):
        if c not in ECS_CATEGORIES:
            raise ValueError(f"{where}: {c!r} is not an ECS event.category")
    for t in entry.get("type", ()):
        if t not in ECS_TYPES:
            raise ValueError(f"{where}: {t!r} is not an ECS event.type")
    if entry.get("sockaddr") not in (None, "source", "destination"):
        raise ValueError(f"{where}: sockaddr must be source or destination")
    for target, source in entry.get("users", {}).items():
        kind = source.partition(".")[0]
        if target not in _USER_TARGETS or not (source in _SUMMARY_SOURCES or kind in ("data", "uid")):
            raise ValueError(f"{where}: bad users mapping {target} = {source}")
    if not entry.get("action"):
        raise ValueError(f"{where}: no action")
    if not entry.get("category") or not entry.get("type"):
        raise ValueError(f"{where}: no ECS category/type")


def _documents(data_dir: Path | None) -> tuple[dict[str, Any], dict[str, Any]]:
    """The two TOML documents: parsed from `data_dir`, or (None) as generated from data/."""
    if data_dir is None:
        from auditpipe.normalize import ecs_table_data

        return ecs_table_data.SYSCALLS, ecs_table_data.RECORDS
    import tomllib

    with open(data_dir / "syscalls.toml", "rb") as f:
        sys_doc = tomllib.load(f)
    with open(data_dir / "records.toml", "rb") as f:
        rec_doc = tomllib.load(f)
    return sys_doc, rec_doc


def load_table(data_dir: Path | None = None) -> tuple[dict[str, Norm], dict[str, list[Norm]]]:
    """(syscall name → Norm, record type name → [Norm variants, fallback last]) from the TOML
    files in `data_dir`, or (None) from their generated form (the same documents, checked by
    tests/test_ecs.py)."""
    sys_doc, rec_doc = _documents(data_dir)
    syscalls: dict[str, Norm] = {}
    for i, sc_entry in enumerate(sys_doc.get("syscall", ())):
        where = f"syscalls.toml entry {i} ({sc_entry.get('action')})"
        _check(sc_entry, where)
        norm = Norm(sc_entry, sc_entry["action"])
        for name in sc_entry["names"]:
            if name in syscalls:
                raise ValueError(f"{where}: syscall {name} listed twice")
            syscalls[name] = norm
    macros = rec_doc.get("macros", {})
    records: dict[str, list[Norm]] = {}
    for i, raw in enumerate(rec_doc.get("record", ())):
        entry: dict = {}
        for m in raw.get("use", ()):
            if m not in macros:
                raise ValueError(f"records.toml entry {i}: unknown macro {m}")
            entry = _merge(entry, macros[m])
        entry = _merge(entry, raw)
        where = f"records.toml entry {i} ({raw.get('types')})"
        _check(entry, where)
        norm = Norm(entry, entry["action"])
        for t in entry["types"]:
            variants = records.setdefault(t, [])
            if variants and not variants[-1].has_fields:
                raise ValueError(f"{where}: {t} already has a fallback entry; list variants before it")
            variants.append(norm)
    return syscalls, records


SYSCALL_NORMS, RECORD_NORMS = load_table()

#: For a syscall the table does not know: like auditbeat's catch-all, no action, process/info.
DEFAULT_SYSCALL_NORM = Norm({"category": ["process"], "type": ["info"]}, "*")
