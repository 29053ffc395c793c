"""``ProcessStage``: keeps the process table from the audit stream (and /proc, when a reader is
injected) and adds each event's process context: parent, ancestors, session/group/entry leader,
container and unit, labels. See docs/process.md for the fields and what "unknown" means.

Per event: the SYSCALL record (or a user-space record's pid) names the process; execve/execveat
update its image, clone/fork/vfork create the child, exit_group ends it, setsid/setpgid move it;
every record's uids refresh its credentials (the setuid family shows there).
"""

from __future__ import annotations

import time
from collections.abc import Callable

import msgspec

from auditpipe import tables
from auditpipe.normalize.coalesced import iso_timestamp
from auditpipe.parsing import execve_argv, proctitle_argv
from auditpipe.process.cgroup import CgroupInfo, parse_cgroup
from auditpipe.process.config import ProcessConfig
from auditpipe.process.procfs import ProcReader, ProcSnapshot, ProcStat
from auditpipe.process.state import StateStore
from auditpipe.process.table import START_TOLERANCE, Labeler, Proc, ProcessTable
from auditpipe.reassembly import Event

__all__ = ["ProcessStage", "build_process_stage", "from_records_only", "staged"]

_T = tables.RECORD_TYPE_NUMBERS
_SYSCALL, _EXECVE, _PROCTITLE = _T["SYSCALL"], _T["EXECVE"], _T["PROCTITLE"]
_EXEC = frozenset({"execve", "execveat"})
_FORK = frozenset({"clone", "clone3", "fork", "vfork"})
_CLONE_THREAD = 0x10000
#: seconds a parent confirmed by /proc is trusted without reading /proc again (its pid cannot
#: go round the whole pid space that fast)
_RECHECK = 1.0
#: seconds between looks at /proc for processes that exited unaudited
_REAP_INTERVAL = 5.0
#: the parent's name (comm, 15 characters at most) → process.entry_leader.entry_meta.type
_ENTRY_TYPES = {"sshd": "sshd", "login": "terminal", "agetty": "console", "getty": "console",
                "cron": "cron", "crond": "cron", "atd": "cron", "anacron": "cron",
                "containerd-shim": "container", "conmon": "container", "runc": "container",
                "crun": "container", "lxc-start": "container", "docker-init": "container",
                "kubelet": "kubelet", "teleport": "teleport", "ssm-session-wor": "ssm"}
_UNKNOWN: dict = {"unknown": True}
_NONE: dict = {}


def _int(v: object) -> int | None:
    return int(v) if type(v) is str and v.isdecimal() else None


class ProcessStage:
    """Stage: process context for every event (ECS and coalesced; Panther rows pass unchanged).
    The dicts it adds are shared between documents (cached per process): read-only.

    reader: /proc access (None: only what the records carry, as in ``parse``).
    user_name: uid → name on this host (an IdResolver's ``user``), for the leaders' users;
    never used for a process in a container (see :meth:`_user`).
    """

    name = "process"

    def __init__(self, cfg: ProcessConfig, fmt: str, reader: ProcReader | None = None,
                 user_name: Callable[[str], str | None] | None = None, now: float = 0.0,
                 state: StateStore | None = None) -> None:
        self.cfg = cfg
        self.fmt = fmt
        self._ecs = fmt == "ecs"
        self.reader = reader if cfg.read_proc else None
        self.user_name = user_name
        boot = self.reader.boot_id() if self.reader is not None else ""
        self.table = ProcessTable(boot, cfg.grace, cfg.max_entries)
        self.labeler = Labeler(cfg.label_exe, cfg.label_argv)
        self.state = state
        self._cgroups: dict[str, CgroupInfo] = {}
        self._syscalls: dict[tuple, str | None] = {}
        self._passwd: dict[str, dict[str, str] | None] = {}
        self._label_lists: dict[frozenset, list[str]] = {}
        #: ECS and coalesced documents carry the context (labels, entity id); for other formats
        #: (Panther rows) the stage keeps the event just processed and its process in ``_last``,
        #: for the filter to ask (:meth:`labels_of`, :meth:`identity_of`)
        self.context_in_documents = fmt in ("ecs", "coalesced")
        self._last: tuple[Event | None, Proc | None] = (None, None)
        self._args: list[str] | None = None
        self._next_save = now + cfg.save_interval
        self._next_reap = now + _REAP_INTERVAL
        self.counters = {"events": 0, "no_process": 0, "from_proc": 0, "forks": 0, "execs": 0,
                         "exits": 0, "reused_pids": 0, "saved": 0, "restored": 0, "state_errors": 0}
        if state is not None:
            self._restore(now)
        if self.reader is not None:
            self.seed(now)

    @classmethod
    def for_live(cls, cfg: ProcessConfig, fmt: str, now: float,
                 user_name: Callable[[str], str | None] | None = None) -> ProcessStage:
        """The stage as ``run`` builds it: this host's /proc (when ``read_proc``) and the state
        file in ``state_dir`` (when set)."""
        return cls(cfg, fmt, ProcReader() if cfg.read_proc else None, user_name, now,
                   StateStore(cfg.state_dir) if cfg.state_dir else None)

    # ------------------------------------------------------------------ Stage protocol
    def process(self, event: Event, docs: list[dict], now: float) -> list[dict]:
        self.counters["events"] += 1
        ecs = self._ecs
        # the ECS normalizer has read the arguments already: not again
        self._args = docs[0].get("process", _NONE).get("args") if ecs and docs else None
        proc, ppid = self._track(event, now)
        if not self.context_in_documents:
            self._last = (event, proc)
        if proc is None:
            self.counters["no_process"] += 1
            return docs
        if ecs:
            for d in docs:
                pr = d.get("process")
                if pr is None:
                    pr = d["process"] = {"pid": proc.pid}
                self._annotate(d, pr, proc, ppid)
        elif self.fmt == "coalesced":
            for d in docs:
                ctx: dict = {}
                self._annotate(ctx, ctx.setdefault("process", {"pid": proc.pid}), proc, ppid)
                d["context"] = ctx
        return docs

    def tick(self, now: float) -> list[dict]:
        if now >= self._next_reap:  # each is a walk over the whole table: not every second
            self._next_reap = now + _REAP_INTERVAL
            if self.reader is not None:
                self._reap(now)
            self.table.expire(now)
        if self.state is not None and now >= self._next_save:
            self._next_save = now + self.cfg.save_interval
            self._save(now)
        return []

    def _reap(self, now: float, idle: float = _REAP_INTERVAL) -> None:
        """Most exits are not audited (rules watch execve): a process idle for ``idle`` seconds
        whose pid /proc no longer lists has exited; it expires ``grace`` seconds later."""
        assert self.reader is not None
        live = set(self.reader.pids())
        if not live:
            return  # /proc unreadable: say nothing rather than end every process
        for p in self.table.by_pid.values():
            if p.exited is None and p.pid not in live and now - p.last_seen >= idle:
                p.exited = now
                self.counters["exits"] += 1

    def close(self, now: float) -> list[dict]:
        if self.state is not None:
            if self.reader is not None:  # the state keeps running processes: the gone ones out now
                self._reap(now, idle=0.0)
            self._save(now)
        return []

    def metrics(self) -> dict[str, int | float]:
        return {**self.counters, "processes": len(self.table), "expired": self.table.expired,
                "evicted": self.table.evicted}

    def labels_of(self, event: Event) -> frozenset[str]:
        """The labels of the process of ``event`` (the one just processed), for the filter of a
        format whose documents do not carry them (Panther rows; ECS and coalesced documents do,
        and for them nothing is kept: the empty set)."""
        ev, proc = self._last
        return proc.labels if ev is event and proc is not None else frozenset()

    def identity_of(self, event: Event) -> object:
        """The entity id of the process of ``event`` (the one just processed), for keep_first."""
        ev, proc = self._last
        return proc.entity_id if ev is event and proc is not None else None

    # ------------------------------------------------------------------ tracking
    def _track(self, event: Event, now: float) -> tuple[Proc | None, int | None]:
        main = None
        for r in event.records:
            if r.type_num == _SYSCALL:
                main = r
                break
            if main is None and "pid" in r.fields:
                main = r
        if main is None:
            return None, None
        f = main.fields
        pid = _int(f.get("pid"))
        if pid is None:
            return None, None
        ppid = _int(f.get("ppid"))
        if main.type_num != _SYSCALL:
            proc = self._current(pid, None, f, event, now)
        else:
            call = self._syscall(main)
            ok = f.get("success") != "no"
            if ok and call in _EXEC:
                proc = self._exec(pid, ppid, f, event, now)
            else:
                proc = self._current(pid, ppid, f, event, now)
                if ok and call is not None:
                    self._syscall_effect(proc, call, f, event, now)
            self._credentials(proc, f)
        proc.last_seen = now
        return proc, ppid

    def _syscall(self, rec) -> str | None:
        e = rec.enriched
        if e is not None and "SYSCALL" in e and "(" not in e["SYSCALL"]:
            return e["SYSCALL"]
        key = (rec.fields.get("arch"), rec.fields.get("syscall"))
        name = self._syscalls.get(key, "")
        if name == "":
            name = tables.syscall_name(key[0], key[1]) if key[0] and key[1] else None
            if len(self._syscalls) < 4096:
                self._syscalls[key] = name
        return name

    def _syscall_effect(self, proc: Proc, call: str, f: dict, event: Event, now: float) -> None:
        if call in _FORK:
            self._fork(proc, call, f, event, now)
        elif call == "exit_group":
            proc.exited = now
            self.counters["exits"] += 1
        elif call == "setsid":
            proc.sid = proc.pgid = proc.pid
            self._touch(proc)
        elif call == "setpgid":
            self._setpgid(proc, f)

    def _credentials(self, proc: Proc, f: dict) -> None:
        uid = f.get("uid")
        if uid is not None and uid != proc.uid:
            proc.uid = uid
            self._touch(proc)
        proc.euid = f.get("euid", proc.euid)
        proc.auid = f.get("auid", proc.auid)
        proc.ses = f.get("ses", proc.ses)

    def _setpgid(self, proc: Proc, f: dict) -> None:
        try:
            target = int(f.get("a0", "0"), 16) or proc.pid
            pgid = int(f.get("a1", "0"), 16) or target
        except ValueError:
            return
        p = proc if target == proc.pid else self.table.get(target)
        if p is not None:
            p.pgid = pgid

    def _current(self, pid: int, ppid: int | None, f: dict, event: Event, now: float,
                 st: ProcStat | None = None, looked: bool = False) -> Proc:
        """The process ``pid`` of this event: the table's entry when it is still that process,
        else a new one (learnt from /proc when the process is still there)."""
        p = self.table.get(pid)
        if p is not None and p.exited is None and (ppid is None or ppid == p.ppid or self._reparented(p)):
            return p
        if p is not None:
            self.counters["reused_pids"] += 1
        return self._learn(pid, ppid, f, event, now, st, looked)

    def _reparented(self, p: Proc) -> bool:
        """The same process under a new ppid (its parent exited): /proc says it is the same
        process, or without /proc its parent is known to have exited."""
        if self.reader is not None:
            st = self.reader.stat(p.pid)
            return st is not None and self._matches(p, st)
        return p.parent is not None and p.parent.exited is not None

    def _matches(self, p: Proc, st: ProcStat) -> bool:
        if p.ticks is not None:
            return p.ticks == st.ticks
        assert self.reader is not None
        return self.reader.start_time(st.ticks) <= p.start + START_TOLERANCE

    def _learn(self, pid: int, ppid: int | None, f: dict, event: Event, now: float,
               st: ProcStat | None = None, looked: bool = False) -> Proc:
        """A process first seen in this event: what the record says, its start, session, group
        and cgroup from /proc when it is still there, else its parent's (inherited at fork)."""
        reader = self.reader
        if reader is not None and st is None and not looked:
            st = reader.stat(pid)
        if st is not None and (reader.start_time(st.ticks) > event.ts + START_TOLERANCE  # type: ignore[union-attr]
                               or (ppid is not None and st.ppid != ppid and st.ppid != 1)):
            st = None  # the pid is already another process's
        if st is None:
            p = self.table.new(pid, ppid, event.ts, False, now)
        else:
            assert reader is not None
            self.counters["from_proc"] += 1
            p = self.table.new(pid, ppid or st.ppid, reader.start_time(st.ticks), True, now)
            p.ticks = st.ticks
        p.exe = self.table.intern(_str(f.get("exe")))
        p.name = self.table.intern(_str(f.get("comm")))
        p.parent = self._parent(p.ppid, event.ts, now) if p.ppid else None
        self._inherit(p)
        if st is not None and reader is not None:
            p.sid, p.pgid = st.sid, st.pgid
            p.cg = self._cgroup(reader.cgroup(pid)) or p.cg
            if self._args is None:  # an exec's arguments come with it
                p.args = reader.args(pid) or None
        if self.labeler:
            p.labels = _union(p.labels, self.labeler.labels(p.exe, p.args))
        return p

    def _inherit(self, p: Proc) -> None:
        par = p.parent
        if par is None:
            return
        p.sid, p.pgid, p.cg = par.sid, par.pgid, par.cg
        if self.cfg.propagate_labels:
            p.labels = _union(p.labels, par.labels)

    def _parent(self, ppid: int, t: float, now: float, depth: int = 0) -> Proc | None:
        """The process ``ppid`` as the parent of a process seen at time ``t``: checked against
        /proc when it is still running (a stale entry of a reused pid is replaced)."""
        p = self.table.get(ppid)
        if p is not None and now - p.checked < _RECHECK:
            return p
        if self.reader is not None:
            st = self.reader.stat(ppid)
            if st is not None:
                if p is None or not self._matches(p, st):
                    snap = self.reader.snapshot(ppid)
                    return self._from_snapshot(snap, now, depth + 1) if snap is not None else None
                if p.ticks is None:
                    p.ticks, p.exact, p.start = st.ticks, True, self.reader.start_time(st.ticks)
                    self._touch(p)
                p.checked = now
                return p
        if p is not None and p.start <= t + START_TOLERANCE:
            p.checked = now  # gone from /proc: the entry is all there is, no need to look again
            return p
        return None

    def _from_snapshot(self, snap: ProcSnapshot, now: float, depth: int = 0, eid: str | None = None) -> Proc:
        assert self.reader is not None
        st = snap.stat
        p = self.table.new(st.pid, st.ppid, self.reader.start_time(st.ticks), True, now, eid)
        self.counters["from_proc"] += 1
        self._fill_from_snapshot(p, snap)
        if st.ppid and depth < 64:
            p.parent = self._parent(st.ppid, p.start, now, depth)
        if self.cfg.propagate_labels and p.parent is not None:
            p.labels = _union(p.labels, p.parent.labels)
        if self.labeler:
            p.labels = _union(p.labels, self.labeler.labels(p.exe, p.args))
        return p

    def _fill_from_snapshot(self, p: Proc, snap: ProcSnapshot) -> None:
        st = snap.stat
        p.ticks = st.ticks
        p.exe = self.table.intern(snap.exe)
        p.name = self.table.intern(st.comm)
        p.args = snap.args or None
        p.uid, p.euid, p.auid, p.ses = snap.uid, snap.euid, snap.auid, snap.ses
        p.sid, p.pgid = st.sid, st.pgid
        p.cg = self._cgroup(snap.cgroup)
        self._touch(p)

    def _cgroup(self, text: str | None) -> CgroupInfo | None:
        if not text:
            return None
        info = self._cgroups.get(text)
        if info is None:
            if len(self._cgroups) > 16384:
                self._cgroups.clear()
            info = self._cgroups[text] = parse_cgroup(text)
        return info

    def _exec(self, pid: int, ppid: int | None, f: dict, event: Event, now: float) -> Proc:
        """An execve: the same process with a new image, or the first event of a process that
        got a reused pid (told apart by /proc's start time when the process is still there)."""
        self.counters["execs"] += 1
        st = self.reader.stat(pid) if self.reader is not None else None
        if st is not None and self.reader is not None \
                and self.reader.start_time(st.ticks) > event.ts + START_TOLERANCE:
            st = None  # already yet another process
        old = self.table.get(pid)
        if st is not None and old is not None and old.exited is None and not self._matches(old, st):
            old.exited = now  # its pid was given to this process: it is gone
        args = self._args or _event_args(event)
        if args is not None:
            self._args = args  # what a new entry takes instead of reading /proc/<pid>/cmdline
        p = self._current(pid, ppid, f, event, now, st, self.reader is not None)
        p.args = args or p.args
        if p is old:  # the same process with a new image (a new entry has this record's already)
            p.exe = self.table.intern(_str(f.get("exe"))) or p.exe
            p.name = self.table.intern(_str(f.get("comm"))) or p.name
            self._touch(p)
            if st is not None and self.reader is not None and self._matches(p, st):
                # read at exec: a runtime moves a container's first process into its cgroup
                # before it execs
                p.cg = self._cgroup(self.reader.cgroup(pid)) or p.cg
                if p.ticks is None:
                    p.ticks = st.ticks
        if self.labeler:
            p.labels = _union(p.labels, self.labeler.labels(p.exe, p.args))
        return p

    def _fork(self, parent: Proc, call: str, f: dict, event: Event, now: float) -> None:
        child = _int(f.get("exit"))
        if not child:
            return
        if call == "clone":
            try:
                if int(f.get("a0", "0"), 16) & _CLONE_THREAD:
                    return
            except ValueError:
                pass
        elif call == "clone3" and self.reader is not None:
            tgid = self.reader.tgid(child)
            if tgid is not None and tgid != child:
                return
        known = self.table.get(child)
        if known is not None and known.exited is None and known.ppid == parent.pid \
                and known.start >= event.ts - START_TOLERANCE:
            if not known.exact:  # its exec was seen first (the child ran before the fork returned)
                known.start, known.exact = event.ts, True
                self._touch(known)
            return
        self.counters["forks"] += 1
        p = self.table.new(child, parent.pid, event.ts, True, now)
        p.exe, p.name, p.args = parent.exe, parent.name, parent.args
        p.uid, p.euid, p.auid, p.ses = parent.uid, parent.euid, parent.auid, parent.ses
        p.parent = parent
        self._inherit(p)

    # ------------------------------------------------------------------ seeding and state
    def seed(self, now: float) -> None:
        """Every running process from /proc (those not already restored from the state)."""
        assert self.reader is not None
        for pid in sorted(self.reader.pids()):
            if pid in self.table.by_pid:
                continue
            snap = self.reader.snapshot(pid)
            if snap is not None:
                self._from_snapshot(snap, now)

    def _save(self, now: float) -> None:
        assert self.state is not None
        try:
            self.counters["saved"] = self.state.save(self.table, self.cfg.max_saved, now)
        except OSError:
            self.counters["state_errors"] += 1

    def _restore(self, now: float) -> None:
        """Entries from the state file, reconciled with /proc: a saved process still running
        (same pid and start) keeps its identity, labels and the parents it had; one that is
        gone stays only as the ancestor of running ones, until it expires."""
        assert self.state is not None
        try:
            saved = self.state.load(self.table, self._cgroup)
        except (OSError, ValueError):
            self.counters["state_errors"] += 1
            return
        self.counters["restored"] = len(saved)
        if self.reader is None:
            return
        for p in saved:
            if self.table.by_pid.get(p.pid) is not p:
                continue
            st = self.reader.stat(p.pid)
            if st is None or not self._matches(p, st):
                if p.exited is None:
                    p.exited = now
                if st is not None:
                    del self.table.by_pid[p.pid]  # that pid is another process now
                continue
            snap = self.reader.snapshot(p.pid)
            if snap is not None:  # start and exactness first: the fill drops cached output
                p.exact = True
                p.start = self.reader.start_time(st.ticks)
                self._fill_from_snapshot(p, snap)

    def _touch(self, p: Proc) -> None:
        if p.changed():
            self.table.epoch += 1

    # ------------------------------------------------------------------ output
    def _annotate(self, doc: dict, pr: dict, proc: Proc, ppid: int | None) -> None:
        pr["entity_id"] = proc.entity_id
        if proc.exact:
            pr["start"] = self._summary(proc)["start"]  # formatted once per process
        par = proc.parent
        if par is not None:
            pr["parent"] = self._full(par)
        elif proc.ppid or ppid:
            pr["parent"] = {"pid": proc.ppid or ppid, "unknown": True}
        pr["ancestors"] = self._chain(par) if par is not None else self._unknown_parent(proc)
        pr["session_leader"], pr["group_leader"], pr["entry_leader"] = self._leaders(proc)
        if proc.labels:
            pr["labels"] = self._label_list(proc.labels)
        cg = proc.cg
        if cg is not None:
            cg.ecs(doc)
            if cg.container_id is not None and "user" in doc:
                self._container_user_names(doc["user"], proc)

    def _summary(self, p: Proc) -> dict:
        s = p._summary
        if s is None:
            s = {"pid": p.pid, "entity_id": p.entity_id}
            if p.exe is not None:
                s["executable"] = p.exe
            if p.name is not None:
                s["name"] = p.name
            if p.exact:
                s["start"] = _iso(p.start)
            p._summary = s
        return s

    def _full(self, p: Proc) -> dict:
        """The parent: its leader fields (below) and its arguments."""
        s = p._full
        if s is None:
            lead = self._leader_fields(p)
            if not p.args:
                s = lead
            else:
                s = dict(self._summary(p))
                s["args"] = p.args
                s["args_count"] = len(p.args)
                if "user" in lead:
                    s["user"] = lead["user"]
            p._full = s
        return s

    def _leader_fields(self, p: Proc) -> dict:
        """pid, entity_id, executable, name, start, user: a leader, as the issue lists it (no
        arguments: three leaders' arguments would double a document's size)."""
        s = p._leader
        if s is None:
            s = self._summary(p)
            if p.uid is not None:
                u = {"id": p.uid}
                name = self._user(p, p.uid)
                if name is not None:
                    u["name"] = name
                s = {**s, "user": u}
            p._leader = s
        return s

    @staticmethod
    def _unknown_parent(p: Proc) -> list[dict]:
        return [{"pid": p.ppid, "unknown": True}] if p.ppid else []

    def _chain(self, top: Proc) -> list[dict]:
        """``top`` and its ancestors, nearest first, at most ``ancestors`` items, ending with an
        unknown marker where the known chain stops. Cached per process: a new process's chain
        is its parent's with the parent in front."""
        epoch, n = self.table.epoch, self.cfg.ancestors
        path: list[Proc] = []
        x: Proc | None = top
        base: list[dict] | None = None
        while x is not None and len(path) < 4096:
            c = x._chain
            if c is not None and c[0] == epoch:
                base = c[1]
                break
            path.append(x)
            x = x.parent
        if base is None:
            base = self._unknown_parent(path[-1]) if path else []
        for y in reversed(path):
            base = ([self._summary(y)] + base)[:n]
            y._chain = (epoch, base)
        return base

    def _leader(self, proc: Proc, pid: int | None) -> dict:
        if pid is None:
            return _UNKNOWN
        if pid == proc.pid:
            return self._leader_fields(proc)
        for a in proc.ancestors():
            if a.pid == pid:
                return self._leader_fields(a)
        p = self.table.get(pid)
        if p is not None and p.start <= proc.start + START_TOLERANCE:
            return self._leader_fields(p)
        return {"pid": pid, "unknown": True}

    def _leaders(self, proc: Proc) -> tuple[dict, dict, dict]:
        """(session leader, group leader, entry leader), cached per process and, for a new
        process, taken from its parent's where the session or group is the same."""
        epoch = self.table.epoch
        if proc._lead_epoch == epoch:
            return proc._session, proc._group, proc._entry
        par = proc.parent
        if par is not None:
            if par._lead_epoch != epoch:
                par._session, par._group = self._leader(par, par.sid), self._leader(par, par.pgid)
                par._entry = self._entry_leader(par)
                par._lead_epoch = epoch
            session = par._session if proc.sid == par.sid and proc.sid != proc.pid else self._leader(proc, proc.sid)
            group = par._group if proc.pgid == par.pgid and proc.pgid != proc.pid else self._leader(proc, proc.pgid)
            kind = _entry_kind(par)
            entry = {**self._leader_fields(proc), "entry_meta": {"type": kind}} if kind is not None else par._entry
        else:
            session, group, entry = self._leader(proc, proc.sid), self._leader(proc, proc.pgid), _UNKNOWN
        proc._session, proc._group, proc._entry, proc._lead_epoch = session, group, entry, epoch
        return session, group, entry

    def _entry_leader(self, proc: Proc) -> dict:
        """The process that began this chain: the nearest one whose parent is an entry program
        (sshd, login, cron, a container runtime), else the child of init."""
        x = proc
        while True:
            par = x.parent
            if par is None:
                return _UNKNOWN
            kind = _entry_kind(par)
            if kind is not None:
                return {**self._leader_fields(x), "entry_meta": {"type": kind}}
            x = par

    def _label_list(self, labels: frozenset[str]) -> list[str]:
        v = self._label_lists.get(labels)
        if v is None:
            v = self._label_lists[labels] = sorted(labels)
        return v

    # ------------------------------------------------------------------ user names
    def _user(self, p: Proc, uid: str) -> str | None:
        """A uid's name: a containerised process's from its own /etc/passwd when readable, never
        the host's (the same number is another account there); a host process's from the host."""
        if p.cg is not None and p.cg.container_id is not None:
            names = self._container_passwd(p)
            return names.get(uid) if names else None
        return self.user_name(uid) if self.user_name is not None else None

    def _container_passwd(self, p: Proc) -> dict[str, str] | None:
        cid = p.cg.container_id  # type: ignore[union-attr]
        if cid in self._passwd:
            return self._passwd[cid]
        names: dict[str, str] | None = None
        if self.reader is not None:
            text = self.reader.container_file(p.pid, "/etc/passwd")
            if text is not None:
                names = {}
                for line in text.splitlines():
                    parts = line.split(":")
                    if len(parts) > 2 and parts[2].isdecimal():
                        names.setdefault(parts[2], parts[0])
        if len(self._passwd) > 4096:
            self._passwd.clear()
        self._passwd[cid] = names  # type: ignore[index]
        return names

    def _container_user_names(self, user: dict, proc: Proc) -> None:
        """user.*.name of a containerised process: its container's names or none at all."""
        for d in _id_dicts(user):
            d.pop("name", None)
            if "id" in d:
                name = self._user(proc, d["id"])
                if name is not None:
                    d["name"] = name


def _entry_kind(parent: Proc) -> str | None:
    """The entry_meta.type of a process started by ``parent``, when that makes it an entry leader."""
    kind = _ENTRY_TYPES.get(parent.name or "")
    return "init" if kind is None and parent.pid == 1 else kind


def _id_dicts(user: dict):
    """The user dict and its sub-dicts holding an id (user, user.effective, … but not groups,
    whose names the container's /etc/group would give: they are left as numbers)."""
    yield user
    for k, v in user.items():
        if type(v) is dict:
            if k == "group":
                v.pop("name", None)
                continue
            yield v
            g = v.get("group")
            if type(g) is dict:
                g.pop("name", None)


def _union(a: frozenset[str], b: frozenset[str]) -> frozenset[str]:
    """``a | b`` without a new set when either is empty (most processes have no labels: a set
    per process would be one more object for the collector to walk)."""
    return a if not b else b if not a else a | b


def _str(v: object) -> str | None:
    return v if type(v) is str and v not in ("(null)", "?") else None


def _iso(t: float) -> str:
    ms = round(t * 1000)
    return iso_timestamp(ms // 1000, ms % 1000)


def _event_args(event: Event) -> list[str] | None:
    execs = [r for r in event.records if r.type_num == _EXECVE]
    if execs:
        return execve_argv(execs)[1] or None
    for r in event.records:
        if r.type_num == _PROCTITLE:
            v = r.fields.get("proctitle")
            if type(v) is str:
                return proctitle_argv(v) or None
    return None


def staged(normalize: Callable[[Event], list[dict]], stages: list, clock: Callable[[], float]):
    """A normalizer that also runs ``stages`` on each event: lets the plain :class:`Pipeline`
    (``parse``, benchmarks, tests) carry stages until the runtime runs them itself."""

    def run(event: Event) -> list[dict]:
        docs = normalize(event)
        now = clock()
        for st in stages:
            docs = st.process(event, docs, now)
        return docs

    return run


def from_records_only(normalize: Callable[[Event], list[dict]], fmt: str) -> Callable[[Event], list[dict]]:
    """``parse --process-context``: the context the input itself gives (each record's ppid and
    the processes seen earlier in it); no /proc (the records are from another time), no state."""
    stage = ProcessStage(ProcessConfig(read_proc=False, state_dir=""), fmt)
    return staged(normalize, [stage], time.time)


def build_process_stage(cfg) -> ProcessStage | None:
    """``[process]`` → the stage for ``run`` (this host's /proc, the state file), or None when
    turned off; for ``assembly.STAGE_BUILDERS``. Not for ``serve`` (events of many hosts) nor
    ``parse`` (another time's records: :func:`from_records_only`)."""
    enabled = cfg.process.enabled
    if enabled is False or (enabled is None and cfg.source.type != "kernel"):
        return None
    n = cfg.normalize
    user_name = None
    if n.resolve_ids:
        from auditpipe.normalize.idresolve import IdResolver

        user_name = IdResolver(passwd_file=n.passwd_file, group_file=n.group_file).user
    pc = cfg.process
    if pc.state_dir is None:
        pc = msgspec.structs.replace(pc, state_dir=cfg.state.dir)
    return ProcessStage.for_live(pc, n.format, time.time(), user_name)
