"""The live kernel source: receiving audit records over netlink (`auditpipe run`).

:class:`KernelSource` is a :class:`~auditpipe.sources.base.Source` yielding
:data:`~auditpipe.sources.base.KernelRecord` batches. It owns:

* the receiving socket — unicast (we are the audit daemon) or multicast (a read-only copy next
  to another daemon); ``mode = auto`` picks multicast only when another live daemon is registered;
* a reader thread that does nothing but ``recv`` and hand raw ``(type, payload)`` batches to a
  :class:`~auditpipe.sources.backpressure.BoundedQueue` (parsing happens in the worker);
* a :class:`~auditpipe.sources.kernel_control.KernelControl` for everything it changes in the
  kernel (status, rules, the journal), driven at start, reload and stop.
"""

from __future__ import annotations

import errno as E
import logging
import os
import threading
import time
from typing import Any

from auditpipe.kernel.netlink import AuditNetlinkError, AuditReceiver, open_multicast, open_unicast, process_name
from auditpipe.sources.backpressure import BoundedQueue, ReaderThread, Strategy, resolve_strategy
from auditpipe.sources.kernel_control import SELF_KEY, KernelControl, KernelControlError, RuleSet, compile_rule_files
from auditpipe.sources.kernel_journal import KernelJournal

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

#: the source cannot start; ``str()`` says what to do
KernelSourceError = KernelControlError


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



# ----------------------------------------------------------------------------- the source
class KernelSource(ReaderThread):
    """See the module docstring. Typical use::

        src = KernelSource(mode="auto", strategy="auto", control=KernelControl(...))
        try:
            src.start(ruleset)        # journal, status, rules, reader thread
            ... worker: src.queue.get() ...; src.poll()
        finally:
            src.release(); src.close()   # rules deleted, status put back, pid unregistered
    """

    kind = "kernel"
    item_type = tuple  # KernelRecord

    def __init__(self, *, mode: str = "auto", strategy: str = "auto", control: KernelControl | None = None,
                 queue: BoundedQueue | None = None, rcvbuf: int = 8 << 20, queue_size: int = 65536,
                 batch_delay: float = 0.02) -> None:
        self.requested_mode = mode
        self.strategy_name = strategy
        self.control = control if control is not None else KernelControl()
        self.rcvbuf = rcvbuf
        self.queue_size = queue_size
        self.batch_delay = batch_delay
        # its policy (block or drop) is set at start by the backpressure strategy
        self.queue = queue if queue is not None else BoundedQueue(queue_size)
        self.mode: str | None = None
        self.strategy: Strategy | None = None
        self.receiver: AuditReceiver | None = None
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self.reader_error: BaseException | None = None
        self.other_daemon: tuple[int, str] | None = None
        self._final = (0, 0, 0)  # messages, enobufs, truncated of the closed receiver

    @classmethod
    def from_config(cls, cfg: Any) -> KernelSource:
        """The source a typed :class:`~auditpipe.config.Config` asks for."""
        k = cfg.kernel
        control = KernelControl(k, purge=cfg.rules.purge, journal=KernelJournal(cfg.state.dir),
                                pending_path=cfg.rules.pending_path)
        return cls(mode=k.mode, strategy=k.backpressure_strategy, control=control, rcvbuf=k.rcvbuf,
                   queue_size=k.queue_size, batch_delay=k.batch_delay)

    # -- start -------------------------------------------------------------------------------
    def start(self, ruleset: RuleSet | None) -> None:
        c = self.control
        st = c.open()
        self._open_receiver(st)
        settings = c.settings
        try:
            self.strategy = resolve_strategy(self.strategy_name, "backlog_wait_time" in st,
                                             settings["rate_limit"], settings["backlog_wait_time"])
        except ValueError as e:
            raise KernelSourceError(str(e)) from None
        self.queue.policy = self.strategy.queue_policy
        log.info("backpressure strategy %s (queue %s, %d messages)", self.strategy.name,
                 self.strategy.queue_policy, self.queue.capacity)
        c.mode, c.strategy = self.mode, self.strategy
        c.apply(ruleset)
        self._start_reader()

    def _open_receiver(self, st: dict) -> None:
        mode = self.requested_mode
        holder = st.get("pid", 0)
        if holder and not os.path.exists(f"/proc/{holder}"):
            log.info("the registered audit daemon (pid %d) no longer runs", holder)
            holder = 0
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

    # -- the Source protocol (sources.base) --------------------------------------------------
    def poll(self) -> None:
        self.control.poll_status()

    def release(self) -> list[str]:
        return self.control.restore_rules_and_status()

    def commit(self, positions: dict) -> None:
        pass  # the kernel does not resend: nothing to checkpoint

    def reconfigure(self, cfg: Any, ruleset: RuleSet | None) -> None:
        self.control.reload(cfg.kernel, ruleset)

    def counters(self) -> dict[str, int | float]:
        q, c = self.queue, self.control
        return {"records_received": self.messages, "kernel_lost": c.kernel_lost,
                "kernel_backlog": c.status.get("backlog", 0), "enobufs": self.enobufs,
                "kernel_truncated": self.truncated,
                "userspace_drops": q.dropped, "source_queue_depth": len(q),
                "source_queue_peak": q.peak, "source_queue_blocked": q.blocked,
                "backpressure_seconds": round(q.blocked_seconds, 3),
                "rules_installed": len(c.installed), "rules_refused": c.rules_refused}

    def describe(self) -> dict[str, Any]:
        other = self.other_daemon
        return {"mode": self.mode, "other_daemon": {"pid": other[0], "comm": other[1]} if other else None,
                "backpressure_strategy": self.strategy.name if self.strategy else None,
                "kernel_status": dict(self.control.status),
                "recovered_from_pid": self.control.recovered_from,
                "locked": self.control.locked, "rules_pending": self.control.pending}

    def _start_reader(self) -> None:
        self._thread = threading.Thread(target=self._read_loop, name="auditpipe-netlink-reader",
                                        daemon=True)
        self._thread.start()

    def _read_loop(self) -> None:
        """The hot path: recv, batch, enqueue. Nothing else."""
        assert self.receiver is not None
        recv = self.receiver.recv_batch
        put = self.queue.put
        stop = self._stop.is_set
        delay = self.batch_delay
        sleep = time.sleep
        try:
            while not stop():
                batch = recv(0.2, 4096)
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
    def truncated(self) -> int:
        """Datagrams longer than a receive slot, cut (none expected: a record is at most 8,970 bytes)."""
        return self.receiver.truncated if self.receiver else self._final[2]

    @property
    def messages(self) -> int:
        return self.receiver.messages if self.receiver else self._final[0]

    # -- close -------------------------------------------------------------------------------
    def close(self) -> list[str]:
        """Stop the reader, undo every kernel change, unregister. Safe to call twice."""
        self.stop_reader()
        problems = self.control.close()
        if self.receiver is not None:
            self._final = (self.receiver.messages, self.receiver.enobufs, self.receiver.truncated)
            try:
                self.receiver.close()
            except (AuditNetlinkError, OSError) as e:
                problems.append(f"could not unregister: {e}")
                log.error("%s", problems[-1])
            self.receiver = None
        return problems
