"""The `coalesced` format: one lossless JSON object per event (documented in docs/formats.md)."""

from __future__ import annotations

import time
from typing import Any

from auditpipe import tables
from auditpipe.parsing import decode_sockaddr, execve_argv, proctitle_argv

__all__ = ["IsoTimestamps", "make_coalesced_normalizer", "iso_timestamp"]

_T = tables.RECORD_TYPE_NUMBERS
_EXECVE = _T.get("EXECVE", 1309)
_PROCTITLE = _T.get("PROCTITLE", 1327)
_SOCKADDR = _T.get("SOCKADDR", 1306)

def iso_timestamp(sec: int, msec: int) -> str:
    """ISO 8601 UTC with milliseconds."""
    return f"{time.strftime('%Y-%m-%dT%H:%M:%S', time.gmtime(sec))}.{msec:03d}Z"


#: ".000Z" … ".999Z": a lookup per event instead of a format with a spec (a generic call when compiled)
_DIGITS = "0123456789"
_MSEC_TEXT: tuple[str, ...] = tuple(f".{a}{b}{c}Z" for a in _DIGITS for b in _DIGITS for c in _DIGITS)


class IsoTimestamps:
    """:func:`iso_timestamp` with the seconds part cached (events cluster in time); one per
    normalizer."""

    __slots__ = ("_seconds",)

    def __init__(self) -> None:
        self._seconds: dict[int, str] = {}

    def __call__(self, sec: int, msec: int) -> str:
        head = self._seconds.get(sec)
        if head is None:
            if len(self._seconds) > 4096:
                self._seconds.clear()
            head = self._seconds[sec] = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(sec))
        if 0 <= msec < 1000:
            return head + _MSEC_TEXT[msec]
        return f"{head}.{msec:03d}Z"


def make_coalesced_normalizer(include_raw: bool = False):
    """`include_raw`: each record also carries its line as read (`raw`), byte for byte."""
    iso_timestamp = IsoTimestamps()

    def normalize(event) -> list[dict]:
        recs: list[dict[str, Any]] = []
        execs = None
        doc: dict[str, Any] = {"id": f"{event.time}:{event.serial}"}
        if event.node is not None:
            doc["node"] = event.node
        doc["timestamp"] = iso_timestamp(event.sec, event.msec)
        doc["sequence"] = event.serial
        doc["records"] = recs
        for r in event.records:
            out = {"type": r.type, "fields": r.fields}
            if r.enriched is not None:
                out["enriched"] = r.enriched
            if include_raw:
                out["raw"] = r.raw
            t = r.type_num
            if t == _EXECVE:
                if execs is None:
                    execs = []
                execs.append(r)
            elif t == _PROCTITLE:
                title = r.fields.get("proctitle")
                if isinstance(title, str):
                    doc["proctitle"] = proctitle_argv(title)
            elif t == _SOCKADDR:
                saddr = r.fields.get("saddr")
                if isinstance(saddr, str):
                    out["sockaddr"] = decode_sockaddr(saddr)
            recs.append(out)
        if execs is not None:
            argc, argv = execve_argv(execs)
            doc["execve"] = {"argc": argc, "argv": argv}
        if event.partial:
            doc["partial"] = True
        return [doc]

    return normalize
