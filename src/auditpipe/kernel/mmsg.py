"""Many netlink datagrams per system call, into one buffer allocated once.

The kernel sends every audit record as a datagram of its own. One ``recv()`` per record costs a
system call, a release and re-take of the GIL and a fresh 64 KiB bytes object each time: at
1,000 exec/s (8,000 records/s) that was most of the reader thread's CPU. ``recvmmsg(2)`` fills
up to ``vlen`` slots of a preallocated buffer in one call. Python's socket module has no
recvmmsg, so it is called through ctypes (which releases the GIL for the call); where libc lacks
it, :class:`RecvInto` reads a datagram per call (recvmsg_into) into one reused buffer.

Both expose the same shape: ``fill()`` returns the sizes of the datagrams now in slots 0, 1, …
(slot ``i`` starts at ``i * slot`` in ``view``); ``[]`` when none is waiting. Errors (ENOBUFS
included) raise :class:`OSError` as ``recv`` would.
"""

from __future__ import annotations

import ctypes
import errno as E
import os
import socket
from collections.abc import Callable

__all__ = ["MMSG_SLOT", "MMSG_VLEN", "RecvInto", "RecvMmsg", "datagram_reader", "libc_recvmmsg"]

#: datagrams per recvmmsg call
MMSG_VLEN = 64
#: bytes per datagram slot: an audit record is at most a few KiB past MAX_AUDIT_MESSAGE_LENGTH
#: (8970); a longer datagram is cut (MSG_TRUNC) and counted in ``truncated``
MMSG_SLOT = 32 << 10
# plain ints: the socket module's are enum members, whose `&` runs Python code per message
_MSG_TRUNC = int(getattr(socket, "MSG_TRUNC", 0x20))
_MSG_DONTWAIT = int(socket.MSG_DONTWAIT)


class _IoVec(ctypes.Structure):
    _fields_ = [("base", ctypes.c_void_p), ("len", ctypes.c_size_t)]


class _MsgHdr(ctypes.Structure):
    _fields_ = [("name", ctypes.c_void_p), ("namelen", ctypes.c_uint32),
                ("iov", ctypes.POINTER(_IoVec)), ("iovlen", ctypes.c_size_t),
                ("control", ctypes.c_void_p), ("controllen", ctypes.c_size_t),
                ("flags", ctypes.c_int)]


class _MMsgHdr(ctypes.Structure):
    _fields_ = [("hdr", _MsgHdr), ("len", ctypes.c_uint)]


class RecvMmsg:
    """recvmmsg(2) on ``sock`` (non-blocking: wait for readability with poll first)."""

    def __init__(self, sock: socket.socket, recvmmsg: Callable[..., int], vlen: int = MMSG_VLEN,
                 slot: int = MMSG_SLOT) -> None:
        self._fd = sock.fileno()
        self._call = recvmmsg
        self.vlen, self.slot = vlen, slot
        self.truncated = 0
        self._data = bytearray(vlen * slot)
        self.view = memoryview(self._data)
        base = ctypes.addressof(ctypes.c_char.from_buffer(self._data))
        self._iov = (_IoVec * vlen)()
        self._hdrs = (_MMsgHdr * vlen)()
        for i in range(vlen):
            self._iov[i].base, self._iov[i].len = base + i * slot, slot
            h = self._hdrs[i].hdr
            h.iov, h.iovlen = ctypes.pointer(self._iov[i]), 1
        self._hdrs_addr = ctypes.addressof(self._hdrs)
        # the kernel writes msg_len and msg_flags of each entry: read them as u32s in place
        words = memoryview(self._hdrs).cast("B").cast("I")
        stride = ctypes.sizeof(_MMsgHdr) // 4
        self._lens = words[_MMsgHdr.len.offset // 4::stride]
        self._flags = words[(_MMsgHdr.hdr.offset + _MsgHdr.flags.offset) // 4::stride]

    def fill(self) -> list[int]:
        n = self._call(self._fd, self._hdrs_addr, self.vlen, _MSG_DONTWAIT, None)
        if n < 0:
            err = ctypes.get_errno()
            if err in (E.EAGAIN, E.EWOULDBLOCK):
                return []
            raise OSError(err, os.strerror(err))
        sizes = self._lens[:n].tolist()
        if n and max(sizes) >= self.slot:  # only a full slot can have been cut
            self.truncated += sum(1 for f in self._flags[:n].tolist() if f & _MSG_TRUNC)
            sizes = [min(s, self.slot) for s in sizes]
        return sizes


class RecvInto:
    """The fallback: one datagram per call into one reused buffer."""

    vlen = 1

    def __init__(self, sock: socket.socket, slot: int = 1 << 16) -> None:
        self._sock = sock
        self.slot = slot
        self.truncated = 0
        self._data = bytearray(slot)
        self.view = memoryview(self._data)

    def fill(self) -> list[int]:
        if self._sock.gettimeout() != 0.0:
            # a socket timeout (left by a request on this socket) would make recv_into wait
            # for data despite MSG_DONTWAIT: Python polls first. Non-blocking it is.
            self._sock.settimeout(0.0)
        try:
            n, _, flags, _ = self._sock.recvmsg_into([self.view], 0, _MSG_DONTWAIT)
        except BlockingIOError:
            return []
        if flags & _MSG_TRUNC:
            self.truncated += 1
        return [n]


def libc_recvmmsg() -> Callable[..., int] | None:
    """libc's recvmmsg (glibc, musl), or None."""
    try:
        fn = ctypes.CDLL(None, use_errno=True).recvmmsg
    except (OSError, AttributeError):
        return None
    fn.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_uint, ctypes.c_int, ctypes.c_void_p]
    fn.restype = ctypes.c_int
    return fn


def datagram_reader(sock: socket.socket) -> RecvMmsg | RecvInto:
    """recvmmsg when libc has it, else recvmsg_into."""
    fn = libc_recvmmsg()
    return RecvMmsg(sock, fn) if fn is not None else RecvInto(sock)
