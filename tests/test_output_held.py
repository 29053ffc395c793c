"""Fault 1, runtime side (issue 8): an output that cannot accept a write holds the source.

Done for real: the file output sits on a 1 MiB tmpfs mounted by the test and filled up; the
writes fail with ENOSPC. Nothing may be lost, the file checkpoint must not pass the failure, the
condition is logged once (and once when it clears) and shown in the status file."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import threading
import time

import pytest

from auditpipe.config import load_config
from auditpipe.pipeline.live import LiveRunner
from auditpipe.pipeline.status import read_status_file
from auditpipe.sinks.errors import OutputUnavailable
from auditpipe.sources.file_source import FileTailSource
from test_live_file_checkpoint import event_lines, wait_until
from test_live_runner import FakeSource, execve_event, outputs_of


@pytest.fixture
def small_disk(tmpfs_factory):
    """A 1 MiB tmpfs, unmounted in teardown."""
    return tmpfs_factory("1m", "disk")


def fill(mnt, leave: int) -> str:
    """Fill the file system, then free ``leave`` bytes again. Returns the filler's path."""
    filler = str(mnt / "filler")
    with open(filler, "wb") as f:
        try:
            while True:
                f.write(b"\0" * 65536)
                f.flush()
        except OSError:
            pass
    os.truncate(filler, max(0, os.path.getsize(filler) - leave))
    return filler


def append_events(log, serials) -> None:
    with open(log, "a") as f:
        f.write("".join("\n".join(event_lines(n)) + "\n" for n in serials))


def test_disk_full_under_the_file_output_holds_the_source_and_loses_nothing(tmp_path, small_disk, caplog):
    log = tmp_path / "audit.log"
    log.write_text("")
    out = small_disk / "events.jsonl"
    status = tmp_path / "status.json"
    checkpoint = tmp_path / "checkpoint.json"
    cfg = load_config(text=f"""
[heartbeat]
interval = 0  # exact document counts below
[source]
type = "file"
path = "{log}"
checkpoint = "{checkpoint}"
start = "head"
[normalize]
format = "coalesced"
[reassembly]
wall_timeout = 0.3
[status]
path = "{status}"
interval = 0.1
[[outputs]]
path = "{out}"
max_bytes = 0
""")
    filler = fill(small_disk, leave=24 << 10)
    runner = LiveRunner(cfg, FileTailSource(str(log), str(checkpoint), interval=0.01, start="head"))
    caplog.set_level(logging.INFO, logger="auditpipe.run")
    t = threading.Thread(target=runner.run, daemon=True)
    t.start()

    def written() -> list[int]:
        text = out.read_text() if out.exists() else ""
        assert not text or text.endswith("\n"), "a torn line in the output"
        return [int(json.loads(ln)["id"].rsplit(":", 1)[1]) for ln in text.splitlines()]

    def committed() -> int:
        try:
            return json.loads(checkpoint.read_text())["files"][str(log)]["offset"]
        except (OSError, ValueError, KeyError):
            return 0
    try:
        append_events(log, range(1, 11))
        assert wait_until(lambda: written() == list(range(1, 11)), 10)
        append_events(log, range(11, 401))  # far more than 24 KiB of documents
        assert wait_until(lambda: (read_status_file(str(status)) or {}).get("held_since"), 10)
        st = read_status_file(str(status))
        assert "ENOSPC" in st["held_cause"] and str(out) in st["held_cause"]
        assert st["counters"]["output_holds"] == 1 and st["counters"]["pending_documents"] > 0
        shown = subprocess.run([sys.executable, "-m", "auditpipe", "status", "--status-file", str(status)],
                               capture_output=True, text=True, timeout=60, env={**os.environ, "COLUMNS": "300"})
        assert "held since" in shown.stdout and "ENOSPC" in shown.stdout, shown.stdout + shown.stderr
        time.sleep(1.0)  # retries with backoff meanwhile; the checkpoint stays behind
        got = written()
        assert got == list(range(1, len(got) + 1))  # whole lines, in order, none twice
        end_of_written = sum(len("\n".join(event_lines(n)) + "\n") for n in got)
        assert committed() <= end_of_written, "the checkpoint passed documents not written"
        assert committed() < log.stat().st_size
        os.unlink(filler)  # space comes back
        assert wait_until(lambda: len(written()) >= 399, 15)
        assert wait_until(lambda: not (read_status_file(str(status)) or {}).get("held_since"), 5)
    finally:
        runner.request_stop()
        t.join(15)
    assert written() == list(range(1, 401))  # nothing lost, nothing twice
    assert committed() == log.stat().st_size
    messages = [r.getMessage() for r in caplog.records]
    assert sum("cannot accept writes" in m for m in messages) == 1, messages
    assert sum("accepts writes again" in m for m in messages) == 1, messages
    final = read_status_file(str(status))
    assert final["counters"]["output_errors"] >= 2 and final["held_since"] is None


def quick_config(tmp_path):
    """Coalesced documents, events out 0.2 s after their last record, status every 0.05 s."""
    return load_config(text=f"""
[heartbeat]
interval = 0  # exact document counts below
[normalize]
format = "coalesced"
[reassembly]
wall_timeout = 0.2
[status]
path = "{tmp_path / 'status.json'}"
interval = 0.05
""")


class FlakySink:
    """Refuses every write while ``down`` (as a full durable queue would)."""

    def __init__(self):
        self.docs: list = []
        self.down = True

    def write(self, docs):
        if self.down:
            raise OutputUnavailable("ENOSPC on /test/queue")
        self.docs.extend(docs)
        return len(docs)

    def close(self):
        pass


def test_kernel_source_is_held_by_its_backpressure_strategy(tmp_path):
    """While held the worker takes nothing from the kernel queue: under the drop policy what
    does not fit is dropped and counted; what was taken is written once the output is back."""
    cfg = quick_config(tmp_path)
    src = FakeSource()
    src.queue.capacity = 12  # two events' records
    sink = FlakySink()
    runner = LiveRunner(cfg, src, outputs=outputs_of([sink]))
    t = threading.Thread(target=runner.run, daemon=True)
    t.start()
    try:
        src.push(execve_event(1))
        assert wait_until(lambda: runner.outputs.held)
        for s in range(2, 6):
            src.push(execve_event(s))
        assert wait_until(lambda: (read_status_file(str(tmp_path / "status.json")) or {})
                          .get("counters", {}).get("userspace_drops") == 12)
        assert sink.docs == [] and runner.reassembler.events == 1  # nothing more was taken
        sink.down = False
        assert wait_until(lambda: len(sink.docs) == 3)
    finally:
        runner.request_stop()
        t.join(5)
    assert [d["id"].rsplit(":", 1)[1] for d in sink.docs] == ["1", "2", "3"]


def test_stop_while_held_keeps_the_checkpoint_behind_and_the_restart_delivers(tmp_path, caplog):
    """SIGTERM while the output refuses everything: the stop does not hang, reports what could
    not be written, and the checkpoint stays before it; the next run delivers all of it."""
    log = tmp_path / "audit.log"
    append_events(log, range(1, 21))
    cfg = quick_config(tmp_path)
    checkpoint = tmp_path / "checkpoint.json"

    def runner_with(sink):
        src = FileTailSource(str(log), str(checkpoint), interval=0.01, start="head")
        return LiveRunner(cfg, src, outputs=outputs_of([sink]))

    down = FlakySink()
    first = runner_with(down)
    t = threading.Thread(target=first.run, daemon=True)
    t.start()
    assert wait_until(lambda: first.outputs.held)
    started = time.monotonic()
    first.request_stop()
    t.join(15)
    assert not t.is_alive() and time.monotonic() - started < 8
    assert json.loads(checkpoint.read_text())["files"][str(log)]["offset"] == 0
    assert any("could not be written before exit" in r.getMessage() for r in caplog.records)
    up = FlakySink()
    up.down = False
    second = runner_with(up)
    t = threading.Thread(target=second.run, daemon=True)
    t.start()
    try:
        assert wait_until(lambda: len(up.docs) >= 19)
    finally:
        second.request_stop()
        t.join(15)
    assert [int(d["id"].rsplit(":", 1)[1]) for d in up.docs] == list(range(1, 21))
    assert json.loads(checkpoint.read_text())["files"][str(log)]["offset"] == log.stat().st_size
