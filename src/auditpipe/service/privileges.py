"""Dropping privileges after start-up: once the audit socket is bound, rules are installed and
files are open, the collector keeps only the capabilities it still uses.

Linux capabilities through ``capset(2)`` and ``prctl(2)`` via ctypes (no extra package): the
bounding set loses everything not kept (so no later execve can regain it), the ambient set is
cleared, and the effective/permitted/inheritable sets become exactly ``keep``.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
from collections.abc import Iterable

from auditpipe.tables import CAPABILITIES

#: what `run` still needs: the audit socket (control, read the multicast group), reading
#: files and /proc entries of other users (process table, tailed logs), /proc/PID/exe links
RUN_KEEPS = ("CAP_AUDIT_CONTROL", "CAP_AUDIT_READ", "CAP_DAC_READ_SEARCH", "CAP_SYS_PTRACE")

_CAP_VERSION_3 = 0x20080522
_PR_CAPBSET_DROP = 24
_PR_SET_NO_NEW_PRIVS = 38
_PR_CAP_AMBIENT = 47
_PR_CAP_AMBIENT_CLEAR_ALL = 4
_CAP_NUMBERS = {name: num for num, name in CAPABILITIES.items()}


class _Header(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _Data(ctypes.Structure):
    _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32),
                ("inheritable", ctypes.c_uint32)]


def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)


def _check(rc: int, what: str) -> None:
    if rc != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


def cap_numbers(names: Iterable[str]) -> set[int]:
    """Capability names ("CAP_AUDIT_READ" or "audit_read") -> numbers; unknown names raise."""
    out = set()
    for name in names:
        key = name.upper() if name.upper().startswith("CAP_") else "CAP_" + name.upper()
        if key not in _CAP_NUMBERS:
            raise ValueError(f"unknown capability {name!r}")
        out.add(_CAP_NUMBERS[key])
    return out


def last_cap() -> int:
    """The running kernel's highest capability number (may exceed our headers' table)."""
    try:
        with open("/proc/sys/kernel/cap_last_cap") as f:
            return int(f.read())
    except OSError:
        return max(CAPABILITIES)


def drop_privileges(keep: Iterable[str] = RUN_KEEPS, no_new_privs: bool = True) -> int:
    """Keep only ``keep`` in every capability set of this process (all its threads' future
    children included); returns the kept mask. Raises OSError when the kernel refuses."""
    kept = cap_numbers(keep)
    libc = _libc()
    for cap in range(last_cap() + 1):
        if cap not in kept:  # needs CAP_SETPCAP, so before capset() below drops it
            rc = libc.prctl(_PR_CAPBSET_DROP, cap, 0, 0, 0)
            if rc != 0 and ctypes.get_errno() != 22:  # EINVAL: not a capability here
                _check(rc, f"prctl(PR_CAPBSET_DROP, {cap})")
    _check(libc.prctl(_PR_CAP_AMBIENT, _PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0),
           "prctl(PR_CAP_AMBIENT_CLEAR_ALL)")
    mask = sum(1 << c for c in kept)
    data = (_Data * 2)()
    for i in range(2):
        word = (mask >> (32 * i)) & 0xFFFFFFFF
        data[i].effective = data[i].permitted = word
        data[i].inheritable = 0
    _check(libc.capset(ctypes.byref(_Header(_CAP_VERSION_3, 0)), data), "capset")
    if no_new_privs:
        _check(libc.prctl(_PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "prctl(PR_SET_NO_NEW_PRIVS)")
    return mask
