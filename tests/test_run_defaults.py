"""`auditpipe run` as a newcomer meets it: no [[outputs]] configured, so the events go to JSON
lines AND the Parquet lake under ./auditpipe-data, where README's three queries answer; with the
operations parts on (Prometheus listener, heartbeats, ``--log-format json``).

A real subprocess follows a copy of a shared corpus file (``[source] type = "file"``) in a
temporary working directory; the README's queries are read from README.md itself, so the test
fails when they stop working on what `run` writes.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from conftest import CORPUS
from helpers import wait_for

ROOT = Path(__file__).resolve().parents[1]
CMD = [sys.executable, "-m", "auditpipe"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def readme_queries() -> list[str]:
    """The SQL of README's "Searching events" section, as a reader would paste it."""
    text = (ROOT / "README.md").read_text()
    section = text.split("## Searching events", 1)[1].split("\n## ", 1)[0]
    return re.findall(r'^\.venv/bin/auditpipe query "(.+)"$', section, re.M)


def query(cwd: Path, sql: str) -> list[dict]:
    got = subprocess.run([*CMD, "query", "--format", "json", sql], cwd=cwd, capture_output=True,
                         text=True, timeout=120)
    assert got.returncode == 0, got.stderr
    text = got.stdout.strip()
    return json.loads(text) if text.startswith("[") else [json.loads(ln) for ln in text.splitlines()]


def status_of(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


@pytest.mark.slow
def test_default_run_writes_a_lake_the_readme_queries_answer(tmp_path):
    log = tmp_path / "audit.log"
    shutil.copyfile(CORPUS / "enriched.log", log)
    port = free_port()
    status = tmp_path / "status.json"
    (tmp_path / "auditpipe.toml").write_text(f"""
[source]
type = "file"
path = "{log}"
checkpoint = "{tmp_path / 'checkpoint.json'}"
start = "head"
[status]
path = "{status}"
interval = 0.2
[metrics]
listen = "127.0.0.1:{port}"
[heartbeat]
interval = 1
""")
    err = tmp_path / "stderr.log"
    with open(err, "wb") as f:
        proc = subprocess.Popen([*CMD, "--log-format", "json", "run", "--config", "auditpipe.toml"],
                                cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=f)
    try:
        parsed = subprocess.run([*CMD, "parse", "--format", "ecs", str(log)], capture_output=True,
                                timeout=120)
        events = len(parsed.stdout.splitlines())
        assert events > 900
        assert wait_for(lambda: status_of(status).get("counters", {}).get("documents", 0) >= events, 60), \
            err.read_text()
        assert wait_for(lambda: status_of(status)["counters"].get("heartbeats", 0) >= 1, 10)
        metrics = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
        m = re.search(r"^auditpipe_events_total (\S+)$", metrics, re.M)
        assert m and float(m.group(1)) >= events, metrics[:2000]
        assert re.search(r'^auditpipe_queue_depth\{part="lake-1"\} \S+$', metrics, re.M), metrics[:2000]
        assert re.search(r"^auditpipe_heartbeats_total \S+$", metrics, re.M)
    finally:
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(30)
    assert code == 0, err.read_text()
    # --log-format json applies to run's own logs: every line is one JSON object
    lines = err.read_text().splitlines()
    assert lines and all(json.loads(ln)["log.level"] for ln in lines), lines[:5]
    assert any("running: file" in json.loads(ln)["message"] for ln in lines)
    with pytest.raises(OSError):  # the listener closed with the run
        socket.create_connection(("127.0.0.1", port), timeout=1).close()

    jsonl = [json.loads(ln) for ln in (tmp_path / "auditpipe-events.jsonl").read_text().splitlines()]
    assert sum(1 for d in jsonl if d["event"].get("action") != "heartbeat") == events
    assert list((tmp_path / "auditpipe-data").rglob("*.parquet")), "no lake written"

    by_action, failed_logins, root_execs = (query(tmp_path, sql) for sql in readme_queries())
    counts = {r["action"]: r["n"] for r in by_action}
    assert sum(counts.values()) >= events and counts["executed"] > 100  # heartbeats are events too
    assert sum(r["failed"] for r in failed_logins) >= 1
    assert len(root_execs) == 20
    assert all(r["process_executable"] and r["user_name"] == "root" for r in root_execs)
    assert os.path.isabs(root_execs[0]["process_executable"])
