"""Test helpers: run the core over lines or files without the CLI."""

from __future__ import annotations

import time

from auditpipe.normalize.coalesced import make_coalesced_normalizer
from auditpipe.parsing import ParseError, parse_line
from auditpipe.pipeline import Pipeline
from auditpipe.reassembly import Reassembler
from auditpipe.sources.files import iter_line_chunks, open_audit_file


def events_of_lines(lines, **kw):
    r = Reassembler(**kw)
    out = []
    for line in lines:
        if line.strip():
            try:
                rec = parse_line(line)
            except ParseError:
                continue  # counted and reported by the pipeline; here only grouping matters
            out.extend(r.feed(rec))
    out.extend(r.flush())
    return out, r


def events_of_file(path, **kw):
    with open(path, "rb") as f:
        data = f.read()
    if data[:2] == b"\x1f\x8b":
        import gzip

        data = gzip.decompress(data)
    return events_of_lines(data.decode("utf-8", "surrogateescape").split("\n"), **kw)


def coalesce_file(path, rejects=None):
    pipe = Pipeline(make_coalesced_normalizer(), on_reject=(lambda w, l, r: rejects.append((w, l, r))) if rejects is not None else None)
    docs = []
    with open_audit_file(str(path)) as s:
        lineno = 1
        for lines in iter_line_chunks(s):
            docs.extend(pipe.feed_lines(lines, str(path), lineno))
            lineno += len(lines)
    docs.extend(pipe.flush())
    return docs, pipe


def wait_for(pred, timeout: float = 30.0, interval: float = 0.05) -> bool:
    """Poll ``pred`` until it is true or ``timeout`` seconds passed; its last value."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if pred():
            return True
        time.sleep(interval)
    return bool(pred())
