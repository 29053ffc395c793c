"""Saving the process table across restarts: one JSON file in the state directory, written
whole to a temporary file and renamed (a crash leaves the previous one), bounded in size.

Only entries of the same boot are loaded back (pids and start ticks mean nothing after a
reboot). The stage reconciles them with /proc (see ``ProcessStage._restore``).
"""

from __future__ import annotations

import os
from collections.abc import Callable

import msgspec

from auditpipe.process.cgroup import CgroupInfo
from auditpipe.process.table import Proc, ProcessTable

__all__ = ["StateStore"]

FILE_NAME = "process-table.json"
VERSION = 1


class _Entry(msgspec.Struct, array_like=True):
    pid: int
    ppid: int | None
    start: float
    exact: bool
    ticks: int | None
    entity_id: str
    exe: str | None
    name: str | None
    args: list[str] | None
    uid: str | None
    euid: str | None
    auid: str | None
    ses: str | None
    sid: int | None
    pgid: int | None
    cgroup: str | None
    labels: list[str]
    parent: str | None  # the parent's entity_id
    exited: float | None
    last_seen: float


class _State(msgspec.Struct):
    version: int
    boot_id: str
    saved_at: float
    entries: list[_Entry]


class StateStore:
    """``DIR/process-table.json``."""

    def __init__(self, directory: str) -> None:
        self.path = os.path.join(directory, FILE_NAME)
        self.directory = directory

    def save(self, table: ProcessTable, max_saved: int, now: float) -> int:
        """Write the ``max_saved`` most recently seen running processes and their ancestors;
        returns how many entries were written. An exited process with no running descendant is
        left out: no event after a restart can name it (a process forked later had a running
        parent at this save), and at 1,000 short-lived execs a second such entries were 99 % of
        the file and most of the CPU of saving and restoring it."""
        running = (p for p in table.by_pid.values() if p.exited is None)
        recent = sorted(running, key=lambda p: p.last_seen, reverse=True)[:max_saved]
        chosen: dict[str, Proc] = {}
        for p in recent:
            for q in (p, *p.ancestors()):
                if q.entity_id in chosen or len(chosen) >= 2 * max_saved:
                    break
                chosen[q.entity_id] = q
        entries = [_entry(p) for p in chosen.values()]
        data = msgspec.json.encode(_State(VERSION, table.boot_id, now, entries))
        os.makedirs(self.directory, mode=0o700, exist_ok=True)
        tmp = f"{self.path}.tmp"
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.path)
        return len(entries)

    def load(self, table: ProcessTable, cgroup_info: Callable[[str | None], CgroupInfo | None]) -> list[Proc]:
        """Put the saved entries of this boot back into ``table``; returns them. A missing file
        is an empty state; a damaged one raises ValueError."""
        try:
            with open(self.path, "rb") as f:
                raw = f.read()
        except FileNotFoundError:
            return []
        try:
            state = msgspec.json.decode(raw, type=_State)
        except msgspec.DecodeError as err:
            raise ValueError(f"{self.path}: {err}") from None
        if state.version != VERSION or state.boot_id != table.boot_id:
            return []
        by_eid: dict[str, Proc] = {}
        parents: list[tuple[Proc, str]] = []
        for e in state.entries:
            p = Proc(e.pid, e.ppid, e.start, e.exact, e.entity_id)
            p.ticks, p.exe, p.name, p.args = e.ticks, table.intern(e.exe), table.intern(e.name), e.args
            p.uid, p.euid, p.auid, p.ses, p.sid, p.pgid = e.uid, e.euid, e.auid, e.ses, e.sid, e.pgid
            p.cg = cgroup_info(e.cgroup)
            p.labels = frozenset(e.labels)
            p.exited, p.last_seen = e.exited, e.last_seen
            by_eid[e.entity_id] = p
            if e.parent is not None:
                parents.append((p, e.parent))
            cur = table.by_pid.get(p.pid)
            if cur is None or cur.last_seen <= p.last_seen:
                table.by_pid[p.pid] = p
        for p, eid in parents:
            p.parent = by_eid.get(eid)
        return list(by_eid.values())


def _entry(p: Proc) -> _Entry:
    cg = p.cg
    return _Entry(p.pid, p.ppid, p.start, p.exact, p.ticks, p.entity_id, p.exe, p.name, p.args,
                  p.uid, p.euid, p.auid, p.ses, p.sid, p.pgid, cg.raw if cg is not None else None,
                  sorted(p.labels), p.parent.entity_id if p.parent is not None else None,
                  p.exited, p.last_seen)
