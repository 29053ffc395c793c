"""Real kernel: `auditpipe rules load FILE` leaves the kernel listing exactly what
`auditctl -R FILE` leaves (compared with `auditctl -l`), for every go-libaudit rules file; our
compiled bytes equal what the kernel stores; our `auditctl -l` text equals auditctl's.

Paths are rewritten under a temporary directory and created there (files, or directories when
written with a trailing '/'), as go-libaudit's generator did, so the result does not depend on
this host's /etc. The ``audit_state`` fixture restores rules and status afterwards.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from auditpipe.kernel.rules import RuleData, compile_rules, format_rule
from conftest_kernel import RULES_DIR, audit_state, require_auditctl  # noqa: F401
from test_rules_parser import LISTING, WATCHDIR

pytestmark = pytest.mark.kernel
_PATH_VALUES = re.compile(r"""(-w ["']?|dir=|path=)(/[^\s"']*)""")


def auditctl(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run([require_auditctl(), *args], capture_output=True, text=True,
                          check=check)


def auditpipe(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "auditpipe", *args], capture_output=True,
                          text=True)


def rewrite_into(text: str, root: Path) -> str:
    """Move every watched path under ``root`` and create it (dir when it ends with '/')."""
    def sub(m: re.Match) -> str:
        path = m.group(2)
        real = root / path.lstrip("/")
        if path.endswith("/"):
            real.mkdir(parents=True, exist_ok=True)
        else:
            real.parent.mkdir(parents=True, exist_ok=True)
            real.touch()
        return m.group(1) + str(root) + path
    return "\n".join(line if line.lstrip().startswith("#") else _PATH_VALUES.sub(sub, line)
                     for line in text.splitlines()) + "\n"


def rules_files() -> list[Path]:
    return sorted(RULES_DIR.glob("*.rules")) if RULES_DIR.is_dir() else []


@pytest.mark.parametrize("src", rules_files(), ids=lambda p: p.name)
def test_load_lists_like_auditctl(src, tmp_path, audit_state):  # noqa: F811
    text = rewrite_into(src.read_text(), tmp_path / "audit-test")
    rules = tmp_path / src.name
    rules.write_text(text)

    done = auditpipe("rules", "load", str(rules))
    assert done.returncode == 0, done.stderr
    ours = auditctl("-l").stdout
    listed = auditpipe("rules", "list")
    assert listed.returncode == 0 and listed.stdout == ours, listed.stderr
    same = auditpipe("rules", "diff", str(rules))
    assert same.returncode == 0, same.stdout + same.stderr

    auditctl("-D")
    if "'" in text or '"' in text:
        # auditctl -R splits on blanks only and rejects '"/folder' ("The path must start with
        # '/'"); go-libaudit ran auditctl with argv instead. Do the same for the reference.
        for line in text.splitlines():
            if line.strip() and not line.lstrip().startswith("#"):
                auditctl(*shlex.split(line))
    else:
        ref = auditctl("-R", str(rules), check=False)
        assert ref.returncode == 0, ref.stderr
    theirs = auditctl("-l").stdout
    assert ours == theirs
    assert ours.strip() != "No rules"


def test_compiled_bytes_are_what_the_kernel_stores_and_lists(audit_state):  # noqa: F811
    """Each LISTING rule loaded by auditctl: the kernel's blob equals our compiled blob (up to
    the -A flag the kernel does not report) and both auditctl and we print the expected line."""
    os.makedirs(WATCHDIR, exist_ok=True)
    nl = audit_state
    try:
        for line, expected in LISTING:
            (item,) = compile_rules(line, machine=os.uname().machine)
            nl.delete_all_rules()
            auditctl(*shlex.split(line))
            (blob,) = nl.list_rules()
            ours = RuleData.from_bytes(item.data)
            ours.flags &= ~0x10  # AUDIT_FILTER_PREPEND: applied, not stored
            assert RuleData.from_bytes(blob) == ours, line
            assert format_rule(blob) == (expected or line)
            assert auditctl("-l").stdout.strip() == (expected or line)
    finally:
        nl.delete_all_rules()
        os.rmdir(WATCHDIR)


DUP = """\
-a always,exit -F arch=b64 -S execve -F key=auditpipe-dup
-a always,exit -F arch=b64 -S execve -F key=auditpipe-dup
-a always,exit -F arch=b64 -S uname -F key=auditpipe-after
"""


def test_load_reports_kernel_refusals_with_file_and_line(tmp_path, audit_state):  # noqa: F811
    f = tmp_path / "dup.rules"
    f.write_text(DUP)
    done = auditpipe("rules", "load", str(f))
    assert done.returncode == 1
    assert f"{f}:2: add rule: the rule is already loaded" in done.stderr
    assert len(audit_state.list_rules()) == 2  # continued after the refusal

    strict = auditpipe("rules", "load", "--strict", str(f))
    assert strict.returncode == 1 and "stopped after 1 rule(s)" in strict.stderr
    assert len(audit_state.list_rules()) == 1


def test_load_applies_control_lines_and_diff_shows_changes(tmp_path, audit_state):  # noqa: F811
    f = tmp_path / "c.rules"
    f.write_text("-D\n-b 320\n--backlog_wait_time 30000\n-f 1\n"
                 "-a always,exit -F arch=b64 -S uname -F key=auditpipe-c\n")
    assert auditpipe("rules", "load", str(f)).returncode == 0
    st = audit_state.get_status()
    assert (st["backlog_limit"], st["backlog_wait_time"], st["failure"]) == (320, 30000, 1)

    g = tmp_path / "g.rules"
    g.write_text("-a always,exit -F arch=b64 -S uname -F key=auditpipe-g\n")
    d = auditpipe("rules", "diff", str(g))
    assert d.returncode == 1
    assert "--a always,exit -F arch=b64 -S uname -F key=auditpipe-c" in d.stdout.splitlines()
    assert "+-a always,exit -F arch=b64 -S uname -F key=auditpipe-g" in d.stdout.splitlines()


def test_without_cap_audit_control_the_error_names_it(audit_state):  # noqa: F811
    """Root without CAP_AUDIT_CONTROL (dropped from the bounding set) gets a clear message."""
    setpriv = subprocess.run(["setpriv", "--bounding-set=-audit_control,-audit_read",
                              sys.executable, "-m", "auditpipe", "rules", "list"],
                             capture_output=True, text=True)
    assert setpriv.returncode != 0
    assert "needs root or CAP_AUDIT_CONTROL" in setpriv.stderr
