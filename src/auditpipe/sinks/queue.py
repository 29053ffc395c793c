"""Durable on-disk queue between the pipeline and every network output.

A record counts as *accepted* once ``put_many`` returned: it is in the segment file (and, with
``fsync="batch"``, on stable storage). It leaves the queue only when the output calls ``ack``;
after a crash or restart every record past the persisted ack cursor is delivered again
(at-least-once; at most the batch that was in flight is sent twice).

Why append-only segments rather than SQLite WAL: the access pattern is strictly FIFO (append
at the tail, acknowledge a prefix), so a log of length+CRC framed records plus one ack cursor
is all the state there is. Appending a batch is one ``write`` (+ one ``fsync``), acknowledging
is a 16-byte write, and freeing space is unlinking a whole segment: no per-row index, no
DELETE, no checkpointing. Measured on this machine (2 cores, ext4 on virtio, 400-byte events,
batches of 100, put + get + ack per batch): segments 136k events/s with ``fsync="batch"`` and
437k without, SQLite WAL (INSERT/SELECT/DELETE, ``synchronous=FULL``) 91k and with
``synchronous=OFF`` 187k. Crash safety is explicit rather than delegated: every record
carries ``crc32(length || payload)``, so a torn tail (a write cut by kill -9 or power loss) is
detected on open, reported in ``torn``, and the file is truncated to the last whole record.

Layout in ``directory``: ``seg-<first seq, 20 digits>.q`` files, ``ACK`` (two 16-byte slots,
written alternately, each ``<seq u64><crc32 u32><pad>``: a torn ack write leaves the other slot
valid), ``LOCK`` (flock: one process per queue).

When the queue is full (``max_bytes``), ``full_policy="block"`` makes ``put_many`` wait for
acknowledgements (back-pressure to the source; ``block_timeout`` raises ``QueueFull``), and
``"drop_oldest"`` discards the oldest segment and counts its unacknowledged records in
``dropped``.
"""

from __future__ import annotations

import bisect
import errno
import fcntl
import logging
import os
import struct
import threading
import time
import zlib
from collections import deque
from collections.abc import Iterable
from typing import NamedTuple

from auditpipe.sinks.errors import OutputUnavailable

__all__ = ["DiskQueue", "QueueClosed", "QueueFull", "frame", "scan"]

MAGIC = b"\xa7AQ\x02"  # frame sync word; version 2 of the frame layout
_HDR = struct.Struct("<4sIII")  # magic, payload length, crc32(payload), crc32(first 12 bytes)
HDR_SIZE = _HDR.size
_LEN = struct.Struct("<I")
_ACK = struct.Struct("<QQII")  # first unacked seq, its segment's base, its frame offset, crc32
MAX_RECORD = 64 * 1024 * 1024
NO_OFFSET = 0xFFFFFFFF

log = logging.getLogger(__name__)


class QueueFull(OutputUnavailable):
    """``put_many`` waited ``block_timeout`` seconds for space."""


class QueueClosed(Exception):
    pass


def frame(payload: bytes) -> bytes:
    """One on-disk record: a self-checking 16-byte header, then the payload."""
    head = MAGIC + struct.pack("<II", len(payload), zlib.crc32(payload))
    return head + _LEN.pack(zlib.crc32(head)) + payload


def _frame_at(mv: memoryview, off: int) -> int:
    """Length of the valid frame starting at ``off``, or -1."""
    if mv[off:off + 4] != MAGIC or off + HDR_SIZE > len(mv):
        return -1
    _magic, length, pcrc, hcrc = _HDR.unpack_from(mv, off)
    if zlib.crc32(mv[off:off + 12]) != hcrc or length > MAX_RECORD or off + HDR_SIZE + length > len(mv):
        return -1
    if zlib.crc32(mv[off + HDR_SIZE:off + HDR_SIZE + length]) != pcrc:
        return -1
    return length


class Scan(NamedTuple):
    records: list[tuple[int, int]]  # (frame offset, payload length) of every valid frame
    end: int  # end of the last valid frame: what follows is a torn tail
    holes: list[tuple[int, int]]  # damaged byte ranges between valid frames


def scan(data: bytes | memoryview) -> Scan:
    """Valid frames of a segment's bytes. Damage is skipped by resynchronising on the next
    offset that holds a whole valid frame (sync word, header CRC, payload CRC): a flipped
    byte costs the frame(s) it hit, not the rest of the segment."""
    mv = memoryview(data)
    raw = bytes(mv) if not isinstance(data, bytes) else data
    recs: list[tuple[int, int]] = []
    holes: list[tuple[int, int]] = []
    off = end = 0
    bad = -1
    while off + HDR_SIZE <= len(mv):
        length = _frame_at(mv, off)
        if length >= 0:
            if bad >= 0:
                holes.append((bad, off))
                bad = -1
            recs.append((off, length))
            off = end = off + HDR_SIZE + length
            continue
        if bad < 0:
            bad = off
        off = raw.find(MAGIC, off + 1)
        if off < 0:
            break
    return Scan(recs, end, holes)


class _Segment:
    __slots__ = ("base", "count", "path", "size")

    def __init__(self, base: int, path: str, count: int = 0, size: int = 0) -> None:
        self.base, self.path, self.count, self.size = base, path, count, size


class DiskQueue:
    """FIFO of byte records on disk, one producer and one consumer (thread-safe)."""

    def __init__(
        self,
        directory: str | os.PathLike[str],
        *,
        max_bytes: int = 256 * 1024 * 1024,
        segment_bytes: int = 16 * 1024 * 1024,
        full_policy: str = "block",
        block_timeout: float | None = None,
        fsync: str = "batch",
        _write_chunk: int = 0,
    ) -> None:
        if full_policy not in ("block", "drop_oldest"):
            raise ValueError("full_policy must be 'block' or 'drop_oldest'")
        if fsync not in ("batch", "never"):
            raise ValueError("fsync must be 'batch' or 'never'")
        self.dir = os.fspath(directory)
        self.max_bytes = max_bytes
        self.segment_bytes = max(4096, min(segment_bytes, max_bytes // 4))
        self.full_policy = full_policy
        self.block_timeout = block_timeout
        self.fsync = fsync
        self._write_chunk = _write_chunk  # tests: split writes so kill -9 can tear a record
        self.accepted = 0
        self.acked_count = 0
        self.dropped = 0
        self.torn = 0  # torn/corrupt records cut off at open
        self.skipped_frames = 0  # damaged frames skipped at open (resynchronised after)
        self.skipped_bytes = 0
        self.write_errors = 0  # appends refused by the file system (ENOSPC, EIO, ...)
        self._cond = threading.Condition()
        self._closed = False
        os.makedirs(self.dir, mode=0o700, exist_ok=True)
        self._lock_fd = os.open(os.path.join(self.dir, "LOCK"), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self._lock_fd)
            raise RuntimeError(f"queue {self.dir} is in use by another process") from None
        self._ack_fd = os.open(os.path.join(self.dir, "ACK"), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        self._ack_writes = 0
        self._marks: dict[int, tuple[int, int]] = {}  # seq → (segment base, frame offset)
        self._write_failing = 0  # appends refused in a row (logged once)
        self._tail_dirty = False  # a failed append could not be truncated back yet
        self._segs: list[_Segment] = []
        #: (last sequence number, wall time) of each append not yet fully acknowledged, for the
        #: age of the oldest pending record (records found at open: their segment file's mtime)
        self._put_times: deque[tuple[int, float]] = deque()
        self._rseg = self._roff = self._rseq = 0
        self._rfds: dict[str, int] = {}
        self._recover()
        self._preallocate_ack()

    # ---- open / recovery -------------------------------------------------------------------
    def _preallocate_ack(self) -> None:
        """Give both ACK slots their blocks now, so that acknowledging (which is what frees
        space) never needs space: on a full disk the ack write still succeeds."""
        size = os.fstat(self._ack_fd).st_size
        if size < 2 * _ACK.size:
            try:
                os.pwrite(self._ack_fd, b"\0" * (2 * _ACK.size - size), size)
            except OSError as e:
                log.error("queue %s: cannot preallocate ACK (%s)", self.dir, e)

    def _read_ack(self) -> tuple[int, int, int] | None:
        """The newest valid ack slot: (first unacked seq, its segment's base, frame offset)."""
        data = os.pread(self._ack_fd, 4 * _ACK.size, 0)
        best = None
        for slot in range(2):
            chunk = data[slot * _ACK.size:(slot + 1) * _ACK.size]
            if len(chunk) < _ACK.size:
                continue
            seq, base, off, crc = _ACK.unpack(chunk)
            if zlib.crc32(chunk[:-4]) == crc and (best is None or seq > best[0]):
                best = (seq, base, off)
        if best is None:  # version 1 slots: <seq u64><crc32(seq) u32><pad>, 16 bytes each
            for slot in range(2):
                chunk = data[slot * 16:slot * 16 + 16]
                if len(chunk) == 16 and zlib.crc32(chunk[:8]) == _LEN.unpack_from(chunk, 8)[0]:
                    seq = struct.unpack_from("<Q", chunk)[0]
                    if best is None or seq > best[0]:
                        best = (seq, 0, NO_OFFSET)
        if best is None and any(data):
            log.warning("queue %s: both ACK slots are damaged; every record on disk is sent again", self.dir)
        return best

    def _recover(self) -> None:
        ack = self._read_ack()
        names = sorted(n for n in os.listdir(self.dir) if n.startswith("seg-") and n.endswith(".q"))
        acked = None if ack is None else ack[0]
        bases = [int(n[4:-2]) for n in names]
        for i, (name, base) in enumerate(zip(names, bases, strict=True)):
            # a segment that was rolled held exactly (next base - base) frames
            expected = bases[i + 1] - base if i + 1 < len(bases) else None
            seg, offsets = self._recover_segment(base, os.path.join(self.dir, name), expected)
            self._segs.append(seg)
            if ack is not None and base == ack[1] and ack[2] != NO_OFFSET:
                # damage before the ack point shifted this segment's numbering: the byte offset
                # of the first unacknowledged frame says where the cursor really is
                acked = base + bisect.bisect_left(offsets, ack[2])
        next_seq = self._segs[-1].base + self._segs[-1].count if self._segs else (acked or 0)
        if acked is None:
            acked = self._segs[0].base if self._segs else 0
        self._acked = min(acked, next_seq)
        self._next = next_seq
        if self._acked < next_seq:
            first = next(s for s in self._segs if s.base + s.count > self._acked)
            self._put_times.append((next_seq - 1, os.stat(first.path).st_mtime))
        if not self._segs:
            self._new_segment(next_seq)
        self._wfd = os.open(self._segs[-1].path, os.O_WRONLY | os.O_APPEND | os.O_CLOEXEC)
        if self.skipped_frames:  # segments were rewritten: the cursor's offset moved
            try:
                self._persist_ack(self._acked)
            except OSError as e:
                log.error("queue %s: cannot rewrite ACK after repair (%s)", self.dir, e)
        self._free_acked()
        self._rewind_locked()

    def _recover_segment(self, base: int, path: str, expected: int | None) -> tuple[_Segment, list[int]]:
        """Scan one segment; cut a torn tail, rewrite it without damaged ranges (set aside in
        ``damaged-*.bin``). Returns the segment and the old offsets of its valid frames.
        ``expected``: how many frames it held, when known (every segment but the last)."""
        with open(path, "rb") as f:
            data = f.read()
        if data and not data.startswith(MAGIC):
            data = self._upgrade_v1(path, data)
        sc = scan(data)
        offsets = [o for o, _ in sc.records]
        name = os.path.basename(path)
        if sc.end != len(data):
            self.torn += 1
            log.warning("queue %s: %s: torn tail of %d bytes at offset %d cut off",
                        self.dir, name, len(data) - sc.end, sc.end)
        estimate = sum(max(1, data.count(MAGIC, a, b)) for a, b in sc.holes)
        lost = estimate if expected is None else expected - len(sc.records)
        if lost > 0 and (sc.holes or expected is not None):
            self.skipped_frames += lost
            self.skipped_bytes += sum(b - a for a, b in sc.holes) + (len(data) - sc.end if expected else 0)
            log.error("queue %s: %s: %d records lost to damage (%d of %d frames read back)",
                      self.dir, name, lost, len(sc.records), len(sc.records) + lost)
        if sc.holes:
            self._set_aside(name, data, sc.holes)
            data = b"".join(data[o:o + HDR_SIZE + n] for o, n in sc.records)
            self._replace(path, data)
        elif sc.end != len(data):
            with open(path, "r+b") as f:
                f.truncate(sc.end)
                os.fsync(f.fileno())
            data = data[:sc.end]
        return _Segment(base, path, len(sc.records), len(data)), offsets

    def _upgrade_v1(self, path: str, data: bytes) -> bytes:
        """A segment written before frames had a sync word (``<len><crc32(len+payload)>``):
        rewrite its whole records in today's frames so an upgrade loses nothing."""
        out, off = [], 0
        while off + 8 <= len(data):
            length, crc = struct.unpack_from("<II", data, off)
            payload = data[off + 8:off + 8 + length]
            if len(payload) != length or zlib.crc32(payload, zlib.crc32(data[off:off + 4])) != crc:
                break
            out.append(frame(payload))
            off += 8 + length
        if not out:
            return data
        log.warning("queue %s: %s: %d records converted from the previous frame format",
                    self.dir, os.path.basename(path), len(out))
        new = b"".join(out)
        self._replace(path, new)
        return new

    def _replace(self, path: str, data: bytes) -> None:
        tmp = path + ".tmp"
        with open(tmp, "wb") as f:
            f.write(data)
            os.fsync(f.fileno())
        os.replace(tmp, path)
        self._fsync_dir()

    def _set_aside(self, name: str, data: bytes, holes: list[tuple[int, int]]) -> None:
        """Keep the damaged bytes (for forensics) and say where they were."""
        for start, end in holes:
            aside = os.path.join(self.dir, f"damaged-{name[4:-2]}-{start}.bin")
            try:
                with open(aside, "wb") as f:
                    f.write(data[start:end])
            except OSError as e:
                aside = f"not set aside: {e}"
            log.error("queue %s: %s: %d damaged bytes at offset %d skipped, resynchronised on "
                      "the next valid frame (bytes in %s)", self.dir, name, end - start, start, aside)

    def _new_segment(self, base: int) -> None:
        path = os.path.join(self.dir, f"seg-{base:020d}.q")
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)
        os.close(fd)
        self._fsync_dir()
        self._segs.append(_Segment(base, path))

    def _fsync_dir(self) -> None:
        if self.fsync == "batch":
            fd = os.open(self.dir, os.O_RDONLY | os.O_DIRECTORY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)

    # ---- state -----------------------------------------------------------------------------
    @property
    def pending(self) -> int:
        """Records accepted and not yet acknowledged."""
        with self._cond:
            return sum(max(0, s.count - max(0, self._acked - s.base)) for s in self._segs)

    @property
    def bytes_used(self) -> int:
        with self._cond:
            return sum(s.size for s in self._segs)

    def oldest_age(self, now: float | None = None) -> float:
        """Seconds since the oldest record not yet acknowledged was accepted (0: none)."""
        with self._cond:
            times = self._put_times
            while times and times[0][0] < self._acked:
                times.popleft()
            if not times:
                return 0.0
            return max(0.0, (time.time() if now is None else now) - times[0][1])

    @property
    def last_seq(self) -> int:
        """Sequence number of the last record accepted (-1 or less before the first)."""
        return self._next - 1

    @property
    def acked_seq(self) -> int:
        """Sequence number of the first unacknowledged record."""
        return self._acked

    # ---- producer --------------------------------------------------------------------------
    def put(self, payload: bytes) -> int:
        return self.put_many([payload])

    def put_many(self, payloads: Iterable[bytes]) -> int:
        """Append records; when this returns they are accepted. Returns the last sequence number."""
        payloads = list(payloads)
        frames = [frame(p) for p in payloads]
        if not frames:
            return self._next - 1
        total = sum(len(f) for f in frames)
        if total > self.max_bytes - self.segment_bytes:
            # split what cannot fit at once; each part is accepted on its own
            half = len(frames) // 2
            if half == 0:
                raise ValueError("record larger than the queue")
            self.put_many(payloads[:half])
            return self.put_many(payloads[half:])
        with self._cond:
            self._make_room(total)
            data = b"".join(frames)
            try:
                self._append(data, total, len(frames))
            except OSError as e:
                if not self._reclaim_tail(e):
                    raise self._refused(e) from None
                try:  # the acknowledged part of the old tail is gone: once more
                    self._append(data, total, len(frames))
                except OSError as e2:
                    raise self._refused(e2) from None
            if self._write_failing:
                log.warning("queue %s: appends accepted again after %d refused", self.dir, self._write_failing)
                self._write_failing = 0
            self._next += len(frames)
            self._put_times.append((self._next - 1, time.time()))
            self.accepted += len(frames)
            self._cond.notify_all()
            return self._next - 1

    def _append(self, data: bytes, total: int, count: int) -> None:
        """Write whole frames at the end of the tail segment, or nothing: a failed write is
        truncated back, so the segment never holds a torn frame nobody was told about."""
        if self._tail_dirty:
            os.ftruncate(self._wfd, self._segs[-1].size)
            self._tail_dirty = False
        seg = self._segs[-1]
        if seg.size and seg.size + total > self.segment_bytes:
            self._roll()
            seg = self._segs[-1]
        try:
            self._write(data)
        except OSError:
            self._tail_dirty = True
            os.ftruncate(self._wfd, seg.size)
            self._tail_dirty = False
            raise
        seg.size += total
        seg.count += count

    def _refused(self, e: OSError) -> OutputUnavailable:
        """Count and log (once per spell) an append the file system refused."""
        self.write_errors += 1
        code = errno.errorcode.get(e.errno or 0, "error")
        cause = f"{code} on {self.dir}: {e.strerror or e}"
        if not self._write_failing:
            log.error("queue %s: cannot append (%s); nothing of the write is accepted until it can be", self.dir, cause)
        self._write_failing += 1
        return OutputUnavailable(cause)

    def _write(self, data: bytes) -> None:
        view = memoryview(data)
        step = self._write_chunk or len(view)
        while view:
            n = os.write(self._wfd, view[:step])
            view = view[n:]
        if self.fsync == "batch":
            os.fdatasync(self._wfd)

    def _reclaim_tail(self, e: OSError) -> bool:
        """The disk is full and the tail segment holds acknowledged records: start a new tail,
        so the old one is deleted once all of it is acknowledged (a segment is freed whole, and
        the tail is never freed, so without this a queue whose one segment outgrew the free
        space would stay full for ever). True when space was freed at once."""
        tail = self._segs[-1]
        if e.errno not in (errno.ENOSPC, errno.EDQUOT) or not tail.count or self._acked <= tail.base:
            return False
        try:
            self._roll()
        except OSError:
            return False
        before = len(self._segs)
        self._free_acked()
        return len(self._segs) < before

    def _roll(self) -> None:
        """Start a new tail segment; the new file exists before the old one is let go."""
        old = self._wfd
        self._new_segment(self._next)
        try:
            self._wfd = os.open(self._segs[-1].path, os.O_WRONLY | os.O_APPEND | os.O_CLOEXEC)
        except OSError:
            self._segs.pop()
            raise
        if self.fsync == "batch":
            os.fsync(old)
        os.close(old)

    def _used(self) -> int:
        return sum(s.size for s in self._segs)

    def _make_room(self, need: int) -> None:
        deadline = None if self.block_timeout is None else time.monotonic() + self.block_timeout
        while self._used() + need > self.max_bytes:
            if self._closed:
                raise QueueClosed()
            if self.full_policy == "drop_oldest":
                if len(self._segs) == 1:
                    self._roll()
                    continue
                self._drop_oldest()
                continue
            wait = None if deadline is None else deadline - time.monotonic()
            if wait is not None and wait <= 0:
                raise QueueFull(f"queue {self.dir} full ({self.max_bytes} bytes)")
            self._cond.wait(wait)

    def _drop_oldest(self) -> None:
        seg = self._segs[0]
        unacked = max(0, seg.count - max(0, self._acked - seg.base))
        self.dropped += unacked
        nxt = self._segs[1].base
        if self._acked < nxt:
            self._persist_ack(nxt)
        self._remove_segment(0)
        self._after_remove(1)

    def _remove_segment(self, i: int) -> None:
        seg = self._segs.pop(i)
        fd = self._rfds.pop(seg.path, None)
        if fd is not None:
            os.close(fd)
        try:
            os.unlink(seg.path)
        except FileNotFoundError:
            pass

    # ---- consumer --------------------------------------------------------------------------
    def _rewind_locked(self) -> None:
        """Read position → the first unacknowledged record."""
        self._rseg = 0
        self._roff = 0
        self._rseq = self._segs[0].base
        while self._rseq < self._acked:
            if not self._advance_one():
                break

    def rewind(self) -> None:
        """Deliver again from the first unacknowledged record (after the caller dropped a batch)."""
        with self._cond:
            self._rewind_locked()

    def _rfd(self, seg: _Segment) -> int:
        fd = self._rfds.get(seg.path)
        if fd is None:
            fd = self._rfds[seg.path] = os.open(seg.path, os.O_RDONLY | os.O_CLOEXEC)
        return fd

    def _advance_one(self) -> bool:
        """Skip one record without reading its payload; False at the end of the data."""
        while True:
            seg = self._segs[self._rseg]
            if self._roff < seg.size:
                (length,) = _LEN.unpack(os.pread(self._rfd(seg), 4, self._roff + 4))
                self._roff += HDR_SIZE + length
                self._rseq += 1
                return True
            if self._rseg + 1 >= len(self._segs):
                return False
            self._rseg += 1
            self._roff = 0
            self._rseq = self._segs[self._rseg].base

    def _available(self) -> bool:
        if self._rseg >= len(self._segs):
            return False
        if self._roff < self._segs[self._rseg].size:
            return True
        return any(s.size for s in self._segs[self._rseg + 1:])

    def has_unread(self) -> bool:
        with self._cond:
            return self._available()

    def get_batch(self, max_records: int = 1000, max_bytes: int = 1 << 20, timeout: float = 0.0,
                  *, at_least_one: bool = True) -> list[tuple[int, bytes]]:
        """Next unread records ``[(seq, payload)]`` within the limits on count and payload bytes.

        With ``at_least_one`` a first record larger than ``max_bytes`` is still returned (alone),
        so an oversize record cannot stall the queue. Waits up to ``timeout`` seconds for the
        first record. Reading does not remove: only ``ack`` does.
        """
        with self._cond:
            if not self._available() and timeout > 0:
                self._cond.wait_for(lambda: self._available() or self._closed, timeout)
            out = self._read(max_records, max_bytes, at_least_one)
            if out:  # where the next record starts, for the ack that will name it
                self._marks[self._rseq] = (self._segs[self._rseg].base, self._roff)
            return out

    def _read(self, max_records: int, max_bytes: int, at_least_one: bool) -> list[tuple[int, bytes]]:
        out: list[tuple[int, bytes]] = []
        size = 0
        while len(out) < max_records and self._available():
            seg = self._segs[self._rseg]
            if self._roff >= seg.size:
                self._rseg += 1
                self._roff = 0
                self._rseq = self._segs[self._rseg].base
                continue
            want = min(seg.size - self._roff, max(max_bytes - size, 0) + HDR_SIZE + 65536)
            chunk = os.pread(self._rfd(seg), want, self._roff)
            mv = memoryview(chunk)
            pos = 0
            while pos + HDR_SIZE <= len(chunk) and len(out) < max_records:
                (length,) = _LEN.unpack_from(mv, pos + 4)
                if (out or not at_least_one) and size + length > max_bytes:
                    return out
                if pos + HDR_SIZE + length > len(chunk):
                    if pos == 0:  # a single record larger than the read window
                        payload = os.pread(self._rfd(seg), length, self._roff + HDR_SIZE)
                        out.append((self._rseq, payload))
                        size += length
                        self._roff += HDR_SIZE + length
                        self._rseq += 1
                    break
                out.append((self._rseq, bytes(mv[pos + HDR_SIZE:pos + HDR_SIZE + length])))
                size += length
                pos += HDR_SIZE + length
                self._roff += HDR_SIZE + length
                self._rseq += 1
            if size >= max_bytes:
                break
        return out

    def ack(self, upto_seq: int) -> None:
        """Acknowledge every record with a sequence number ``<= upto_seq``; frees their space."""
        with self._cond:
            new = min(upto_seq + 1, self._next)
            if new <= self._acked:
                return
            self.acked_count += new - self._acked
            self._persist_ack(new)
            self._free_acked()
            self._cond.notify_all()

    def _persist_ack(self, seq: int) -> None:
        """Write the ack cursor to the older slot (a torn write leaves the other one valid).
        It names the frame's byte offset too, so that damage found at a later open cannot
        shift which records count as acknowledged."""
        mark = self._marks.pop(seq, None)
        base, off = mark if mark is not None else self._locate(seq)
        for k in [k for k in self._marks if k < seq]:
            del self._marks[k]
        slot = self._ack_writes % 2
        body = struct.pack("<QQI", seq, base, off)
        os.pwrite(self._ack_fd, body + _LEN.pack(zlib.crc32(body)), slot * _ACK.size)
        self._ack_writes += 1
        if self.fsync == "batch":
            os.fdatasync(self._ack_fd)
        self._acked = seq

    def _locate(self, seq: int) -> tuple[int, int]:
        """(segment base, frame offset) of record ``seq``, by walking its segment's headers."""
        for seg in reversed(self._segs):
            if seg.base <= seq:
                off = 0
                for _ in range(min(seq - seg.base, seg.count)):
                    off += HDR_SIZE + _LEN.unpack(os.pread(self._rfd(seg), 4, off + 4))[0]
                return seg.base, off
        return 0, NO_OFFSET

    def _free_acked(self) -> None:
        removed = 0
        while len(self._segs) > 1 and self._segs[0].base + self._segs[0].count <= self._acked:
            self._remove_segment(0)
            removed += 1
        self._after_remove(removed)

    def _after_remove(self, removed: int) -> None:
        """Keep the read position valid after the first ``removed`` segments went away."""
        if removed:
            if self._rseg < removed:
                self._rewind_locked()
                return
            self._rseg -= removed
        if self._rseq < self._acked:
            self._rewind_locked()

    # ---- lifecycle -------------------------------------------------------------------------
    def close(self) -> None:
        with self._cond:
            if self._closed:
                return
            self._closed = True
            self._cond.notify_all()
            if self.fsync == "batch":
                os.fsync(self._wfd)
            os.close(self._wfd)
            for fd in self._rfds.values():
                os.close(fd)
            self._rfds.clear()
            os.close(self._ack_fd)
            fcntl.flock(self._lock_fd, fcntl.LOCK_UN)
            os.close(self._lock_fd)

    def __enter__(self) -> DiskQueue:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
