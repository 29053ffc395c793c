"""Follow audit.log across rotations, with checkpoints that make a restart resume exactly.

auditd rotates by rename (``max_log_file_action = ROTATE``: audit.log → audit.log.1 → …, a new
audit.log is created); logrotate may instead copy and truncate (``copytruncate``: the inode stays,
its bytes move to audit.log.1). Either way the records written between our last read and the
rotation are in the rotated file, so the rest of it is read before switching.

A checkpoint is (path, device, inode, offset, fingerprint): the fingerprint is the first
``FP_LEN`` bytes of the file (hex), which tells a rotated copy (same bytes, other inode) and a
reused inode (same inode, other bytes) apart. It is written (atomically) by ``commit()``, which
the caller invokes after the lines returned by ``poll()`` were delivered: a crash re-reads at most
the undelivered batch, and loses nothing.

A reader that delivers a poll's lines in pieces (the live loop: events leave the reassembler one
by one) uses ``poll_offsets()``: each line comes with the byte offset after it in its file, and
each file read with its checkpoint entry, so a checkpoint can be committed after any line — also
one of a file that was rotated away meanwhile.

The decisions are plain functions over stat results (``decide``, ``find_copy``, ``resume_plan``);
``Tailer`` is the I/O around them.

Where a file without a checkpoint is started (its end, or its head) is persisted as soon as it is
decided: otherwise a crash before the first ``commit()`` would make the restart decide again —
"the end" by then — and skip everything written in between.
"""

from __future__ import annotations

import glob
import json
import os
import re
import threading
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from itertools import accumulate
from typing import NamedTuple

__all__ = ["FileStat", "Checkpoint", "decide", "find_copy", "resume_plan", "rotated_siblings", "Tailer",
           "DEFAULT_PATH", "FP_LEN"]

DEFAULT_PATH = "/var/log/audit/audit.log"
FP_LEN = 256
_ROTATED = re.compile(r"\.(\d+)(\.gz)?$")


class FileStat(NamedTuple):
    dev: int
    ino: int
    size: int

    @classmethod
    def of(cls, st: os.stat_result) -> FileStat:
        return cls(st.st_dev, st.st_ino, st.st_size)


@dataclass
class Checkpoint:
    path: str
    dev: int
    ino: int
    offset: int
    fingerprint: str  # hex of the first bytes (up to FP_LEN)


class Candidate(NamedTuple):
    path: str
    stat: FileStat
    fp: bytes


# ---- decisions (pure) --------------------------------------------------------------------------
def decide(reading: FileStat, offset: int, at_name: FileStat | None, head_changed: bool = False) -> str:
    """The file being read (read up to ``offset``) vs what the watched name points at now.

    ``"read"``: more data; ``"idle"``: nothing new; ``"rotated"``: the name is another file (rename
    rotation): finish ours, then switch; ``"gone"``: the name is missing (rotation under way);
    ``"truncated"``: same file, now shorter than what we read, or its first bytes changed
    (copytruncate, possibly refilled past our offset since).
    """
    if at_name is None:
        return "gone"
    if (at_name.dev, at_name.ino) != (reading.dev, reading.ino):
        return "rotated"
    if at_name.size < offset or head_changed:
        return "truncated"
    return "read" if at_name.size > offset else "idle"


def _fp_matches(want: bytes, have: bytes) -> bool:
    return len(have) >= len(want) and have[:len(want)] == want


def find_copy(fp: bytes, offset: int, candidates: Sequence[Candidate], exclude: tuple[int, int] | None = None
              ) -> Candidate | None:
    """After a copytruncate: the rotated copy of our file (same first bytes, at least ``offset`` long)."""
    if not fp:
        return None
    for c in candidates:
        if exclude is not None and (c.stat.dev, c.stat.ino) == exclude:
            continue
        if c.stat.size >= offset and _fp_matches(fp, c.fp):
            return c
    return None


def resume_plan(cp: Checkpoint | None, current: Candidate | None, rotated: Sequence[Candidate], start: str
                ) -> tuple[list[tuple[str, int]], bool]:
    """Files to read, oldest first, with the offset to start at; and whether the checkpoint was lost.

    ``rotated`` is newest first (audit.log.1, audit.log.2, …). Without a checkpoint, ``start`` is
    ``"head"`` (read the current file from 0) or ``"end"`` (only what is written from now on).
    """
    if cp is None:
        if current is None:
            return [], False
        return [(current.path, 0 if start == "head" else current.stat.size)], False
    want = bytes.fromhex(cp.fingerprint)
    chain = ([current] if current else []) + list(rotated)  # newest first
    for i, c in enumerate(chain):
        if (c.stat.dev, c.stat.ino) == (cp.dev, cp.ino) and _fp_matches(want, c.fp) and c.stat.size >= cp.offset:
            newer = chain[:i]
            return [(c.path, cp.offset)] + [(n.path, 0) for n in reversed(newer)], False
    copy = find_copy(want, cp.offset, rotated)
    if copy is not None:  # copytruncate since the checkpoint: finish the copy, then the live file
        i = chain.index(copy)
        return [(copy.path, cp.offset)] + [(n.path, 0) for n in reversed(chain[:i])], False
    return ([(current.path, 0)] if current else []), True


def rotated_siblings(path: str) -> list[str]:
    """``path.1``, ``path.2``, … that exist (not compressed ones), newest first."""
    out = []
    for p in glob.glob(glob.escape(path) + ".*"):
        m = _ROTATED.search(p[len(path):])
        if m and not m.group(2) and p[len(path):] == m.group(0):
            out.append((int(m.group(1)), p))
    return [p for _, p in sorted(out)]


def expand(patterns: Sequence[str]) -> list[str]:
    """Glob patterns → files to follow; a rotated sibling of another match is not followed itself."""
    found: list[str] = []
    for pat in patterns:
        matches = sorted(glob.glob(pat)) if glob.has_magic(pat) else [pat]
        for m in matches:
            if m not in found:
                found.append(m)
    bases = set(found)
    return [f for f in found if not (_ROTATED.search(f) and _ROTATED.sub("", f) in bases)]


def _split_with_offsets(chunk: bytes, start: int, out: list[str], offs: list) -> None:
    """Complete lines (``chunk`` without its last newline, found at ``start`` in the file) →
    ``out`` (decoded with surrogateescape, blank lines left out) and the offset after each → ``offs``."""
    if chunk.isascii():  # the usual case: a character is a byte
        lines = chunk.decode("ascii").split("\n")
        sizes = [len(ln) + 1 for ln in lines]
    else:  # split the bytes: a decoded character may stand for several
        raw = chunk.split(b"\n")
        sizes = [len(b) + 1 for b in raw]
        lines = [b.decode("utf-8", "surrogateescape") for b in raw]
    ends = accumulate(sizes, initial=start)
    next(ends)
    if "" in lines:
        for ln, end in zip(lines, ends, strict=True):
            if ln:
                out.append(ln)
                offs.append(end)
    else:
        out += lines
        offs += ends


# ---- I/O ---------------------------------------------------------------------------------------
class _Snapshot:
    """The watched name and its rotated siblings, newest first, each held open.

    Holding the descriptors makes the plan immune to renames that happen after the look; the
    look is repeated until two in a row agree, so a rotation under way is not half seen.
    """

    def __init__(self, name: str) -> None:
        self.items: list[tuple[Candidate, int]] = []
        prev: list[tuple[Candidate, int]] | None = None
        for _ in range(50):
            items = []
            for path in [name] + rotated_siblings(name):
                try:
                    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
                except (FileNotFoundError, PermissionError, IsADirectoryError):
                    continue
                items.append((Candidate(path, FileStat.of(os.fstat(fd)), os.pread(fd, FP_LEN, 0)), fd))
            if prev is not None and [(c.path, c.stat[:2]) for c, _ in prev] == [(c.path, c.stat[:2]) for c, _ in items]:
                _close_all(prev)
                self.items = items
                return
            if prev is not None:
                _close_all(prev)
            prev = items
            time.sleep(0.002)
        self.items = prev or []

    def current(self, name: str) -> Candidate | None:
        return next((c for c, _ in self.items if c.path == name), None)

    def rotated(self, name: str) -> list[Candidate]:
        return [c for c, _ in self.items if c.path != name]

    def take(self, plan: Sequence[tuple[str, int]]) -> list[tuple[str, int, int]]:
        """Plan by path → plan with the descriptors held; the others are closed."""
        fds = {c.path: fd for c, fd in self.items}
        out = [(path, off, fds.pop(path)) for path, off in plan if path in fds]
        for fd in fds.values():
            os.close(fd)
        self.items = []
        return out


def _close_all(items: Sequence[tuple[Candidate, int]]) -> None:
    for _, fd in items:
        os.close(fd)


class _Follower:
    """One watched name (audit.log) and the queue of files to read for it."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.plan: list[tuple[str, int, int]] = []  # (path, offset, open fd), oldest first
        self.fd = -1
        self.stat: FileStat | None = None
        self.path = name
        self.offset = 0  # after the last complete line handed out
        self.read_pos = 0  # bytes read from fd
        self.partial = b""
        self.fp = b""
        self.rotations = 0
        self.truncations = 0
        self.lost_checkpoints = 0

    def open_next(self) -> bool:
        if not self.plan:
            return False
        path, off, fd = self.plan.pop(0)
        self.close()
        self.fd, self.path = fd, path
        self.stat = FileStat.of(os.fstat(fd))
        self.fp = os.pread(fd, FP_LEN, 0)
        self.offset = self.read_pos = min(off, self.stat.size)
        self.partial = b""
        return True

    def set_plan(self, plan: list[tuple[str, int, int]]) -> None:
        for _, _, fd in self.plan:
            os.close(fd)
        self.plan = plan

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def close_all(self) -> None:
        self.set_plan([])
        self.close()

    def checkpoint(self) -> Checkpoint | None:
        if self.stat is None:
            return None
        if len(self.fp) < FP_LEN and self.fd >= 0:
            self.fp = os.pread(self.fd, FP_LEN, 0)
        return Checkpoint(self.path, self.stat.dev, self.stat.ino, self.offset, self.fp.hex())


class Tailer:
    """Follow audit logs. ``poll()`` → new complete lines; ``commit()`` after delivering them.

    ``paths``: names or globs (default ``/var/log/audit/audit.log``); ``start``: ``"end"`` or
    ``"head"`` when there is no checkpoint; ``state_file``: where checkpoints live.
    """

    def __init__(self, paths: Sequence[str] = (DEFAULT_PATH,), *, start: str = "end", state_file: str | None = None,
                 max_read: int = 4 << 20) -> None:
        if start not in ("end", "head"):
            raise ValueError("start must be 'end' or 'head'")
        self.patterns = list(paths)
        self.start = start
        self.state_file = state_file
        self.max_read = max_read
        self.followers: dict[str, _Follower] = {}
        self._started = False
        self._state_lock = threading.Lock()  # commit() and discover() may run on different threads
        self._saved = self._load_state()
        self._committed: dict[str, dict] = {k: asdict(v) for k, v in self._saved.items()}
        self.discover()

    def _load_state(self) -> dict[str, Checkpoint]:
        if not self.state_file or not os.path.exists(self.state_file):
            return {}
        try:
            with open(self.state_file, encoding="utf-8") as f:
                data = json.load(f)
            return {k: Checkpoint(**v) for k, v in data.get("files", {}).items()}
        except (ValueError, TypeError, KeyError):
            return {}  # unreadable state: behave as a first start

    def discover(self) -> None:
        """Pick up files that now match the patterns (a glob can gain files).

        A file picked up without a checkpoint gets one at once, at the position chosen for it."""
        fresh: dict[str, dict] = {}
        for name in expand(self.patterns):
            if name in self.followers:
                continue
            snap = _Snapshot(name)
            current = snap.current(name)
            if current is None and name not in self._saved:
                snap.take([])
                continue
            rotated = snap.rotated(name)
            fol = _Follower(name)
            # a file that appears after we started is read from its head
            start = "head" if self._started else self.start
            plan, lost = resume_plan(self._saved.get(name), current, rotated, start)
            fol.set_plan(snap.take(plan))
            fol.lost_checkpoints += lost
            fol.open_next()
            self.followers[name] = fol
            if name not in self._saved:
                cp = fol.checkpoint()
                if cp is not None:
                    fresh[name] = asdict(cp)
        self._started = True
        if fresh and self.state_file:
            with self._state_lock:
                self._write_state({**self._committed, **fresh})

    def _read(self, fol: _Follower, offs: list | None = None) -> list[str]:
        """New complete lines of ``fol``'s file, blank ones left out. With ``offs``, the byte
        offset just after each line returned is appended to it (blank lines count in them)."""
        out: list[str] = []
        budget = self.max_read
        while budget > 0:
            data = os.pread(fol.fd, min(budget, 1 << 20), fol.read_pos)
            if not data:
                break
            start = fol.offset  # where fol.partial, and so buf, begins in the file
            fol.read_pos += len(data)
            budget -= len(data)
            buf = fol.partial + data
            cut = buf.rfind(b"\n")
            if cut < 0:
                fol.partial = buf
                continue
            if offs is None:
                out += buf[:cut].decode("utf-8", "surrogateescape").split("\n")
            else:
                _split_with_offsets(buf[:cut], start, out, offs)
            fol.offset = fol.read_pos - (len(buf) - cut - 1)
            fol.partial = buf[cut + 1:]
        return out if offs is not None else [ln for ln in out if ln]

    def _finish(self, fol: _Follower, offs: list | None = None) -> list[str]:
        """Read a file we are leaving to its end; a last line without newline is handed out too."""
        lines: list[str] = []
        while True:
            lines += self._read(fol, offs)
            if fol.read_pos >= os.fstat(fol.fd).st_size:
                break
        if fol.partial:
            lines.append(fol.partial.decode("utf-8", "surrogateescape"))
            fol.offset = fol.read_pos
            fol.partial = b""
            if offs is not None:
                offs.append(fol.offset)
        return lines

    def poll(self) -> list[tuple[str, list[str]]]:
        """Read what is new in every followed file: ``[(path, lines)]``."""
        self.discover()
        out = []
        for fol in self.followers.values():
            lines = self._poll_one(fol)
            if lines:
                out.append((fol.path, lines))
        return out

    def poll_offsets(self) -> list[tuple[str, dict, list[str], list[int]]]:
        """``poll()`` with positions: ``[(name, entry, lines, offsets)]``, one item per file
        read from, in reading order (a poll that meets a rotation finishes the old file first).

        ``name`` is the followed name (the key of ``snapshot()``); ``entry`` the checkpoint entry
        of the file the lines come from (``snapshot()``'s format, at the end of what was read);
        ``offsets[i]`` the byte offset just after ``lines[i]`` in that file, so that
        ``{**entry, "offset": offsets[i]}`` is the checkpoint that resumes just after line i —
        also when that file was rotated away since (a restart finds it by device, inode and
        fingerprint among the rotated ones). Blank lines are left out but counted in the offsets.
        """
        self.discover()
        out = []
        for name, fol in self.followers.items():
            offs: list[int] = []
            parts: list[tuple[int, dict]] = []  # (lines so far, entry of the file they end in)
            lines = self._poll_one(fol, offs, parts)
            if not lines:
                continue
            self._cut(fol, offs, parts)
            start = 0
            for end, entry in parts:
                out.append((name, entry, lines[start:end], offs[start:end]))
                start = end
        return out

    def checkpoint_at(self, name: str, offset: int) -> dict:
        """The ``snapshot()`` entry of ``name`` at ``offset`` of the file followed now (device,
        inode and fingerprint of that file): what to ``commit`` once the lines before it are
        delivered."""
        cp = self.followers[name].checkpoint()
        if cp is None:
            raise KeyError(f"{name}: no file followed")
        cp.offset = offset
        return asdict(cp)

    @staticmethod
    def _cut(fol: _Follower, offs: list | None, parts: list | None) -> None:
        """The lines read since the last cut end in ``fol``'s current file: note its entry."""
        if parts is not None and offs is not None and len(offs) > (parts[-1][0] if parts else 0):
            cp = fol.checkpoint()
            assert cp is not None
            parts.append((len(offs), asdict(cp)))

    def _switch(self, fol: _Follower, offs: list | None, parts: list | None) -> bool:
        """Open the next file of the plan, after noting which file the lines so far came from."""
        if not fol.plan:
            return False
        self._cut(fol, offs, parts)
        return fol.open_next()

    def _poll_one(self, fol: _Follower, offs: list | None = None, parts: list | None = None) -> list[str]:
        lines: list[str] = []
        if fol.fd < 0:
            fol.set_plan(_Snapshot(fol.name).take([(fol.name, 0)]))
            if not fol.open_next():
                return lines
        while fol.plan:  # older files of a resume plan: finish each, then the next
            lines += self._finish(fol, offs)
            self._switch(fol, offs, parts)
        # look before reading: after a copytruncate refilled past our offset, reading first would
        # hand out the middle of a new line
        try:
            at = FileStat.of(os.stat(fol.name))
        except FileNotFoundError:
            at = None
        assert fol.stat is not None
        head_changed = bool(fol.fp) and os.pread(fol.fd, len(fol.fp), 0) != fol.fp
        action = decide(fol.stat, fol.read_pos, at, head_changed)
        if action in ("read", "idle", "gone"):
            return lines + self._read(fol, offs)  # "gone": rotation under way, keep reading ours
        if action == "rotated":
            lines += self._finish(fol, offs)
            fol.rotations += 1
            snap = _Snapshot(fol.name)
            chain = [c for c, _ in snap.items]  # newest first
            ours = next((i for i, c in enumerate(chain) if c.stat[:2] == fol.stat[:2]), None)
            # rotated more than once since the last poll: the files in between, oldest first
            newer = chain[:ours] if ours is not None else [c for c in chain if c.path == fol.name]
            fol.set_plan(snap.take([(c.path, 0) for c in reversed(newer)]))
        else:  # truncated
            fol.truncations += 1
            snap = _Snapshot(fol.name)
            copy = find_copy(fol.fp, fol.offset, snap.rotated(fol.name), exclude=(fol.stat.dev, fol.stat.ino))
            # what we had not read yet went to the copy: resume there at our last whole line
            fol.set_plan(snap.take(([(copy.path, fol.offset)] if copy is not None else []) + [(fol.name, 0)]))
        self._switch(fol, offs, parts)
        while fol.plan:
            lines += self._finish(fol, offs)
            self._switch(fol, offs, parts)
        return lines + self._read(fol, offs)

    def snapshot(self) -> dict[str, dict]:
        """The current positions (what ``commit`` would write), to commit later."""
        files = {}
        for name, fol in self.followers.items():
            cp = fol.checkpoint()
            if cp is not None:
                files[name] = asdict(cp)
        return files

    def commit(self, snapshot: dict[str, dict] | None = None) -> None:
        """Persist positions (now, or an earlier ``snapshot``) once the lines before them are delivered.

        Files the snapshot does not name keep their last persisted position."""
        if not self.state_file:
            return
        with self._state_lock:
            self._write_state({**self._committed, **(self.snapshot() if snapshot is None else snapshot)})

    def _write_state(self, files: dict[str, dict]) -> None:
        assert self.state_file
        tmp = f"{self.state_file}.tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump({"version": 1, "files": files}, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.state_file)
        self._committed = files

    def close(self) -> None:
        for fol in self.followers.values():
            fol.close_all()
