"""Sans-I/O tests of the audit netlink codec and of the client's request/receive logic against
a scripted fake kernel (no root, no real socket traffic)."""

from __future__ import annotations

import ctypes
import errno
import socket
import struct
import time

import pytest

from auditpipe.kernel import wire
from auditpipe.kernel.mmsg import RecvInto, RecvMmsg, libc_recvmmsg
from auditpipe.kernel.netlink import AuditNetlinkError, AuditReceiver, _Requester, pid_error
from auditpipe.tables import K


def test_pack_nlmsg_pads_and_counts_padding():
    m = wire.pack_nlmsg(K.ADD_RULE, b"abcde", seq=7)
    length, mtype, flags, seq, pid = struct.unpack_from("=IHHII", m)
    assert (length, mtype, flags, seq, pid) == (16 + 8, K.ADD_RULE,
                                                wire.NLM_F_REQUEST | wire.NLM_F_ACK, 7, 0)
    assert m[16:] == b"abcde\0\0\0" and len(m) == length


def test_iter_nlmsgs_multi_and_alignment():
    a = struct.pack("=IHHII", 16 + 3, 1300, 0, 1, 0) + b"xyz\0"
    b = struct.pack("=IHHII", 16 + 4, 1320, 0, 2, 0) + b"abcd"
    msgs = list(wire.iter_nlmsgs(a + b))
    assert [(m.type, m.seq, m.payload) for m in msgs] == [(1300, 1, b"xyz"), (1320, 2, b"abcd")]


def test_iter_nlmsgs_clamps_overlong_length():
    # a length past the datagram must not lose the record
    buf = struct.pack("=IHHII", 500, 1300, 0, 0, 0) + b"audit(1.2:3): x"
    (m,) = wire.iter_nlmsgs(buf)
    assert m.payload == b"audit(1.2:3): x"


def test_nlmsgerr_roundtrip():
    req = wire.NlMsg(K.SET, 5, 42, 0, b"")
    err, echoed = wire.unpack_nlmsgerr(wire.pack_nlmsgerr(errno.EEXIST, req))
    assert err == errno.EEXIST and echoed.seq == 42 and echoed.type == K.SET
    assert wire.unpack_nlmsgerr(struct.pack("=i", 0))[0] == 0


@pytest.mark.parametrize("nfields", [8, 9, 10, 11])
def test_unpack_status_by_length(nfields):
    """Older kernels send a prefix of struct audit_status; the dict has what was sent."""
    values = list(range(100, 100 + nfields))
    st = wire.unpack_status(struct.pack(f"={nfields}I", *values))
    assert list(st) == list(wire.STATUS_FIELDS[1:nfields])
    assert st["enabled"] == 101 and st["backlog"] == 107


def test_unpack_status_too_short():
    with pytest.raises(ValueError):
        wire.unpack_status(b"\0" * 16)


def test_pack_status_sets_mask_bits_only_for_given_fields():
    raw = wire.pack_status(enabled=1, backlog_limit=8192)
    vals = struct.unpack("=11I", raw)
    assert vals[0] == K.STATUS_ENABLED | K.STATUS_BACKLOG_LIMIT
    assert vals[1] == 1 and vals[5] == 8192 and vals[3] == 0
    assert len(raw) == wire.STATUS_SIZE == 44
    with pytest.raises(ValueError, match="not settable"):
        wire.pack_status(backlog=3)
    with pytest.raises(ValueError, match="u32"):
        wire.pack_status(rate_limit=-1)


def test_features_roundtrip():
    raw = wire.pack_features("loginuid_immutable", True, True)
    vers, mask, feats, lock = struct.unpack("=4I", raw)
    bit = 1 << K.FEATURE_LOGINUID_IMMUTABLE
    assert (vers, mask, feats, lock) == (K.FEATURE_VERSION, bit, bit, bit)
    got = wire.unpack_features(struct.pack("=4I", 1, 0xFFFFFFFF, bit, 0))
    assert got["loginuid_immutable"] == {"enabled": True, "locked": False}
    assert got["only_unset_loginuid"] == {"enabled": False, "locked": False}


class FakeKernel:
    """Stands in for the netlink socket: answers each request with scripted messages."""

    def __init__(self, script):
        self.script = script  # request -> list of (type, payload) or ("ack", errno)
        self.inbox: list[bytes] = []
        self.sent: list[wire.NlMsg] = []

    def settimeout(self, t):
        pass

    def sendto(self, data, addr):
        (req,) = wire.iter_nlmsgs(data)
        self.sent.append(req)
        for kind, val in self.script(req):
            if kind == "ack":
                payload = wire.pack_nlmsgerr(val, req)
                self.inbox.append(wire.pack_nlmsg(wire.NLMSG_ERROR, payload, flags=0,
                                                  seq=req.seq))
            else:
                self.inbox.append(wire.pack_nlmsg(kind, val, flags=0, seq=req.seq,
                                                  count_padding=False))

    def recv(self, n, flags=0):
        if not self.inbox:
            raise socket.timeout()
        return self.inbox.pop(0)


STATUS = struct.pack("=11I", 0, 1, 1, 0, 0, 64, 0, 0, 127, 15000, 0)


@pytest.mark.parametrize("order", ["reply_first", "ack_first"])
def test_transact_waits_for_reply_and_ack_in_either_order(order):
    def script(req):
        msgs = [(K.GET, STATUS), ("ack", 0)]
        return msgs if order == "reply_first" else msgs[::-1]

    r = _Requester(FakeKernel(script), timeout=1)
    replies, _ = r.transact(K.GET, reply=K.GET)
    assert wire.unpack_status(replies[0])["backlog_limit"] == 64


def test_transact_multipart_until_done():
    def script(req):
        return [("ack", 0), (K.LIST_RULES, b"r1"), (K.LIST_RULES, b"r2"), (wire.NLMSG_DONE, b"")]

    r = _Requester(FakeKernel(script), timeout=1)
    assert r.transact(K.LIST_RULES, reply=K.LIST_RULES, multi=True)[0] == [b"r1", b"r2"]


def test_transact_error_messages_name_the_fix():
    r = _Requester(FakeKernel(lambda req: [("ack", errno.EPERM)]), timeout=1)
    with pytest.raises(AuditNetlinkError) as ei:
        r.transact(K.ADD_RULE, b"x", what="add rule")
    assert ei.value.errno == errno.EPERM and "CAP_AUDIT_CONTROL" in str(ei.value)
    r = _Requester(FakeKernel(lambda req: [("ack", errno.EEXIST)]), timeout=1)
    with pytest.raises(AuditNetlinkError, match="already loaded"):
        r.transact(K.ADD_RULE, b"x", what="add rule")


def test_transact_positive_ack_is_a_value_and_strays_are_kept():
    """--reset-lost: the kernel answers with the old lost count in the ACK's error field."""
    k = FakeKernel(lambda req: [("ack", -17)])
    k.inbox.append(wire.pack_nlmsg(1300, b"audit(1.0:1): x", flags=0, count_padding=False))
    r = _Requester(k, timeout=1)
    assert r.transact(K.SET, wire.pack_status(lost=0))[1] == 17
    assert list(r.stray) == [(1300, b"audit(1.0:1): x")]


def test_transact_timeout():
    r = _Requester(FakeKernel(lambda req: []), timeout=0.05)
    with pytest.raises(AuditNetlinkError, match="no answer"):
        r.transact(K.GET, reply=K.GET, what="get audit status")


def test_pid_error_names_the_holder():
    e = AuditNetlinkError(errno.EEXIST, "x")
    msg = str(pid_error(e, 1234, lambda: {"pid": 1}))
    assert msg.endswith("(pid 1) already receives audit events: stop it or use multicast")


class ScriptedSocket:
    """A real datagram socket (for poll) whose recv can also raise ENOBUFS."""

    def __init__(self):
        self.a, self.b = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.enobufs = 0

    def fileno(self):
        return self.a.fileno()

    def gettimeout(self):
        return self.a.gettimeout()

    def settimeout(self, t):
        self.a.settimeout(t)

    def recvmsg_into(self, buffers, ancbufsize=0, flags=0):
        if self.enobufs:
            self.enobufs -= 1
            raise OSError(errno.ENOBUFS, "No buffer space available")
        return self.a.recvmsg_into(buffers, ancbufsize, flags)

    def close(self):
        self.a.close()
        self.b.close()


def mmsg_call():
    fn = libc_recvmmsg()
    assert fn is not None, "this libc has no recvmmsg (glibc and musl have it)"
    return fn


RECORDS = [(1300, b"audit(1.0:1): a\0"), (wire.NLMSG_ERROR, b"\0" * 20), (K.REPLACE, struct.pack("=I", 99)),
           (1320, b"audit(1.0:1): "), (1100, b"audit(1.0:2): u")]
WANT = [(1300, b"audit(1.0:1): a"), (1320, b"audit(1.0:1): "), (1100, b"audit(1.0:2): u")]


def test_receiver_filters_types_counts_enobufs_and_drains():
    s = ScriptedSocket()
    for mtype, text in RECORDS:
        s.b.send(wire.pack_nlmsg(mtype, text, flags=0, count_padding=False))
    s.enobufs = 1
    r = AuditReceiver(s, "multicast", 1 << 20, datagrams=RecvInto(s))
    got = list(r.recv_messages(timeout=1))
    assert got == WANT
    assert (r.enobufs, r.replace_pings, r.messages) == (1, 1, 3)
    assert list(r.recv_messages(timeout=0)) == []  # nothing queued: returns at once
    r.close()
    r.close()


@pytest.mark.parametrize("quirk", [True, False], ids=["unicast-length", "real-length"])
def test_recvmmsg_reads_what_recv_into_reads(quirk):
    """The recvmmsg reader (many datagrams a call) gives what the one-a-call reader gives, for
    unicast's payload-length nlmsg_len and multicast's real one, a datagram of two messages, and
    one longer than a slot (cut and counted)."""
    def send(sock):
        for mtype, text in RECORDS:
            sock.send(wire.pack_nlmsg(mtype, text, flags=0, count_padding=not quirk)
                      if not quirk else struct.pack("=IHHII", len(text), mtype, 0, 0, 0) + text)
        sock.send(wire.pack_nlmsg(1300, b"audit(1.0:3): x", flags=0)
                  + wire.pack_nlmsg(1309, b"audit(1.0:3): argc=1", flags=0))
        sock.send(struct.pack("=IHHII", 16 + 5000, 1302, 0, 0, 0) + b"audit(1.0:4): " + b"p" * 4986)
    got = {}
    for name in ("mmsg", "into"):
        s = ScriptedSocket()
        send(s.b)
        dg = RecvMmsg(s, mmsg_call(), vlen=3, slot=4096) if name == "mmsg" else RecvInto(s, slot=4096)
        r = AuditReceiver(s, "multicast", 1 << 20, datagrams=dg)
        got[name] = r.recv_batch(timeout=1), r.messages, dg.truncated
        r.close()
    assert got["mmsg"] == got["into"]
    batch, messages, truncated = got["mmsg"]
    assert batch[:3] == WANT and messages == 6 and truncated == 1
    assert batch[3:5] == [(1300, b"audit(1.0:3): x"), (1309, b"audit(1.0:3): argc=1")]
    assert batch[5][0] == 1302 and len(batch[5][1]) == 4096 - 16


def test_recvmmsg_enobufs_is_counted_and_receiving_goes_on():
    """recvmmsg's ENOBUFS arrives as -1 and errno: counted as an overrun, the records after it
    received as with recvmsg."""
    real = mmsg_call()
    overruns = [1]

    def call(fd, hdrs, vlen, flags, tmo):
        if overruns[0]:
            overruns[0] -= 1
            ctypes.set_errno(errno.ENOBUFS)
            return -1
        return real(fd, hdrs, vlen, flags, tmo)

    s = ScriptedSocket()
    for mtype, text in RECORDS:
        s.b.send(wire.pack_nlmsg(mtype, text, flags=0, count_padding=False))
    r = AuditReceiver(s, "multicast", 1 << 20, datagrams=RecvMmsg(s, call))
    assert list(r.recv_messages(timeout=1)) == WANT
    assert (r.enobufs, r.messages) == (1, 3)
    r.close()


@pytest.mark.parametrize("reader", ["mmsg", "into"])
def test_receiver_does_not_wait_on_a_socket_timeout(reader):
    """A request on the receiving socket (registration) leaves a timeout set; draining must
    still return as soon as the queue is empty, not after that timeout."""
    s = ScriptedSocket()
    s.a.settimeout(5)
    s.b.send(wire.pack_nlmsg(1300, b"audit(1.0:1): a", flags=0, count_padding=False))
    r = AuditReceiver(s, "unicast", 1 << 20, datagrams=RecvMmsg(s, mmsg_call()) if reader == "mmsg" else RecvInto(s))
    t0 = time.monotonic()
    assert len(r.recv_batch(timeout=1)) == 1
    assert time.monotonic() - t0 < 0.5
    r.close()


def test_receiver_max_messages_keeps_the_rest():
    s = ScriptedSocket()
    for i in range(5):
        s.b.send(wire.pack_nlmsg(1300, b"audit(1.0:%d): x" % i, flags=0, count_padding=False))
    r = AuditReceiver(s, "multicast", 1 << 20, datagrams=RecvMmsg(s, mmsg_call(), vlen=2))
    assert len(r.recv_batch(timeout=1, max_messages=2)) == 2  # no further call once reached
    assert [p for _, p in r.recv_batch(timeout=1)] == [b"audit(1.0:%d): x" % i for i in (2, 3, 4)]
    r.close()


def test_unicast_length_quirk():
    """Unicast records carry nlmsg_len = payload length (kernel audit_log_end()); multicast
    copies the real length. Both must give the whole record."""
    body = (b"audit(1795294043.251:28): op=set audit_pid=1 old=1 auid=4294967295 "
            b"ses=4294967295 res=0")
    quirky = struct.pack("=IHHII", len(body), 1305, 0, 0, 0) + body
    normal = struct.pack("=IHHII", 16 + len(body), 1305, 0, 0, 0) + body
    for dgram in (quirky, normal):
        (m,) = wire.iter_record_datagram(dgram)
        assert m.payload.rstrip(b"\0") == body
    # plain iteration would cut 16 bytes off the quirky record
    assert next(wire.iter_nlmsgs(quirky)).payload == body[:-16]
    # control replies (ACK, rule lists) are not records: parsed normally
    req = wire.NlMsg(K.SET, 5, 1, 0, b"")
    ack = wire.pack_nlmsg(wire.NLMSG_ERROR, wire.pack_nlmsgerr(0, req), flags=0,
                          count_padding=False)
    assert [m.type for m in wire.iter_record_datagram(ack)] == [wire.NLMSG_ERROR]
