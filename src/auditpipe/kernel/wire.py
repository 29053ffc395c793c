"""Sans-I/O encoding of the audit netlink protocol: nlmsghdr framing, ACK/error payloads,
``struct audit_status`` and ``struct audit_features``.

Kept apart from :mod:`auditpipe.kernel.netlink` so every byte layout is unit-tested without root
or a socket. All structs are native-endian ``__u32`` arrays, as the kernel reads them.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from typing import NamedTuple

from auditpipe.tables import K

# linux/netlink.h (not audit facts, so not in auditpipe.tables): the netlink ABI is frozen.
NETLINK_AUDIT = 9
NLMSG_NOOP = 1
NLMSG_ERROR = 2
NLMSG_DONE = 3
NLMSG_OVERRUN = 4
NLM_F_REQUEST = 0x01
NLM_F_MULTI = 0x02
NLM_F_ACK = 0x04

_NLMSGHDR = struct.Struct("=IHHII")  # len, type, flags, seq, pid
NLMSG_HDRLEN = _NLMSGHDR.size  # 16, already 4-aligned
_U32 = struct.Struct("=I")
_I32 = struct.Struct("=i")


def nlmsg_align(n: int) -> int:
    """Round up to the 4-byte netlink alignment (NLMSG_ALIGN)."""
    return (n + 3) & ~3


class NlMsg(NamedTuple):
    type: int
    flags: int
    seq: int
    pid: int
    payload: bytes


def pack_nlmsg(msg_type: int, payload: bytes = b"", *, flags: int = NLM_F_REQUEST | NLM_F_ACK,
               seq: int = 0, pid: int = 0, count_padding: bool = True) -> bytes:
    """One netlink message. Like libaudit, nlmsg_len counts the padding (NLMSG_SPACE), so the
    kernel sees the payload rounded up to 4 bytes; the kernel's own messages do not
    (``count_padding=False``, NLMSG_LENGTH)."""
    padded = payload + b"\0" * (nlmsg_align(len(payload)) - len(payload))
    length = NLMSG_HDRLEN + (len(padded) if count_padding else len(payload))
    return _NLMSGHDR.pack(length, msg_type, flags, seq, pid) + padded


def iter_nlmsgs(buf: bytes) -> Iterator[NlMsg]:
    """Split one datagram into messages.

    A length that overruns the datagram is clamped to it rather than dropping the data: the
    kernel's audit messages are one per datagram, and a bad length must not lose a record."""
    off, end = 0, len(buf)
    while end - off >= NLMSG_HDRLEN:
        length, mtype, flags, seq, pid = _NLMSGHDR.unpack_from(buf, off)
        if length < NLMSG_HDRLEN or off + length > end:
            length = end - off
        yield NlMsg(mtype, flags, seq, pid, bytes(buf[off + NLMSG_HDRLEN:off + length]))
        off += nlmsg_align(length)


def iter_record_datagram(buf: bytes) -> Iterator[NlMsg]:
    """Messages of one datagram read from a receiving (daemon/multicast) socket.

    The kernel sets nlmsg_len of unicast audit records to the *payload* length (audit_log_end(),
    kept for old auditd); multicast copies get the real length. Records come one per datagram,
    so a length that is exactly the datagram minus the header means the quirk: the payload is
    the rest of the datagram."""
    if len(buf) >= NLMSG_HDRLEN:
        length, mtype, flags, seq, pid = _NLMSGHDR.unpack_from(buf, 0)
        if (length == len(buf) - NLMSG_HDRLEN and length >= NLMSG_HDRLEN
                and K.FIRST_USER_MSG <= mtype <= K.LAST_USER_MSG2):
            yield NlMsg(mtype, flags, seq, pid, bytes(buf[NLMSG_HDRLEN:]))
            return
    yield from iter_nlmsgs(buf)


def unpack_nlmsgerr(payload: bytes) -> tuple[int, NlMsg | None]:
    """NLMSG_ERROR payload -> (positive errno or 0 for an ACK, echoed request header)."""
    if len(payload) < 4:
        raise ValueError(f"NLMSG_ERROR payload too short ({len(payload)} bytes)")
    (err,) = _I32.unpack_from(payload, 0)
    req = None
    if len(payload) >= 4 + NLMSG_HDRLEN:
        length, mtype, flags, seq, pid = _NLMSGHDR.unpack_from(payload, 4)
        req = NlMsg(mtype, flags, seq, pid, b"")
    return -err, req


def pack_nlmsgerr(errno: int, request: NlMsg) -> bytes:
    """NLMSG_ERROR payload as the kernel builds it (for tests and fakes)."""
    return _I32.pack(-errno) + _NLMSGHDR.pack(NLMSG_HDRLEN, request.type, request.flags,
                                              request.seq, request.pid)


# struct audit_status, in kernel order. Older kernels send a prefix of it: the reply is parsed
# by its length and missing trailing fields are left out of the dict.
STATUS_FIELDS = ("mask", "enabled", "failure", "pid", "rate_limit", "backlog_limit", "lost",
                 "backlog", "feature_bitmap", "backlog_wait_time", "backlog_wait_time_actual")
STATUS_SIZE = 4 * len(STATUS_FIELDS)

#: settable status field -> its AUDIT_STATUS_* mask bit
STATUS_MASK_BITS = {
    "enabled": K.STATUS_ENABLED,
    "failure": K.STATUS_FAILURE,
    "pid": K.STATUS_PID,
    "rate_limit": K.STATUS_RATE_LIMIT,
    "backlog_limit": K.STATUS_BACKLOG_LIMIT,
    "backlog_wait_time": K.STATUS_BACKLOG_WAIT_TIME,
    "lost": K.STATUS_LOST,  # reset: the kernel ignores the value
    "backlog_wait_time_actual": K.STATUS_BACKLOG_WAIT_TIME_ACTUAL,  # reset
}


def unpack_status(payload: bytes) -> dict[str, int]:
    """``struct audit_status`` -> dict of the fields present (without ``mask``)."""
    n = min(len(payload) // 4, len(STATUS_FIELDS))
    if n < 8:  # mask..backlog exist since 2.6
        raise ValueError(f"audit_status reply too short ({len(payload)} bytes)")
    values = struct.unpack_from(f"={n}I", payload, 0)
    return dict(zip(STATUS_FIELDS[1:n], values[1:], strict=False))


def pack_status(**fields: int) -> bytes:
    """AUDIT_SET payload: the given fields with their mask bits set, all others zero."""
    unknown = set(fields) - set(STATUS_MASK_BITS)
    if unknown:
        raise ValueError(f"not settable audit status field(s): {', '.join(sorted(unknown))}; "
                         f"settable: {', '.join(STATUS_MASK_BITS)}")
    values = dict.fromkeys(STATUS_FIELDS, 0)
    for name, value in fields.items():
        if not 0 <= int(value) <= 0xFFFFFFFF:
            raise ValueError(f"audit status {name}={value} is not a u32")
        values["mask"] |= STATUS_MASK_BITS[name]
        values[name] = int(value)
    return struct.pack(f"={len(STATUS_FIELDS)}I", *(values[f] for f in STATUS_FIELDS))


# struct audit_features { vers, mask, features, lock }
_FEATURES = struct.Struct("=4I")
FEATURE_NAMES = {
    "only_unset_loginuid": K.FEATURE_ONLY_UNSET_LOGINUID,
    "loginuid_immutable": K.FEATURE_LOGINUID_IMMUTABLE,
}


def feature_bit(feature: int | str) -> int:
    """AUDIT_FEATURE_TO_MASK for a feature number or name ("loginuid_immutable")."""
    num = FEATURE_NAMES[feature] if isinstance(feature, str) else feature
    return 1 << (num & 31)


def pack_features(feature: int | str, value: bool, lock: bool) -> bytes:
    """AUDIT_SET_FEATURE payload for one feature, as libaudit's audit_set_feature() sends it."""
    bit = feature_bit(feature)
    return _FEATURES.pack(K.FEATURE_VERSION, bit, bit if value else 0, bit if lock else 0)


def unpack_features(payload: bytes) -> dict[str, dict[str, bool] | int]:
    """AUDIT_GET_FEATURE reply -> {"vers": n, name: {"enabled": b, "locked": b}, ...}."""
    vers, mask, features, lock = _FEATURES.unpack_from(payload, 0)
    out: dict[str, dict[str, bool] | int] = {"vers": vers}
    for name, num in FEATURE_NAMES.items():
        bit = 1 << num
        if mask & bit:
            out[name] = {"enabled": bool(features & bit), "locked": bool(lock & bit)}
    return out


def u32(payload: bytes) -> int:
    """First native u32 of a payload (AUDIT_REPLACE carries a pid)."""
    return _U32.unpack_from(payload, 0)[0]
