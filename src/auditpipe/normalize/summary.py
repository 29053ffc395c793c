"""auditd.summary: who (actor) did what (action) to what (object) and how.

The decisions follow go-libaudit's aucoalesce, which auditbeat's documents are built from: the
actor defaults to auid/uid, `how` to the executable (the command name for interpreters), the
object of a file syscall is a PATH item and that of a socket syscall the SOCKADDR address; the
table (normalize/data) then names the fields that override each part. Values are looked up in
the event's data, then its process fields, then its uid/gid fields, as aucoalesce does.
"""

from __future__ import annotations

from typing import Any

__all__ = ["Summary", "summarize", "file_object_type", "find_value"]

# File type bits of st_mode (S_IFMT). aucoalesce converts the raw mode to a Go os.FileMode, whose
# type bits are laid out differently, so it calls every path a "file"; these are the kernel's.
_S_IFMT = 0o170000
_FILE_TYPES = {
    0o100000: "file", 0o040000: "directory", 0o020000: "character-device", 0o060000: "block-device",
    0o010000: "named-pipe", 0o120000: "symlink", 0o140000: "socket",
}
_INTERPRETERS = ("/usr/bin/python", "/usr/bin/sh", "/usr/bin/bash", "/usr/bin/perl")


def file_object_type(mode: str) -> str | None:
    """`0100644` (octal st_mode as PATH records write it) → "file", "directory", ..."""
    try:
        return _FILE_TYPES.get(int(mode, 8) & _S_IFMT)
    except ValueError:
        return None


def find_value(keys, data: dict, proc: dict, ids: dict):
    """The first of `keys` present, as (value, key); (None, None) if none is."""
    for k in keys:
        v = data.get(k)
        if v is None:
            v = proc.get(k)
            if v is None:
                v = ids.get(k)
                if v is None:
                    continue
        return v, k
    return None, None


class Summary:
    """The summary of one event plus where each part came from (for name resolution). Values are
    what the records hold (strings; Any since a damaged record may nest a dict)."""

    __slots__ = ("actor_primary", "actor_primary_key", "actor_secondary", "actor_secondary_key",
                 "object_primary", "object_primary_key", "object_secondary", "object_secondary_key",
                 "object_type", "how", "path_item", "source_ip")

    def __init__(self) -> None:
        self.actor_primary: Any = None
        self.actor_primary_key = ""  # the key of the value, or the fallback id's (auid)
        self.actor_secondary: Any = None
        self.actor_secondary_key = ""
        self.object_primary: Any = None
        self.object_primary_key: str | None = None
        self.object_secondary: Any = None
        self.object_secondary_key: str | None = None
        self.object_type: str | None = None
        self.how: Any = None
        self.path_item: int | None = None
        self.source_ip: Any = None


def _actor(keys, which: str, fallback: str, data, proc, ids, warnings) -> tuple[Any, str]:
    """(value, key) of an actor from the table's keys, else the `fallback` id (auid/uid)."""
    v, k = find_value(keys, data, proc, ids)
    if v is None:
        if warnings is not None:
            warnings.append(f"failed to set subject {which} using keys={list(keys)} because they were not found")
        v, k = ids.get(fallback), fallback
    return v, k


def summarize(norm, data: dict, proc: dict, ids: dict, paths: list, sock: dict | None, warnings) -> Summary:
    """Apply one normalization. `paths` are the PATH records' field dicts in item order; `sock` the
    decoded SOCKADDR. `warnings` is a list to append to, or None. May remove the source address
    field from `data` (it moves to source.ip)."""
    s = Summary()
    # how: the executable, unless it is an interpreter, whose script name is in comm.
    exe = proc.get("exe")
    comm = proc.get("comm")
    how = exe if exe is not None else comm
    if exe is not None and comm is not None and exe.startswith(_INTERPRETERS):
        how = comm

    what = norm.what
    obj_p: Any = None
    obj_s: Any = None
    obj_p_key: str | None = None
    obj_s_key: str | None = None
    if what == "file" or what == "filesystem":
        if paths:
            idx = norm.path_index if len(paths) > norm.path_index else 0
            item = paths[idx]
            for i in range(idx, len(paths)):
                if paths[i].get("nametype") not in ("PARENT", "UNKNOWN"):
                    item = paths[i]
                    idx = i
                    break
            s.path_item = idx
            name = item.get("name")
            if name is not None:
                obj_p, obj_p_key = name, "name"
            mode = item.get("mode")
            if mode is not None:
                what = file_object_type(mode) or what
        elif warnings is not None:
            warnings.append("path message not found")
    elif what == "socket" and sock is not None:
        v = sock.get("addr")
        if v is None:
            v = sock.get("path")
        if v is not None:
            obj_p, obj_p_key = str(v), "saddr"
        v = sock.get("port")
        if v is not None:
            obj_s, obj_s_key = str(v), "saddr"
    s.object_type = what

    s.actor_primary, s.actor_primary_key = _actor(norm.actor_primary, "primary", "auid", data, proc, ids, warnings)
    s.actor_secondary, s.actor_secondary_key = _actor(norm.actor_secondary, "secondary", "uid", data, proc, ids,
                                                      warnings)

    if norm.object_primary:
        v, k = find_value(norm.object_primary, data, proc, ids)
        if v is not None:
            obj_p, obj_p_key = v, k
        elif warnings is not None:
            warnings.append("failed to set object primary using keys="
                             f"{list(norm.object_primary)} because they were not found")
    if norm.object_secondary:
        v, k = find_value(norm.object_secondary, data, proc, ids)
        if v is not None:
            obj_s, obj_s_key = v, k
        elif warnings is not None:
            warnings.append("failed to set object secondary using keys="
                             f"{list(norm.object_secondary)} because they were not found")
    s.object_primary, s.object_primary_key = obj_p, obj_p_key
    s.object_secondary, s.object_secondary_key = obj_s, obj_s_key

    if norm.how:
        v, _ = find_value(norm.how, data, proc, ids)
        if v is not None:
            how = v
        elif warnings is not None:
            warnings.append(f"failed to set how using keys={list(norm.how)} because they were not found")
    s.how = how

    if norm.source_ip and (sock is None or norm.sockaddr is None):
        for k in norm.source_ip:
            v = data.pop(k, None)
            if v is not None:
                s.source_ip = v
                break
        else:
            if warnings is not None:
                warnings.append("failed to set source IP using keys="
                                 f"{list(norm.source_ip)} because they were not found")
    return s
