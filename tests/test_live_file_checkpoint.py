"""The live loop on a file source: checkpoints at resume points, raw forwarding (issue 4).

auditd writes no EOE, so under steady writing the reassembler always holds an open event when a
poll ends. The checkpoint must follow the stream anyway: after a line, the position is a resume
point when every queued event is complete, and it is committed once those events were written.
A restart from any committed checkpoint re-reads only lines of events not yet written."""

from __future__ import annotations

import json
import threading
import time

from test_live_runner import FakeSource, RecordingSink, execve_event, outputs_of

from auditpipe.config import FileOutput, HttpOutput, StdoutOutput, load_config
from auditpipe.sources.file_source import FileTailSource
from auditpipe.pipeline.live import LiveRunner
from auditpipe.sources.tail import Tailer


RAW = HttpOutput(url="http://x", tls=False, format="raw")


def event_lines(serial: int) -> list[str]:
    h = f"msg=audit(1795294192.263:{serial}): "
    return [(f'type=SYSCALL {h}arch=c000003e syscall=59 success=yes exit=0 a0=1 a1=2 a2=3 a3=4 items=0 '
             f'ppid=10 pid=11 auid=0 uid=0 gid=0 euid=0 suid=0 fsuid=0 egid=0 sgid=0 fsgid=0 tty=(none) '
             f'ses=1 comm="echo" exe="/usr/bin/echo" key="filetest"'),
            f'type=EXECVE {h}argc=2 a0="echo" a1="w{serial}"',
            f"type=PROCTITLE {h}proctitle=6563686F"]


def wait_until(pred, timeout=5.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(0.01)
    return bool(pred())


class RawSink(RecordingSink):
    """An HTTP output's interface for raw forwarding."""

    def __init__(self):
        super().__init__()
        self.raw: list[str] = []
        self.dates: list[float] = []

    def write_raw(self, lines, date=None):
        self.raw.extend(lines)
        self.dates.append(date)
        return len(lines)


def file_runner(tmp_path, log, sinks, *, specs=None, start=None, extra=""):
    cfg = load_config(text=f"""
[heartbeat]
interval = 0  # exact document counts below
[source]
type = "file"
path = "{log}"
checkpoint = "{tmp_path / 'checkpoint.json'}"
{f'start = "{start}"' if start else ''}
[normalize]
format = "coalesced"
[reassembly]
wall_timeout = 60.0
timeout = 60.0
[status]
path = "{tmp_path / 'status.json'}"
interval = 0.1
[[outputs]]
type = "stdout"
{extra}""")
    src = FileTailSource(str(log), str(tmp_path / "checkpoint.json"), interval=0.01, start=cfg.source.start)
    runner = LiveRunner(cfg, src, outputs=outputs_of(sinks, specs))
    return runner, src


def run(runner):
    t = threading.Thread(target=runner.run, daemon=True)
    t.start()
    return t


def serials(sink):
    return [int(d["id"].rsplit(":", 1)[1]) for d in sink.docs]


def test_checkpoint_follows_a_log_that_never_goes_quiet(tmp_path):
    """Every write ends inside an event (SYSCALL and EXECVE of the next one after the
    PROCTITLE of the last): nothing-in-flight never happens, and still every commit is at the
    end of the last event written, and a restart from it re-reads only the open event."""
    log = tmp_path / "audit.log"
    log.write_text("")
    sink = RecordingSink()
    runner, src = file_runner(tmp_path, log, [sink])
    commits: list[tuple[dict, list[int]]] = []
    commit = src.commit

    def spy(positions):  # what the sink had when each checkpoint was committed
        commits.append((positions, serials(sink)))
        commit(positions)
    src.commit = spy
    t = run(runner)
    try:
        assert wait_until(lambda: src.tailer is not None)
        lines = event_lines(1)[:2]
        with open(log, "a") as f:
            f.write("\n".join(lines) + "\n")
        for n in range(1, 40):
            with open(log, "a") as f:
                f.write("\n".join([event_lines(n)[2], *event_lines(n + 1)[:2]]) + "\n")
            time.sleep(0.005 if n % 3 else 0.03)
        assert wait_until(lambda: serials(sink) == list(range(1, 40)))
        assert wait_until(lambda: commits and commits[-1][1] == list(range(1, 40)))
        assert runner.reassembler.in_flight == 1  # event 40: open all along
        # a SIGKILL now: the restart re-reads event 40's two lines, nothing else
        cp = json.loads((tmp_path / "checkpoint.json").read_text())
        t2 = Tailer([str(log)], state_file=str(tmp_path / "checkpoint.json"))
        again = [ln for _, got in t2.poll() for ln in got]
        t2.close()
        assert again == event_lines(40)[:2]
        assert cp["files"][str(log)]["offset"] == log.stat().st_size - sum(len(x) + 1 for x in again)
    finally:
        runner.request_stop()
        t.join(10)
    assert not t.is_alive() and runner.exit_code == 0
    # every commit before the stop: all lines before it were in events already written
    data = log.read_bytes()
    assert len(commits) > 3
    for positions, written in commits[:-1]:
        off = positions[str(log)]["offset"]
        assert data[off - 1:off] == b"\n"
        before = data[:off].decode().splitlines()
        assert before[-1].startswith("type=PROCTITLE")  # a resume point ends an event
        assert {int(ln.split(":", 1)[1].split(")", 1)[0]) for ln in before} <= set(written)
    # clean stop: event 40 flushed, the end committed
    assert serials(sink) == list(range(1, 41))
    assert commits[-1][0][str(log)]["offset"] == len(data)


def test_interleaved_events_resume_only_where_all_are_complete(tmp_path):
    """Two events interleaved: after the first one's PROCTITLE the second is still open, so
    that position is no resume point; after the second's it is."""
    log = tmp_path / "audit.log"
    log.write_text("")
    sink = RecordingSink()
    runner, src = file_runner(tmp_path, log, [sink])
    t = run(runner)
    try:
        assert wait_until(lambda: src.tailer is not None)
        a, b = event_lines(1), event_lines(2)
        with open(log, "a") as f:
            f.write("\n".join([a[0], b[0], a[1], a[2], b[1]]) + "\n")
        assert wait_until(lambda: serials(sink) == [1])
        time.sleep(0.2)
        assert not (tmp_path / "checkpoint.json").exists() or \
            json.loads((tmp_path / "checkpoint.json").read_text())["files"][str(log)]["offset"] == 0
        with open(log, "a") as f:
            f.write("\n".join([b[2], event_lines(3)[0]]) + "\n")
        assert wait_until(lambda: serials(sink) == [1, 2])
        cut = len("\n".join([a[0], b[0], a[1], a[2], b[1], b[2]])) + 1
        assert wait_until(lambda: json.loads((tmp_path / "checkpoint.json").read_text())
                          ["files"][str(log)]["offset"] == cut)
    finally:
        runner.request_stop()
        t.join(10)


def test_start_head_from_the_configuration(tmp_path):
    log = tmp_path / "audit.log"
    log.write_text("\n".join(event_lines(5)) + "\n")
    sink = RecordingSink()
    runner, src = file_runner(tmp_path, log, [sink], start="head")
    assert src.start_at == "head"
    t = run(runner)
    try:
        assert wait_until(lambda: serials(sink) == [5])
    finally:
        runner.request_stop()
        t.join(10)
    sink2 = RecordingSink()
    (tmp_path / "x").mkdir()
    runner, src = file_runner(tmp_path / "x", log, [sink2])
    assert src.start_at == "end"  # the default: only what is written from now on
    t = run(runner)
    try:
        time.sleep(0.2)
        with open(log, "a") as f:
            f.write("\n".join(event_lines(6)) + "\n")
        assert wait_until(lambda: serials(sink2) == [6])
    finally:
        runner.request_stop()
        t.join(10)


def test_raw_outputs_get_the_lines_as_read_and_others_documents(tmp_path):
    log = tmp_path / "audit.log"
    log.write_text("")
    docs, raw = RecordingSink(), RawSink()
    specs = [FileOutput(path="x"), RAW]
    runner, src = file_runner(tmp_path, log, [docs, raw], specs=specs)
    t = run(runner)
    written = event_lines(1) + ["garbage that does not parse"] + event_lines(2)
    try:
        assert wait_until(lambda: src.tailer is not None)
        with open(log, "a") as f:
            f.write("\n".join(written[:4]) + "\n\n" + "\n".join(written[4:]) + "\n")
        assert wait_until(lambda: raw.raw == written and serials(docs) == [1])
    finally:
        runner.request_stop()
        t.join(10)
    assert serials(docs) == [1, 2] and raw.docs == []
    assert all(abs(d - time.time()) < 30 for d in raw.dates)
    assert runner.counters()["rejects"] == 1


def test_raw_only_normalizes_nothing_and_commits_what_it_wrote(tmp_path):
    log = tmp_path / "audit.log"
    log.write_text("")
    raw = RawSink()
    runner, src = file_runner(tmp_path, log, [raw], specs=[RAW])
    t = run(runner)
    try:
        assert wait_until(lambda: src.tailer is not None)
        part = event_lines(1) + event_lines(2)[:1]  # event 2 stays open
        with open(log, "a") as f:
            f.write("\n".join(part) + "\n")
        assert wait_until(lambda: raw.raw == part)
        # the lines were written: the checkpoint is past all of them, open event or not
        assert wait_until(lambda: json.loads((tmp_path / "checkpoint.json").read_text())
                          ["files"][str(log)]["offset"] == log.stat().st_size)
        assert runner.reassembler.events == 1 and runner.pipeline.counters.documents == 0
    finally:
        runner.request_stop()
        t.join(10)
    assert raw.docs == []


def test_kernel_source_raw_forwarding_sends_record_raw(tmp_path):
    cfg = load_config(text=f"""
[heartbeat]
interval = 0  # exact document counts below
[normalize]
format = "coalesced"
[status]
path = "{tmp_path / 'status.json'}"
[[outputs]]
type = "stdout"
""")
    src = FakeSource()
    docs, raw = RecordingSink(), RawSink()
    runner = LiveRunner(cfg, src, outputs=outputs_of([docs, raw], [StdoutOutput(), RAW]))
    t = run(runner)
    try:
        src.push([(1300, b"not a record")] + execve_event(3))
        assert wait_until(lambda: len(docs.docs) == 1 and len(raw.raw) == 6)
    finally:
        runner.request_stop()
        t.join(10)
    assert raw.raw[0].startswith("type=SYSCALL msg=audit(1795294192.263:3): arch=c000003e")
    assert [ln.split(" ", 1)[0] for ln in raw.raw] == [
        "type=SYSCALL", "type=EXECVE", "type=CWD", "type=PATH", "type=PROCTITLE", "type=EOE"]
    assert runner.counters()["rejects"] == 1 and runner.counters()["documents"] == 1


def test_a_long_batch_is_written_and_committed_in_slices(tmp_path):
    """Catching up (a poll of thousands of lines): documents reach the outputs in slices of at
    most one HTTP batch (``max_events``), each followed by its checkpoint, so a kill between a
    write and its commit resends one slice at most."""
    log = tmp_path / "audit.log"
    log.write_text("".join("\n".join(event_lines(n)) + "\n" for n in range(1, 301)))
    trail: list = []  # ("w", documents) and ("c", offset), in order

    class Sink(RecordingSink):
        def write(self, docs):
            trail.append(("w", len(docs)))
            return super().write(docs)

    sink = Sink()
    runner, src = file_runner(tmp_path, log, [sink], start="head",
                              specs=[HttpOutput(url="http://x", tls=False, max_events=40)])
    commit = src.commit

    def spy(positions):
        trail.append(("c", positions[str(log)]["offset"]))
        commit(positions)
    src.commit = spy
    t = run(runner)
    try:
        assert wait_until(lambda: len(sink.docs) == 299)  # 300: held for a possible EOE
    finally:
        runner.request_stop()
        t.join(10)
    assert serials(sink) == list(range(1, 301))
    writes = [n for k, n in trail if k == "w"]
    assert max(writes) <= 40 and len(writes) >= 300 // 40
    # never two writes without a commit between them, and commits only move forward
    kinds = "".join(k for k, _ in trail)
    assert "ww" not in kinds, kinds
    offsets = [n for k, n in trail if k == "c"]
    assert offsets == sorted(offsets) and offsets[-1] == log.stat().st_size
