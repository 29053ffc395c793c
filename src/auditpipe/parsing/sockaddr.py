"""SOCKADDR `saddr` (hex of the raw `struct sockaddr`) → a small dict.

Families: inet, inet6, unix (path, abstract when the path starts with NUL), netlink; anything
else is `{"family": "unknown", "family_num": N}`. The hex itself stays in the record's fields.
"""

from __future__ import annotations

import ipaddress
import struct

__all__ = ["decode_sockaddr"]

_AF_UNIX, _AF_INET, _AF_INET6, _AF_NETLINK = 1, 2, 10, 16


def decode_sockaddr(hexstr: str) -> dict:
    try:
        raw = bytes.fromhex(hexstr)
    except ValueError:
        return {"family": "invalid"}
    if len(raw) < 2:
        return {"family": "invalid"}
    fam = int.from_bytes(raw[:2], "little")  # sa_family is host order; audit runs on the host
    if fam == _AF_INET and len(raw) >= 8:
        return {"family": "inet", "addr": str(ipaddress.IPv4Address(raw[4:8])),
                "port": struct.unpack(">H", raw[2:4])[0]}
    if fam == _AF_INET6 and len(raw) >= 24:
        out = {"family": "inet6", "addr": str(ipaddress.IPv6Address(raw[8:24])),
               "port": struct.unpack(">H", raw[2:4])[0]}
        flow, = struct.unpack(">I", raw[4:8])
        if flow:
            out["flowinfo"] = flow
        if len(raw) >= 28:
            scope, = struct.unpack("<I", raw[24:28])
            if scope:
                out["scope_id"] = scope
        return out
    if fam == _AF_UNIX:
        path = raw[2:]
        if path[:1] == b"\0":
            name = path[1:].rstrip(b"\0")
            return {"family": "unix", "path": "@" + name.decode("utf-8", "surrogateescape"), "abstract": True}
        return {"family": "unix", "path": path.split(b"\0", 1)[0].decode("utf-8", "surrogateescape")}
    if fam == _AF_NETLINK and len(raw) >= 12:
        pid, groups = struct.unpack("<II", raw[4:12])
        return {"family": "netlink", "pid": pid, "groups": groups}
    return {"family": "unknown", "family_num": fam}
