"""Fault 7 (issue 8): `auditpipe run` killed with SIGKILL, started again, stopped with SIGTERM
leaves the kernel exactly as it was before the first start — against the real kernel.

The first instance changes status fields and installs a narrow rule (keyed, filtered to a dummy
auid that no process has); the journal in the state directory remembers what was there before.
The second instance finds the dead one's journal, puts the kernel back from it (not from what the
dead instance left: its rule, its backlog_limit, its `never ... pid=<dead>` rule), and restores
that on SIGTERM."""

from __future__ import annotations

import json
import signal

import pytest

from auditpipe.sources.kernel_journal import KernelJournal
from conftest_kernel import audit_state  # noqa: F401
from test_run_kernel import Agent, kernel_snapshot, loaded_rules_text, unique_key

pytestmark = pytest.mark.kernel

DUMMY_AUID = 4000000001  # no process has it: the rule never fires


def test_restart_after_sigkill_restores_the_state_from_before_the_first_start(audit_state, tmp_path):  # noqa: F811
    nl = audit_state
    before = kernel_snapshot(nl)
    key = unique_key()
    backlog = before[0]["backlog_limit"] + 77
    rules = f"-a always,exit -F arch=b64 -S execve -F auid={DUMMY_AUID} -k {key}\n"
    agent = Agent(tmp_path, rules, fmt="coalesced", extra=f"backlog_limit = {backlog}\nrate_limit = 1234")
    journal = agent.state_dir / "kernel-state.json"
    agent.start()
    first = agent.proc.pid
    saved = json.loads(journal.read_text())
    assert saved["pid"] == first
    assert saved["status"]["backlog_limit"] == before[0]["backlog_limit"]
    assert [bytes.fromhex(r) for r in saved["rules"]] == before[1]
    assert nl.get_status()["backlog_limit"] == backlog
    agent.signal(signal.SIGKILL)
    agent.proc.wait(10)
    left = loaded_rules_text(nl)
    assert any(f"pid={first}" in r for r in left) and any(key in r for r in left), left
    assert nl.get_status()["backlog_limit"] == backlog  # what the dead instance left

    again = Agent(tmp_path, rules, fmt="coalesced", extra=f"backlog_limit = {backlog}\nrate_limit = 1234")
    again.start()
    try:
        assert again.read_status()["recovered_from_pid"] == first
        now = loaded_rules_text(nl)
        assert not any(f"pid={first}" in r for r in now), now
        assert sum(key in r for r in now) == 1, now  # ours, once: the dead one's was removed
        assert json.loads(journal.read_text())["status"] == saved["status"]
        assert "did not stop cleanly" in again.stderr()
    finally:
        assert again.stop() == 0, again.stderr()
    assert kernel_snapshot(nl) == before
    assert not journal.exists(), "the journal is removed after a clean restore"


def test_a_journal_of_a_live_instance_is_not_taken_over(tmp_path):
    """The journal names its owner by pid and start time: a live owner is told apart from a
    recycled pid, and only an auditpipe process counts as its owner."""
    import os

    j = KernelJournal(str(tmp_path))
    j.write(os.getpid(), {"enabled": 1, "backlog_limit": 64, "lost": 5}, [b"\x01\x02"])
    e = j.load()
    assert e is not None and e.status == {"enabled": 1, "backlog_limit": 64} and e.rules == [b"\x01\x02"]
    assert j.owner_alive(e) == (b"auditpipe" in open("/proc/self/cmdline", "rb").read())
    recycled = type(e)(e.pid, (e.started or 0) + 1, e.status, e.rules)
    assert not j.owner_alive(recycled)
    j.remove()
    assert j.load() is None
    (tmp_path / "kernel-state.json").write_text("{not json")
    with pytest.raises(ValueError, match="unreadable"):
        j.load()
