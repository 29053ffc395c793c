"""The process table: one :class:`Proc` per process, keyed by pid for lookups but identified by
(pid, start): a new process that gets a reused pid gets a new entry, and the old entry lives on
only as long as its descendants point at it (``Proc.parent`` is a reference, not a pid).

Sans-I/O: times are given by the caller; /proc facts arrive as :mod:`procfs` snapshots.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterator

from auditpipe.process.cgroup import CgroupInfo

__all__ = ["EntityIds", "Labeler", "Proc", "ProcessTable"]

#: seconds between a start time from /proc (btime + ticks, 10 ms steps) and one from the audit
#: stream (the first event) that still name the same process
START_TOLERANCE = 2.0
#: the labels of a process without any (one shared set: ``frozenset()`` makes a new one each time)
NO_LABELS: frozenset[str] = frozenset()
#: a process's leaders before they are first cached (``_lead_epoch`` -1): never read, never written
_NO_LEADER: dict = {}


class EntityIds:
    """ECS process.entity_id for one boot: a stable hash (blake2b, 12 bytes, hex) of
    ``"<boot id>:<pid>:<start in ms>"``. Made for every new process, so the boot id is hashed
    once and the hash state copied (no keyword parsing, a third less time per id)."""

    def __init__(self, boot_id: str) -> None:
        self._prefix = hashlib.blake2b(f"{boot_id}:".encode(), digest_size=12)

    def __call__(self, pid: int, start: float) -> str:
        h = self._prefix.copy()
        h.update(b"%d:%d" % (pid, round(start * 1000)))
        return h.hexdigest()


class Proc:
    """One process. ``start`` is seconds since the epoch; ``exact`` says whether it is the real
    start (from /proc or the audited fork) or only when the stream first showed the process.
    ``ticks`` is /proc's start time when known (the exact identity across restarts)."""

    __slots__ = (
        "_chain",
        "_full",
        "_entry",
        "_group",
        "_lead_epoch",
        "_leader",
        "_session",
        "_summary",
        "args",
        "auid",
        "cg",
        "checked",
        "entity_id",
        "euid",
        "exact",
        "exe",
        "exited",
        "labels",
        "last_seen",
        "name",
        "parent",
        "pgid",
        "pid",
        "ppid",
        "ses",
        "sid",
        "start",
        "ticks",
        "uid",
    )

    def __init__(self, pid: int, ppid: int | None, start: float, exact: bool, eid: str) -> None:
        self.pid = pid
        self.ppid = ppid
        self.start = start
        self.exact = exact
        self.ticks: int | None = None
        self.entity_id = eid
        self.exe: str | None = None
        self.name: str | None = None
        self.args: list[str] | None = None
        self.uid: str | None = None
        self.euid: str | None = None
        self.auid: str | None = None
        self.ses: str | None = None
        self.sid: int | None = None
        self.pgid: int | None = None
        self.cg: CgroupInfo | None = None
        self.labels = NO_LABELS
        self.parent: Proc | None = None
        self.exited: float | None = None
        self.last_seen = start
        self.checked = 0.0  # when /proc last confirmed this is the process with its pid
        self._summary: dict | None = None
        self._leader: dict | None = None  # as a leader: summary and user
        self._full: dict | None = None  # as a parent: the leader's fields and the arguments
        self._chain: tuple[int, list[dict]] | None = None  # (table epoch, ancestors from here)
        # as of table epoch _lead_epoch (-1: none): its session, group and entry leaders (slots, not
        # a tuple: one object fewer per process for the collector to walk)
        self._lead_epoch = -1
        self._session = self._group = self._entry = _NO_LEADER

    def changed(self) -> bool:
        """Its image, start, credentials or session changed: drop the cached output dicts.
        Returns whether other processes' caches may hold them (then they must go too)."""
        used = self._summary is not None or self._leader is not None or self._full is not None
        self._summary = self._leader = self._full = self._chain = None
        self._lead_epoch = -1
        return used

    def ancestors(self) -> Iterator[Proc]:
        p = self.parent
        seen = 0
        while p is not None and seen < 4096:  # a loaded state file could hold a cycle
            yield p
            p = p.parent
            seen += 1

    def __repr__(self) -> str:
        return f"Proc({self.pid} {self.exe} ppid={self.ppid} eid={self.entity_id})"


class ProcessTable:
    """The current process of each pid, plus bookkeeping for expiry."""

    def __init__(self, boot_id: str, grace: float = 60.0, max_entries: int = 200_000) -> None:
        self.boot_id = boot_id
        self.entity_id = EntityIds(boot_id)
        self.grace = grace
        self.max_entries = max_entries
        self.by_pid: dict[int, Proc] = {}
        self._strings: dict[str, str] = {}  # one copy of each executable path / name
        #: bumped when a process whose output dicts others have cached changes (rare: most
        #: changes are execs of new processes): every cached chain and leader set is then stale
        self.epoch = 0
        self.expired = 0
        self.evicted = 0

    def intern(self, s: str | None) -> str | None:
        if s is None:
            return None
        v = self._strings.get(s)
        if v is None:
            if len(self._strings) > 65536:
                self._strings.clear()
            v = self._strings[s] = s
        return v

    def new(self, pid: int, ppid: int | None, start: float, exact: bool, now: float,
            eid: str | None = None) -> Proc:
        p = Proc(pid, ppid, start, exact, eid or self.entity_id(pid, start))
        p.last_seen = now
        self.by_pid[pid] = p
        return p

    def get(self, pid: int) -> Proc | None:
        return self.by_pid.get(pid)

    def __len__(self) -> int:
        return len(self.by_pid)

    def expire(self, now: float) -> int:
        """Forget exited processes ``grace`` seconds after their last event; over
        ``max_entries``, the longest idle ones (exited first) go too."""
        gone = [pid for pid, p in self.by_pid.items()
                if p.exited is not None and now - max(p.exited, p.last_seen) > self.grace]
        for pid in gone:
            del self.by_pid[pid]
        self.expired += len(gone)
        over = len(self.by_pid) - self.max_entries
        if over > 0:
            over += self.max_entries // 10  # make room for a while, not for one entry
            order = sorted(self.by_pid.values(), key=lambda p: (p.exited is None, p.last_seen))
            for p in order[:over]:
                del self.by_pid[p.pid]
            self.evicted += min(over, len(order))
        return len(gone)


class Labeler:
    """``label_exe`` / ``label_argv`` rules: regexes on the executable and on the arguments
    joined by spaces; each match adds its label."""

    def __init__(self, by_exe: dict[str, str], by_argv: dict[str, str]) -> None:
        self.by_exe = [(re.compile(k), v) for k, v in by_exe.items()]
        self.by_argv = [(re.compile(k), v) for k, v in by_argv.items()]
        self._cache: dict[str, frozenset[str]] = {}

    def __bool__(self) -> bool:
        return bool(self.by_exe or self.by_argv)

    def labels(self, exe: str | None, args: list[str] | None) -> frozenset[str]:
        out: frozenset[str] = frozenset()
        if exe is not None and self.by_exe:
            cached = self._cache.get(exe)
            if cached is None:
                if len(self._cache) > 8192:
                    self._cache.clear()
                cached = self._cache[exe] = frozenset(v for rx, v in self.by_exe if rx.search(exe))
            out = cached
        if args and self.by_argv:
            line = " ".join(args)
            extra = [v for rx, v in self.by_argv if rx.search(line)]
            if extra:
                out = out | frozenset(extra)
        return out
