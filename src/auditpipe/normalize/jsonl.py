"""JSON lines out. orjson is fast but refuses lone surrogates, which is how bytes that are not
UTF-8 travel here; such a document falls back to the standard library with ASCII escapes, so
those bytes leave as `\\udcXX` (see docs/formats.md)."""

from __future__ import annotations

import json

import orjson

__all__ = ["dumps_line", "loads"]

_dumps = orjson.dumps
_NEWLINE = orjson.OPT_APPEND_NEWLINE


def dumps_line(doc) -> bytes:
    try:
        return _dumps(doc, option=_NEWLINE)
    except TypeError:
        return json.dumps(doc, ensure_ascii=True, separators=(",", ":")).encode("ascii") + b"\n"


def loads(data):
    """Parse a JSON line written by `dumps_line` (surrogate escapes included)."""
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError:
        return json.loads(data)
