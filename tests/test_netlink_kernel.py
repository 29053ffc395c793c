"""Real kernel: status get/set roundtrip, features, daemon registration (and refusing to take
over another daemon), unicast and multicast receive of records produced by a narrow rule.

Every test restores the kernel's audit state (``audit_state``): rules, enabled, backlog etc.,
and unregisters us. The only rule loaded matches `uname` by children of this test process.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

from auditpipe.kernel.netlink import AuditNetlinkError, open_multicast, open_unicast
from auditpipe.kernel.rules import compile_rules
from auditpipe.tables import SYSCALL_NUMBERS
from conftest_kernel import audit_state  # noqa: F401

pytestmark = pytest.mark.kernel


def test_status_roundtrip(audit_state):  # noqa: F811
    nl = audit_state
    before = nl.get_status()
    assert {"enabled", "failure", "pid", "rate_limit", "backlog_limit", "lost",
            "backlog"} <= set(before)
    nl.set_status(backlog_limit=before["backlog_limit"] + 100, rate_limit=7)
    if "backlog_wait_time" in before:
        nl.set_status(backlog_wait_time=12345)
    after = nl.get_status()
    assert after["backlog_limit"] == before["backlog_limit"] + 100
    assert after["rate_limit"] == 7
    if "backlog_wait_time" in before:
        assert after["backlog_wait_time"] == 12345
    assert nl.set_status(lost=0) >= 0  # the ACK carries the old lost count
    feats = nl.get_features()
    assert feats["vers"] >= 1 and "loginuid_immutable" in feats
    # audit_state asserts on teardown that every field is back


def test_invalid_status_value_is_refused(audit_state):  # noqa: F811
    with pytest.raises(AuditNetlinkError) as ei:
        audit_state.set_status(enabled=5)
    assert ei.value.errno == 22 and "set enabled=5" in str(ei.value)


def test_delete_missing_rule_and_add_duplicate(audit_state):  # noqa: F811
    (item,) = compile_rules("-a always,exit -F arch=b64 -S uname -F key=auditpipe-nl")
    nl = audit_state
    nl.delete_all_rules()
    with pytest.raises(AuditNetlinkError, match="no such rule is loaded"):
        nl.delete_rule(item.data)
    nl.add_rule(item.data)
    with pytest.raises(AuditNetlinkError, match="already loaded"):
        nl.add_rule(item.data)
    assert nl.delete_all_rules() == 1 and nl.list_rules() == []
    # a compiled "-S all" rule (kernel mask form) deletes the loaded rule
    (every,) = compile_rules(f"-a never,exit -S all -F pid={os.getpid()} -F key=auditpipe-nl")
    nl.add_rule(every.data)
    nl.delete_rule(every.data)
    assert nl.list_rules() == []


CHILD = """
import signal, sys, time
from auditpipe.kernel.netlink import open_unicast
r = open_unicast()
signal.signal(signal.SIGTERM, lambda *a: sys.exit(0))
try:  # "registered" inside the try: a SIGTERM right after it still unregisters
    print("registered", flush=True)
    time.sleep(60)
finally:
    r.close()
"""


def test_never_takes_over_another_daemon(audit_state):  # noqa: F811
    child = subprocess.Popen([sys.executable, "-c", CHILD], stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline().strip() == "registered"
        assert audit_state.get_status()["pid"] == child.pid
        with pytest.raises(AuditNetlinkError) as ei:
            open_unicast()
        msg = str(ei.value)
        assert ei.value.errno == 17
        assert msg.endswith(f"(pid {child.pid}) already receives audit events: "
                            "stop it or use multicast")
        assert audit_state.get_status()["pid"] == child.pid  # untouched
    finally:
        child.terminate()
        child.wait(10)
    assert audit_state.get_status()["pid"] == 0  # the child unregistered itself


def _collect(receiver, key: bytes, deadline: float) -> list[tuple[int, bytes]]:
    got: list[tuple[int, bytes]] = []
    while time.monotonic() < deadline:
        got.extend(receiver.recv_messages(timeout=0.2))
        if any(key in p for _, p in got) and any(t == 1320 for t, _ in got):  # EOE seen
            break
    return got


def test_unicast_and_multicast_receive(audit_state):  # noqa: F811
    nl = audit_state
    key = f"auditpipe-rx-{os.getpid()}"
    # a task only gets an audit context if audit was on when it was forked: trigger in a child
    (item,) = compile_rules(f"-a always,exit -F arch=b64 -S uname -F ppid={os.getpid()} "
                            f"-F key={key}")
    with open_unicast() as uni, open_multicast() as multi:
        assert nl.get_status()["pid"] == os.getpid()
        assert uni.rcvbuf > 0 and multi.rcvbuf > 0
        with pytest.raises(AuditNetlinkError, match="this process .* already registered"):
            open_unicast()
        nl.add_rule(item.data)
        nl.set_status(enabled=1)
        subprocess.run(["uname", "-a"], check=True, capture_output=True)
        deadline = time.monotonic() + 5
        u = _collect(uni, key.encode(), deadline)
        m = _collect(multi, key.encode(), deadline)
        nl.set_status(enabled=0)
        nl.delete_rule(item.data)
        for got in (u, m):
            syscall = [p for t, p in got if t == 1300 and key.encode() in p]
            assert syscall, (len(u), len(m), got[:5])
            nr = SYSCALL_NUMBERS[os.uname().machine]["uname"]
            assert syscall[0].startswith(b"audit(") and f"syscall={nr} ".encode() in syscall[0]
            assert all(1100 <= t <= 2999 for t, _ in got)
        assert uni.enobufs == 0
    assert nl.get_status()["pid"] == 0  # close() unregistered
