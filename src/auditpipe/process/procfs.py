"""Reading /proc: the one place the process table does I/O. A :class:`ProcReader` is injected
into the stage (tests inject one rooted at another directory, or none at all: ``parse`` mode).

Every read may race with the process exiting: a vanished process reads as None, never an error.
"""

from __future__ import annotations

import ctypes
import errno
import os
from collections.abc import Callable
from typing import NamedTuple

__all__ = ["ProcReader", "ProcSnapshot", "ProcStat"]


class ProcStat(NamedTuple):
    """The fields of ``/proc/<pid>/stat`` the table needs (a tuple: made for every new process)."""

    pid: int
    comm: str
    ppid: int
    pgid: int
    sid: int
    ticks: int


class ProcSnapshot:
    """One process as /proc shows it (uids as decimal strings, like audit records)."""

    __slots__ = ("args", "auid", "cgroup", "euid", "exe", "ses", "stat", "uid")

    def __init__(self, stat: ProcStat, exe: str | None, args: list[str], uid: str | None,
                 euid: str | None, auid: str | None, ses: str | None, cgroup: str | None) -> None:
        self.stat, self.exe, self.args = stat, exe, args
        self.uid, self.euid, self.auid, self.ses, self.cgroup = uid, euid, auid, ses, cgroup


def parse_stat(pid: int, raw: bytes) -> ProcStat | None:
    """``/proc/<pid>/stat``: the name is in parentheses and may hold any byte, ``)`` too; only
    the fields up to the start time are split."""
    head, sep, rest = raw.rpartition(b")")
    if not sep:
        return None
    f = rest.split(None, 20)
    try:
        return ProcStat(pid, head.partition(b"(")[2].decode("utf-8", "surrogateescape"),
                        int(f[1]), int(f[2]), int(f[3]), int(f[19]))
    except (IndexError, ValueError):
        return None


class ProcReader:
    """/proc (or a copy of its layout under ``root``)."""

    def __init__(self, root: str = "/proc") -> None:
        self.root = root
        self.hz = os.sysconf("SC_CLK_TCK") if root == "/proc" else 100
        self._btime: float | None = None
        self._prefix = root + "/"
        #: kill(pid, 0) answers "no such process" without a path walk (nor the GIL let go), so a
        #: process already gone costs one cheap call; only where /proc's pids are ours
        self._ask_kernel = root == "/proc" and _same_pid_namespace()
        self._kill = _libc_kill() if self._ask_kernel else None

    def _read_bytes(self, rel: str, size: int = 4096) -> bytes | None:
        try:
            fd = os.open(self._prefix + rel, os.O_RDONLY | os.O_CLOEXEC)
        except OSError:  # gone, or not ours to read
            return None
        try:
            data = os.read(fd, size)
            if len(data) < size:  # a short read is the end: one read() for what fits
                return data
            chunks = [data]
            while chunk := os.read(fd, 65536):
                chunks.append(chunk)
            return b"".join(chunks)
        except OSError:
            return None
        finally:
            os.close(fd)

    def exists(self, pid: int) -> bool:
        """False when no process has this pid (a zombie still has it); True when unsure."""
        if not self._ask_kernel or pid <= 0:
            return True
        if self._kill is not None:  # EPERM: it exists, not ours to signal
            return self._kill(pid, 0) == 0 or ctypes.get_errno() != errno.ESRCH
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except OSError:
            pass
        return True

    def _read(self, rel: str) -> str | None:
        raw = self._read_bytes(rel)
        return raw.decode("utf-8", "surrogateescape") if raw is not None else None

    def boot_id(self) -> str:
        return (self._read("sys/kernel/random/boot_id") or "").strip()

    def boot_time(self) -> float:
        """Seconds since the epoch at boot (``btime``), to turn start ticks into a time."""
        if self._btime is None:
            for line in (self._read("stat") or "").splitlines():
                if line.startswith("btime "):
                    self._btime = float(line.split()[1])
                    break
            else:
                self._btime = 0.0
        return self._btime

    def start_time(self, ticks: int) -> float:
        return self.boot_time() + ticks / self.hz

    def pids(self) -> list[int]:
        try:
            return [int(n) for n in os.listdir(self.root) if n.isdecimal()]
        except OSError:
            return []

    def stat(self, pid: int) -> ProcStat | None:
        if not self.exists(pid):
            return None
        raw = self._read_bytes(f"{pid}/stat")
        return parse_stat(pid, raw) if raw else None

    def tgid(self, pid: int) -> int | None:
        """The thread group (process) a task id belongs to; None when it is gone."""
        for line in (self._read(f"{pid}/status") or "").splitlines():
            if line.startswith("Tgid:"):
                return int(line.split()[1])
        return None

    def cgroup(self, pid: int) -> str | None:
        return self._read(f"{pid}/cgroup")

    def args(self, pid: int) -> list[str]:
        raw = self._read_bytes(f"{pid}/cmdline")
        return [a.decode("utf-8", "surrogateescape") for a in raw.rstrip(b"\0").split(b"\0")] if raw else []

    def snapshot(self, pid: int) -> ProcSnapshot | None:
        st = self.stat(pid)
        if st is None:
            return None
        try:
            exe: str | None = os.readlink(f"{self.root}/{pid}/exe")
        except OSError:  # a kernel thread, or not ours
            exe = None
        args = self.args(pid)
        uid = euid = None
        for line in (self._read(f"{pid}/status") or "").splitlines():
            if line.startswith("Uid:"):
                ids = line.split()
                uid, euid = ids[1], ids[2]
                break
        auid = (self._read(f"{pid}/loginuid") or "").strip() or None
        ses = (self._read(f"{pid}/sessionid") or "").strip() or None
        return ProcSnapshot(st, exe, args, uid, euid, auid, ses, self.cgroup(pid))

    def container_file(self, pid: int, path: str) -> str | None:
        """A file inside the process's root (``/proc/<pid>/root/etc/passwd``), when readable."""
        return self._read(f"{pid}/root{path}")


def _libc_kill() -> Callable[[int, int], int] | None:
    """libc's kill(), whose "no such process" is an errno rather than an exception: most new
    processes a live run looks up have exited already, and each exception raised through
    compiled code builds a traceback frame (with os.kill, a third of the process stage's live
    CPU at 1,000 exec/s, perf). None without ctypes (os.kill is used then)."""
    try:
        fn: Callable[[int, int], int] = ctypes.CDLL(None, use_errno=True).kill
    except (OSError, AttributeError):
        return None
    # no argtypes: Python ints go as C ints (and restype is int) without a converter call each
    return fn


def _same_pid_namespace() -> bool:
    """/proc shows this process's pid namespace (its ``self`` is our pid)."""
    try:
        return os.readlink("/proc/self") == str(os.getpid())
    except OSError:
        return False
