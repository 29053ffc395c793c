"""Real kernel: lines of the kind audit-userspace's current rule files hold that Debian 12's
tables did not know (syscalls added after Linux 6.1, fstype names, io_uring ops by name) load
through `auditpipe rules load`; the kernel stores exactly our compiled rules, and where
auditctl 3.0.9 knows the names it lists them as we do."""

from __future__ import annotations

import subprocess

import pytest

from auditpipe.kernel.rules import RuleData, compile_rules, format_rule
from conftest_kernel import audit_state, require_auditctl  # noqa: F401
from test_rules_kernel import auditpipe

pytestmark = pytest.mark.kernel

# every rule narrowed to a login uid no test process has and keyed, so nothing else is affected
CURRENT = """\
-a always,exit -F arch=b64 -S lsm_set_self_attr -F auid=4243 -F key=auditpipe-current
-a always,exit -F arch=b64 -S file_getattr,file_setattr -F auid=4243 -F key=auditpipe-current
-a always,exit -F arch=b32 -S lsm_set_self_attr -F auid=4243 -F key=auditpipe-current
-a always,io_uring -S connect,openat,openat2 -F auid=4243 -F key=auditpipe-current
-a never,filesystem -F fstype=debugfs -F key=auditpipe-current
-a never,filesystem -F fstype=tracefs -F key=auditpipe-current
"""


def _unflagged(blob: bytes) -> bytes:
    r = RuleData.from_bytes(blob)
    return RuleData(r.list, r.action, list(r.mask), list(r.fields)).to_bytes()


def test_current_rules_load_and_list(tmp_path, audit_state):  # noqa: F811
    f = tmp_path / "current.rules"
    f.write_text(CURRENT)
    done = auditpipe("rules", "load", str(f))
    assert done.returncode == 0, done.stderr
    loaded = audit_state.list_rules()
    items = compile_rules(CURRENT, str(f), machine="x86_64")
    assert sorted(_unflagged(b) for b in loaded) == sorted(it.data for it in items)
    ours = sorted(format_rule(b, "x86_64") for b in loaded)
    assert ours == sorted(it.text for it in items)
    listed = subprocess.run([require_auditctl(), "-l"], capture_output=True, text=True,
                            check=True).stdout.splitlines()
    # auditctl 3.0.9 knows fstype names, not the syscalls added after its release (it prints
    # "-S 460") nor the io_uring list ("always,(null)"): there the kernel's blobs above decide
    fs = [line for line in listed if ",filesystem" in line]
    assert sorted(fs) == sorted(line for line in ours if ",filesystem" in line)
