"""``struct audit_rule_data``: the kernel's binary rule, packed and unpacked.

We emit the form the kernel stores and lists back (``AUDIT_LIST_RULES``), so a compiled rule can
be compared byte for byte with a loaded one:

* "all syscalls" leaves the top ``AUDIT_SYSCALL_CLASSES`` bits of the mask clear. auditctl sends
  them set, but the kernel treats those bits as syscall-class selectors, expands them into the
  (already set) syscall bits and clears them; the listed rule has word 63 = 0x0000ffff.
* the blob is padded to 4 bytes with NULs, as netlink carries it (NLMSG_ALIGN); ``buflen``
  still gives the exact string length.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from typing import NamedTuple

from auditpipe.tables import K

from .names import STRING_FIELDS

NWORDS = K.BITMASK_SIZE
MAX_FIELDS = K.MAX_FIELDS
_HEAD = struct.Struct(f"=3I{NWORDS}I{MAX_FIELDS}I{MAX_FIELDS}I{MAX_FIELDS}II")
HEADER_SIZE = _HEAD.size  # 1040
_CLASS_BITS = ((1 << K.SYSCALL_CLASSES) - 1) << (32 - K.SYSCALL_CLASSES)
MASK_ALL: tuple[int, ...] = (0xFFFFFFFF,) * (NWORDS - 1) + (0xFFFFFFFF & ~_CLASS_BITS,)
MAX_SYSCALL = NWORDS * 32 - K.SYSCALL_CLASSES  # numbers at/above this select syscall classes


class Field(NamedTuple):
    """One rule field. For string fields ``value`` is the string's length and ``text`` the
    bytes; for all others ``text`` is None and ``value`` the u32."""

    field: int
    op: int
    value: int
    text: bytes | None = None


@dataclass
class RuleData:
    flags: int  # filter list, | AUDIT_FILTER_PREPEND for -A
    action: int
    mask: list[int] = field(default_factory=lambda: [0] * NWORDS)
    fields: list[Field] = field(default_factory=list)

    @property
    def list(self) -> int:
        return self.flags & K.FILTER_MASK

    def set_all_syscalls(self) -> None:
        self.mask[:] = MASK_ALL

    def add_syscall(self, nr: int) -> None:
        self.mask[nr // 32] |= 1 << (nr % 32)

    def all_syscalls(self) -> bool:
        """What `auditctl -l` calls "-S all": every word but the class word is full."""
        return all(w == 0xFFFFFFFF for w in self.mask[:NWORDS - 1])

    def syscalls(self) -> list[int]:
        return [w * 32 + b for w, word in enumerate(self.mask) if word
                for b in range(32) if word >> b & 1]

    def to_bytes(self) -> bytes:
        n = len(self.fields)
        if n > MAX_FIELDS:
            raise ValueError(f"{n} fields; the kernel takes at most {MAX_FIELDS}")
        pad = [0] * (MAX_FIELDS - n)
        buf = b"".join(f.text for f in self.fields if f.text is not None)
        head = _HEAD.pack(self.flags, self.action, n, *self.mask,
                          *[f.field for f in self.fields], *pad,
                          *[len(f.text) if f.text is not None else f.value & 0xFFFFFFFF
                            for f in self.fields], *pad,
                          *[f.op for f in self.fields], *pad, len(buf))
        return head + buf + b"\0" * (-len(buf) % 4)

    @classmethod
    def from_bytes(cls, blob: bytes) -> RuleData:
        if len(blob) < HEADER_SIZE:
            raise ValueError(f"audit_rule_data too short: {len(blob)} < {HEADER_SIZE} bytes")
        v = _HEAD.unpack_from(blob, 0)
        flags, action, n = v[0], v[1], v[2]
        if n > MAX_FIELDS:
            raise ValueError(f"audit_rule_data claims {n} fields (max {MAX_FIELDS})")
        o = 3 + NWORDS
        nums, vals, ops = v[o:o + n], v[o + MAX_FIELDS:o + MAX_FIELDS + n], \
            v[o + 2 * MAX_FIELDS:o + 2 * MAX_FIELDS + n]
        buflen = v[-1]
        buf = blob[HEADER_SIZE:HEADER_SIZE + buflen]
        if len(buf) < buflen:
            raise ValueError(f"audit_rule_data buf truncated: {len(buf)} < {buflen} bytes")
        fields, off = [], 0
        for num, val, op in zip(nums, vals, ops, strict=True):
            if (num & ~K.OPERATORS) in STRING_FIELDS:  # legacy: op bits in fields[]
                text = bytes(buf[off:off + val])
                if len(text) < val:
                    raise ValueError(f"string field {num} runs past buflen")
                off += val
                fields.append(Field(num, op, val, text))
            else:
                fields.append(Field(num, op, val))
        return cls(flags, action, list(v[3:3 + NWORDS]), fields)
