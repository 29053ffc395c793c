"""The files under examples/ stay valid: the README points newcomers at them."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from click.testing import CliRunner

from auditpipe.cli import main

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def test_starter_rules_compile():
    res = CliRunner().invoke(main, ["rules", "check", str(EXAMPLES / "starter.rules")])
    assert res.exit_code == 0, res.output
    assert "10 rule(s)" in res.output


def test_example_config_validates():
    # a real process: `run` registers a stack dumper on stderr's file descriptor
    res = subprocess.run([sys.executable, "-m", "auditpipe", "run", "--check", "--config",
                          str(EXAMPLES / "auditpipe.toml"), "--rules", str(EXAMPLES / "starter.rules")],
                         capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    assert "10 rule(s)" in res.stdout + res.stderr and "OK" in res.stdout + res.stderr
