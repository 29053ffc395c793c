"""Serialize output documents to JSON lines.

orjson is fast but refuses lone surrogates, and the design carries non-UTF-8 bytes of audit
values as lone surrogates (PEP 383). Such a document falls back to the standard library with
``ensure_ascii=True``, which writes them as ``\\udcXX`` escapes: the exact bytes stay recoverable
with ``json.loads(s).encode("utf-8", "surrogateescape")``.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

import orjson

__all__ = ["dumps_line", "to_lines"]

_OPTS = orjson.OPT_APPEND_NEWLINE


def dumps_line(obj: Any) -> bytes:
    """One document (dict) or an already serialized line (bytes/str) → bytes ending in ``\\n``."""
    if isinstance(obj, (bytes, bytearray, memoryview)):
        b = bytes(obj)
        return b if b.endswith(b"\n") else b + b"\n"
    if isinstance(obj, str):
        b = obj.encode("utf-8", "surrogateescape")
        return b if b.endswith(b"\n") else b + b"\n"
    try:
        return orjson.dumps(obj, option=_OPTS)
    except TypeError:  # orjson.JSONEncodeError: lone surrogates (or a type orjson lacks)
        return (json.dumps(obj, ensure_ascii=True, separators=(",", ":"), default=str) + "\n").encode("ascii")


def to_lines(items: Iterable[Any]) -> list[bytes]:
    """Serialize many documents; each element is one line ending in ``\\n``."""
    return [dumps_line(o) for o in items]
