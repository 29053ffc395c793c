#!/usr/bin/env python3
"""Which syscalls and record types in some audit logs have no specific normalization?

    scripts/check_normalizations.py /var/log/audit/audit.log ../shared/corpus/bench.log.gz

Prints each syscall (per arch) and record type found, with its count and the action our table
gives it; exits 1 if any has none, so it can guard a new corpus or a table edit. With no
arguments it checks the table alone (ECS values, duplicates: what loading it checks) and lists
record types of the generated tables that it does not cover.
"""

from __future__ import annotations

import collections
import gzip
import re
import sys

from auditpipe import tables
from auditpipe.normalize.ecs_table import DEFAULT_SYSCALL_NORM, RECORD_NORMS, SYSCALL_NORMS

_TYPE = re.compile(rb"^(?:node=\S+ )?type=([A-Z_0-9\[\]]+) ", re.M)
_SYSCALL = re.compile(rb"^(?:node=\S+ )?type=SYSCALL .*? arch=([0-9a-f]+) syscall=(\d+) ", re.M)


def scan(paths):
    types, syscalls = collections.Counter(), collections.Counter()
    for path in paths:
        with open(path, "rb") as f:
            data = f.read()
        if data[:2] == b"\x1f\x8b":
            data = gzip.decompress(data)
        types.update(m.decode() for m in _TYPE.findall(data))
        for arch, num in _SYSCALL.findall(data):
            arch_name = tables.ARCH_NAMES.get(int(arch, 16), arch.decode())
            syscalls[(arch_name, tables.syscall_name(int(arch, 16), int(num)) or num.decode())] += 1
    return types, syscalls


def main(argv) -> int:
    if not argv:
        missing = [n for k, n in sorted(tables.RECORD_TYPE_NAMES.items())
                   if n not in RECORD_NORMS and n != "SYSCALL" and not (1000 <= k < 1100 and n not in ("USER", "LOGIN"))]
        print(f"table: {len(SYSCALL_NORMS)} syscalls, {len(RECORD_NORMS)} record types")
        print("record types without an entry:", ", ".join(missing) or "none")
        return 1 if missing else 0
    types, syscalls = scan(argv)
    bad = 0
    for (arch, name), n in sorted(syscalls.items(), key=lambda kv: -kv[1]):
        norm = SYSCALL_NORMS.get(name, DEFAULT_SYSCALL_NORM)
        bad += norm is DEFAULT_SYSCALL_NORM
        print(f"{n:9}  syscall {arch}/{name:24} {norm.action or '-- no action --'}")
    for t, n in sorted(types.items(), key=lambda kv: -kv[1]):
        if t == "SYSCALL":
            continue
        variants = RECORD_NORMS.get(t)
        bad += variants is None
        actions = " | ".join(v.action for v in variants) if variants else "-- no action --"
        print(f"{n:9}  record  {t:32} {actions}")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
