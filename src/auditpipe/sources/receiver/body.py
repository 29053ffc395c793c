"""Request bodies of ``auditpipe serve``: size cap, capped inflate, and a streaming decoder.

The decoder never builds the whole body as Python objects (a 43 MB JSON array once took
960 MB that way): JSON arrays are split into their elements by a regex scan that also bounds
the nesting depth (100k nested ``[`` is a 400, never a RecursionError), and every element or
line is decoded only when the caller asks for it. Whole-body faults (unbalanced array, nesting,
no line is JSON, an unknown shape) are found before the caller has fed anything.
"""

from __future__ import annotations

import json
import re
import zlib
from array import array
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson

from auditpipe.sources.receiver.config import parse_size

__all__ = [
    "MAX_DEPTH",
    "READABLE_TYPES",
    "BodyError",
    "Decoded",
    "decode_body",
    "decode_stream",
    "inflate_capped",
    "is_auditpipe_event",
    "parse_size",
]

MAX_DEPTH = 64  # Fluent Bit records and auditpipe documents nest a handful of levels
READABLE_TYPES = ("application/json", "application/x-ndjson", "application/jsonlines", "application/json-lines",
                  "application/jsonl", "application/x-jsonlines", "text/plain", "")


class BodyError(Exception):
    """The request as a whole is refused: ``status`` (400/413/415) with ``reason``."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


def inflate_capped(data: bytes | bytearray, encoding: str, cap: int) -> tuple[bytes, int]:
    """Decompress ``data`` (gzip, possibly multi-member, or deflate), refusing past ``cap`` bytes.

    Returns (body, inflated byte count). Never produces more than ``cap + 1`` bytes, whatever the
    ratio: a bomb costs at most that much memory and CPU.
    """
    wbits = {"gzip": 31, "x-gzip": 31, "deflate": 15}[encoding]
    out: list[bytes] = []
    total = 0
    buf = bytes(data)
    while buf:
        d = zlib.decompressobj(wbits)
        while True:
            try:
                chunk = d.decompress(buf, cap - total + 1)
            except zlib.error as e:
                raise BodyError(400, f"undecodable {encoding} body: {e}") from None
            total += len(chunk)
            if total > cap:
                raise BodyError(413, f"body larger than {cap} bytes once decompressed")
            out.append(chunk)
            buf = d.unconsumed_tail
            if d.eof or not buf:
                break
        if not d.eof:
            raise BodyError(400, f"truncated {encoding} body")
        buf = d.unused_data
        if wbits == 15:
            break
    return b"".join(out), total


def _loads(b: bytes | bytearray | memoryview) -> Any:
    try:
        return orjson.loads(b)
    except orjson.JSONDecodeError:
        raw = bytes(b)
        if b"\\ud" not in raw.lower():
            raise
        # orjson refuses \\udcXX escapes (non-UTF-8 bytes carried as lone surrogates); json does not
        return json.loads(raw.decode("utf-8", "surrogateescape"))


def is_auditpipe_event(obj: dict) -> bool:
    """The marks of a document another auditpipe normalized: coalesced ``id``, ECS ``@timestamp``
    with an ``event`` object, Panther's ``p_log_type``. GELF and other shapes have none of them."""
    return isinstance(obj.get("id"), str) or "p_log_type" in obj or (
        "@timestamp" in obj and isinstance(obj.get("event"), dict))


# a JSON string (unrolled, so long strings cost one C loop) or a structural character
_TOKENS = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"|[\[\]{},]')


def _array_spans(body: bytes | bytearray, max_depth: int) -> array:
    """Start/end offsets of the elements of a top-level JSON array, found without decoding."""
    spans = array("q")
    depth = 0
    start = -1
    closed = False
    for m in _TOKENS.finditer(body):
        c = body[m.start()]
        if c == 0x22:  # '"'
            continue
        if closed:
            raise BodyError(400, "undecodable JSON array: data after the closing ']'")
        if c in (0x5B, 0x7B):  # [ {
            depth += 1
            if depth > max_depth:
                raise BodyError(400, f"JSON nested deeper than {max_depth} levels")
            if depth == 1:
                if c != 0x5B:
                    raise BodyError(400, "expected a JSON array")
                start = m.end()
        elif c in (0x5D, 0x7D):  # ] }
            if depth == 1:
                if body[start:m.start()].strip():
                    spans.append(start)
                    spans.append(m.start())
                closed = True
            depth -= 1
        elif depth == 1:  # ',' between elements
            spans.append(start)
            spans.append(m.start())
            start = m.end()
    if depth or not closed:
        raise BodyError(400, "undecodable JSON array: unbalanced brackets or an unterminated string")
    return spans


@dataclass
class Decoded:
    """A body split into items, decoded lazily by ``items()``.

    Items: ``("raw", line, date, index)`` — a raw audit record, ``date`` the sender's float
    timestamp or None, ``index`` its position among the body's records; ``("event", bytes)`` — a
    document another auditpipe normalized, as received; ``("error", where, reason)``.
    """

    kind: str  # "text" | "lines" | "array"
    body: bytes | bytearray
    spans: array | None = None
    lines: Sequence[bytes | bytearray] = field(default_factory=list)
    decoded: int = 0

    def items(self) -> Iterator[tuple]:
        if self.kind == "text":
            yield from self._text()
        elif self.kind == "array":
            yield from self._array()
        else:
            yield from self._lines()

    def _text(self) -> Iterator[tuple]:
        index = 0
        # split on "\n" only: str.splitlines() would also cut at 0x1D, the ENRICHED separator
        for raw in self.lines:
            line = raw.decode("utf-8", "surrogateescape").rstrip("\r")
            if line.strip():
                yield ("raw", line, None, index)
                index += 1

    def _array(self) -> Iterator[tuple]:
        spans = self.spans
        assert spans is not None
        view = memoryview(self.body)
        index = 0
        for n in range(len(spans) // 2):
            try:
                obj = _loads(view[spans[2 * n]:spans[2 * n + 1]])
            except (ValueError, UnicodeDecodeError) as e:
                yield ("error", n + 1, f"not JSON: {e}")
                continue
            for item in _classify(obj, n + 1, None, index):
                if item[0] == "raw":
                    index += 1
                yield item

    def _lines(self) -> Iterator[tuple]:
        index = 0
        for n, raw in enumerate(self.lines, 1):
            line = raw.strip()
            if not line:
                continue
            try:
                obj = _loads(line)
            except (ValueError, UnicodeDecodeError) as e:
                yield ("error", n, f"not JSON: {e}")
                continue
            self.decoded += 1
            for item in _classify(obj, n, line, index):
                if item[0] == "raw":
                    index += 1
                yield item


def _classify(obj: Any, n: int, line: bytes | bytearray | None, index: int) -> Iterator[tuple]:
    if isinstance(obj, str):
        yield ("raw", obj.rstrip("\n"), None, index)
    elif isinstance(obj, dict):
        log_value = obj.get("log")
        if isinstance(log_value, str):
            date = obj.get("date")
            yield ("raw", log_value.rstrip("\n"), date if isinstance(date, (int, float)) else None, index)
        elif "log" in obj:
            yield ("error", n, "'log' is not a string")
        elif is_auditpipe_event(obj):
            yield ("event", line if line is not None else orjson.dumps(obj, default=str))
        else:
            yield ("error", n, _unknown_shape(obj))
    else:
        yield ("error", n, f"expected an object or a string, got {type(obj).__name__}")


def _unknown_shape(obj: dict) -> str:
    keys = ", ".join(sorted(map(str, obj))[:6])
    gelf = " (GELF?)" if "short_message" in obj else ""
    return f"unknown shape{gelf}: an object with neither 'log' nor the marks of an auditpipe event (keys: {keys})"


def _media_type(content_type: str) -> str:
    return content_type.split(";")[0].strip().lower()


def decode_stream(body: bytes | bytearray, content_type: str, max_depth: int = MAX_DEPTH) -> Decoded:
    """Check the body as a whole and return its lazy decoder; raises ``BodyError`` (400/415)."""
    ctype = _media_type(content_type)
    if "msgpack" in ctype:
        raise BodyError(415, "msgpack bodies are not read: send json_lines or json (Fluent Bit: format json_lines)")
    if ctype not in READABLE_TYPES:
        raise BodyError(415, f"unsupported Content-Type {ctype!r}: send application/json, application/x-ndjson "
                             "or text/plain")
    stripped = body.lstrip()
    head = stripped[:1]
    if not ctype and head and (0x80 <= head[0] <= 0x9F or 0xDC <= head[0] <= 0xDF):
        raise BodyError(415, "this looks like msgpack, which is not read: send json_lines or json")
    if ctype == "text/plain" or head not in (b"[", b"{"):
        if ctype not in ("text/plain", "") and head:
            raise BodyError(400, f"{ctype} body does not start with '[' or '{{'")
        return Decoded("text", body, lines=body.split(b"\n"))
    if head == b"[":
        return _checked(Decoded("array", body, spans=_array_spans(body, max_depth)))
    return _checked(Decoded("lines", body, lines=body.split(b"\n")))


def _checked(dec: Decoded) -> Decoded:
    """Refuse the body before anything is fed when no line is JSON or its first object has an
    unknown shape (a sender of GELF or anything else keeps its data instead of losing it)."""
    for item in dec.items():
        if item[0] != "error":
            dec.decoded = 0
            return dec
        if item[2].startswith("unknown shape"):
            raise BodyError(400, f"item {item[1]}: {item[2]}")
        if dec.kind == "array" and item[2].startswith("not JSON"):
            raise BodyError(400, f"undecodable JSON array: element {item[1]}: {item[2]}")
    if dec.kind == "array":
        return dec  # empty, or only elements of the wrong type (counted as rejected)
    raise BodyError(400, "no line of the body is JSON")


def decode_body(body: bytes, content_type: str) -> tuple[list[str], list[bytes], list[tuple[int, str]]]:
    """Body → (raw audit lines, normalized event lines as bytes, [(line number, error)]) at once
    (for tests and small bodies). Raises ``BodyError`` when the body as a whole cannot be read."""
    raw: list[str] = []
    events: list[bytes] = []
    errors: list[tuple[int, str]] = []
    for item in decode_stream(body, content_type).items():
        if item[0] == "raw":
            raw.append(item[1])
        elif item[0] == "event":
            events.append(item[1])
        else:
            errors.append((item[1], item[2]))
    return raw, events, errors
