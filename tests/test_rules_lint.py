"""Rules lint: per-arch syscalls, duplicates, shadowed rules, -S all, lines after -e 2; the CLI
prints file:line findings; a rule written for aarch64 loads into this kernel and lists as
auditctl lists it (real kernel)."""

from __future__ import annotations

import subprocess

import pytest
from click.testing import CliRunner

from auditpipe.cli.rules_cmd import rules
from auditpipe.kernel.rules import format_rule
from auditpipe.kernel.rules.lint import Finding, lint, named_arches
from conftest import SHARED
from conftest_kernel import audit_state, require_auditctl  # noqa: F401
from test_rules_kernel import auditpipe

SET = """\
-D
-a always,exit -F arch=b64 -S open,openat -F auid>=1000 -k files
-a never,exit -F arch=b64 -S chmod
-a always,exit -F arch=b64 -S chmod -F auid>=1000 -k perm
-a always,exit -F arch=b64 -S open,openat -F auid>=1000 -k files
-a always,exit -F arch=b64 -S truncate -F auid>=1000 -F success=0 -k failed
-a always,exit -F arch=b64 -S truncate -F auid>=1000 -F success=0 -F exit=-EPERM -k other
-a always,exit -F arch=b64 -S fchmod -F auid>=1000 -k perm
-a always,exit -S all -k everything
-w /etc/passwd -p wa -k id
-w /etc/passwd -p wa -k id2
-e 2
-w /etc/shadow -p wa -k id
"""


def by_line(findings: list[Finding]) -> dict[int, list[str]]:
    out: dict[int, list[str]] = {}
    for f in findings:
        out.setdefault(f.line, []).append(f"{f.severity}: {f.message}")
    return out


def test_lint_findings_on_x86_64_and_aarch64():
    got = by_line(lint([("s.rules", SET)], ["aarch64"], machine="x86_64"))
    assert got[2] == ["error: on aarch64: unknown syscall 'open' for arch aarch64"]
    assert got[3] == ["error: on aarch64: unknown syscall 'chmod' for arch aarch64"]
    assert "warning: can never match: s.rules:3 catches every event it would; its 'never' " \
           "rule drops them" in got[4]
    assert "error: duplicate of s.rules:2: the kernel refuses the second copy" in got[5]
    assert got[7] == ["warning: can never match: s.rules:6 catches every event it would; it "
                      "matches first, so the events carry its key"]
    assert 8 not in got  # fchmod: not caught by the chmod 'never' rule, exists on aarch64
    assert got[9] == ["warning: audits every syscall (-S all without a filter): a log flood; "
                      "add -F filters (auid, exe, path, success, ...)"]
    assert 10 not in got and 11 not in got  # watches: not ordered with syscall rules
    assert got[13] == ["error: after -e 2 (s.rules:12): the kernel is locked by then and "
                       "refuses this line"]
    assert 6 not in got and 1 not in got and 12 not in got


def test_without_arch_only_the_host_is_checked_unless_a_file_names_one():
    assert not any(f.message.startswith("on ") for f in lint([("s.rules", SET)], machine="x86_64"))
    text = "-a always,exit -F arch=aarch64 -S openat -k ok\n-a always,exit -F arch=b64 -S open -k x\n"
    assert named_arches(text) == ["aarch64"]
    got = by_line(lint([("n.rules", text)], machine="x86_64"))
    assert got == {2: ["error: on aarch64: unknown syscall 'open' for arch aarch64"]}


def test_check_cli_arch_option(tmp_path):
    f = tmp_path / "s.rules"
    f.write_text(SET)
    res = CliRunner().invoke(rules, ["check", "--arch", "aarch64", str(f)])
    assert res.exit_code == 1
    assert f"{f}:2: error: on aarch64: unknown syscall 'open' for arch aarch64" in res.output
    assert f"{f}:9: warning: audits every syscall" in res.output
    ok = tmp_path / "ok.rules"
    ok.write_text("-a always,exit -F arch=b64 -S openat -k a\n-a always,exit -S all -k b\n")
    res = CliRunner().invoke(rules, ["check", "--arch", "aarch64", str(ok)])
    assert res.exit_code == 0, res.output
    assert "1 file(s) OK: 2 rule(s), 0 control line(s), 1 warning(s)" in res.output


def test_real_rule_files_shadowing_found():
    """audit-userspace's 42-injection.rules (as go-libaudit ships it): the plain ptrace rule
    comes first, so the injection rules' keys never appear."""
    src = SHARED / "conformance" / "go-libaudit" / "rule" / "testdata" / "42-injection.rules"
    got = by_line(lint([(src.name, src.read_text())], machine="x86_64"))
    assert sorted(got) == [8, 10, 12]
    assert all("42-injection.rules:6 catches" in m for msgs in got.values() for m in msgs)


@pytest.mark.kernel
def test_rule_for_another_arch_loads_and_lists_like_auditctl(tmp_path, audit_state):  # noqa: F811
    f = tmp_path / "arm.rules"
    f.write_text("-a always,exit -F arch=aarch64 -S openat,fchmodat -F auid=4242 "
                 "-F key=auditpipe-lint\n")
    assert auditpipe("rules", "check", str(f)).returncode == 0
    done = auditpipe("rules", "load", str(f))
    assert done.returncode == 0, done.stderr
    theirs = subprocess.run([require_auditctl(), "-l"], capture_output=True, text=True,
                            check=True).stdout.strip()
    ours = [format_rule(b) for b in audit_state.list_rules()]
    # by number: fchmodat is 53 and openat 56 on aarch64
    assert ours == [theirs] == ["-a always,exit -F arch=b64 -S fchmodat,openat -F auid=4242 "
                                "-F key=auditpipe-lint"]
