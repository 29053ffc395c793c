"""Read audit.log files (plain, .gz, or stdin) in large chunks and hand out complete lines.

Lines are split on b"\\n" only: str.splitlines would also split on 0x1D, the separator of the
ENRICHED format. Bytes are decoded with surrogateescape so nothing is altered or lost.
"""

from __future__ import annotations

import os
import struct
import sys
import zlib
from collections.abc import Iterator
from typing import Any

__all__ = ["DamagedInput", "GzipStream", "LineSplitter", "iter_line_chunks", "open_audit_file"]

CHUNK = 1 << 20
#: default bound on one line: the kernel's largest audit message is 8,970 bytes; a file line
#: holding more than this is not an audit record (a stream of NULs, a binary file)
MAX_LINE = 1 << 20


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


class DamagedInput(EOFError):
    """Raised once a damaged stream has given up everything that could be read: each problem
    says what and where (byte offsets in the file for gzip, line numbers for overlong lines)."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("; ".join(problems))
        self.problems = problems


GZIP_MAGIC = b"\x1f\x8b\x08"  # ID1 ID2 CM=deflate: what starts every gzip member (RFC 1952)
_FEXTRA, _FNAME, _FCOMMENT, _FHCRC = 4, 8, 16, 2
_SLICE = 64 << 10  # compressed bytes per inflate call: a corrupt spot costs at most this much output
_PROBE = 64 << 10  # compressed bytes a candidate member must inflate cleanly to be believed


def gzip_header_length(buf: bytes | memoryview) -> int | None:
    """Length of the gzip member header at the start of ``buf``; None: more bytes needed;
    -1: not a member header."""
    if len(buf) < 10:
        return None if bytes(buf[:len(buf)]) == GZIP_MAGIC[:len(buf)] else -1
    if bytes(buf[:3]) != GZIP_MAGIC or buf[3] & 0xE0:
        return -1
    flags, pos = buf[3], 10
    if flags & _FEXTRA:
        if len(buf) < pos + 2:
            return None
        pos += 2 + int.from_bytes(buf[pos:pos + 2], "little")
    for flag in (_FNAME, _FCOMMENT):
        if flags & flag:
            end = bytes(buf[pos:]).find(b"\0")
            if end < 0:
                return None
            pos += end + 1
    if flags & _FHCRC:
        pos += 2
    return pos if pos <= len(buf) else None


class GzipStream:
    """Decompresses a .gz (several members too) as it is read, checking each member's CRC-32
    and length itself so that damage costs only what it hit:

    - a wrong CRC or length in a member's trailer: every byte is still handed out (the data
      inflated cleanly; ``zcat`` does the same), the mismatch is reported;
    - corrupt deflate data: what inflated before the bad spot is handed out, then reading
      resumes at the next gzip member header (``1f 8b 08`` that inflates cleanly);
    - a truncated file: everything before the cut.

    Each problem is recorded with its byte offset; once the data is exhausted ``read`` raises
    :class:`DamagedInput` listing them all.
    """

    def __init__(self, fileobj, chunk: int = CHUNK):
        self.fileobj = fileobj
        self._chunk = chunk
        self._buf = b""  # compressed bytes not consumed yet
        self._pos = 0  # file offset of _buf[0]
        self._eof = False
        self._z: Any = None  # the current member's raw inflater (zlib's _Decompress); None between members
        self._member_at = 0
        self._crc = self._size = 0
        self.problems: list[str] = []
        self._raised = False
        self._mid_line = False  # the last byte handed out was not a newline

    def _fill(self) -> bool:
        if self._eof:
            return False
        data = self.fileobj.read(self._chunk)
        if not data:
            self._eof = True
            return False
        self._buf += data
        return True

    def _consume(self, n: int) -> None:
        self._buf = self._buf[n:]
        self._pos += n

    def read(self, n: int = -1) -> bytes:
        out: list[bytes] = []
        size = 0
        while n < 0 or size < n:
            piece = self._step()
            if piece is None:
                break
            if piece:
                out.append(piece)
                size += len(piece)
                self._mid_line = piece[-1] != 0x0A
        if not out and self.problems and not self._raised:
            self._raised = True
            raise DamagedInput(self.problems)
        return b"".join(out)

    def _step(self) -> bytes | None:
        """Advance by one header, slice or trailer; None at the end of the data."""
        if self._z is None:
            return b"" if self._start_member() else None
        if not self._buf and not self._fill():
            self.problems.append(f"truncated: the gzip member at byte {self._member_at} ends at byte "
                                 f"{self._pos} before its end-of-stream marker")
            self._z = None
            return None
        data, start = self._buf[:_SLICE], self._pos
        saved = self._z.copy()
        try:
            piece = self._z.decompress(data)
        except zlib.error as e:
            return self._corrupt(saved, data, start, e)
        self._consume(len(data))
        self._crc = zlib.crc32(piece, self._crc)
        self._size += len(piece)
        if self._z.eof:
            rest = self._z.unused_data
            self._buf, self._pos = rest + self._buf, self._pos - len(rest)
            self._z = None
            self._check_trailer()
        return piece

    def _start_member(self) -> bool:
        """Parse the next member header (skipping zero padding); False at the end of the file."""
        while True:
            if not self._buf and not self._fill():
                return False
            hl = gzip_header_length(self._buf)
            if hl is None and self._fill():
                continue
            if hl is not None and hl > 0:
                self._member_at = self._pos
                self._consume(hl)
                self._z = zlib.decompressobj(-zlib.MAX_WBITS)
                self._crc = self._size = 0
                return True
            if not self._buf.strip(b"\0") and not self._fill():
                self._consume(len(self._buf))  # trailing zero padding, as gzip allows
                return False
            where = self._pos
            if not self._resync(0):
                self.problems.append(f"{self._pos - where} bytes that are not gzip data ignored at byte {where}")
                return False
            self.problems.append(f"{self._pos - where} bytes that are not gzip data skipped at byte {where}")

    def _check_trailer(self) -> None:
        while len(self._buf) < 8 and self._fill():
            pass
        if len(self._buf) < 8:
            self.problems.append(f"truncated: the gzip member at byte {self._member_at} lacks its trailer "
                                 f"(byte {self._pos})")
            self._consume(len(self._buf))
            return
        crc, isize = struct.unpack_from("<II", self._buf)
        if crc != self._crc or isize != self._size & 0xFFFFFFFF:
            self.problems.append(
                f"damaged trailer of the gzip member at byte {self._member_at} (trailer at byte {self._pos}: "
                f"CRC {crc:08x}, length {isize}; the data gives CRC {self._crc:08x}, length "
                f"{self._size & 0xFFFFFFFF}): its {self._size} bytes were kept")
        self._consume(8)

    def _corrupt(self, saved, data: bytes, start: int, err: zlib.error) -> bytes:
        """Hand out what inflates before the bad spot, then resume at the next member."""
        good = []
        z = saved
        for i in range(0, len(data), 256):
            try:
                good.append(z.decompress(data[i:i + 256]))
            except zlib.error:
                break
        self._z = None
        where = start + i
        if self._resync(1):
            self.problems.append(f"corrupt deflate data in the gzip member at byte {self._member_at} "
                                 f"(near byte {where}: {err}); resumed at the gzip member at byte {self._pos}")
        else:
            self.problems.append(f"corrupt deflate data in the gzip member at byte {self._member_at} "
                                 f"(near byte {where}: {err}); no later gzip member")
        piece = b"".join(good)
        # the data stops here: end its last line so the next member's first line stays whole
        mid_line = piece[-1] != 0x0A if piece else self._mid_line
        return piece + b"\n" if mid_line else piece

    def _resync(self, skip: int) -> bool:
        """Move to the next offset (at least ``skip`` bytes on) where a gzip member starts and
        inflates cleanly; False (everything consumed) when there is none."""
        at = skip
        while True:
            while True:
                found = self._buf.find(GZIP_MAGIC, at)
                if found >= 0 or not self._fill():
                    break
            if found < 0:
                self._consume(len(self._buf))
                return False
            while len(self._buf) < found + _PROBE and self._fill():
                pass
            if _inflates(self._buf[found:found + _PROBE]):
                self._consume(found)
                return True
            at = found + 1

    def close(self) -> None:
        self.fileobj.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _inflates(buf: bytes) -> bool:
    """Does a gzip member start here (a valid header, then deflate data without error)?"""
    hl = gzip_header_length(buf)
    if not hl or hl < 0:
        return False
    z = zlib.decompressobj(-zlib.MAX_WBITS)
    try:
        z.decompress(buf[hl:], 1 << 20)
    except zlib.error:
        return False
    return True


def iter_line_chunks(stream, chunk: int = CHUNK, on_progress=None, max_line: int | None = None) -> Iterator[list[str]]:
    """Yield lists of decoded lines. A last line without a newline is yielded too.

    A line longer than ``max_line`` bytes (default :data:`MAX_LINE`) is skipped while it is read
    (memory stays bounded by ``max_line``, not by the line: a stream with no newline at all, such as /dev/zero, is read
    in constant memory); an empty line stands in its place so line numbers stay true, and once
    the stream is exhausted :class:`DamagedInput` says which lines were skipped. A stream that
    fails with :class:`DamagedInput` of its own (a damaged .gz) has its problems listed too.
    """
    lines = LineSplitter(max_line or MAX_LINE)
    read = stream.read
    damage: DamagedInput | None = None
    while True:
        try:
            block = read(chunk)
        except DamagedInput as e:
            damage = e
            break
        except Exception:
            tail = lines.finish()
            if tail:  # the cut-off last line is handed out (it will be a reject), then the error
                yield tail
            raise
        if not block:
            break
        if on_progress is not None:
            on_progress(len(block))
        out = lines.feed(block)
        if out:
            yield out
    tail = lines.finish()
    if tail:
        yield tail
    problems = (damage.problems if damage else []) + lines.problems()
    if problems:
        raise DamagedInput(problems)


class LineSplitter:
    """Bytes in, complete decoded lines out, with a bound on the length of one line.

    The unfinished last line is kept as a list of pieces (joined once, when its newline
    comes), so a long line costs linear time; past ``max_line`` bytes its pieces are dropped
    and the rest of it is only counted.
    """

    def __init__(self, max_line: int = MAX_LINE) -> None:
        self.max_line = max_line
        self._pieces: list[bytes] = []
        self._pending = 0  # bytes in _pieces
        self._skipping = 0  # bytes of an overlong line seen so far (0: not skipping)
        self._lineno = 1  # number of the line being assembled
        self._offset = 0  # stream offset of the first byte not yet fed
        self._line_start = 0
        self.skipped: list[tuple[int, int, int]] = []  # (line number, byte offset, length)

    def feed(self, block: bytes) -> list[str]:
        start_off = self._offset
        self._offset += len(block)
        cut = block.find(b"\n")
        if cut < 0:
            self._carry(block)
            return []
        first = self._close_line(block[:cut])
        last = block.rfind(b"\n")
        body = block[cut + 1:last]
        out = [first] if body == b"" and cut == last else [first, *body.decode("utf-8", "surrogateescape").split("\n")]
        if last - cut > self.max_line:  # a whole line inside this block may be too long
            out = self._drop_long(out)
        self._lineno += len(out)
        self._line_start = start_off + last + 1
        self._carry(block[last + 1:])
        return out

    def _close_line(self, head: bytes) -> str:
        """The line that was pending, ended by ``head`` and a newline ('' if it was too long)."""
        if self._skipping or self._pending + len(head) > self.max_line:
            self.skipped.append((self._lineno, self._line_start, self._skipping + self._pending + len(head)))
            self._reset()
            return ""
        line = b"".join([*self._pieces, head]) if self._pieces else head
        self._reset()
        return line.decode("utf-8", "surrogateescape")

    def _drop_long(self, lines: list[str]) -> list[str]:
        """Whole lines inside one block longer than the limit (the block may exceed it)."""
        if len(lines) < 2 or len(lines[1]) == 0 and len(lines) == 2:
            return lines
        for i in range(1, len(lines)):
            if len(lines[i]) > self.max_line // 4 and len(lines[i].encode("utf-8", "surrogateescape")) > self.max_line:
                self.skipped.append((self._lineno + i, -1, len(lines[i].encode("utf-8", "surrogateescape"))))
                lines[i] = ""
        return lines

    def _carry(self, rest: bytes) -> None:
        if not rest:
            return
        if self._skipping:
            self._skipping += len(rest)
        elif self._pending + len(rest) > self.max_line:
            self._skipping = self._pending + len(rest)
            self._pieces, self._pending = [], 0
        else:
            self._pieces.append(rest)
            self._pending += len(rest)

    def _reset(self) -> None:
        self._pieces, self._pending, self._skipping = [], 0, 0

    def finish(self) -> list[str]:
        """The last line, if the stream did not end with a newline."""
        if not (self._pieces or self._skipping):
            return []
        if self._skipping:
            self.skipped.append((self._lineno, self._line_start, self._skipping))
            self._reset()
            return [""]
        line = b"".join(self._pieces).decode("utf-8", "surrogateescape")
        self._reset()
        return [line]

    def problems(self) -> list[str]:
        if not self.skipped:
            return []
        first = self.skipped[0]
        where = f"line {first[0]}" + (f" (byte {first[1]})" if first[1] >= 0 else "")
        return [(f"{len(self.skipped)} line(s) longer than {self.max_line} bytes skipped "
                 f"(the first at {where}, {first[2]} bytes)")]


def compressed_size(path: str) -> int | None:
    try:
        return os.path.getsize(path)
    except OSError:
        return None
