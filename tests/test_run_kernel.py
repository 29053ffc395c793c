"""`auditpipe run` against the real kernel, as a real subprocess.

Each test holds the host-wide kernel-test lock (``conftest_kernel.audit_state``), loads only rules
keyed to the test and filtered to children of this pytest process, and checks that auditpipe
itself put the kernel back (rules, pid, enabled, backlog_limit, ...) when it stopped; the fixture
then restores anything left as a safety net. Debian's auditd, when a test starts one, runs in
the foreground with a temporary configuration (nothing under /var/log/audit) and is stopped by
its pid.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
from conftest_kernel import RESTORED, audit_state  # noqa: F401

pytestmark = pytest.mark.kernel

TRUE = os.path.realpath(shutil.which("true") or "/usr/bin/true")
ARGS = ["two words", "it's \"quoted\"", "héllo wörld ✓", "", "--flag=x  y", "tab\there"]
AUDITD = shutil.which("auditd") or "/usr/sbin/auditd"


def unique_key() -> str:
    return f"aptest-{uuid.uuid4().hex[:12]}"


def rule_for(key: str) -> str:
    # narrow: one exe, children of this test process only, and the test's own key
    return f"-a always,exit -F arch=b64 -S execve -F exe={TRUE} -F ppid={os.getpid()} -k {key}\n"


def kernel_snapshot(nl) -> tuple[dict, list[bytes]]:
    st = nl.get_status()
    return {k: st.get(k) for k in ("pid", *RESTORED)}, nl.list_rules()


class Agent:
    """`auditpipe run` as a subprocess, with its config, output and status file in tmp_path."""

    def __init__(self, tmp_path: Path, rules: str, *, fmt: str = "ecs", mode: str = "auto",
                 extra: str = "", rules_extra: str = "", global_args: tuple[str, ...] = ()) -> None:
        self.dir = tmp_path
        self.global_args = global_args  # auditpipe options before "run" (--log-format json)
        self.rules = tmp_path / "test.rules"
        self.rules.write_text(rules)
        self.out = tmp_path / "events.jsonl"
        self.status = tmp_path / "status.json"
        self.log = tmp_path / "auditpipe.log"
        self.config = tmp_path / "auditpipe.toml"
        self.state_dir = tmp_path / "state"
        self.config.write_text(f"""
[kernel]
mode = "{mode}"
{extra}
[rules]
files = ["{self.rules}"]
{rules_extra}
[normalize]
format = "{fmt}"
[reassembly]
wall_timeout = 0.5
[[outputs]]
path = "{self.out}"
[status]
path = "{self.status}"
interval = 0.2
[state]
dir = "{self.state_dir}"
""")
        self.proc: subprocess.Popen | None = None

    def start(self, timeout: float = 20.0) -> Agent:
        with open(self.log, "wb") as err:
            self.proc = subprocess.Popen([sys.executable, "-m", "auditpipe", *self.global_args, "run", "--config",
                                          str(self.config)], stdout=subprocess.DEVNULL, stderr=err)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                pytest.fail(f"auditpipe run exited {self.proc.returncode} while starting:\n{self.stderr()}")
            st = self.read_status()
            if st and st.get("running") and st.get("pid") == self.proc.pid:
                return self
            time.sleep(0.05)
        self.stop()
        pytest.fail(f"auditpipe run did not start within {timeout}s:\n{self.stderr()}")

    def read_status(self) -> dict | None:
        try:
            return json.loads(self.status.read_text())
        except (OSError, ValueError):
            return None

    def stderr(self) -> str:
        try:
            return self.log.read_text(errors="replace")
        except OSError:
            return ""

    def docs(self) -> list[dict]:
        try:
            text = self.out.read_text(encoding="utf-8", errors="surrogateescape")
        except OSError:
            return []
        return [json.loads(line) for line in text.splitlines() if line.strip()]

    def find(self, pred, timeout: float) -> dict | None:
        deadline = time.monotonic() + timeout
        while True:
            for d in self.docs():
                if pred(d):
                    return d
            if time.monotonic() >= deadline:
                return None
            time.sleep(0.05)

    def signal(self, sig: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    def stop(self, timeout: float = 20.0) -> int:
        """SIGTERM and wait; SIGKILL (by pid) only if it hangs."""
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else 0
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)
            pytest.fail(f"auditpipe run did not stop on SIGTERM within {timeout}s:\n{self.stderr()}")


def run_true(args=ARGS) -> None:
    subprocess.run([TRUE, *args], check=True)


def is_our_exec(key: str, args=ARGS):
    def pred(d: dict) -> bool:
        return (d.get("process", {}).get("args") == [TRUE, *args]
                and key in (d.get("tags") or []))
    return pred


def loaded_rules_text(nl) -> list[str]:
    from auditpipe.kernel.rules import format_rule

    return [format_rule(b) for b in nl.list_rules()]


# ------------------------------------------------------------------------------------ tests
def test_unicast_ecs_event_and_clean_exit(audit_state, tmp_path):  # noqa: F811
    nl = audit_state
    before = kernel_snapshot(nl)
    key = unique_key()
    agent = Agent(tmp_path, rule_for(key)).start()
    try:
        st = nl.get_status()
        assert st["pid"] == agent.proc.pid, "auditpipe registered as the audit daemon"
        assert st["enabled"] == 1
        assert st["backlog_wait_time"] == 0, "the auto strategy resolves to kernel: no waiting"
        rules = loaded_rules_text(nl)
        assert rules[0] == (f"-a never,exit -S all -F pid={agent.proc.pid} -F key=auditpipe-self"), rules
        assert any(f"key={key}" in r for r in rules), rules
        t0 = time.monotonic()
        run_true()
        doc = agent.find(is_our_exec(key), timeout=3.0)
        assert doc is not None, f"no ECS event for our exec within 3 s; stderr:\n{agent.stderr()}"
        assert time.monotonic() - t0 < 3.0
        assert doc["event"]["action"] == "executed"
        assert doc["process"]["executable"] == TRUE
        deadline = time.monotonic() + 2
        while (agent.read_status() or {}).get("counters", {}).get("documents", 0) < 1:
            assert time.monotonic() < deadline, "the status file shows the documents written"
            time.sleep(0.05)
        status = agent.read_status()
        assert status["mode"] == "unicast" and status["counters"]["records_received"] > 0
    finally:
        code = agent.stop()
    assert code == 0, agent.stderr()
    after = kernel_snapshot(nl)
    assert after[0] == before[0], "status fields put back"
    assert after[1] == before[1], "rule list put back"
    final = agent.read_status()
    assert final["running"] is False
    assert final["counters"]["kernel_lost"] == 0 and final["counters"]["userspace_drops"] == 0


def test_multicast_beside_auditd(audit_state, tmp_path):  # noqa: F811
    if not os.path.exists(AUDITD):
        pytest.skip("Debian's auditd is not installed")
    nl = audit_state
    before = kernel_snapshot(nl)
    conf = tmp_path / "auditd"
    (conf / "plugins.d").mkdir(parents=True)  # no plugins (laurel stays out of it)
    (conf / "auditd.conf").write_text(f"""\
local_events = yes
write_logs = yes
log_file = {conf}/audit.log
log_group = root
log_format = RAW
flush = NONE
freq = 50
max_log_file = 8
num_logs = 2
priority_boost = 0
name_format = NONE
max_log_file_action = ROTATE
space_left = 75
space_left_action = IGNORE
admin_space_left = 50
admin_space_left_action = IGNORE
disk_full_action = IGNORE
disk_error_action = IGNORE
tcp_listen_queue = 5
tcp_max_per_addr = 1
tcp_client_max_idle = 0
distribute_network = no
q_depth = 2000
overflow_action = IGNORE
max_restarts = 10
plugin_dir = {conf}/plugins.d
end_of_event_timeout = 2
""")
    (conf / "auditd.conf").chmod(0o600)
    auditd_out = tmp_path / "auditd.out"
    # -f: foreground, events to stdout (nothing under /var/log/audit); -n: no fork;
    # -s nochange: leave `enabled` to us
    with open(auditd_out, "wb") as out:
        auditd = subprocess.Popen([AUDITD, "-f", "-n", "-s", "nochange", "-c", str(conf)],
                                  stdout=out, stderr=subprocess.STDOUT)
    agent = None
    try:
        deadline = time.monotonic() + 10
        while nl.get_status()["pid"] != auditd.pid:
            if auditd.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"auditd did not register:\n{auditd_out.read_text(errors='replace')}")
            time.sleep(0.05)
        key = unique_key()
        agent = Agent(tmp_path, rule_for(key)).start()
        assert nl.get_status()["pid"] == auditd.pid, "auditpipe must not take over from auditd"
        assert "multicast" in agent.stderr() and f"pid {auditd.pid}" in agent.stderr(), agent.stderr()
        run_true()
        doc = agent.find(is_our_exec(key), timeout=3.0)
        assert doc is not None, f"no ECS event for our exec within 3 s; stderr:\n{agent.stderr()}"
        assert agent.read_status()["mode"] == "multicast"
        code = agent.stop()
        assert code == 0, agent.stderr()
        st = nl.get_status()
        assert st["pid"] == auditd.pid, "auditd is still the audit daemon"
        assert nl.list_rules() == before[1], "our rules are gone, nothing else changed"
        assert {k: st.get(k) for k in RESTORED} == {k: before[0].get(k) for k in RESTORED}
        # auditd got the same event by unicast
        deadline = time.monotonic() + 3
        while key not in auditd_out.read_text(errors="replace") and time.monotonic() < deadline:
            time.sleep(0.05)
        assert key in auditd_out.read_text(errors="replace")
    finally:
        if agent is not None:
            agent.stop()
        auditd.send_signal(signal.SIGTERM)
        try:
            auditd.wait(10)
        except subprocess.TimeoutExpired:
            auditd.kill()
            auditd.wait(5)
    after = kernel_snapshot(nl)
    assert after[0]["pid"] == 0
    assert after[1] == before[1]
    # auditd leaves enabled as it found it (-s nochange); the fixture restores the rest anyway


def test_sighup_reloads_rules(audit_state, tmp_path):  # noqa: F811
    nl = audit_state
    before = kernel_snapshot(nl)
    key1, key2 = unique_key(), unique_key()
    agent = Agent(tmp_path, rule_for(key1), fmt="coalesced").start()
    try:
        agent.rules.write_text(rule_for(key2))
        agent.signal(signal.SIGHUP)
        deadline = time.monotonic() + 5
        while (agent.read_status() or {}).get("counters", {}).get("reloads") != 1:
            assert time.monotonic() < deadline, agent.stderr()
            time.sleep(0.05)
        rules = loaded_rules_text(nl)
        assert any(f"key={key2}" in r for r in rules) and not any(f"key={key1}" in r for r in rules), rules
        assert rules[0].startswith("-a never,exit -S all -F pid="), rules
        run_true(["after reload"])

        def pred(d):
            return json.dumps(d).find(key2) >= 0 and "after reload" in json.dumps(d, ensure_ascii=False)
        assert agent.find(pred, timeout=3.0) is not None, agent.stderr()
    finally:
        code = agent.stop()
    assert code == 0, agent.stderr()
    assert kernel_snapshot(nl) == before


def test_userspace_strategy_sets_and_restores_rate_limit(audit_state, tmp_path):  # noqa: F811
    nl = audit_state
    before = kernel_snapshot(nl)
    agent = Agent(tmp_path, rule_for(unique_key()), fmt="coalesced",
                  extra='backpressure_strategy = "userspace"\nbacklog_limit = 1234\n').start()
    try:
        st = nl.get_status()
        assert st["rate_limit"] == 5000 and st["backlog_limit"] == 1234
        assert st["backlog_wait_time"] == before[0]["backlog_wait_time"]
        assert agent.read_status()["backpressure_strategy"] == "userspace"
    finally:
        code = agent.stop()
    assert code == 0, agent.stderr()
    assert kernel_snapshot(nl) == before


def test_without_audit_capabilities_run_says_which_and_parse_still_works(tmp_path):
    """Needs no kernel change: as root the capabilities are dropped with setpriv."""
    cmd = [sys.executable, "-m", "auditpipe"]
    if os.geteuid() == 0:
        setpriv = shutil.which("setpriv")
        if setpriv is None:
            pytest.skip("setpriv (util-linux) is needed to drop capabilities as root")
        cmd = [setpriv, "--bounding-set", "-audit_control,-audit_read", *cmd]
    r = subprocess.run([*cmd, "run", "--format", "coalesced", "-o", str(tmp_path / "o.jsonl"),
                        "--rules", "/dev/null", "--status-file", str(tmp_path / "s.json")],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 1
    assert "CAP_AUDIT_CONTROL" in r.stderr and "CAP_AUDIT_READ" in r.stderr
    assert "auditpipe parse" in r.stderr
    assert not (tmp_path / "o.jsonl").exists()
    log = tmp_path / "audit.log"
    log.write_text('type=SYSCALL msg=audit(1700000000.000:1): arch=c000003e syscall=59 success=yes '
                   'exit=0 pid=1 comm="x"\ntype=EOE msg=audit(1700000000.000:1): \n')
    r = subprocess.run([*cmd, "parse", str(log), "--format", "coalesced"], capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert len(r.stdout.splitlines()) == 1


def test_enobufs_is_counted_and_survived(audit_state, tmp_path):  # noqa: F811
    """Multicast with a tiny socket buffer and a slow reader: the kernel drops copies for us
    (ENOBUFS); auditpipe counts them and keeps receiving."""
    nl = audit_state
    before = kernel_snapshot(nl)
    key = unique_key()
    agent = Agent(tmp_path, rule_for(key), fmt="coalesced", mode="multicast",
                  extra="rcvbuf = 4096\nbatch_delay = 0.3\n").start()
    try:
        procs = [subprocess.Popen([TRUE, "burst"]) for _ in range(150)]
        for p in procs:
            p.wait()
        deadline = time.monotonic() + 5
        while (agent.read_status() or {}).get("counters", {}).get("enobufs", 0) == 0:
            assert time.monotonic() < deadline, f"no ENOBUFS counted:\n{agent.stderr()}"
            time.sleep(0.1)
        time.sleep(0.5)
        run_true(["after the overflow"])
        assert agent.find(lambda d: key in json.dumps(d) and "after the overflow" in json.dumps(d),
                          timeout=3.0) is not None, agent.stderr()
        assert agent.proc.poll() is None
    finally:
        code = agent.stop()
    assert code == 0, agent.stderr()
    counters = agent.read_status()["counters"]
    assert counters["enobufs"] > 0
    assert counters["kernel_truncated"] == 0  # reported (a record fits a receive slot)
    assert kernel_snapshot(nl) == before


def test_purged_rules_come_back_and_kept_rules_stay(audit_state, tmp_path):  # noqa: F811
    """Unicast purges the loaded rules and puts them back on exit; keep_rules_on_exit leaves
    ours loaded (and still removes the self-exclusion rule)."""
    from auditpipe.kernel.rules import compile_line

    nl = audit_state
    nl.add_rule(compile_line(rule_for(unique_key()).strip())[0].data)
    theirs = nl.list_rules()[0]  # as the kernel lists it (no padding)
    before = kernel_snapshot(nl)
    key = unique_key()
    agent = Agent(tmp_path, rule_for(key), fmt="coalesced", extra="keep_rules_on_exit = true\n").start()
    try:
        rules = nl.list_rules()
        assert theirs not in rules, "purged while auditpipe runs"
        assert len(rules) == 2
    finally:
        code = agent.stop()
    assert code == 0, agent.stderr()
    after = kernel_snapshot(nl)
    assert after[0] == before[0]
    kept = loaded_rules_text(nl)
    assert len(kept) == 1 and f"key={key}" in kept[0], kept  # ours kept, theirs not put back
    assert "auditpipe-self" not in " ".join(kept)
    # and without keep_rules_on_exit the earlier rule list returns
    nl.delete_all_rules()
    nl.add_rule(theirs)
    agent = Agent(tmp_path, rule_for(key), fmt="coalesced").start()
    assert theirs not in nl.list_rules()
    assert agent.stop() == 0, agent.stderr()
    assert nl.list_rules() == [theirs]


def test_stale_self_rule_of_a_killed_agent_is_removed(audit_state, tmp_path):  # noqa: F811
    """An agent killed with SIGKILL leaves its `never` rule behind; the next one removes it."""
    from auditpipe.kernel.rules import compile_line
    from auditpipe.sources.kernel import SELF_KEY

    nl = audit_state
    gone = subprocess.Popen([TRUE])
    gone.wait()
    stale = compile_line(f"-A never,exit -S all -F pid={gone.pid} -k {SELF_KEY}")[0].data
    nl.add_rule(stale)
    assert any(SELF_KEY in r and f"pid={gone.pid}" in r for r in loaded_rules_text(nl))
    agent = Agent(tmp_path, rule_for(unique_key()), fmt="coalesced")
    agent.config.write_text(agent.config.read_text().replace("[rules]\n", "[rules]\npurge = false\n"))
    agent.start()
    try:
        assert not any(f"pid={gone.pid}" in r for r in loaded_rules_text(nl))
        assert any(f"pid={agent.proc.pid}" in r for r in loaded_rules_text(nl))  # its own is there
    finally:
        assert agent.stop() == 0, agent.stderr()
    assert not any(SELF_KEY in r for r in loaded_rules_text(nl))
