"""Read audit.log files (plain, .gz, or stdin) in large chunks and hand out complete lines.

Lines are split on b"\\n" only: str.splitlines would also split on 0x1D, the separator of the
ENRICHED format. Bytes are decoded with surrogateescape so nothing is altered or lost.
"""

from __future__ import annotations

import os
import sys
import zlib
from collections.abc import Iterator

__all__ = ["iter_line_chunks", "open_audit_file"]

CHUNK = 1 << 20


def open_audit_file(path: str):
    if path == "-":
        stdin = sys.stdin.buffer
        peek = getattr(stdin, "peek", None)
        return GzipStream(stdin) if peek is not None and peek(2)[:2] == b"\x1f\x8b" else stdin
    f = open(path, "rb")
    if f.read(2) == b"\x1f\x8b":
        f.seek(0)
        return GzipStream(f)
    f.seek(0)
    return f


class GzipStream:
    """Decompresses a .gz (several members too) as it is read. Unlike gzip.GzipFile, a truncated
    or damaged file gives up everything that could be decompressed before the error is raised,
    so a cut-off rotated log loses only its damaged tail."""

    def __init__(self, fileobj, chunk: int = CHUNK):
        self.fileobj = fileobj
        self._chunk = chunk
        self._z = zlib.decompressobj(16 + zlib.MAX_WBITS)
        self._error: Exception | None = None
        self._done = False

    def read(self, n: int = -1) -> bytes:
        if self._error is not None:
            err, self._error = self._error, None
            raise err
        out = []
        size = 0
        while not self._done and (n < 0 or size < n):
            data = self.fileobj.read(self._chunk)
            try:
                if not data:
                    self._done = True
                    if not self._z.eof:
                        raise EOFError("compressed file ended before the end-of-stream marker was reached")
                    break
                piece = self._z.decompress(data)
                while self._z.eof and self._z.unused_data:  # the next gzip member
                    rest = self._z.unused_data
                    self._z = zlib.decompressobj(16 + zlib.MAX_WBITS)
                    piece += self._z.decompress(rest)
            except (EOFError, zlib.error) as e:
                self._done = True
                self._error = e if isinstance(e, EOFError) else EOFError(f"corrupt gzip data: {e}")
                break
            out.append(piece)
            size += len(piece)
        if not out and self._error is not None:
            err, self._error = self._error, None
            raise err
        return b"".join(out)

    def close(self) -> None:
        self.fileobj.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def iter_line_chunks(stream, chunk: int = CHUNK, on_progress=None) -> Iterator[list[str]]:
    """Yield lists of decoded lines. A last line without a newline is yielded too."""
    tail = b""
    read = stream.read
    while True:
        try:
            block = read(chunk)
        except Exception:
            if tail:  # the cut-off last line is handed out (it will be a reject), then the error
                yield [tail.decode("utf-8", "surrogateescape")]
            raise
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
