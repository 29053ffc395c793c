"""Rule drift: the diff, the monitor's schedule and CONFIG_CHANGE trigger, reinstall in order;
for real: `auditctl -D` under the monitor gives an audit-rules-drifted event and our rules back."""

from __future__ import annotations

import os
import subprocess
import time

import pytest

from auditpipe.kernel.drift import DriftMonitor, is_rule_change, rule_diff
from auditpipe.kernel.netlink import AuditNetlinkError, open_multicast
from auditpipe.kernel.rules import compile_rules, format_rule
from auditpipe.parsing.record import parse_kernel, parse_line
from auditpipe.pipeline.stages import Stage
from conftest_kernel import audit_state, require_auditctl  # noqa: F401

KEY = f"auditpipe-drift-{os.getpid()}"
TEXT = "\n".join(f"-a always,exit -F arch=b64 -S {sc} -F auid=4244 -F key={KEY}"
                 for sc in ("uname", "sethostname", "setdomainname")) + "\n"
RULES = [it.data for it in compile_rules(TEXT, machine="x86_64")]
LINES = [format_rule(b, "x86_64") for b in RULES]
OTHER = compile_rules("-a always,exit -F arch=b64 -S chroot -F auid=4244 -F key=other",
                      machine="x86_64")[0].data


class FakeKernel:
    def __init__(self, rules=(), locked=False):
        self.rules = list(rules)
        self.locked = locked

    def list_rules(self):
        return list(self.rules)

    def add_rule(self, data):
        if self.locked:
            raise AuditNetlinkError(1, "add rule: the audit configuration is locked")
        self.rules.append(data)

    def delete_rule(self, data):
        self.rules.remove(data)


def test_rule_diff_is_a_multiset_difference():
    assert not rule_diff(RULES, RULES)
    d = rule_diff(RULES + [RULES[0]], [RULES[1], OTHER, RULES[0]])
    assert d.missing == [RULES[2], RULES[0]] and d.extra == [OTHER]
    assert d.rendered("x86_64") == {"missing": [LINES[2], LINES[0]],
                                    "extra": [format_rule(OTHER, "x86_64")]}


def test_monitor_schedule_notice_and_alert():
    k = FakeKernel(RULES)
    m = DriftMonitor(k, RULES, interval=10, on_drift="alert", fmt="ecs", host="h1")
    assert isinstance(m, Stage)
    assert m.tick(100.0) == []                      # first check: clean
    k.rules = [RULES[0], OTHER]
    assert m.tick(105.0) == []                      # not due yet
    record = parse_line(f'type=CONFIG_CHANGE msg=audit(105.5:7): auid=0 ses=1 op=remove_rule '
                        f'key="{KEY}" list=4 res=1')
    assert is_rule_change(record)
    assert not is_rule_change(parse_line("type=CONFIG_CHANGE msg=audit(1.0:8): op=set "
                                         "audit_enabled=1 old=1 auid=0 ses=1 res=1"))
    m.notice_config_change(record)
    (doc,) = m.tick(105.6)                          # due at once after the CONFIG_CHANGE
    assert doc["event"]["action"] == "audit-rules-drifted"
    assert doc["event"]["kind"] == "event" and doc["event"]["outcome"] == "unknown"
    assert doc["auditpipe"]["rules"]["missing"] == LINES[1:]
    assert doc["auditpipe"]["rules"]["extra"] == [format_rule(OTHER)]
    assert k.rules == [RULES[0], OTHER]             # alert only: nothing changed
    assert m.tick(110.0) == []                      # next due at 115.6
    assert m.tick(115.7) == []                      # the same difference is said once
    k.rules = [OTHER]
    (doc,) = m.tick(125.8)                          # a new difference is said again
    assert doc["auditpipe"]["rules"]["missing"] == LINES
    assert m.metrics()["drifts"] == 2 and m.metrics()["checks"] == 4


def test_monitor_reinstalls_in_order_and_reports_failure():
    k = FakeKernel([RULES[0], RULES[2], OTHER])
    m = DriftMonitor(k, RULES, interval=10, on_drift="reinstall", fmt="panther")
    (doc,) = m.check(1.0)
    assert doc["type"] == "AUDITPIPE_AUDIT_RULES_DRIFTED" and doc["rules"]["reinstalled"]
    assert k.rules == [RULES[0], OTHER, RULES[1], RULES[2]]  # ours in our order, theirs kept
    assert m.check(11.0) == []
    locked = FakeKernel([], locked=True)
    m = DriftMonitor(locked, RULES, interval=10, on_drift="reinstall")
    (doc,) = m.check(1.0)
    assert doc["event"]["outcome"] == "failure" and "locked" in doc["auditpipe"]["rules"]["error"]


@pytest.mark.kernel
def test_auditctl_D_is_detected_and_undone(audit_state):  # noqa: F811
    nl = audit_state
    for blob in RULES:
        nl.add_rule(blob)
    enabled = nl.get_status()["enabled"]
    with open_multicast() as multi:
        nl.set_status(enabled=1)   # CONFIG_CHANGE records are only sent while audit is on
        m = DriftMonitor(nl, RULES, interval=3600, on_drift="reinstall")
        t0 = time.time()
        assert m.check(t0) == []
        subprocess.run([require_auditctl(), "-D"], check=True, capture_output=True)
        deadline = time.monotonic() + 5
        docs: list[dict] = []
        while not docs and time.monotonic() < deadline:
            for t, payload in multi.recv_messages(timeout=0.2):
                if t == 1305:
                    m.notice_config_change(parse_kernel(t, payload))
            docs = m.check(t0 + 1)  # long before the interval: only a notice makes it due
        nl.set_status(enabled=enabled)
    assert docs, "no CONFIG_CHANGE remove_rule record seen after auditctl -D"
    rules = docs[0]["auditpipe"]["rules"]
    assert rules["missing"] == LINES and rules["reinstalled"] is True
    assert [format_rule(b) for b in nl.list_rules() if KEY.encode() in b] == LINES
