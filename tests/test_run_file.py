"""`auditpipe run` with `[source] type = "file"`: follow an audit.log, resume from the checkpoint."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time


def event_lines(serial: int, word: str) -> str:
    h = f"msg=audit(1795294192.263:{serial}): "
    return (f'type=SYSCALL {h}arch=c000003e syscall=59 success=yes exit=0 a0=1 a1=2 a2=3 a3=4 '
            f'items=1 ppid=10 pid=11 auid=0 uid=0 gid=0 euid=0 suid=0 fsuid=0 egid=0 sgid=0 '
            f'fsgid=0 tty=(none) ses=1 comm="echo" exe="/usr/bin/echo" key="filetest"\n'
            f'type=EXECVE {h}argc=2 a0="echo" a1="{word}"\n'
            f'type=PROCTITLE {h}proctitle=6563686F\n')


def wait_for(pred, timeout=10.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(0.05)
    return False


def start(tmp_path, log, out, source_extra=""):
    cfg = tmp_path / "c.toml"
    cfg.write_text(f"""
[source]
type = "file"
path = "{log}"
checkpoint = "{tmp_path / 'checkpoint.json'}"
{source_extra}
[normalize]
format = "coalesced"
[reassembly]
wall_timeout = 0.3
[[outputs]]
path = "{out}"
[status]
path = "{tmp_path / 'status.json'}"
interval = 0.1
""")
    err = open(tmp_path / "err.log", "ab")
    p = subprocess.Popen([sys.executable, "-m", "auditpipe", "run", "--config", str(cfg)],
                         stdout=subprocess.DEVNULL, stderr=err)
    status = tmp_path / "status.json"

    def running():
        try:
            d = json.loads(status.read_text())
        except (OSError, ValueError):
            return False
        return d.get("running") and d.get("pid") == p.pid
    assert wait_for(running), (tmp_path / "err.log").read_text()
    return p


def words(out):
    if not out.exists():
        return []
    return [json.dumps(json.loads(line)) for line in out.read_text().splitlines()]


def test_follow_stop_and_resume(tmp_path):
    log = tmp_path / "audit.log"
    log.write_text(event_lines(1, "before-start"))  # already there: skipped (start at the end)
    out = tmp_path / "events.jsonl"
    p = start(tmp_path, log, out)
    try:
        with open(log, "a") as f:
            f.write(event_lines(2, "first"))
        assert wait_for(lambda: any("first" in w for w in words(out))), (tmp_path / "err.log").read_text()
    finally:
        p.send_signal(signal.SIGTERM)
        assert p.wait(20) == 0, (tmp_path / "err.log").read_text()
    assert (tmp_path / "checkpoint.json").exists()
    with open(log, "a") as f:
        f.write(event_lines(3, "while-stopped"))
    p = start(tmp_path, log, out)
    try:
        with open(log, "a") as f:
            f.write(event_lines(4, "second-run"))
        assert wait_for(lambda: any("second-run" in w for w in words(out)))
    finally:
        p.send_signal(signal.SIGTERM)
        assert p.wait(20) == 0
    got = words(out)
    assert not any("before-start" in w for w in got)
    assert [sum(x in w for w in got) for x in ("first", "while-stopped", "second-run")] == [1, 1, 1]
    st = json.loads((tmp_path / "status.json").read_text())
    assert st["source"] == "file" and st["running"] is False


def test_start_head_reads_what_was_there(tmp_path):
    """[source] start = "head": without a checkpoint, the file is read from its beginning."""
    log = tmp_path / "audit.log"
    log.write_text(event_lines(1, "already-there"))
    out = tmp_path / "events.jsonl"
    p = start(tmp_path, log, out, 'start = "head"')
    try:
        with open(log, "a") as f:
            f.write(event_lines(2, "appended"))
        assert wait_for(lambda: any("appended" in w for w in words(out))), (tmp_path / "err.log").read_text()
    finally:
        p.send_signal(signal.SIGTERM)
        assert p.wait(20) == 0, (tmp_path / "err.log").read_text()
    got = words(out)
    assert [sum(x in w for w in got) for x in ("already-there", "appended")] == [1, 1]
    cp = json.loads((tmp_path / "checkpoint.json").read_text())["files"][str(log)]
    assert cp["offset"] == log.stat().st_size
