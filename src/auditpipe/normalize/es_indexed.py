"""The `indexed` shape: an ECS document as the Auditd Manager integration's ingest pipeline
leaves it, so auditpipe can write straight into a data stream where that pipeline is not
installed and what is indexed still equals what the integration indexes.

What the pipeline (``elastic/auditd_manager/ingest_pipeline/default.yml``, package 1.17) does,
in its order: ``ecs.version`` set; ``event.original`` (the raw lines, a list) joined with newlines
and the list dropped unless the tags hold ``preserve_original_event``; ``error.message`` joined
likewise into ``auditd.warnings``; ``-`` → ``_`` in every key of every nested object (not inside
lists); renames into ``auditd.*`` / ``event.*`` / ``.address``; ``event.outcome`` ``fail`` →
``failure``; numeric strings converted to longs; then null, empty-string, empty-object and
empty-list values removed everywhere. tests/test_es_indexed.py runs the pipeline definition
itself through an evaluator over the shared corpora and compares.

One deliberate difference: a value the pipeline cannot convert to a long makes Elasticsearch
stop the pipeline there and index the half-done document with ``event.kind: pipeline_error``;
here the value is kept as it is, the same two error fields are set and the rest still applies.
"""

from __future__ import annotations

from typing import Any

__all__ = ["PIPELINE_ECS_VERSION", "to_indexed"]

#: the ecs.version the integration's pipeline sets
PIPELINE_ECS_VERSION = "8.11.0"

# (source path, target path): renamed when the source is there and the target is not
_RENAMES: tuple[tuple[tuple[str, ...], tuple[str, ...]], ...] = (
    (("source", "path"), ("source", "address")),
    (("destination", "path"), ("destination", "address")),
    (("user", "audit"), ("auditd", "user", "audit")),
    (("user", "new_auid"), ("auditd", "user", "new_auid")),
    (("user", "old_auid"), ("auditd", "user", "old_auid")),
    (("file", "selinux"), ("auditd", "file", "selinux")),
    (("user", "selinux"), ("auditd", "user", "selinux")),
    (("user", "saved"), ("auditd", "user", "saved")),
    (("user", "filesystem"), ("auditd", "user", "filesystem")),
)
_RENAMES_AFTER_OUTCOME: tuple[tuple[tuple[str, ...], tuple[str, ...]], ...] = (
    (("auditd", "sequence"), ("event", "sequence")),
    (("auditd", "data", "id"), ("event", "id")),
)
_LONG_DATA = ("removed", "items", "lport", "rport", "sport", "dport", "entries", "argc", "seqno",
              "nargs", "old_vcpu", "new_vcpu", "changed", "added", "spid", "opid", "nlnk_pid",
              "vm_pid", "audit_pid")
_LONG_OTHER = (("destination", "port"), ("source", "port"), ("process", "pid"),
               ("process", "exit_code"))


def to_indexed(doc: dict[str, Any]) -> dict[str, Any]:
    """Shape ``doc`` (an ECS document, changed in place) as the integration indexes it."""
    ecs = doc.get("ecs")
    if isinstance(ecs, dict):
        ecs["version"] = PIPELINE_ECS_VERSION
    else:
        doc["ecs"] = {"version": PIPELINE_ECS_VERSION}
    _move_joined(doc, ("event", "original"), ("auditd", "messages"))
    _move_joined(doc, ("error", "message"), ("auditd", "warnings"), only_nonempty=True)
    _underscore_keys(doc)
    for src, dst in _RENAMES:
        _rename(doc, src, dst)
    ev = doc.get("event")
    if isinstance(ev, dict) and ev.get("outcome") == "fail":
        ev["outcome"] = "failure"
    for src, dst in _RENAMES_AFTER_OUTCOME:
        _rename(doc, src, dst)
    failed = _convert_longs(doc)
    tags = doc.get("tags")
    if not (isinstance(tags, list) and "preserve_original_event" in tags):
        holder, _ = _get(doc, ("auditd", "messages"))
        if holder is not None:
            del holder["messages"]
    if failed:
        _pipeline_error(doc, failed)
    _prune(doc)
    return doc


def _get(doc: dict, path: tuple[str, ...]) -> tuple[dict | None, Any]:
    """The object holding the last key of ``path`` and the value there (None, None: absent)."""
    obj: Any = doc
    for k in path[:-1]:
        obj = obj.get(k) if isinstance(obj, dict) else None
        if obj is None:
            return None, None
    if not isinstance(obj, dict) or path[-1] not in obj:
        return None, None
    return obj, obj[path[-1]]


def _put(doc: dict, path: tuple[str, ...], value: Any, overwrite: bool = False) -> bool:
    """Set ``path``; unless ``overwrite``, not over a value already there (as rename does)."""
    obj = doc
    for k in path[:-1]:
        nxt = obj.setdefault(k, {})
        if not isinstance(nxt, dict):
            return False
        obj = nxt
    if path[-1] in obj and not overwrite:
        return False
    obj[path[-1]] = value
    return True


def _rename(doc: dict, src: tuple[str, ...], dst: tuple[str, ...]) -> None:
    holder, value = _get(doc, src)
    if holder is None:
        return
    if _get(doc, dst)[0] is not None:
        return  # the target exists: the processor fails, and its failure is ignored
    del holder[src[-1]]
    if not _put(doc, dst, value):
        holder[src[-1]] = value


def _move_joined(doc: dict, field: tuple[str, ...], keep: tuple[str, ...],
                 only_nonempty: bool = False) -> None:
    """``field`` moves to ``keep``; a list there comes back to ``field`` joined by newlines."""
    _rename(doc, field, keep)
    moved_holder, moved = _get(doc, keep)
    if moved_holder is not None and isinstance(moved, list) and (moved or not only_nonempty):
        _put(doc, field, "\n".join(str(v) for v in moved), overwrite=True)


def _underscore_keys(obj: dict) -> None:
    """The pipeline's key standardization: ``-`` → ``_`` in nested objects' keys (a key that
    exists already is replaced), not inside lists."""
    hyphens = None
    for k, v in obj.items():
        if type(v) is dict:
            _underscore_keys(v)
        if "-" in k:
            hyphens = [k] if hyphens is None else hyphens + [k]
    if hyphens:
        for k in hyphens:
            obj[k.replace("-", "_")] = obj.pop(k)


def _to_long(v: Any) -> tuple[bool, Any]:
    """Elasticsearch's convert to long: decimal, or 0x-hex; a list element by element."""
    if isinstance(v, list):
        out = []
        for x in v:
            ok, y = _to_long(x)
            if not ok:
                return False, v
            out.append(y)
        return True, out
    if isinstance(v, bool):
        return False, v
    if isinstance(v, int):
        return True, v
    if isinstance(v, float):
        return True, int(v)
    s = str(v).strip()
    try:
        neg = s.startswith("-")
        body = s[1:] if neg or s.startswith("+") else s
        if body[:2] in ("0x", "0X"):
            n = int(body, 0)
        elif body.isdecimal() and body.isascii():
            n = int(body)
        else:
            return False, v
    except ValueError:
        return False, v
    n = -n if neg else n
    return (True, n) if -(1 << 63) <= n < (1 << 63) else (False, v)


def _convert_longs(doc: dict) -> list[str]:
    """Convert the fields the pipeline converts; the names of those that could not be."""
    failed = []
    data = doc.get("auditd", {}).get("data") if isinstance(doc.get("auditd"), dict) else None
    if isinstance(data, dict):
        for k in _LONG_DATA:
            if k in data:
                ok, data[k] = _to_long(data[k])
                if not ok:
                    failed.append("auditd.data." + k)
        sock = data.get("socket")
        if isinstance(sock, dict) and "port" in sock:
            ok, sock["port"] = _to_long(sock["port"])
            if not ok:
                failed.append("auditd.data.socket.port")
    for path in _LONG_OTHER:
        holder, v = _get(doc, path)
        if holder is not None:
            ok, holder[path[-1]] = _to_long(v)
            if not ok:
                failed.append(".".join(path))
    return failed


def _pipeline_error(doc: dict, failed: list[str]) -> None:
    ev = doc.setdefault("event", {})
    ev["kind"] = "pipeline_error"
    err = doc.setdefault("error", {})
    msgs = err.get("message")
    msgs = [msgs] if isinstance(msgs, str) else list(msgs or [])
    msgs.extend(f"field [{f}] cannot be converted to a long" for f in failed)
    err["message"] = msgs


def _prune(obj: dict) -> None:
    """Remove null, empty-string, empty-object and empty-list values, depth first (type checks
    by identity: this walks every value of every document)."""
    dead = None
    for k, v in obj.items():
        t = type(v)
        if t is dict:
            if v:
                _prune(v)
            if not v:
                dead = [k] if dead is None else dead + [k]
        elif t is list:
            if v:
                _prune_list(v)
            if not v:
                dead = [k] if dead is None else dead + [k]
        elif v is None or (t is str and not v):
            dead = [k] if dead is None else dead + [k]
    if dead:
        for k in dead:
            del obj[k]


def _prune_list(lst: list) -> None:
    keep = False
    for v in lst:
        t = type(v)
        if t is dict:
            if v:
                _prune(v)
            if not v:
                keep = True
        elif t is list:
            if v:
                _prune_list(v)
            if not v:
                keep = True
        elif v is None or (t is str and not v):
            keep = True
    if keep:  # something to remove
        lst[:] = [v for v in lst if not (v is None or v == "" or (type(v) in (dict, list) and not v))]
