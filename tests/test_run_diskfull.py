"""Issue 8 item 1 end to end: disk full under the HTTP output's durable queue of a real
`auditpipe run` that follows a growing file, with the receiver down.

The queue lives on a real 5 MB tmpfs (mounted here, unmounted in teardown) that a filler leaves
~700 KB of. ENOSPC holds the run: the checkpoint stays behind what the queue refused, the
condition is logged once and shown in the status file. `run` is killed with SIGKILL while held
and started again (checkpoint + queue). Then a loopback receiver comes up, acknowledged batches
free space, and in the end the receiver holds every event of `auditpipe parse` of the same input,
with duplicates only within one batch.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

from conftest import CORPUS
from helpers import wait_for
from loopback_http import LoopbackReceiver

MAX_EVENTS = 100
CMD = [sys.executable, "-m", "auditpipe"]
_SERIAL = re.compile(rb"msg=audit\(\d+\.\d+:(\d+)\)")


def pieces(data: bytes, n: int) -> list[bytes]:
    """``data`` in about ``n`` pieces, cut only where a new event begins."""
    lines = data.splitlines(keepends=True)
    serials = [m.group(1) if (m := _SERIAL.search(ln)) else None for ln in lines]
    out, start, step = [], 0, len(lines) // n
    for i in range(step, len(lines), step):
        while i < len(lines) and serials[i] == serials[i - 1]:
            i += 1
        if i > start and i < len(lines):
            out.append(b"".join(lines[start:i]))
            start = i
    out.append(b"".join(lines[start:]))
    return out


def canon(doc: dict) -> str:
    return json.dumps(doc, sort_keys=True)


def status_of(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def start_run(config: Path, err: Path) -> subprocess.Popen:
    with open(err, "ab") as f:
        return subprocess.Popen([*CMD, "--log-format", "json", "run", "--config", str(config)],
                                stdout=subprocess.DEVNULL, stderr=f)


@pytest.mark.slow
def test_disk_full_queue_holds_the_run_and_loses_nothing(tmp_path, tmpfs):
    corpus = (CORPUS / "raw-node.log").read_bytes()
    parsed = subprocess.run([*CMD, "parse", "--format", "coalesced", str(CORPUS / "raw-node.log")],
                            capture_output=True, check=True, timeout=120)
    expected = Counter(canon(json.loads(ln)) for ln in parsed.stdout.splitlines())
    filler = tmpfs / "filler"
    free = os.statvfs(tmpfs).f_bavail * os.statvfs(tmpfs).f_frsize
    filler.write_bytes(b"\0" * (free - (700 << 10)))

    rx = LoopbackReceiver()
    port = rx.start().port
    rx.stop()  # the port is ours; the receiver is down until later
    log, status, ckpt, err = (tmp_path / n for n in ("audit.log", "status.json", "ckpt.json", "run.log"))
    log.write_bytes(b"")
    config = tmp_path / "run.toml"
    config.write_text(f"""
[heartbeat]
interval = 0
[source]
type = "file"
path = "{log}"
checkpoint = "{ckpt}"
start = "head"
[normalize]
format = "coalesced"
[status]
path = "{status}"
interval = 0.2
[[outputs]]
type = "http"
url = "http://127.0.0.1:{port}/ingest"
tls = false
max_events = {MAX_EVENTS}
max_wait = 0.1
backoff_initial = 0.1
backoff_max = 0.5
timeout = 5.0
queue_dir = "{tmpfs / 'queue'}"
queue_max_bytes = {8 << 20}
dead_letter = "{tmp_path / 'dead.jsonl'}"
drain_timeout = 10.0
""")
    proc = start_run(config, err)
    try:
        assert wait_for(lambda: status_of(status).get("pid") == proc.pid, 30), status_of(status)
        with open(log, "ab") as f:  # the followed file grows, in pieces
            for piece in pieces(corpus, 12):
                f.write(piece)
                f.flush()
                time.sleep(0.05)
        assert wait_for(lambda: status_of(status).get("held_since") is not None, 30), status_of(status)
        st = status_of(status)
        assert "ENOSPC" in st["held_cause"], st["held_cause"]
        time.sleep(2)  # retried with backoff meanwhile: still one log line for the condition
        text = err.read_text()
        assert text.count("cannot accept writes") == 1 and text.count("cannot append") == 1, text
        cp = json.loads(ckpt.read_text()) if ckpt.exists() else {"files": {}}
        offset = next(iter(cp["files"].values()), {}).get("offset", 0)
        assert offset < len(corpus), "the checkpoint passed what the queue refused"

        os.kill(proc.pid, signal.SIGKILL)  # once, in the middle: the checkpoint and queue resume
        proc.wait(10)
        proc = start_run(config, err)
        assert wait_for(lambda: status_of(status).get("pid") == proc.pid
                        and status_of(status).get("held_since") is not None, 30), err.read_text()

        rx.start()  # the receiver comes up on the same port: acks free the queue's space
        want = sum(expected.values())
        assert wait_for(lambda: len(rx.docs()) >= want - 5, 120), (len(rx.docs()), want, err.read_text()[-3000:])
        assert wait_for(lambda: status_of(status).get("held_since") is None, 30)
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        code = proc.wait(60)
        rx.stop()
    assert code == 0, err.read_text()[-3000:]
    got = Counter(canon(d) for d in rx.docs())
    missing = expected - got
    assert not missing, f"{sum(missing.values())} event(s) lost"
    assert set(got) == set(expected), "documents that `auditpipe parse` does not make"
    dups = sum((got - expected).values())
    assert dups <= MAX_EVENTS, f"{dups} duplicates: more than one batch"
    assert not (tmp_path / "dead.jsonl").exists()
