"""JSON-lines file sink with size rotation.

Rotation renames ``out.jsonl`` → ``out.jsonl.1`` → … → ``out.jsonl.N`` (the oldest is removed),
the scheme logrotate and auditd use, so existing shippers and humans find the files where they
expect them. Rotation happens only at line boundaries: a reader never sees a document split
across two files. Files are created with mode 0600 by default because audit data holds command
lines, user names and addresses.

fsync policy: ``"never"`` leaves flushing to the OS (survives a process crash, not a power
loss), ``"batch"`` fsyncs after every ``write`` call, ``"interval"`` at most every
``fsync_interval`` seconds.

``shared=True``: several processes append to the one file (``serve --workers N`` whose workers
write their own documents). Each ``write`` then holds an exclusive ``flock`` on the file's
directory, takes the file's size (and the new file, after another process rotated it) under it,
so that rotation, and the cut back after a failed write, see every process's lines.
"""

from __future__ import annotations

import errno
import fcntl
import os
import time
from collections.abc import Iterable
from typing import Any

from auditpipe.sinks.encode import dumps_line
from auditpipe.sinks.errors import OutputUnavailable

__all__ = ["FileSink", "rotate_files"]

FSYNC_POLICIES = ("never", "batch", "interval")
#: errors that mean "not now" (space or the device), not a bug: the write can be tried again
_UNAVAILABLE = (errno.ENOSPC, errno.EDQUOT, errno.EIO, errno.EFBIG)


def rotate_files(path: str, generations: int) -> None:
    """Shift ``path.(N-1)`` → ``path.N`` … ``path`` → ``path.1``; drop what falls off the end."""
    if generations <= 0:
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass
        return
    try:
        os.unlink(f"{path}.{generations}")
    except FileNotFoundError:
        pass
    for i in range(generations - 1, 0, -1):
        try:
            os.replace(f"{path}.{i}", f"{path}.{i + 1}")
        except FileNotFoundError:
            pass
    try:
        os.replace(path, f"{path}.1")
    except FileNotFoundError:
        pass


class FileSink:
    """Append JSON lines to ``path``; rotate when the next line would pass ``max_bytes``.

    ``max_bytes=0`` disables rotation. ``write`` takes dicts or already serialized lines
    (bytes ending in a newline or not) and returns the number of lines written — all of them, or
    none: when the disk is full (ENOSPC, EDQUOT) or failing (EIO) the file is truncated back to
    where the call began and :class:`OutputUnavailable` is raised, so no torn line is left and
    the caller can write the same documents again later.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        max_bytes: int = 100 * 1024 * 1024,
        generations: int = 5,
        mode: int = 0o600,
        fsync: str = "never",
        fsync_interval: float = 1.0,
        shared: bool = False,
    ) -> None:
        if fsync not in FSYNC_POLICIES:
            raise ValueError(f"fsync must be one of {FSYNC_POLICIES}, not {fsync!r}")
        self.path = os.fspath(path)
        self.max_bytes = max_bytes
        self.generations = generations
        self.mode = mode
        self.fsync = fsync
        self.fsync_interval = fsync_interval
        self.lines = 0
        self.rotations = 0
        self._last_sync = time.monotonic()
        self._dirty = False
        self._fd = -1
        self._size = 0
        self._closed = False
        self._lock_fd = -1
        if shared:
            directory = os.path.dirname(os.path.abspath(self.path))
            os.makedirs(directory, exist_ok=True)
            self._lock_fd = os.open(directory, os.O_RDONLY | os.O_CLOEXEC)
        try:
            self._open()
        except OSError:
            self.close()
            raise

    def _open(self) -> None:
        d = os.path.dirname(self.path)
        if d:
            os.makedirs(d, exist_ok=True)
        fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, self.mode)
        try:
            os.fchmod(fd, self.mode)  # the umask, or an older file, must not widen access
        except OSError:
            pass
        self._fd = fd
        self._size = os.fstat(fd).st_size

    def _rotate(self) -> None:
        self._sync()
        os.close(self._fd)
        self._fd = -1
        rotate_files(self.path, self.generations)
        self.rotations += 1
        self._open()

    def _write_all(self, data: bytes | bytearray) -> None:
        """Append all of ``data`` or nothing: a write cut short (ENOSPC, EDQUOT, EIO…) is
        truncated back, so a reader never sees a torn line, and ``OutputUnavailable`` is raised."""
        view = memoryview(data)
        try:
            while view:
                n = os.write(self._fd, view)
                view = view[n:]
        except OSError as e:
            try:
                os.ftruncate(self._fd, self._size)
            except OSError:
                pass
            raise self._unavailable(e) from e
        self._size += len(data)
        self._dirty = True

    def _unavailable(self, e: OSError) -> OutputUnavailable:
        return OutputUnavailable(f"{errno.errorcode.get(e.errno or 0, 'error')} on {self.path}: {e.strerror}")

    def write(self, items: Iterable[Any]) -> int:
        """Write documents (dicts) or serialized lines; rotation happens between lines."""
        if self._closed:
            raise ValueError("sink is closed")
        if not isinstance(items, list):
            items = list(items)
        if self._lock_fd < 0:
            return self._write_undoable(items, follow=False)
        fcntl.flock(self._lock_fd, fcntl.LOCK_EX)
        try:
            return self._write_undoable(items, follow=True)
        finally:
            fcntl.flock(self._lock_fd, fcntl.LOCK_UN)

    def _follow(self) -> None:
        """Shared: the file as the other processes left it (rotated: the new one; its size now)."""
        try:
            st = os.stat(self.path)
        except FileNotFoundError:  # removed behind our back: start it again
            st = None
        mine = os.fstat(self._fd)
        if st is not None and (st.st_dev, st.st_ino) == (mine.st_dev, mine.st_ino):
            self._size = st.st_size
            return
        if self.fsync != "never":
            self._sync()
        os.close(self._fd)
        self._fd = -1
        self._open()

    def _write_undoable(self, items: list[Any], follow: bool) -> int:
        try:
            if self._fd < 0:  # the file could not be opened again after a rotation: try again
                self._open()
            if follow:
                self._follow()
        except OSError as e:  # the output is unavailable for now; the caller holds and retries
            raise self._unavailable(e) from e
        start, rotations = self._size, self.rotations
        try:
            return self._write_items(items)
        except OSError as e:
            if e.errno not in _UNAVAILABLE:
                raise
            self._undo(start, rotations)
            raise self._unavailable(e) from e

    def _undo(self, start: int, rotations: int) -> None:
        """Cut a failed call's bytes off again (after a rotation within the call, the new file
        holds only this call's lines, and the rotated one its first ones: those stay, whole)."""
        if self._fd < 0:  # the new file never opened: nothing of this call is in it
            self._size = 0
            return
        keep = start if self.rotations == rotations else 0
        try:
            os.ftruncate(self._fd, keep)
            self._size = keep
        except OSError:
            self._size = os.fstat(self._fd).st_size

    def _write_items(self, items: list[Any]) -> int:
        buf = bytearray()
        count = 0
        limit = self.max_bytes
        for item in items:
            line = dumps_line(item)
            if limit and self._size + len(buf) + len(line) > limit and self._size + len(buf) > 0:
                if buf:
                    self._write_all(buf)
                    buf = bytearray()
                self._rotate()
            buf += line
            count += 1
        if buf:
            self._write_all(buf)
        self.lines += count
        self._after_write()
        return count

    def write_bytes(self, data: bytes) -> int:
        """Write a block of complete JSON lines (as received); split only if rotation needs it."""
        if not data:
            return 0
        if not data.endswith(b"\n"):
            data += b"\n"
        return self.write(data.splitlines(keepends=True))

    def _after_write(self) -> None:
        due = self.fsync == "interval" and time.monotonic() - self._last_sync >= self.fsync_interval
        if self.fsync == "batch" or due:
            self._sync()

    def _sync(self) -> None:
        if self._fd >= 0 and self._dirty:
            os.fsync(self._fd)
            self._dirty = False
        self._last_sync = time.monotonic()

    def flush(self) -> None:
        """Make what was written durable (fsync), whatever the policy."""
        self._sync()

    def close(self) -> None:
        self._closed = True
        if self._fd >= 0:
            if self.fsync != "never":
                self._sync()
            os.close(self._fd)
            self._fd = -1
        if self._lock_fd >= 0:
            os.close(self._lock_fd)
            self._lock_fd = -1

    def __enter__(self) -> FileSink:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
