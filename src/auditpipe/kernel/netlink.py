"""Our own client for the kernel audit netlink socket (``AF_NETLINK``/``NETLINK_AUDIT``).

Two kinds of sockets:

* :class:`AuditNetlink` — the control socket: status, rules, features. Every request asks for an
  ACK, so kernel refusals surface as :class:`AuditNetlinkError` with a message that says what to
  do, not just an errno.
* :class:`AuditReceiver` — a receiving socket made by :func:`open_unicast` (we become the audit
  daemon: the kernel delivers every record to us, reliably, and drops them to printk otherwise)
  or :func:`open_multicast` (read-only copy on the ``AUDIT_NLGRP_READLOG`` group, next to
  whatever daemon runs; best effort).

Byte layouts live in :mod:`auditpipe.kernel.wire` (sans-I/O, tested without root).
"""

from __future__ import annotations

import errno as E
import os
import select
import socket
import struct
import time
from collections import deque
from collections.abc import Iterable, Iterator

from auditpipe.tables import K

from . import wire
from .mmsg import RecvInto, RecvMmsg, datagram_reader
from .wire import NLM_F_ACK, NLM_F_REQUEST, NLMSG_DONE, NLMSG_ERROR, NLMSG_HDRLEN

_TYPE_AND_LENGTH = struct.Struct("=IH")  # nlmsghdr's nlmsg_len, nlmsg_type

# asm-generic/socket.h; the socket module does not export it.
SO_RCVBUFFORCE = getattr(socket, "SO_RCVBUFFORCE", 33)
DEFAULT_RCVBUF = 8 << 20
_RECV_SIZE = 1 << 16  # one audit message is < 9 KB; a rule reply < 1040 + buflen


class AuditNetlinkError(OSError):
    """A refused or failed audit netlink request. ``errno`` is the kernel's; ``str()`` says what
    to do about it."""

    def __init__(self, errno: int, message: str) -> None:
        super().__init__(errno, message)
        self.message = message

    def __str__(self) -> str:
        return self.message


def process_name(pid: int) -> str:
    """The command name of a running process (`/proc/PID/comm`), "?" when it is gone."""
    try:
        with open(f"/proc/{pid}/comm", encoding="utf-8", errors="replace") as f:
            return f.read().strip() or "?"
    except OSError:
        return "?"


def _perm_message(what: str = "CAP_AUDIT_CONTROL") -> str:
    return (f"needs root or {what} (and the initial pid namespace): "
            f"run as root or grant {what}")


def _open_socket() -> socket.socket:
    try:
        sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, wire.NETLINK_AUDIT)
    except OSError as e:
        if e.errno in (E.EPROTONOSUPPORT, E.EAFNOSUPPORT):
            raise AuditNetlinkError(e.errno, "this kernel has no audit support "
                                    "(CONFIG_AUDIT is off)") from None
        raise
    return sock


class _Requester:
    """Request/reply over one netlink socket: numbered requests, replies matched by seq."""

    def __init__(self, sock: socket.socket, timeout: float) -> None:
        self._sock = sock
        self._seq = int(time.monotonic() * 1000) & 0x7FFFFFFF
        self.timeout = timeout
        self.stray: deque[tuple[int, bytes]] = deque()  # audit records seen while waiting

    def transact(self, msg_type: int, payload: bytes = b"", *, reply: int | None = None,
                 multi: bool = False, what: str = "") -> tuple[list[bytes], int]:
        """Send one request with NLM_F_ACK; return (reply payloads, ack value).

        The kernel answers GET/LIST from a worker thread, so the reply and the ACK come in
        either order: wait for both. A positive ACK value is a result (``--reset-lost``)."""
        self._seq = (self._seq + 1) & 0x7FFFFFFF or 1
        seq = self._seq
        try:
            self._sock.sendto(wire.pack_nlmsg(msg_type, payload,
                                              flags=NLM_F_REQUEST | NLM_F_ACK, seq=seq), (0, 0))
        except OSError as e:
            if e.errno is None:
                raise
            raise AuditNetlinkError(e.errno, self.explain(e.errno, msg_type, what)) from None
        replies: list[bytes] = []
        acked, done, ack_value = False, reply is None, 0
        deadline = time.monotonic() + self.timeout
        while not (acked and done):
            left = deadline - time.monotonic()
            if left <= 0:
                raise AuditNetlinkError(E.ETIMEDOUT, f"{what or msg_type}: no answer from the "
                                        f"kernel within {self.timeout:g}s")
            self._sock.settimeout(left)
            try:
                data = self._sock.recv(_RECV_SIZE)
            except TimeoutError:
                continue
            except OSError as e:
                if e.errno == E.ENOBUFS:  # our own socket overflowed; the reply may be lost
                    continue
                raise
            for m in wire.iter_record_datagram(data):
                if m.seq != seq:
                    if K.FIRST_USER_MSG <= m.type <= K.LAST_USER_MSG2:
                        self.stray.append((m.type, m.payload))
                    continue
                if m.type == NLMSG_ERROR:
                    err, _ = wire.unpack_nlmsgerr(m.payload)
                    if err > 0:
                        raise AuditNetlinkError(err, self.explain(err, msg_type, what))
                    acked, ack_value = True, -err
                elif m.type == NLMSG_DONE:
                    done = True
                elif m.type == reply:
                    replies.append(m.payload)
                    if not multi:
                        done = True
        return replies, ack_value

    def explain(self, err: int, msg_type: int, what: str) -> str:
        """Turn a kernel errno into a message that names the fix."""
        what = what or f"audit request {msg_type}"
        if err == E.EPERM:
            return f"{what}: {_perm_message()}"
        if err == E.ECONNREFUSED:
            return f"{what}: the kernel audit subsystem is disabled (audit=0 at boot)"
        if err == E.EEXIST and msg_type == K.ADD_RULE:
            return f"{what}: the rule is already loaded (the kernel refuses duplicates)"
        if err == E.ENOENT and msg_type == K.DEL_RULE:
            return f"{what}: no such rule is loaded"
        return f"{what}: {os.strerror(err)} (errno {err})"


class AuditNetlink:
    """Control socket: status, rules and features. Use as a context manager."""

    def __init__(self, timeout: float = 5.0) -> None:
        self._sock = _open_socket()
        self._sock.bind((0, 0))
        self._req = _Requester(self._sock, timeout)

    def close(self) -> None:
        self._sock.close()

    def __enter__(self) -> AuditNetlink:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _transact(self, msg_type: int, payload: bytes = b"", **kw) -> tuple[list[bytes], int]:
        try:
            return self._req.transact(msg_type, payload, **kw)
        except AuditNetlinkError as e:
            if e.errno == E.EPERM and msg_type != K.GET:
                locked = self._locked()
                if locked:
                    raise AuditNetlinkError(E.EPERM, f"{kw.get('what', msg_type)}: the audit "
                                            "configuration is locked (enabled=2); only a "
                                            "reboot unlocks it") from None
            raise

    def _locked(self) -> bool:
        try:
            return self.get_status().get("enabled") == 2
        except AuditNetlinkError:
            return False

    # -- status ------------------------------------------------------------------------------
    def get_status(self) -> dict[str, int]:
        """``struct audit_status`` as a dict: enabled, failure, pid, rate_limit, backlog_limit,
        lost, backlog and, when the kernel has them, feature_bitmap, backlog_wait_time,
        backlog_wait_time_actual."""
        replies, _ = self._transact(K.GET, reply=K.GET, what="get audit status")
        return wire.unpack_status(replies[0])

    def set_status(self, **fields: int) -> int:
        """Set status fields (enabled, failure, rate_limit, backlog_limit, backlog_wait_time,
        pid; lost / backlog_wait_time_actual reset them). Returns the ACK value (the old lost
        count when resetting ``lost``)."""
        payload = wire.pack_status(**fields)
        if "pid" in fields:
            return self._set_pid_payload(payload, fields["pid"])
        _, value = self._transact(K.SET, payload, what="set " + ", ".join(
            f"{k}={v}" for k, v in fields.items()))
        return value

    def _set_pid_payload(self, payload: bytes, pid: int) -> int:
        try:
            return self._req.transact(K.SET, payload, what=f"register pid {pid}")[1]
        except AuditNetlinkError as e:
            raise pid_error(e, pid, self.get_status) from None

    def set_pid(self, pid: int) -> None:
        """Register ``pid`` as the audit daemon; the kernel sends records to *this* socket."""
        self.set_status(pid=pid)

    def unregister(self) -> None:
        """Unregister the audit daemon (only the registered process itself may do this)."""
        self.set_status(pid=0)

    # -- rules -------------------------------------------------------------------------------
    def list_rules(self) -> list[bytes]:
        """Loaded rules as raw ``audit_rule_data`` blobs, in the kernel's list order."""
        replies, _ = self._transact(K.LIST_RULES, reply=K.LIST_RULES, multi=True,
                                    what="list rules")
        return replies

    def add_rule(self, data: bytes) -> None:
        self._transact(K.ADD_RULE, data, what="add rule")

    def delete_rule(self, data: bytes) -> None:
        self._transact(K.DEL_RULE, data, what="delete rule")

    def delete_all_rules(self) -> int:
        """Delete every loaded rule (as ``auditctl -D`` does: list, then delete one by one)."""
        rules = self.list_rules()
        for data in rules:
            self.delete_rule(data)
        return len(rules)

    # -- features ----------------------------------------------------------------------------
    def get_features(self) -> dict:
        replies, _ = self._transact(K.GET_FEATURE, reply=K.GET_FEATURE, what="get features")
        return wire.unpack_features(replies[0])

    def set_feature(self, feature: int | str, value: bool = True, lock: bool = False) -> None:
        """Turn a feature (``"loginuid_immutable"``) on/off; ``lock`` pins it until reboot."""
        self._transact(K.SET_FEATURE, wire.pack_features(feature, value, lock),
                       what=f"set feature {feature}")

    def set_loginuid_immutable(self) -> None:
        """``--loginuid-immutable``: enable and lock, as auditctl does."""
        self.set_feature("loginuid_immutable", True, True)


def pid_error(e: AuditNetlinkError, pid: int, get_status) -> AuditNetlinkError:
    """Explain a refused daemon registration: who holds it, and what to do."""
    if e.errno == E.EEXIST and pid:
        try:
            holder = get_status().get("pid", 0)
        except AuditNetlinkError:
            holder = 0
        if holder and holder == os.getpid():
            msg = f"this process (pid {holder}) is already registered as the audit daemon"
        elif holder:
            msg = (f"{process_name(holder)} (pid {holder}) already receives audit events: "
                   "stop it or use multicast")
        else:
            msg = "another process already receives audit events: stop it or use multicast"
        return AuditNetlinkError(E.EEXIST, msg)
    if e.errno == E.EACCES and not pid:
        return AuditNetlinkError(E.EACCES, "only the registered audit daemon may unregister")
    return e


class AuditReceiver:
    """A socket that receives audit records. Call :meth:`recv_batch` in a loop; use
    :meth:`fileno` to wait on it in a selector. Counters: ``messages``, ``enobufs`` (times the
    kernel found our receive buffer full and dropped records), ``replace_pings``, ``truncated``
    (datagrams longer than a receive slot, kept cut)."""

    def __init__(self, sock: socket.socket, mode: str, rcvbuf: int,
                 requester: _Requester | None = None,
                 datagrams: RecvMmsg | RecvInto | None = None) -> None:
        self._sock = sock
        self.mode = mode
        self.rcvbuf = rcvbuf
        self._req = requester
        self._datagrams = datagrams or datagram_reader(sock)
        self._poll = select.poll()
        self._poll.register(sock.fileno(), select.POLLIN)
        self.messages = 0
        self.enobufs = 0
        self.replace_pings = 0
        self.registered = requester is not None

    def fileno(self) -> int:
        return self._sock.fileno()

    @property
    def truncated(self) -> int:
        return self._datagrams.truncated

    def _take(self, msgs: Iterable[tuple[int, bytes]], out: list[tuple[int, bytes]]) -> None:
        for mtype, payload in msgs:
            if not K.FIRST_USER_MSG <= mtype <= K.LAST_USER_MSG2:
                continue  # ACKs and other control traffic
            if mtype == K.REPLACE:  # the kernel probing whether we are alive; nothing to log
                self.replace_pings += 1
                continue
            out.append((mtype, payload.rstrip(b"\0")))

    def recv_batch(self, timeout: float | None = None,
                   max_messages: int = 4096) -> list[tuple[int, bytes]]:
        """``(msg_type, payload)`` of audit records (types 1100-2999), oldest first.

        Waits up to ``timeout`` seconds (None: forever) for the first datagram, then drains what
        is already queued without blocking, many datagrams per system call, until about
        ``max_messages`` (it may pass it by the datagrams of one call) and returns, so the caller
        gets control back to run timers. ENOBUFS (the kernel dropped records because our buffer
        was full) is counted in ``enobufs``; receiving continues."""
        out: list[tuple[int, bytes]] = []
        if self._req is not None and self._req.stray:
            self._take(self._req.stray, out)
            self._req.stray.clear()
        if not out:
            if not self._poll.poll(-1 if timeout is None else max(0, int(timeout * 1000))):
                return out
        dg = self._datagrams
        fill, view, slot, vlen = dg.fill, dg.view, dg.slot, dg.vlen
        head = _TYPE_AND_LENGTH.unpack_from
        first, last, replace = K.FIRST_USER_MSG, K.LAST_USER_MSG2, K.REPLACE
        while len(out) < max_messages:
            try:
                sizes = fill()
            except InterruptedError:
                continue
            except OSError as e:
                if e.errno != E.ENOBUFS:
                    raise
                self.enobufs += 1
                continue
            off = 0
            for size in sizes:
                if size >= NLMSG_HDRLEN:  # shorter: not a message (wire yields nothing either)
                    length, mtype = head(view, off)
                    # one record per datagram (see wire.iter_record_datagram): unicast records
                    # give the payload length, multicast copies the real one
                    if first <= mtype <= last and mtype != replace and length >= NLMSG_HDRLEN and (
                            length == size - NLMSG_HDRLEN or length <= size <= length + 3):
                        end = off + size if length == size - NLMSG_HDRLEN else off + length
                        out.append((mtype, bytes(view[off + NLMSG_HDRLEN:end]).rstrip(b"\0")))
                    else:
                        self._take([(m.type, m.payload) for m in
                                    wire.iter_record_datagram(bytes(view[off:off + size]))], out)
                off += slot
            if len(sizes) < vlen:
                break  # drained
        self.messages += len(out)
        return out

    def recv_messages(self, timeout: float | None = None,
                      max_messages: int = 4096) -> Iterator[tuple[int, bytes]]:
        """:meth:`recv_batch` one message at a time."""
        yield from self.recv_batch(timeout, max_messages)

    def close(self) -> None:
        """Unregister (unicast) and close. Safe to call twice."""
        if self._sock.fileno() < 0:
            return
        try:
            if self.registered and self._req is not None:
                self.registered = False
                try:
                    self._req.transact(K.SET, wire.pack_status(pid=0),
                                       what="unregister audit daemon")
                except AuditNetlinkError as e:
                    if e.errno not in (E.EACCES, E.ECONNREFUSED):
                        raise
        finally:
            self._poll.unregister(self._sock.fileno())
            self._sock.close()

    def __enter__(self) -> AuditReceiver:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _bump_rcvbuf(sock: socket.socket, size: int) -> int:
    """Ask for ``size`` bytes of receive buffer: SO_RCVBUFFORCE ignores rmem_max (needs
    CAP_NET_ADMIN), SO_RCVBUF is capped by it. Returns what the kernel granted."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, size)
    except OSError:
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, size)
        except OSError:
            pass
    return sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)


def open_unicast(rcvbuf: int = DEFAULT_RCVBUF, timeout: float = 5.0) -> AuditReceiver:
    """Register this process as the audit daemon and return the receiving socket.

    Fails with a clear :class:`AuditNetlinkError` when another daemon is registered (we never
    take over). ``close()`` unregisters. The caller decides whether to ``set_status(enabled=1)``.
    """
    sock = _open_socket()
    try:
        sock.bind((0, 0))
        granted = _bump_rcvbuf(sock, rcvbuf)
        req = _Requester(sock, timeout)
        pid = os.getpid()
        try:
            req.transact(K.SET, wire.pack_status(pid=pid), what=f"register pid {pid}")
        except AuditNetlinkError as e:
            with AuditNetlink(timeout) as ctl:
                raise pid_error(e, pid, ctl.get_status) from None
        # the request above left a timeout on the socket; with one set, CPython waits for
        # readability before every recv (MSG_DONTWAIT or not), which would stall a drain
        sock.settimeout(None)
    except BaseException:
        sock.close()
        raise
    return AuditReceiver(sock, "unicast", granted, req)


def open_multicast(rcvbuf: int = DEFAULT_RCVBUF) -> AuditReceiver:
    """Join the read-only ``AUDIT_NLGRP_READLOG`` group (needs CAP_AUDIT_READ). Records arrive
    next to any registered daemon; the kernel does not retry when we fall behind."""
    sock = _open_socket()
    try:
        granted = _bump_rcvbuf(sock, rcvbuf)
        try:
            sock.bind((0, 1 << (K.NLGRP_READLOG - 1)))
        except PermissionError:
            raise AuditNetlinkError(E.EPERM, "joining the audit multicast group "
                                    + _perm_message("CAP_AUDIT_READ")) from None
    except BaseException:
        sock.close()
        raise
    return AuditReceiver(sock, "multicast", granted)
