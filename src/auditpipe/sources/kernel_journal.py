"""The kernel state journal: what `auditpipe run` found in the kernel before it changed anything.

One JSON file in the state directory (``[state] dir``), written atomically (temp file, fsync,
rename, fsync of the directory) before the first change, so that a run killed with SIGKILL (or a
crash or power cut) can be undone by the next start (:class:`~auditpipe.sources.kernel_control.
KernelControl`). It names its owner by pid and that process's start time, so a recycled pid is
not taken for a live instance.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass

__all__ = ["JournalEntry", "KernelJournal"]

FILE_NAME = "kernel-state.json"


@dataclass(frozen=True)
class JournalEntry:
    pid: int
    started: int | None  # the owner's start time (clock ticks after boot, /proc/PID/stat field 22)
    status: dict[str, int]
    rules: list[bytes]


def process_start(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return None
    return int(stat[stat.rindex(b")") + 2:].split()[19])


def _cmdline(pid: int) -> bytes:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read()
    except OSError:
        return b""


class KernelJournal:
    #: the status fields put back (the rest of the status is read-only or owned by the kernel)
    FIELDS = ("enabled", "failure", "rate_limit", "backlog_limit", "backlog_wait_time")

    def __init__(self, state_dir: str) -> None:
        self.path = os.path.join(state_dir, FILE_NAME)

    def load(self) -> JournalEntry | None:
        """The journal left by an earlier start, or None. ValueError when it cannot be read."""
        try:
            with open(self.path, "rb") as f:
                d = json.loads(f.read())
            return JournalEntry(int(d["pid"]), d.get("started"), {k: int(v) for k, v in d["status"].items()},
                                [bytes.fromhex(r) for r in d["rules"]])
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise ValueError(f"unreadable kernel state journal ({e})") from None

    @staticmethod
    def owner_alive(entry: JournalEntry) -> bool:
        """The journal's owner still runs: same pid, same start time, and it is auditpipe."""
        started = process_start(entry.pid)
        if started is None or (entry.started is not None and started != entry.started):
            return False
        return b"auditpipe" in _cmdline(entry.pid)

    def write(self, pid: int, status: dict[str, int], rules: list[bytes]) -> None:
        d = {"version": 1, "pid": pid, "started": process_start(pid),
             "status": {k: status[k] for k in self.FIELDS if k in status},
             "rules": [r.hex() for r in rules]}
        directory = os.path.dirname(self.path)
        os.makedirs(directory, mode=0o700, exist_ok=True)
        tmp = f"{self.path}.tmp.{pid}"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        with os.fdopen(fd, "w", encoding="ascii") as f:
            json.dump(d, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.path)
        dfd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)

    def remove(self) -> None:
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass
