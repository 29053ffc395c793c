"""Operations parts of a real `auditpipe run` against the real kernel: capabilities dropped after
start-up, and rule drift (``auditctl -D`` under it) reported within the check interval and, with
``on_drift = "reinstall"``, repaired. Narrow rules (the test's key, children of this pytest
process); ``audit_state`` holds the host-wide kernel lock and puts back the rules it found.
"""

from __future__ import annotations

import json
import os
import subprocess
import time

import pytest

from auditpipe.service.privileges import RUN_KEEPS, cap_numbers
from conftest_kernel import audit_state, require_auditctl  # noqa: F401
from test_run_kernel import Agent, is_our_exec, kernel_snapshot, loaded_rules_text, rule_for, run_true, unique_key

pytestmark = pytest.mark.kernel


def cap_eff(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        return int(next(ln for ln in f if ln.startswith("CapEff:")).split()[1], 16)


def test_run_drops_capabilities_and_reinstalls_drifted_rules(audit_state, tmp_path):  # noqa: F811
    auditctl = require_auditctl()
    nl = audit_state
    before = kernel_snapshot(nl)
    key = unique_key()
    agent = Agent(tmp_path, rule_for(key), global_args=("--log-format", "json"),
                  rules_extra='check_interval = 1\non_drift = "reinstall"').start()
    try:
        # start-up done (socket bound, rules installed, files open): only RUN_KEEPS remain
        want = sum(1 << c for c in cap_numbers(RUN_KEEPS))
        assert cap_eff(agent.proc.pid) == want, agent.stderr()
        assert any(f"key={key}" in r for r in loaded_rules_text(nl))

        subprocess.run([auditctl, "-D"], check=True, capture_output=True)
        t0 = time.monotonic()
        drift = agent.find(lambda d: d.get("event", {}).get("action") == "audit-rules-drifted", 5.0)
        assert drift is not None, f"no drift event within 5 s:\n{agent.stderr()}"
        assert time.monotonic() - t0 < 3.0  # the CONFIG_CHANGE made the check due at once
        assert any(key in r for r in drift["auditpipe"]["rules"]["missing"]), drift
        assert drift["auditpipe"]["rules"]["reinstalled"] is True and drift["event"]["outcome"] == "success"
        rules = loaded_rules_text(nl)
        assert any(f"key={key}" in r for r in rules), rules
        assert any("key=auditpipe-self" in r for r in rules), rules
        run_true()  # our rule works again
        assert agent.find(is_our_exec(key), 3.0) is not None, agent.stderr()
        status = agent.read_status()
        assert status["counters"]["rules_drift"] == 1
    finally:
        code = agent.stop()
    assert code == 0, agent.stderr()
    assert kernel_snapshot(nl)[0] == before[0], "status fields put back"
    assert [json.loads(ln)["log.level"] for ln in agent.stderr().splitlines()]  # --log-format json


class LockedNetlink:
    """The control socket of a kernel in immutable mode (enabled=2): it refuses every change.
    (The real kernel cannot be locked in a test: only a reboot unlocks it.)"""

    changes: list = []

    def get_status(self):
        return {"enabled": 2, "pid": 0, "lost": 0, "backlog_limit": 64, "backlog": 0}

    def list_rules(self):
        return []

    def __getattr__(self, name):  # add_rule, delete_rule, set_status, ...: recorded, refused
        def refuse(*a, **kw):
            LockedNetlink.changes.append(name)
            raise AssertionError(f"{name} called on a locked kernel")
        return refuse


def test_locked_kernel_writes_the_rules_as_pending_and_changes_nothing(tmp_path, monkeypatch):
    from auditpipe.config import load_config
    from auditpipe.sources import kernel_control
    from auditpipe.sources.kernel import KernelSource

    rules = tmp_path / "a.rules"
    rules.write_text("-D\n-b 8192\n-a always,exit -F arch=b64 -S execve -k exec\n")
    pending = tmp_path / "rules.d" / "99-auditpipe-pending.rules"
    cfg = load_config(text=f'[rules]\nfiles = ["{rules}"]\npending_path = "{pending}"\n'
                           f'[state]\ndir = "{tmp_path / "state"}"\n')
    monkeypatch.setattr(kernel_control, "AuditNetlink", LockedNetlink)
    src = KernelSource.from_config(cfg)
    c = src.control
    c.open()
    c.mode = "unicast"
    c.apply(kernel_control.compile_rule_files([str(rules)]))
    assert LockedNetlink.changes == [] and c.locked
    text = pending.read_text()
    assert text.startswith("## Written by auditpipe: the kernel was locked")
    assert text.splitlines()[-3:] == ["-D", "-b 8192", "-a always,exit -F arch=b64 -S execve -k exec"]
    described = src.describe()
    assert described["locked"] is True and described["rules_pending"] == str(pending)
    assert c.restore_rules_and_status() == [] and LockedNetlink.changes == []
    assert not (tmp_path / "state").exists() or not list((tmp_path / "state").iterdir())

    # `auditpipe status` tells the operator where the wanted rules went
    from click.testing import CliRunner

    from auditpipe.cli.status_cmd import status as status_cmd

    st = tmp_path / "status.json"
    st.write_text(json.dumps({"running": True, "pid": os.getpid(), "counters": {}, **described}))
    out = CliRunner().invoke(status_cmd, ["--status-file", str(st)], terminal_width=400).output
    assert "kernel is locked" in out and str(pending) in out.replace("\n", ""), out
