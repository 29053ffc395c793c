"""Kernel audit *control* for `auditpipe run`: what it changes in the kernel, and puts back.

:class:`KernelControl` owns, for the lifetime of one run, the control socket and:

* the status fields it sets (enabled, backlog_limit, rate_limit, failure, backlog_wait_time),
  each restored on close to the value it had before;
* the rules it installs (a leading ``never`` rule on our own pid, then the rule files), deleted on
  close unless ``keep_rules_on_exit``; rules it purged at start are put back;
* the *journal* (:class:`KernelJournal`): the kernel state found at first start, written to the
  state directory before anything is changed. A start that finds the journal of a dead instance
  (killed with SIGKILL, a crash, a power cut) first puts the kernel back to the journaled state —
  not to what the dead instance left — so its rules, its status values and its self-exclusion rule
  are gone and a later stop leaves the kernel exactly as it was before the first start. The
  journal is removed after a clean restore.

Receiving (the socket reader thread) is :mod:`auditpipe.sources.kernel`. Nothing here parses
records; the control socket is used only from the worker thread.
"""

from __future__ import annotations

import errno as E
import logging
import os
import re
import sys
from dataclasses import dataclass, field

from auditpipe.config import DEFAULT_BACKLOG_LIMIT, KernelConfig
from auditpipe.kernel.immutable import write_pending
from auditpipe.kernel.netlink import AuditNetlink, AuditNetlinkError
from auditpipe.kernel.rules import RuleData, RuleErrors, RuleItem, compile_line, format_rule, parse_rules
from auditpipe.sources.backpressure import Strategy
from auditpipe.sources.kernel_journal import KernelJournal
from auditpipe.tables import K

__all__ = ["SELF_KEY", "KernelControl", "KernelControlError", "RuleSet", "compile_rule_files"]

log = logging.getLogger("auditpipe.kernel")

SELF_KEY = "auditpipe-self"
_STATUS_CONTROLS = ("backlog_limit", "rate_limit", "failure", "backlog_wait_time")


class KernelControlError(RuntimeError):
    """The kernel cannot be set up as asked (or a restore failed); ``str()`` says what to do."""


# ---------------------------------------------------------------------------------- rules
def _rule_lines(path: str) -> list[str]:
    """A rule file's lines as auditctl reads them (no comments, no blank lines)."""
    with open(path, encoding="utf-8", errors="surrogateescape") as f:
        return [ln.strip() for ln in f if ln.strip() and not ln.lstrip().startswith("#")]


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
                    rs.status[c] = int(it.value or 0)
                elif c == "enabled":
                    if int(it.value or 0) == 2:
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



# ---------------------------------------------------------------------------------- control
class KernelControl:
    """See the module docstring. ``open()`` → ``apply(ruleset)`` → … → ``restore_rules_and_status()``
    → ``close()``; ``mode`` and ``strategy`` are set by the source before ``apply``."""

    @property
    def settings(self) -> dict[str, int | None]:
        """The status fields ``[kernel]`` asks for (None: not set there)."""
        k = self.kernel
        return {"backlog_limit": k.backlog_limit, "rate_limit": k.rate_limit, "failure": k.failure_value(),
                "backlog_wait_time": k.backlog_wait_time}

    def __init__(self, kernel: KernelConfig | None = None, *, purge: str | bool = "auto",
                 journal: KernelJournal | None = None, default_backlog_limit: int = DEFAULT_BACKLOG_LIMIT,
                 pending_path: str | None = None) -> None:
        self.kernel = kernel if kernel is not None else KernelConfig()
        self.pending_path = pending_path
        self.pending: str | None = None  # the next boot's rules file written while locked
        self.purge = purge
        self.journal = journal
        self.default_backlog_limit = default_backlog_limit
        self.mode: str | None = None
        self.strategy: Strategy | None = None
        self.ctl: AuditNetlink | None = None
        self.original: dict[str, int] = {}  # status at (first) start
        self.changed: dict[str, int] = {}  # field -> the value to put back
        self.installed: list[bytes] = []  # rule blobs we added, in order
        self.self_rule: bytes | None = None
        self.purged: list[bytes] = []  # rules loaded before us, deleted by our purge
        self.locked = False
        self.status: dict[str, int] = {}
        self.lost_at_start = 0
        self.rules_refused = 0
        self.recovered_from: int | None = None  # pid of the dead instance whose journal we found

    # -- start -------------------------------------------------------------------------------
    def open(self) -> dict[str, int]:
        """Open the control socket and read the status; with a journal, recover from a dead
        instance's or write ours, before anything is changed. Returns the status."""
        try:
            self.ctl = AuditNetlink()
            st = self.ctl.get_status()
        except AuditNetlinkError as e:
            raise KernelControlError(str(e)) from None
        self.locked = st.get("enabled") == 2
        if self.journal is not None and not self.locked:
            st = self._journal_first(st)
        self.original = dict(st)
        self.status = dict(st)
        self.lost_at_start = st.get("lost", 0)
        return st

    def _journal_first(self, st: dict[str, int]) -> dict[str, int]:
        j = self.journal
        assert j is not None and self.ctl is not None
        try:
            found = j.load()
        except ValueError as e:
            raise KernelControlError(f"{j.path}: {e}; remove it once the kernel's audit rules and "
                                     "status are as they should be") from None
        if found is not None:
            owner = found.pid
            if owner != os.getpid() and j.owner_alive(found):
                raise KernelControlError(f"another auditpipe (pid {owner}) runs with the state directory "
                                         f"{os.path.dirname(j.path)}; stop it first")
            log.warning("the previous auditpipe (pid %d) did not stop cleanly: putting the kernel's audit "
                        "status and rules back as journaled at its start (%s)", owner, j.path)
            self._put_back(found.status, found.rules)
            self.recovered_from = owner
            st = self.ctl.get_status()
            self._write_journal(found.status, found.rules)  # the same state, now ours to restore
        else:
            self._write_journal(st, self.ctl.list_rules())
        return st

    def _write_journal(self, status: dict[str, int], rules: list[bytes]) -> None:
        assert self.journal is not None
        try:
            self.journal.write(os.getpid(), status, rules)
        except OSError as e:
            raise KernelControlError(f"cannot write the kernel state journal {self.journal.path} "
                                     f"({e.strerror}): nothing was changed. Set [state] dir to a "
                                     "writable directory") from None

    def _put_back(self, status: dict[str, int], rules: list[bytes]) -> None:
        """The kernel as journaled: its rule list exactly (without self-exclusion rules of
        instances no longer running), its status fields."""
        ctl = self.ctl
        assert ctl is not None
        rules = [b for b in rules if not self._dead_self_rule(b)]
        try:
            if ctl.list_rules() != rules:
                ctl.delete_all_rules()
                for blob in rules:
                    ctl.add_rule(blob)
            now = ctl.get_status()
            for k in KernelJournal.FIELDS:
                if k in status and k in now and now[k] != status[k]:
                    ctl.set_status(**{k: status[k]})
        except AuditNetlinkError as e:
            raise KernelControlError(f"could not put the journaled kernel state back: {e}") from None

    @staticmethod
    def _dead_self_rule(blob: bytes) -> bool:
        if not _has_key(blob, SELF_KEY.encode()):
            return False
        m = re.search(r" -F pid=(\d+)", format_rule(blob))
        return m is not None and not os.path.exists(f"/proc/{m.group(1)}")

    def apply(self, ruleset: RuleSet | None) -> None:
        """Status, rules, enabled (and the lock when asked), unless the kernel is locked."""
        assert self.ctl is not None
        if self.locked:
            log.warning("the audit configuration is locked (enabled=2): rules and status are "
                        "left as they are until reboot")
            self.write_pending(ruleset)
            return
        self.apply_status(ruleset)
        self.install_rules(ruleset, first=True)
        self._warn_if_no_rules()
        if self.original.get("enabled") == 0:
            self._set("enabled", 1)
            log.info("auditing enabled (it was off; switched off again on exit)")
        if ruleset is not None and ruleset.lock and not self.kernel.immutable:
            log.warning("-e 2 in the rule files ignored: set kernel.immutable = true to lock "
                        "the audit configuration (nothing can be put back on exit then)")
        if self.kernel.immutable:
            self.ctl.set_status(enabled=2)
            self.changed.pop("enabled", None)
            log.warning("audit configuration locked (immutable = true): rules and status "
                        "stay until reboot")

    def write_pending(self, ruleset: RuleSet | None) -> None:
        """Locked kernel: the rules we were asked to load become the next boot's rules file
        (``[rules] pending_path``), reported as pending in the status file."""
        if ruleset is None or self.pending_path is None:
            return
        try:
            lines = [ln for f in ruleset.files for ln in _rule_lines(f)]
            self.pending = str(write_pending(lines, self.pending_path, ", ".join(ruleset.files)))
        except OSError as e:
            log.error("could not write the pending rules to %s: %s", self.pending_path, e)
            return
        log.warning("%d rule line(s) written to %s: they take effect at the next boot",
                    len(lines), self.pending)

    def watched_rules(self) -> list[bytes]:
        """The rules the drift monitor compares with the kernel's list: ours, the
        self-exclusion rule first (it is prepended)."""
        return ([self.self_rule] if self.self_rule is not None else []) + list(self.installed)

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
                raise KernelControlError(f"could not purge the loaded rules: {e}") from None
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
                    elif it.data is None:
                        continue
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
                        raise KernelControlError(f"{it.file}:{it.line}: {e}") from None
        self.rules_refused = refused
        if self.kernel.exclude_self:
            self._add_self_rule()
        if ruleset is not None:
            log.info("installed %d rule(s) from %d file(s)%s", added, len(ruleset.files),
                     f", {refused} refused" if refused else "")

    def _warn_if_no_rules(self) -> None:
        assert self.ctl is not None
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
        assert self.ctl is not None
        try:
            blobs = [b for b in self.ctl.list_rules() if self._dead_self_rule(b)]
        except AuditNetlinkError:
            return
        for blob in blobs:
            log.info("removing the self-exclusion rule of a dead agent: %s", format_rule(blob))
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
        assert blob is not None
        try:
            self.ctl.add_rule(blob)
        except AuditNetlinkError as e:
            if e.errno != E.EEXIST:
                log.warning("could not add the self-exclusion rule (%s): %s", text, e)
                return
        self.self_rule = blob
        log.debug("self-exclusion rule: %s", format_rule(blob))

    def _delete(self, blob: bytes) -> None:
        assert self.ctl is not None
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

    def reload(self, kernel: KernelConfig, ruleset: RuleSet | None) -> None:
        """SIGHUP: the new ``[kernel]`` settings and rules (the receiving socket stays)."""
        self.kernel = kernel
        if self.locked or self.ctl is None:
            log.warning("reload: the audit configuration is locked; rules left as they are")
            if self.locked:
                self.write_pending(ruleset)
            return
        self.apply_status(ruleset)
        self.install_rules(ruleset, first=False)

    # -- stop -------------------------------------------------------------------------------
    def restore_rules_and_status(self) -> list[str]:
        """Delete our rules (unless kept), put purged rules back, restore status fields other
        than ``enabled``. Returns the problems met (each also logged)."""
        problems: list[str] = []
        ctl = self.ctl
        if ctl is None or self.locked:
            return problems
        try:
            if not self.kernel.keep_rules_on_exit:
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
        """Restore what is left (rules, status, ``enabled``), close the socket; the journal is
        removed when everything was put back. Safe to call twice."""
        problems = self.restore_rules_and_status()
        if self.ctl is not None and "enabled" in self.changed and not self.locked:
            try:
                self.ctl.set_status(enabled=self.changed.pop("enabled"))
            except AuditNetlinkError as e:
                problems.append(f"could not restore enabled: {e}")
                log.error("%s", problems[-1])
        if self.ctl is not None:
            self.ctl.close()
            self.ctl = None
            if self.journal is not None and not problems:
                self.journal.remove()
        return problems
