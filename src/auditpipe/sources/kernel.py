"""The live kernel source: everything `auditpipe run` changes in the kernel, and puts back.

:class:`KernelSource` owns, for the lifetime of one run:

* the receiving socket — unicast (we are the audit daemon) or multicast (a read-only copy next
  to another daemon); ``mode = auto`` picks multicast only when another daemon is registered;
* a reader thread that does nothing but ``recv`` and hand raw ``(type, payload)`` batches to a
  :class:`~auditpipe.sources.backpressure.BoundedQueue` (parsing happens in the worker);
* the status fields it sets (enabled, backlog_limit, rate_limit, failure, backlog_wait_time),
  each restored on :meth:`close` to the value it had before;
* the rules it installs (a leading ``never`` rule on our own pid, then the rule files), deleted on
  :meth:`close` unless ``keep_rules_on_exit``; rules it purged at start are put back.

Nothing here parses records; the control socket is used only from the thread that calls
:meth:`start`, :meth:`poll_status`, :meth:`reload_rules` and :meth:`close`.
"""

from __future__ import annotations

import errno as E
import logging
import os
import re
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from auditpipe.kernel.netlink import (AuditNetlink, AuditNetlinkError, AuditReceiver, open_multicast, open_unicast,
                                      process_name)
from auditpipe.kernel.rules import RuleData, RuleErrors, RuleItem, compile_line, format_rule, parse_rules
from auditpipe.sources.backpressure import BoundedQueue, ReaderThread, Strategy, resolve_strategy
from auditpipe.tables import K

__all__ = [
    "CAP_AUDIT_CONTROL",
    "CAP_AUDIT_READ",
    "SELF_KEY",
    "KernelSource",
    "KernelSourceError",
    "RuleSet",
    "compile_rule_files",
    "missing_capabilities",
]

log = logging.getLogger("auditpipe.kernel")

CAP_AUDIT_CONTROL = 30
CAP_AUDIT_READ = 37
SELF_KEY = "auditpipe-self"
_STATUS_CONTROLS = ("backlog_limit", "rate_limit", "failure", "backlog_wait_time")


class KernelSourceError(RuntimeError):
    """The kernel source cannot start (or a restore failed); ``str()`` says what to do."""


# ----------------------------------------------------------------------------- privileges
def effective_capabilities() -> int | None:
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("CapEff:"):
                    return int(line.split()[1], 16)
    except (OSError, ValueError):
        pass
    return None


def missing_capabilities(mode: str) -> list[str]:
    """The capabilities `run` lacks for ``mode`` (auto needs CAP_AUDIT_CONTROL to look at the
    status and register; multicast also needs CAP_AUDIT_READ; we install rules and set status
    in every mode, so CAP_AUDIT_CONTROL is always needed)."""
    caps = effective_capabilities()
    if caps is None:
        return [] if os.geteuid() == 0 else ["CAP_AUDIT_CONTROL"]
    need = [("CAP_AUDIT_CONTROL", CAP_AUDIT_CONTROL)]
    if mode in ("multicast", "auto"):
        need.append(("CAP_AUDIT_READ", CAP_AUDIT_READ))
    missing = [name for name, bit in need if not caps >> bit & 1]
    if mode == "auto" and missing == ["CAP_AUDIT_READ"]:
        return []  # unicast still works; multicast would be refused later with a clear error
    return missing


def privilege_message(missing: list[str]) -> str:
    return ("auditpipe run reads audit records from the kernel and needs root, or these "
            f"capabilities: {', '.join(missing)} (missing). CAP_AUDIT_CONTROL registers the "
            "audit daemon, loads rules and sets the audit status; CAP_AUDIT_READ joins the "
            "read-only multicast group (mode = multicast). Run it with sudo, or grant them, e.g. "
            "`setcap cap_audit_control,cap_audit_read+ep` on the interpreter. Reading audit.log "
            "files needs neither: `auditpipe parse FILE`.")


# ---------------------------------------------------------------------------------- rules
@dataclass
class RuleSet:
    """Compiled rule files: the rules in order, and the status settings their control lines
    ask for (-b, -f, -r, --backlog_wait_time), with what was ignored and why."""

    items: list[RuleItem] = field(default_factory=list)
    files: list[str] = field(default_factory=list)
    status: dict[str, int] = field(default_factory=dict)
    lock: bool = False  # -e 2 seen

    @property
    def rules(self) -> list[RuleItem]:
        return [it for it in self.items if it.op != "control" or it.control == "delete_all"]


def compile_rule_files(paths: list[str]) -> RuleSet:
    """Compile every file before the kernel is touched. Raises :class:`RuleErrors` listing every
    problem (file:line: message); a missing file is one too."""
    rs = RuleSet(files=list(paths))
    from auditpipe.kernel.rules import RuleError

    errors: list = []
    for path in paths:
        try:
            with open(path, encoding="utf-8", errors="surrogateescape") as f:
                text = f.read()
        except OSError as e:
            errors.append(RuleError(path, 0, f"cannot read: {e.strerror}"))
            continue
        items, errs = parse_rules(text, path)
        errors.extend(errs)
        for it in items:
            for w in it.warnings:
                log.warning("%s:%d: %s", it.file, it.line, w)
            if it.op == "control":
                c = it.control
                if c in _STATUS_CONTROLS:
                    rs.status[c] = int(it.value)
                elif c == "enabled":
                    if int(it.value) == 2:
                        rs.lock = True
                    else:
                        log.info("%s:%d: -e %s ignored: auditpipe enables auditing while it runs "
                                 "and puts the flag back on exit", it.file, it.line, it.value)
                elif c == "delete_all":
                    rs.items.append(it)
                elif c in ("ignore_errors", "continue_on_error"):
                    pass  # loading always continues and reports each refused rule
                else:
                    log.warning("%s:%d: %s ignored by auditpipe run (it cannot be undone on exit; "
                                "use `auditpipe rules load` for it)", it.file, it.line, it.text)
                continue
            rs.items.append(it)
    if errors:
        raise RuleErrors(errors)
    return rs


def _has_key(blob: bytes, key: bytes) -> bool:
    r = RuleData.from_bytes(blob)
    return any(f.field == K.FILTERKEY and key in (f.text or b"").split(b"\x01") for f in r.fields)


def _as_listed(blob: bytes) -> bytes:
    """The rule as the kernel lists it: without AUDIT_FILTER_PREPEND in ``flags``. (The kernel
    keeps -A rules first but drops the flag, and refuses to delete a rule given with it.)"""
    flags = int.from_bytes(blob[:4], "little" if _LE else "big")
    if not flags & K.FILTER_PREPEND:
        return blob
    return (flags & ~K.FILTER_PREPEND).to_bytes(4, "little" if _LE else "big") + blob[4:]


_LE = sys.byteorder == "little"


# ----------------------------------------------------------------------------- the source
class KernelSource(ReaderThread):
    """The kernel as a :class:`~auditpipe.sources.base.Source` yielding
    :data:`~auditpipe.sources.base.KernelRecord` batches. Typical use::

        src = KernelSource(mode="auto", queue=q, strategy="auto", ...)
        try:
            src.start(ruleset)        # status, rules, reader thread
            ... worker: q.get() ...; src.poll_status()
        finally:
            src.close()               # rules deleted, status put back, pid unregistered
    """

    def __init__(self, *, mode: str = "auto", queue: BoundedQueue | None = None,
                 strategy: str = "auto", backlog_limit: int | None = None,
                 rate_limit: int | None = None, failure: int | None = None,
                 backlog_wait_time: int | None = None, immutable: bool = False,
                 keep_rules_on_exit: bool = False, exclude_self: bool = True,
                 purge: str | bool = "auto", rcvbuf: int = 8 << 20, queue_size: int = 65536,
                 default_backlog_limit: int = 8192, batch_delay: float = 0.02) -> None:
        self.requested_mode = mode
        self.strategy_name = strategy
        self.settings = {"backlog_limit": backlog_limit, "rate_limit": rate_limit,
                         "failure": failure, "backlog_wait_time": backlog_wait_time}
        self.default_backlog_limit = default_backlog_limit
        self.immutable = immutable
        self.keep_rules_on_exit = keep_rules_on_exit
        self.exclude_self = exclude_self
        self.purge = purge
        self.rcvbuf = rcvbuf
        self.queue_size = queue_size
        self.batch_delay = batch_delay
        self.queue = queue
        self.mode: str | None = None
        self.strategy: Strategy | None = None
        self.ctl: AuditNetlink | None = None
        self.receiver: AuditReceiver | None = None
        self.original: dict[str, int] = {}  # status at start
        self.changed: dict[str, int] = {}  # field -> the value to put back
        self.installed: list[bytes] = []  # rule blobs we added, in order
        self.self_rule: bytes | None = None
        self.purged: list[bytes] = []  # rules loaded before us, deleted by our purge
        self.locked = False
        self.status: dict[str, int] = {}
        self.lost_at_start = 0
        self.rules_refused = 0
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self.reader_error: BaseException | None = None
        self.other_daemon: tuple[int, str] | None = None
        self._final = (0, 0)  # messages, enobufs of the closed receiver

    kind = "kernel"
    item_type = tuple  # KernelRecord

    @classmethod
    def from_config(cls, cfg: Any) -> KernelSource:
        """The source a typed :class:`~auditpipe.config.Config` asks for."""
        k = cfg.kernel
        return cls(mode=k.mode, strategy=k.backpressure_strategy, backlog_limit=k.backlog_limit,
                   rate_limit=k.rate_limit, failure=cfg.failure_value(), backlog_wait_time=k.backlog_wait_time,
                   immutable=k.immutable, keep_rules_on_exit=k.keep_rules_on_exit, exclude_self=k.exclude_self,
                   purge=cfg.rules.purge, rcvbuf=k.rcvbuf, queue_size=k.queue_size, batch_delay=k.batch_delay)

    # -- the Source protocol (sources.base) --------------------------------------------------
    def poll(self) -> None:
        self.poll_status()

    def release(self) -> list[str]:
        return self.restore_rules_and_status()

    def commit(self, positions: dict) -> None:
        pass  # the kernel does not resend: nothing to checkpoint

    def reconfigure(self, cfg: Any, ruleset: RuleSet | None) -> None:
        k = cfg.kernel
        self.keep_rules_on_exit = k.keep_rules_on_exit
        self.exclude_self = k.exclude_self
        self.reload(ruleset, {"backlog_limit": k.backlog_limit, "rate_limit": k.rate_limit,
                              "failure": cfg.failure_value(), "backlog_wait_time": k.backlog_wait_time})

    def counters(self) -> dict[str, int]:
        q = self.queue
        return {"records_received": self.messages, "kernel_lost": self.kernel_lost,
                "kernel_backlog": self.status.get("backlog", 0), "enobufs": self.enobufs,
                "userspace_drops": q.dropped if q is not None else 0,
                "queue_depth": len(q) if q is not None else 0, "queue_peak": q.peak if q is not None else 0,
                "queue_blocked": q.blocked if q is not None else 0,
                "rules_installed": len(self.installed), "rules_refused": self.rules_refused}

    def describe(self) -> dict[str, Any]:
        other = self.other_daemon
        return {"mode": self.mode, "other_daemon": {"pid": other[0], "comm": other[1]} if other else None,
                "backpressure_strategy": self.strategy.name if self.strategy else None,
                "kernel_status": dict(self.status)}

    # -- start -------------------------------------------------------------------------------
    def start(self, ruleset: RuleSet | None) -> None:
        try:
            self.ctl = AuditNetlink()
        except AuditNetlinkError as e:
            raise KernelSourceError(str(e)) from None
        try:
            st = self.ctl.get_status()
        except AuditNetlinkError as e:
            raise KernelSourceError(str(e)) from None
        self.original = dict(st)
        self.status = dict(st)
        self.lost_at_start = st.get("lost", 0)
        self.locked = st.get("enabled") == 2
        self._open_receiver(st)
        has_bwt = "backlog_wait_time" in st
        try:
            self.strategy = resolve_strategy(self.strategy_name, has_bwt,
                                             self.settings["rate_limit"],
                                             self.settings["backlog_wait_time"])
        except ValueError as e:
            raise KernelSourceError(str(e)) from None
        if self.queue is None:
            self.queue = BoundedQueue(self.queue_size, self.strategy.queue_policy)
        else:
            self.queue.policy = self.strategy.queue_policy
        log.info("backpressure strategy %s (queue %s, %d messages)", self.strategy.name,
                 self.strategy.queue_policy, self.queue.capacity)
        if self.locked:
            log.warning("the audit configuration is locked (enabled=2): rules and status are "
                        "left as they are until reboot")
        else:
            self.apply_status(ruleset)
            self.install_rules(ruleset, first=True)
            self._warn_if_no_rules()
            if st.get("enabled") == 0:
                self._set("enabled", 1)
                log.info("auditing enabled (it was off; switched off again on exit)")
            if ruleset is not None and ruleset.lock and not self.immutable:
                log.warning("-e 2 in the rule files ignored: set kernel.immutable = true to lock "
                            "the audit configuration (nothing can be put back on exit then)")
            if self.immutable:
                self.ctl.set_status(enabled=2)
                self.changed.pop("enabled", None)
                log.warning("audit configuration locked (immutable = true): rules and status "
                            "stay until reboot")
        self._start_reader()

    def _open_receiver(self, st: dict) -> None:
        mode = self.requested_mode
        holder = st.get("pid", 0)
        me = os.getpid()
        if mode == "auto":
            if holder and holder != me:
                self.other_daemon = (holder, process_name(holder))
                log.warning("%s (pid %d) is the registered audit daemon: auditpipe listens on the "
                            "multicast group instead (a read-only copy; the kernel does not wait "
                            "for us when we fall behind)", self.other_daemon[1], holder)
                mode = "multicast"
            else:
                mode = "unicast"
        try:
            if mode == "unicast":
                try:
                    self.receiver = open_unicast(self.rcvbuf)
                except AuditNetlinkError as e:
                    if e.errno == E.EEXIST and self.requested_mode == "auto":
                        log.warning("%s: falling back to multicast", e)
                        mode = "multicast"
                        self.receiver = open_multicast(self.rcvbuf)
                    else:
                        raise
            else:
                if holder and holder != me:
                    self.other_daemon = self.other_daemon or (holder, process_name(holder))
                self.receiver = open_multicast(self.rcvbuf)
        except AuditNetlinkError as e:
            raise KernelSourceError(str(e)) from None
        self.mode = mode
        log.info("receiving audit records by %s%s (socket buffer %d bytes)", mode,
                 " as the registered audit daemon" if mode == "unicast" else "",
                 self.receiver.rcvbuf)

    # -- status ------------------------------------------------------------------------------
    def desired_status(self, ruleset: RuleSet | None) -> dict[str, int]:
        """Built-in default < rule files' control lines < [kernel] settings < strategy."""
        want: dict[str, int] = {"backlog_limit": self.default_backlog_limit}
        if ruleset is not None:
            want.update(ruleset.status)
        for k, v in self.settings.items():
            if v is not None:
                want[k] = v
        s = self.strategy
        if s is not None:
            if s.backlog_wait_time is not None:
                if ruleset is not None and ruleset.status.get("backlog_wait_time", 0) != s.backlog_wait_time:
                    log.info("backlog_wait_time %s from the rule files overridden: the %s "
                             "backpressure strategy sets %d", ruleset.status["backlog_wait_time"],
                             s.name, s.backlog_wait_time)
                want["backlog_wait_time"] = s.backlog_wait_time
            if s.rate_limit is not None and "rate_limit" not in want:
                want["rate_limit"] = s.rate_limit  # userspace: 5000 unless configured
        if "backlog_wait_time" in want and "backlog_wait_time" not in self.original:
            log.warning("this kernel has no backlog_wait_time; not set")
            del want["backlog_wait_time"]
        return want

    def apply_status(self, ruleset: RuleSet | None) -> None:
        want = self.desired_status(ruleset)
        for k, v in want.items():
            if self.status.get(k) != v:
                self._set(k, v)

    def _set(self, name: str, value: int) -> None:
        assert self.ctl is not None
        before = self.status.get(name, self.original.get(name))
        try:
            self.ctl.set_status(**{name: value})
        except AuditNetlinkError as e:
            log.error("could not set %s=%d: %s", name, value, e)
            return
        if name not in self.changed and before is not None:
            self.changed[name] = before
        self.status[name] = value
        log.debug("set %s=%d (was %s)", name, value, before)

    def poll_status(self) -> dict[str, int]:
        """Fresh kernel status (for ``lost`` and ``backlog``); the last one on failure."""
        if self.ctl is not None:
            try:
                self.status = self.ctl.get_status()
            except AuditNetlinkError as e:
                log.warning("kernel status poll failed: %s", e)
        return self.status

    @property
    def kernel_lost(self) -> int:
        """Records the kernel lost since we started (its counter is global and only grows,
        unless someone resets it)."""
        return max(0, self.status.get("lost", 0) - self.lost_at_start)

    # -- rules -------------------------------------------------------------------------------
    def _purge_wanted(self) -> bool:
        if self.purge == "auto":
            return self.mode == "unicast"
        return bool(self.purge)

    def install_rules(self, ruleset: RuleSet | None, first: bool = False) -> None:
        """Install the self-exclusion rule and the rule files' rules. With no rule files
        configured (``ruleset`` None) the kernel's rule list is left alone (only the
        self-exclusion rule is added). On reload (``first`` False) our previous rules go first."""
        ctl = self.ctl
        assert ctl is not None
        if not first:
            self._delete_installed(keep_self=False)
        if ruleset is not None and first and self._purge_wanted():
            try:
                self.purged = ctl.list_rules()
                for blob in self.purged:
                    ctl.delete_rule(blob)
                if self.purged:
                    log.info("purged %d loaded rule(s) (put back on exit)", len(self.purged))
            except AuditNetlinkError as e:
                raise KernelSourceError(f"could not purge the loaded rules: {e}") from None
        added = refused = 0
        if ruleset is not None:
            for it in ruleset.rules:
                try:
                    if it.op == "control":  # delete_all (-D or -D -k KEY): only among ours
                        key = None if it.value is None else str(it.value).encode()
                        keep = []
                        for blob in self.installed:
                            if key is None or _has_key(blob, key):
                                self._delete(blob)
                            else:
                                keep.append(blob)
                        self.installed = keep
                    elif it.op == "add":
                        ctl.add_rule(it.data)
                        self.installed.append(it.data)
                        added += 1
                    else:
                        ctl.delete_rule(it.data)
                        if it.data in self.installed:
                            self.installed.remove(it.data)
                except AuditNetlinkError as e:
                    refused += 1
                    log.error("%s:%d: %s", it.file, it.line, e)
                    if e.errno == E.EPERM:
                        raise KernelSourceError(f"{it.file}:{it.line}: {e}") from None
        self.rules_refused = refused
        if self.exclude_self:
            self._add_self_rule()
        if ruleset is not None:
            log.info("installed %d rule(s) from %d file(s)%s", added, len(ruleset.files),
                     f", {refused} refused" if refused else "")

    def _warn_if_no_rules(self) -> None:
        try:
            others = [b for b in self.ctl.list_rules() if not _has_key(b, SELF_KEY.encode())]
        except AuditNetlinkError:
            return
        if not others:
            log.warning("no audit rules are loaded: only user-space and audit configuration "
                        "events will arrive. Give rule files with --rules FILE or [rules] files "
                        "(auditctl syntax, e.g. -a always,exit -F arch=b64 -S execve -k exec)")

    def _remove_stale_self_rules(self) -> None:
        """An agent killed with SIGKILL cannot remove its self-exclusion rule: remove those
        whose pid no longer runs (another live agent's rule is left alone)."""
        try:
            blobs = [b for b in self.ctl.list_rules() if _has_key(b, SELF_KEY.encode())]
        except AuditNetlinkError:
            return
        for blob in blobs:
            m = re.search(r" -F pid=(\d+)", format_rule(blob))
            if m and not os.path.exists(f"/proc/{m.group(1)}"):
                log.info("removing the self-exclusion rule of a dead agent (pid %s)", m.group(1))
                self._delete(blob)

    def _add_self_rule(self) -> None:
        """``-A never,exit -S all -F pid=<ours>``, prepended so it leads the exit list."""
        assert self.ctl is not None
        self._remove_stale_self_rules()
        if self.self_rule is not None:
            self._delete(self.self_rule)
            self.self_rule = None
        text = f"-A never,exit -S all -F pid={os.getpid()} -k {SELF_KEY}"
        blob = compile_line(text, file="<auditpipe>")[0].data
        try:
            self.ctl.add_rule(blob)
        except AuditNetlinkError as e:
            if e.errno != E.EEXIST:
                log.warning("could not add the self-exclusion rule (%s): %s", text, e)
                return
        self.self_rule = blob
        log.debug("self-exclusion rule: %s", format_rule(blob))

    def _delete(self, blob: bytes) -> None:
        try:
            self.ctl.delete_rule(_as_listed(blob))
        except AuditNetlinkError as e:
            if e.errno != E.ENOENT:
                log.warning("could not delete rule %s: %s", format_rule(blob), e)

    def _delete_installed(self, keep_self: bool) -> None:
        for blob in reversed(self.installed):
            self._delete(blob)
        self.installed = []
        if not keep_self and self.self_rule is not None:
            self._delete(self.self_rule)
            self.self_rule = None

    def reload(self, ruleset: RuleSet | None, settings: dict[str, int | None] | None = None) -> None:
        """SIGHUP: new status settings and rules (the receiving socket stays)."""
        if self.locked or self.ctl is None:
            log.warning("reload: the audit configuration is locked; rules left as they are")
            return
        if settings is not None:
            self.settings.update(settings)
        self.apply_status(ruleset)
        self.install_rules(ruleset, first=False)

    # -- the reader thread -------------------------------------------------------------------
    def _start_reader(self) -> None:
        self._thread = threading.Thread(target=self._read_loop, name="auditpipe-netlink-reader",
                                        daemon=True)
        self._thread.start()

    def _read_loop(self) -> None:
        """The hot path: recv, batch, enqueue. Nothing else."""
        recv = self.receiver.recv_messages
        put = self.queue.put
        stop = self._stop.is_set
        delay = self.batch_delay
        sleep = time.sleep
        try:
            while not stop():
                batch = list(recv(0.2, 4096))
                if batch:
                    put(batch)
                    # The kernel sends one record per datagram: waking for each costs more
                    # than handling it. After a burst, let the socket buffer gather the next
                    # few milliseconds' worth (the buffer holds seconds of it).
                    if delay and len(batch) < 4096:
                        sleep(delay)
        except BaseException as e:  # surfaced by the worker: a dead reader must not go unseen
            if not stop():
                self.reader_error = e
                log.error("netlink reader stopped: %s", e)
            self.queue.close()

    @property
    def enobufs(self) -> int:
        return self.receiver.enobufs if self.receiver else self._final[1]

    @property
    def messages(self) -> int:
        return self.receiver.messages if self.receiver else self._final[0]

    # -- close -------------------------------------------------------------------------------
    def restore_rules_and_status(self) -> list[str]:
        """Delete our rules (unless kept), put purged rules back, restore status fields other
        than ``enabled``. Returns the problems met (each also logged)."""
        problems: list[str] = []
        ctl = self.ctl
        if ctl is None or self.locked:
            return problems
        try:
            if not self.keep_rules_on_exit:
                self._delete_installed(keep_self=True)
                if self.purged:
                    # listed rules carry no prepend flag: adding them in list order puts the
                    # kernel's order back
                    for blob in self.purged:
                        try:
                            ctl.add_rule(blob)
                        except AuditNetlinkError as e:
                            if e.errno != E.EEXIST:
                                problems.append(f"could not put back rule {format_rule(blob)}: {e}")
                    self.purged = []
            elif self.installed:
                log.info("keeping %d installed rule(s) loaded (keep_rules_on_exit)", len(self.installed))
            if self.self_rule is not None:  # last: it covers our own work until here
                self._delete(self.self_rule)
                self.self_rule = None
            for name, value in list(self.changed.items()):
                if name == "enabled":
                    continue
                try:
                    ctl.set_status(**{name: value})
                    del self.changed[name]
                except AuditNetlinkError as e:
                    problems.append(f"could not restore {name}={value}: {e}")
        except AuditNetlinkError as e:
            problems.append(str(e))
        for p in problems:
            log.error("%s", p)
        return problems

    def close(self) -> list[str]:
        """Stop the reader, undo every kernel change, unregister. Safe to call twice."""
        self.stop_reader()
        problems = self.restore_rules_and_status()
        if self.ctl is not None and "enabled" in self.changed and not self.locked:
            try:
                self.ctl.set_status(enabled=self.changed.pop("enabled"))
            except AuditNetlinkError as e:
                problems.append(f"could not restore enabled: {e}")
                log.error("%s", problems[-1])
        if self.receiver is not None:
            self._final = (self.receiver.messages, self.receiver.enobufs)
            try:
                self.receiver.close()
            except (AuditNetlinkError, OSError) as e:
                problems.append(f"could not unregister: {e}")
                log.error("%s", problems[-1])
            self.receiver = None
        if self.ctl is not None:
            self.ctl.close()
            self.ctl = None
        return problems



def wait_for(predicate, timeout: float, interval: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return predicate()
