"""Read audit.log files (plain, .gz, or stdin) in large chunks and hand out complete lines.

Lines are split on b"\\n" only: str.splitlines would also split on 0x1D, the separator of the
ENRICHED format. Bytes are decoded with surrogateescape so nothing is altered or lost.
"""

from __future__ import annotations

import gzip
import os
import sys
from collections.abc import Iterator

__all__ = ["iter_line_chunks", "open_audit_file"]

CHUNK = 1 << 20


def open_audit_file(path: str):
    if path == "-":
        return sys.stdin.buffer
    f = open(path, "rb")
    if f.read(2) == b"\x1f\x8b":
        f.seek(0)
        return gzip.GzipFile(fileobj=f, mode="rb")
    f.seek(0)
    return f


def iter_line_chunks(stream, chunk: int = CHUNK, on_progress=None) -> Iterator[list[str]]:
    """Yield lists of decoded lines. A last line without a newline is yielded too."""
    tail = b""
    read = stream.read
    while True:
        block = read(chunk)
        if not block:
            break
        if on_progress is not None:
            on_progress(len(block))
        block = tail + block if tail else block
        cut = block.rfind(b"\n")
        if cut < 0:
            tail = block
            continue
        tail = block[cut + 1 :]
        yield block[:cut].decode("utf-8", "surrogateescape").split("\n")
    if tail:
        yield [tail.decode("utf-8", "surrogateescape")]


def compressed_size(path: str) -> int | None:
    try:
        return os.path.getsize(path)
    except OSError:
        return None
