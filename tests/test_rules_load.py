"""`auditpipe rules load`: all-or-nothing by default, -c loads the valid lines (real kernel),
and a locked kernel (immutable mode, faked: never set enabled=2 on a test host) is reported once
with the rules written for the next boot."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from auditpipe.cli import rules_cmd
from auditpipe.kernel.immutable import kernel_locked, write_pending
from auditpipe.kernel.rules import format_rule
from conftest_kernel import audit_state  # noqa: F401
from test_rules_kernel import auditpipe

MIXED = """\
-a always,exit -F arch=b64 -S uname -F key=auditpipe-cont
-a always,exit -F arch=b64 -S nosuchcall -F key=auditpipe-cont
-a always,exit -F arch=b64 -S sethostname -F key=auditpipe-cont
"""


@pytest.mark.kernel
def test_continue_loads_every_valid_line(tmp_path, audit_state):  # noqa: F811
    f = tmp_path / "mixed.rules"
    f.write_text(MIXED)
    plain = auditpipe("rules", "load", str(f))
    assert plain.returncode == 1 and "nothing loaded" in plain.stderr
    cont = auditpipe("rules", "load", "-c", str(f))
    assert cont.returncode == 1, cont.stderr
    assert f"{f}:2: unknown syscall 'nosuchcall'" in cont.stderr
    assert "loaded 2 rule(s), 1 invalid line(s) skipped" in cont.stdout
    listed = [format_rule(b) for b in audit_state.list_rules()]
    assert listed == ["-a always,exit -F arch=b64 -S uname -F key=auditpipe-cont",
                      "-a always,exit -F arch=b64 -S sethostname -F key=auditpipe-cont"]


class _LockedKernel:
    """Answers like a kernel in immutable mode: status says enabled=2, every change EPERM."""

    def __init__(self) -> None:
        self.changes = 0

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return None

    def get_status(self):
        return {"enabled": 2, "pid": 0, "failure": 1}

    def _refuse(self, *a, **k):
        self.changes += 1
        raise AssertionError("a locked kernel must not be asked to change")

    delete_all_rules = add_rule = delete_rule = set_status = _refuse


def test_locked_kernel_is_reported_once_and_rules_are_pending(tmp_path, monkeypatch):
    fake = _LockedKernel()
    monkeypatch.setattr(rules_cmd, "_netlink", lambda: fake)
    f = tmp_path / "r.rules"
    f.write_text("-a always,exit -F arch=b64 -S uname -k a\n-w /etc/shadow -p wa -k b\n")
    pending = tmp_path / "rules.d" / "99-auditpipe-pending.rules"
    res = CliRunner().invoke(rules_cmd.rules, ["load", "--pending-path", str(pending), str(f)])
    assert res.exit_code == 1
    assert res.output.count("locked (enabled=2") == 1
    assert f"pending: 2 line(s) written to {pending}" in res.output
    lines = pending.read_text().splitlines()
    assert lines[-2:] == ["-a always,exit -F arch=b64 -S uname -k a",
                          "-w /etc/shadow -p wa -k b"]
    assert fake.changes == 0


def test_kernel_locked_and_write_pending(tmp_path):
    assert kernel_locked({"enabled": 2}) and not kernel_locked({"enabled": 1})
    assert not kernel_locked({})
    dest = write_pending(["-e 2"], tmp_path / "x.rules", "a.rules")
    assert dest.read_text().endswith("## From: a.rules\n-e 2\n")
    assert oct(dest.stat().st_mode & 0o777) == "0o640"
