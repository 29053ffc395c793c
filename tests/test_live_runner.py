"""The live loop without a kernel: a fake source feeds raw netlink (type, payload) batches."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time

import pytest

from auditpipe.config import StdoutOutput, load_config
from auditpipe.pipeline.live import LiveRunner
from auditpipe.pipeline.outputs import Output, Outputs
from auditpipe.pipeline.status import read_status_file
from auditpipe.sources.backpressure import BoundedQueue, Strategy


def outputs_of(sinks, cfgs=None):
    """Test sinks as the runtime's outputs (typed configs: stdout unless given)."""
    cfgs = cfgs or [StdoutOutput()] * len(sinks)
    return Outputs([Output(s, c) for s, c in zip(sinks, cfgs)])


def execve_event(serial: int, sec: int = 1795294192, eoe: bool = True) -> list[tuple[int, bytes]]:
    h = f"audit({sec}.263:{serial}): ".encode()
    recs = [
        (1300, h + b"arch=c000003e syscall=59 success=yes exit=0 a0=1 a1=2 a2=3 a3=4 items=1 ppid=10 "
                   b"pid=11 auid=0 uid=0 gid=0 euid=0 suid=0 fsuid=0 egid=0 sgid=0 fsgid=0 tty=(none) "
                   b"ses=1 comm=\"true\" exe=\"/usr/bin/true\" key=\"k1\""),
        (1309, h + b"argc=2 a0=\"/usr/bin/true\" a1=612062"),
        (1307, h + b"cwd=\"/tmp\""),
        (1302, h + b"item=0 name=\"/usr/bin/true\" inode=1 dev=fe:00 mode=0100755 ouid=0 ogid=0 "
                   b"rdev=00:00 nametype=NORMAL"),
        (1327, h + b"proctitle=2F7573722F62696E2F7472756500612062"),
    ]
    if eoe:
        recs.append((1320, h))
    return recs


class FakeSource:
    """A kernel-like Source (sources.base) fed by the test."""

    kind = "kernel"
    item_type = tuple

    def __init__(self):
        self.queue = BoundedQueue(1000, "drop")
        self.mode = "unicast"
        self.strategy = Strategy("userspace", "drop", None, 5000)
        self.other_daemon = None
        self.status = {"enabled": 1, "pid": 1, "lost": 0, "backlog": 0}
        self.installed = []
        self.rules_refused = 0
        self.messages = 0
        self.enobufs = 0
        self.kernel_lost = 0
        self.calls: list[str] = []
        self.reloaded = []
        self.keep_rules_on_exit = False
        self.exclude_self = True

    def push(self, batch):
        self.messages += len(batch)
        self.queue.put(batch)

    def start(self, ruleset):
        self.calls.append("start")

    def poll(self):
        pass

    def commit(self, positions):
        raise AssertionError("a kernel source has nothing to commit")

    def release(self):
        self.calls.append("restore")
        return []

    def counters(self):
        q = self.queue
        return {"records_received": self.messages, "kernel_lost": self.kernel_lost, "enobufs": self.enobufs,
                "userspace_drops": q.dropped, "source_queue_depth": len(q), "source_queue_peak": q.peak,
                "source_queue_blocked": q.blocked, "rules_installed": len(self.installed),
                "rules_refused": self.rules_refused, "kernel_backlog": self.status.get("backlog", 0)}

    def describe(self):
        return {"mode": self.mode, "other_daemon": None, "backpressure_strategy": self.strategy.name,
                "kernel_status": dict(self.status)}

    def stop_reader(self):
        self.calls.append("stop_reader")

    def reader_alive(self):
        return True

    def reconfigure(self, cfg, ruleset):
        self.reloaded.append((ruleset, cfg))

    def close(self):
        self.calls.append("close")
        return []


class RecordingSink:
    def __init__(self):
        self.docs = []
        self.closed = False
        self.lines = 0

    def write(self, docs):
        self.docs.extend(docs)
        self.lines += len(docs)
        return len(docs)

    def close(self):
        self.closed = True


def make_runner(tmp_path, fmt="coalesced", wall_timeout=0.5, extra=""):
    cfg = load_config(text=f"""
[heartbeat]
interval = 0  # exact document counts below
[normalize]
format = "{fmt}"
[reassembly]
wall_timeout = {wall_timeout}
[status]
path = "{tmp_path / 'status.json'}"
interval = 0.1
[[outputs]]
type = "stdout"
{extra}""")
    src = FakeSource()
    sink = RecordingSink()
    runner = LiveRunner(cfg, src, outputs=outputs_of([sink]))
    return runner, src, sink


def start(runner):
    t = threading.Thread(target=runner.run, daemon=True)
    t.start()
    return t


def wait_until(pred, timeout=3.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(0.01)
    return False


def test_events_leave_at_eoe_and_without_a_terminator_by_the_wall_clock(tmp_path):
    runner, src, sink = make_runner(tmp_path)
    t = start(runner)
    try:
        src.push(execve_event(100))
        assert wait_until(lambda: len(sink.docs) == 1, 1.0)
        # an event whose last records never come: leaves after wall_timeout (0.5 s), well
        # within a second
        t0 = time.monotonic()
        src.push(execve_event(101)[:3])
        assert wait_until(lambda: len(sink.docs) == 2, 2.0)
        assert time.monotonic() - t0 < 1.2
    finally:
        runner.request_stop()
        t.join(5)
    assert not t.is_alive()
    assert runner.exit_code == 0
    assert src.calls == ["start", "restore", "stop_reader", "close"]
    assert sink.closed


def test_stop_flushes_what_is_in_flight(tmp_path):
    runner, src, sink = make_runner(tmp_path, wall_timeout=60)
    t = start(runner)
    src.push(execve_event(7, eoe=False)[:2])
    assert wait_until(lambda: runner.pipeline.counters.records == 2)
    assert sink.docs == []
    runner.request_stop()
    t.join(5)
    assert len(sink.docs) == 1 and sink.closed


def test_rejects_are_counted_and_the_stream_goes_on(tmp_path):
    runner, src, sink = make_runner(tmp_path)
    t = start(runner)
    try:
        src.push([(1300, b"this is not an audit record")] + execve_event(5))
        assert wait_until(lambda: len(sink.docs) == 1)
    finally:
        runner.request_stop()
        t.join(5)
    assert runner.counters()["rejects"] == 1


def test_status_file_and_status_command(tmp_path):
    runner, src, sink = make_runner(tmp_path)
    t = start(runner)
    try:
        for s in range(10, 13):
            src.push(execve_event(s))
        src.push(execve_event(20))  # serials 13..19 never came
        src.queue.dropped = 4
        src.enobufs = 2
        src.kernel_lost = 3
        assert wait_until(lambda: (read_status_file(str(tmp_path / "status.json")) or {})
                          .get("counters", {}).get("documents") == 4)
        doc = read_status_file(str(tmp_path / "status.json"))
        assert doc["running"] is True
        r = subprocess.run([sys.executable, "-m", "auditpipe", "status", "--status-file",
                            str(tmp_path / "status.json"), "--json"], capture_output=True, text=True,
                           timeout=60)
        assert r.returncode == 0, r.stderr
        agent = json.loads(r.stdout)["agent"]
        assert agent["alive"] is True
        r2 = subprocess.run([sys.executable, "-m", "auditpipe", "status", "--status-file",
                             str(tmp_path / "status.json")], capture_output=True, text=True,
                            timeout=60, env={"COLUMNS": "200", "PATH": "/usr/bin:/bin"})
        assert r2.returncode == 0, r2.stderr
        assert "userspace_drops" in r2.stdout and "running" in r2.stdout
    finally:
        runner.request_stop()
        t.join(5)
    c = agent["counters"]
    assert c["records_received"] == 24 and c["records_parsed"] == 24
    assert c["events"] == 4 and c["documents"] == 4
    assert c["userspace_drops"] == 4 and c["enobufs"] == 2 and c["kernel_lost"] == 3
    assert agent["mode"] == "unicast" and agent["backpressure_strategy"] == "userspace"
    assert agent["format"] == "coalesced"
    final = read_status_file(str(tmp_path / "status.json"))
    assert final["running"] is False
    assert final["counters"]["serial_gaps"] == 7  # exact once flushed


def test_reload_swaps_format_and_outputs(tmp_path, monkeypatch):
    runner, src, sink = make_runner(tmp_path)
    new_out = tmp_path / "new.jsonl"

    def reload():
        return load_config(text=f"""
[heartbeat]
interval = 0  # exact document counts below
[normalize]
format = "ecs"
[reassembly]
wall_timeout = 0.5
[status]
path = "{tmp_path / 'status.json'}"
[[outputs]]
path = "{new_out}"
""")
    runner.reload_config = reload
    runner.compile_rules = lambda cfg: None
    t = start(runner)
    try:
        src.push(execve_event(1))
        assert wait_until(lambda: len(sink.docs) == 1)
        runner.request_reload()
        assert wait_until(lambda: runner.reloads == 1)
        src.push(execve_event(2))
        assert wait_until(lambda: new_out.exists() and new_out.read_text().count("\n") == 1)
    finally:
        runner.request_stop()
        t.join(5)
    assert sink.closed and len(sink.docs) == 1
    doc = json.loads(new_out.read_text())
    assert doc["process"]["args"] == ["/usr/bin/true", "a b"]  # ECS now
    assert len(src.reloaded) == 1


def test_a_broken_reload_changes_nothing(tmp_path, caplog):
    runner, src, sink = make_runner(tmp_path)
    from auditpipe.config import ConfigError

    def reload():
        raise ConfigError("bad", "x.toml", 3)
    runner.reload_config = reload
    t = start(runner)
    try:
        runner.request_reload()
        time.sleep(0.4)
        src.push(execve_event(1))
        assert wait_until(lambda: len(sink.docs) == 1)
    finally:
        runner.request_stop()
        t.join(5)
    assert runner.reloads == 0 and not src.reloaded
    assert any("reload failed" in r.message for r in caplog.records)


@pytest.mark.parametrize("n", [1, 3])
def test_several_outputs_get_the_same_lines(tmp_path, n):
    runner, src, _ = make_runner(tmp_path)
    sinks = [RecordingSink() for _ in range(n)]
    runner.outputs = outputs_of(sinks)
    runner._setup_outputs()
    t = start(runner)
    try:
        src.push(execve_event(1))
        assert wait_until(lambda: all(len(s.docs) == 1 for s in sinks))
    finally:
        runner.request_stop()
        t.join(5)
    first = sinks[0].docs[0]
    for s in sinks[1:]:
        assert s.docs[0] == first


def test_a_normalizer_bug_on_one_event_is_counted_and_the_stream_goes_on(tmp_path, caplog):
    runner, src, sink = make_runner(tmp_path)
    good = runner.pipeline.normalize

    def flaky(ev):
        if ev.serial == 2:
            raise KeyError("boom")
        return good(ev)
    runner.pipeline.normalize = flaky
    t = start(runner)
    try:
        for s in (1, 2, 3):
            src.push(execve_event(s))
        assert wait_until(lambda: len(sink.docs) == 2)
    finally:
        runner.request_stop()
        t.join(5)
    assert runner.exit_code == 0
    assert runner.counters()["internal_errors"] == 1
    assert any("internal error" in r.message for r in caplog.records)
