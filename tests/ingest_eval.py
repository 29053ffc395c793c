"""A small evaluator of Elasticsearch ingest pipelines: the processors the Auditd Manager
pipeline uses, with the semantics Elastic documents for them, written independently of
``auditpipe.normalize.es_indexed`` so that the two can be compared.

Processors: set, rename, join, convert (long), remove, append, and the two painless scripts of
the pipeline recognised by what they do (key standardisation, empty-value removal). ``if``
conditions: the painless expressions the pipeline uses, read by a tiny translator; anything
else raises, so a new pipeline version that needs more fails loudly instead of passing.
A processor that fails without ``ignore_failure`` stops the pipeline and runs ``on_failure``
with ``_ingest.on_failure_message``, as Elasticsearch does.
"""

from __future__ import annotations

import re
from typing import Any

_MISSING = object()


class ProcessorError(Exception):
    pass


def get(doc: dict, path: str) -> Any:
    obj: Any = doc
    for part in path.split("."):
        if not isinstance(obj, dict) or part not in obj:
            return _MISSING
        obj = obj[part]
    return obj


def put(doc: dict, path: str, value: Any) -> None:
    parts = path.split(".")
    obj = doc
    for part in parts[:-1]:
        if part not in obj:
            obj[part] = {}
        obj = obj[part]
        if not isinstance(obj, dict):
            raise ProcessorError(f"cannot add field [{path}]: [{part}] is not an object")
    obj[parts[-1]] = value


def delete(doc: dict, path: str) -> None:
    parts = path.split(".")
    holder = get(doc, ".".join(parts[:-1])) if len(parts) > 1 else doc
    if holder is _MISSING or not isinstance(holder, dict) or parts[-1] not in holder:
        raise ProcessorError(f"field [{path}] not present")
    del holder[parts[-1]]


# ------------------------------------------------------------------------- conditions
_NULLSAFE = re.compile(r"ctx\??\.([a-z_]+(?:\??\.[a-z_]+(?![a-z_(]))*)")


def condition(src: str | None, doc: dict) -> bool:
    """The painless conditions of the pipeline: `ctx?.a?.b != null`, `== "x"`, `instanceof List`,
    `.size() > 0`, `.contains('x')`, `&&`, `||`, `!( … )`."""
    if src is None:
        return True
    expr = " ".join(src.split())
    expr = expr.replace("&&", " and ").replace("||", " or ")
    expr = re.sub(r"!\s*\(", " not (", expr)

    def field(m: re.Match[str]) -> str:
        return f"_f({m.group(1).replace('?', '')!r})"

    expr = _NULLSAFE.sub(field, expr)
    expr = re.sub(r"(_f\('[^']+'\)) instanceof List", r"isinstance(\1, list)", expr)
    expr = re.sub(r"(_f\('[^']+'\))\.size\(\)", r"len(\1)", expr)
    expr = re.sub(r"(_f\('[^']+'\))\.contains\(('[^']*')\)", r"(\2 in \1)", expr)
    expr = expr.replace("null", "None")
    if re.search(r"[A-Za-z_]+\(", re.sub(r"\b(_f|isinstance|len|not)\(", "", expr)) or ";" in expr:
        raise NotImplementedError(f"condition the evaluator does not know: {src!r}")

    def _f(path: str) -> Any:
        v = get(doc, path)
        return None if v is _MISSING else v

    return bool(eval(expr, {"__builtins__": {}}, {"_f": _f, "isinstance": isinstance, "list": list, "len": len}))


# ------------------------------------------------------------------------- processors
def _to_long(v: Any) -> Any:
    if isinstance(v, list):
        return [_to_long(x) for x in v]
    if isinstance(v, int) and not isinstance(v, bool):
        return v
    s = str(v).strip()
    m = re.fullmatch(r"([+-]?)(0[xX][0-9a-fA-F]+|[0-9]+)", s)
    if not m:
        raise ProcessorError(f'unable to convert [{v}] to long')
    n = int(m.group(2), 0) * (-1 if m.group(1) == "-" else 1)
    if not -(1 << 63) <= n < (1 << 63):
        raise ProcessorError(f"unable to convert [{v}] to long")
    return n


def _standardize_keys(m: dict) -> None:
    for k in list(m):
        if isinstance(m[k], dict):
            _standardize_keys(m[k])
        if "-" in k:
            m[k.replace("-", "_")] = m[k]
            del m[k]


def _drop_empty(v: Any) -> bool:
    return v is None or v == "" or (isinstance(v, (dict, list)) and len(v) == 0)


def _remove_empty_map(m: dict) -> None:
    for x in m.values():
        if isinstance(x, dict):
            _remove_empty_map(x)
        elif isinstance(x, list):
            _remove_empty_list(x)
    for k in [k for k, x in m.items() if _drop_empty(x)]:
        del m[k]


def _remove_empty_list(lst: list) -> None:
    for x in lst:
        if isinstance(x, dict):
            _remove_empty_map(x)
        elif isinstance(x, list):
            _remove_empty_list(x)
    lst[:] = [x for x in lst if not _drop_empty(x)]


def _script(p: dict, doc: dict) -> None:
    src = p["source"]
    if 'k.replace("-", "_")' in src and "handleMap(ctx)" in src:
        _standardize_keys(doc)
    elif "removeIf" in src and "v == null" in src and "handleList" in src:
        _remove_empty_map(doc)
    else:
        raise NotImplementedError(f"script the evaluator does not know: {p.get('description')}")


def _source(p: dict, doc: dict) -> Any:
    """The processor's ``field``: _MISSING when absent and ``ignore_missing``, else a failure."""
    v = get(doc, p["field"])
    if v is _MISSING and not p.get("ignore_missing"):
        raise ProcessorError(f"field [{p['field']}] doesn't exist")
    return v


def _run_one(kind: str, p: dict, doc: dict, ctx: dict) -> None:
    field = p.get("field")
    if kind == "set":
        value = p["value"]
        if isinstance(value, str) and "{{{" in value:
            value = value.replace("{{{ _ingest.on_failure_message }}}", ctx.get("message", ""))
        put(doc, field, value)
    elif kind in ("rename", "convert", "remove"):
        v = _source(p, doc)
        if v is _MISSING:
            return
        if kind == "rename":
            if get(doc, p["target_field"]) is not _MISSING:
                raise ProcessorError(f"field [{p['target_field']}] already exists")
            delete(doc, field)
            put(doc, p["target_field"], v)
        elif kind == "convert":
            assert p["type"] == "long", p
            put(doc, p.get("target_field", field), _to_long(v))
        else:
            delete(doc, field)
    elif kind == "join":
        v = get(doc, field)
        if not isinstance(v, list):
            raise ProcessorError(f"field [{field}] is not a list")
        put(doc, p.get("target_field", field), p["separator"].join(str(x) for x in v))
    elif kind == "append":
        value = p["value"].replace("{{{ _ingest.on_failure_message }}}", ctx.get("message", ""))
        old = get(doc, field)
        put(doc, field, ([] if old is _MISSING else old if isinstance(old, list) else [old]) + [value])
    elif kind == "script":
        _script(p, doc)
    else:
        raise NotImplementedError(f"processor the evaluator does not know: {kind}")


def run_pipeline(pipeline: dict, doc: dict) -> dict:
    """Run ``pipeline`` (the YAML definition, loaded) over ``doc`` in place; returns it."""
    for spec in pipeline["processors"]:
        (kind, p), = spec.items()
        if not condition(p.get("if"), doc):
            continue
        try:
            _run_one(kind, p, doc, {})
        except ProcessorError as e:
            if p.get("ignore_failure"):
                continue
            for fspec in pipeline.get("on_failure", []):
                (fkind, fp), = fspec.items()
                _run_one(fkind, fp, doc, {"message": str(e)})
            return doc
    return doc
