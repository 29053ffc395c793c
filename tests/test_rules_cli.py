"""`auditpipe rules check` (no kernel needed): every problem as FILE:LINE: MESSAGE, exit 1."""

from __future__ import annotations

import os

from click.testing import CliRunner

from auditpipe.cli.rules_cmd import rules


def test_check_ok(tmp_path):
    f = tmp_path / "ok.rules"
    f.write_text("-D\n-b 8192\n# comment\n\n-a always,exit -F arch=b64 -S execve -k x\n"
                 "-w /etc/passwd -p wa -k identity\n")
    res = CliRunner().invoke(rules, ["check", str(f)])
    assert res.exit_code == 0, res.output
    assert "1 file(s) OK: 2 rule(s), 2 control line(s)" in res.output


def test_check_reports_every_problem_and_warnings(tmp_path):
    f = tmp_path / "bad.rules"
    f.write_text("-a always,exit -S nosuch\n-w relative\n-a always,exit -S open\n")
    g = tmp_path / "more.rules"
    g.write_text("-e 7\n")
    res = CliRunner().invoke(rules, ["check", str(f), str(g)])
    assert res.exit_code == 1
    lines = res.output.splitlines()
    machine = os.uname().machine
    assert f"{f}:1: unknown syscall 'nosuch' for arch {machine}" in lines
    assert f"{f}:2: the watch path must start with '/': relative" in lines
    assert f"{g}:1: -e must be 0, 1 or 2, was '7'" in lines
    assert any(line.startswith(f"{f}:3: warning: 32/64 bit syscall mismatch") for line in lines)
    assert "3 error(s) in 2 file(s)" in lines


def test_load_with_errors_touches_nothing(tmp_path, monkeypatch):
    import auditpipe.kernel.netlink as nl

    def boom(*a, **k):
        raise AssertionError("the kernel must not be contacted")

    monkeypatch.setattr(nl, "AuditNetlink", boom)
    f = tmp_path / "bad.rules"
    f.write_text("-a always,exit -F arch=b64 -S execve -k ok\n-a always,exit -F bogus=1\n")
    res = CliRunner().invoke(rules, ["load", str(f)])
    assert res.exit_code == 1
    assert f"{f}:2: -F unknown field: bogus" in res.output
    assert "nothing loaded" in res.output
