"""Delivery end to end, every part a real process on loopback (issue 4).

    writer process ──appends raw-node.log in chunks, rotates by rename──▶ audit.log
    `auditpipe run` ([source] type = "file", [[outputs]] type = "http": shared secret, gzip,
                     durable queue) ──POST──▶ `auditpipe serve` ──▶ out.jsonl

and the receiver's file must hold exactly the events `auditpipe parse` makes of the same corpus
(same format on both sides: coalesced, which has no per-run fields). With the receiver killed
(SIGKILL) for ~10 s and restarted, and the shipper killed (SIGKILL) and restarted mid-stream
(also again and again while the log is written without pause), nothing is lost, every duplicate
is an exact copy of an event already delivered, recognisable by its key, and duplicates stay
within one batch per kill: the shipper's checkpoint follows the stream (it is committed after
every write, at the end of the last complete event), so a restart resends only what was queued
and not yet acknowledged — the HTTP batch in flight, or the last write to the durable queue if
the kill fell between it and its checkpoint (both at most ``max_events``).

`auditpipe run` forwards *events* (``format = "json_lines"``): the live loop normalizes and writes
documents, the shipper posts them as JSON lines and the receiver writes them through unchanged.
With ``format = "raw"`` it forwards the records as read and the receiver reassembles them.
``[source] type = "file"`` never touches the kernel: no rules are compiled or installed, no audit
daemon is registered.

The key to drop duplicates by is (event id, record types): the id ``SEC.MSEC:SERIAL`` alone is not
unique, because a kernel LOGIN record is an event of its own and the SYSCALL that wrote it
follows with the same serial (as auparse/ausearch group them).
"""

from __future__ import annotations

import bisect
import gzip
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import zlib
from pathlib import Path

import httpx
import pytest
from conftest import shared_path
from helpers import wait_for

SECRET = "e2e-s3cret"
FMT = "coalesced"
MAX_EVENTS = 50  # the shipper's batch size (events per POST)

# --------------------------------------------------------------------------------- helpers


def cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "auditpipe", *args]


def read_jsonl(path: Path) -> list[dict]:
    if not path.exists():
        return []
    data = path.read_bytes()
    end = data.rfind(b"\n") + 1  # a line being written is not a document yet
    return [json.loads(x) for x in data[:end].decode("utf-8", "surrogateescape").split("\n") if x]


def key(doc: dict) -> tuple:
    """What tells two events apart: the id and the record types (a LOGIN shares its serial)."""
    return doc["id"], tuple(r["type"] for r in doc["records"])


def canon(doc: dict) -> str:
    return json.dumps(doc, sort_keys=True, ensure_ascii=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def kill9(proc: subprocess.Popen) -> None:
    """SIGKILL a process this test started (by its pid) and reap it."""
    if proc.poll() is None:
        os.kill(proc.pid, signal.SIGKILL)
    proc.wait(10)


def stop(proc: subprocess.Popen, timeout: float = 30.0) -> int:
    if proc.poll() is None:
        os.kill(proc.pid, signal.SIGTERM)
    try:
        return proc.wait(timeout)
    except subprocess.TimeoutExpired:
        kill9(proc)
        raise


# --------------------------------------------------------------------------- the corpus


_HDR = re.compile(r"^(?:node=(\S+) )?type=\S+ msg=audit\((\d+\.\d+):(\d+)\)")


@pytest.fixture(scope="module")
def corpus() -> bytes:
    return shared_path("corpus", "raw-node.log").read_bytes()


@pytest.fixture(scope="module")
def expected(corpus, tmp_path_factory) -> list[dict]:
    """What `auditpipe parse --format coalesced` makes of the corpus."""
    d = tmp_path_factory.mktemp("parse")
    out = d / "parse.jsonl"
    subprocess.run(cli("parse", str(shared_path("corpus", "raw-node.log")), "--format", FMT, "-o", str(out)),
                   check=True, capture_output=True, timeout=120)
    docs = read_jsonl(out)
    assert len(docs) > 900
    assert len({key(d) for d in docs}) == len(docs), "(id, record types) must be a unique key"
    return docs


def line_offsets(corpus: bytes) -> list[int]:
    """Byte offset of the start of every line, and the end."""
    offs = [0]
    pos = corpus.find(b"\n")
    while pos >= 0:
        offs.append(pos + 1)
        pos = corpus.find(b"\n", pos + 1)
    return offs


def safe_cuts(corpus: bytes) -> list[int]:
    """Line indexes where the writer may pause for long: no event has records on both sides, so
    a pause there cannot make the live reassembler (wall_timeout) cut an event in two."""
    keys = []
    for line in corpus.decode("utf-8", "surrogateescape").split("\n")[:-1]:
        m = _HDR.match(line)
        keys.append(m.groups() if m else None)
    last = {}
    for i, k in enumerate(keys):
        last[k] = i
    cuts = []
    reach = -1  # the furthest line an event opened so far still has
    for i, k in enumerate(keys):
        if i > 0 and reach < i:
            cuts.append(i)
        reach = max(reach, last[k])
    return cuts


def plan(corpus: bytes, gates: dict[float, str], rotate_at: float, chunk_lines: int = 90,
         pause: float = 0.03) -> list:
    """Writer steps: chunks that end mid-line (the tailer must hold partial lines), a rename
    rotation at a line boundary near ``rotate_at`` (fraction of the corpus; it may fall inside
    an event, as auditd's may), and gates (wait for a file) at safe cuts near the given fractions."""
    offs = line_offsets(corpus)
    n = len(offs) - 1
    cuts = safe_cuts(corpus)
    gate_at = {min(cuts, key=lambda c: abs(c - frac * n)): name for frac, name in gates.items()}
    rot = int(rotate_at * n)
    stops = sorted(set(range(chunk_lines, n, chunk_lines)) | set(gate_at) | {rot})
    steps: list = []
    start = 0
    for i, line in enumerate(stops + [n]):
        end = offs[line]
        if line not in gate_at and line != rot and line != n:
            end += 7 + (i * 37) % 61  # mid-line: the next chunk finishes it
        end = min(end, len(corpus))
        if end > start:
            steps.append(["write", start, end])
            start = end
        if line == rot:
            steps.append(["rotate"])
        if line in gate_at:
            steps.append(["gate", gate_at[line]])
        else:
            steps.append(["sleep", pause])
    assert start == len(corpus)
    return steps


WRITER = r'''
import json, os, sys, time
corpus_path, log, plan_path, progress = sys.argv[1:5]
data = open(corpus_path, "rb").read()
steps = json.load(open(plan_path))
f = open(log, "ab", buffering=0)
for n, step in enumerate(steps):
    op = step[0]
    if op == "write":
        f.write(data[step[1]:step[2]])
    elif op == "rotate":  # as auditd: close, audit.log -> audit.log.1, a new audit.log
        f.close()
        os.rename(log, log + ".1")
        f = open(log, "ab", buffering=0)
    elif op == "gate":
        with open(progress, "w") as p:
            p.write("waiting " + step[1])
        gate = os.path.join(os.path.dirname(progress), step[1])
        end = time.monotonic() + 120
        while not os.path.exists(gate):
            if time.monotonic() > end:
                sys.exit("gate %s never opened" % step[1])
            time.sleep(0.02)
    elif op == "sleep":
        time.sleep(step[1])
f.close()
with open(progress, "w") as p:
    p.write("done")
'''


class Writer:
    def __init__(self, tmp: Path, corpus: Path, log: Path, steps: list) -> None:
        self.dir = tmp
        script = tmp / "writer.py"
        script.write_text(WRITER)
        (tmp / "plan.json").write_text(json.dumps(steps))
        self.progress = tmp / "progress"
        self.proc = subprocess.Popen([sys.executable, str(script), str(corpus), str(log),
                                      str(tmp / "plan.json"), str(self.progress)])

    def state(self) -> str:
        try:
            return self.progress.read_text()
        except OSError:
            return ""

    def wait_state(self, want: str, timeout: float = 60) -> None:
        assert wait_for(lambda: self.state() == want or self.proc.poll() not in (None, 0), timeout), \
            f"writer: {self.state()!r}, wanted {want!r}"
        assert self.state() == want, f"writer exited {self.proc.returncode}"

    def open_gate(self, name: str) -> None:
        (self.dir / name).touch()

    def finish(self, timeout: float = 60) -> None:
        assert self.proc.wait(timeout) == 0
        assert self.state() == "done"


# -------------------------------------------------------------------------- the processes


class Receiver:
    """`auditpipe serve` on a fixed loopback port (so it can be restarted where the shipper posts)."""

    def __init__(self, tmp: Path, port: int, fmt: str = FMT, *extra: str) -> None:
        self.tmp, self.port, self.fmt, self.extra = tmp, port, fmt, extra
        self.out = tmp / "received.jsonl"
        self.url = f"http://127.0.0.1:{port}/ingest"
        self.proc: subprocess.Popen | None = None
        self.starts = 0

    def start(self) -> None:
        self.starts += 1
        self.errlog = self.tmp / f"serve-{self.starts}.err"
        with open(self.errlog, "wb") as err:
            self.proc = subprocess.Popen(
                cli("serve", "--listen", f"127.0.0.1:{self.port}", "--auth", "shared-secret",
                    "--auth-secret", SECRET, "--output", str(self.out), "--format", self.fmt, *self.extra),
                stdout=subprocess.DEVNULL, stderr=err, cwd=self.tmp)
        assert wait_for(lambda: "listening on" in self.errlog.read_text() or self.proc.poll() is not None, 30), \
            "serve did not start"
        assert self.proc.poll() is None, self.errlog.read_text()

    def metric(self, name: str) -> float:
        text = httpx.get(f"http://127.0.0.1:{self.port}/metrics", timeout=5).text
        m = re.search(rf"^{name} ([0-9.e+]+)$", text, re.MULTILINE)
        return float(m.group(1)) if m else 0.0

    def docs(self) -> list[dict]:
        return read_jsonl(self.out)

    def kill9(self) -> None:
        assert self.proc is not None
        kill9(self.proc)

    def stop(self) -> None:
        if self.proc is not None:
            assert stop(self.proc) == 0, self.errlog.read_text()


class Shipper:
    """`auditpipe run` following ``log`` (a file source: no kernel) and posting to ``url``."""

    def __init__(self, tmp: Path, log: Path, url: str, fmt: str = FMT, http_format: str = "json_lines") -> None:
        self.tmp = tmp
        self.status = tmp / "status.json"
        self.checkpoint = tmp / "checkpoint.json"
        self.config = tmp / "run.toml"
        self.config.write_text(f"""
log_level = "info"
[heartbeat]
interval = 0  # the receiver must hold exactly the parsed events
[source]
type = "file"
path = "{log}"
checkpoint = "{self.checkpoint}"
[rules]
files = []
[normalize]
format = "{fmt}"
[[outputs]]
type = "http"
url = "{url}"
format = "{http_format}"
auth = "shared-secret"
secret = "{SECRET}"
gzip = true
tls = false
max_events = {MAX_EVENTS}
max_wait = 0.1
backoff_initial = 0.1
backoff_max = 1.0
timeout = 5.0
queue_dir = "{tmp / 'queue'}"
dead_letter = "{tmp / 'dead.jsonl'}"
drain_timeout = 10.0
[status]
path = "{self.status}"
interval = 0.2
""")
        self.proc: subprocess.Popen | None = None
        self.starts = 0

    def start(self) -> None:
        self.starts += 1
        self.errlog = self.tmp / f"run-{self.starts}.err"
        with open(self.errlog, "wb") as err:
            self.proc = subprocess.Popen(cli("run", "--config", str(self.config)), stdout=subprocess.DEVNULL,
                                         stderr=err, cwd=self.tmp)
        pid = self.proc.pid

        def running() -> bool:
            st = self.read_status()
            return bool(st and st.get("running") and st.get("pid") == pid) or self.proc.poll() is not None
        assert wait_for(running, 30), self.errlog.read_text()
        assert self.proc.poll() is None, self.errlog.read_text()

    def read_status(self) -> dict | None:
        try:
            return json.loads(self.status.read_text())
        except (OSError, ValueError):
            return None

    def kill9(self) -> None:
        assert self.proc is not None
        kill9(self.proc)

    def stop(self) -> None:
        if self.proc is not None:
            assert stop(self.proc) == 0, self.errlog.read_text()


@pytest.fixture
def procs():
    """Every process a test starts, SIGKILLed (by pid) if the test fails half way."""
    started: list = []
    yield started
    for p in started:
        proc = getattr(p, "proc", None)
        if proc is not None and proc.poll() is None:
            kill9(proc)


def start_pipeline(tmp_path: Path, corpus: bytes, steps: list, procs: list, fmt: str = FMT,
                   http_format: str = "json_lines"):
    log = tmp_path / "log" / "audit.log"
    log.parent.mkdir()
    log.touch()  # empty when `run` starts: it follows from the head (no checkpoint: from the end)
    rx = Receiver(tmp_path, free_port(), fmt)
    procs.append(rx)
    rx.start()
    sh = Shipper(tmp_path, log, rx.url, fmt, http_format)
    procs.append(sh)
    sh.start()
    wdir = tmp_path / "writer"
    wdir.mkdir()
    w = Writer(wdir, shared_path("corpus", "raw-node.log"), log, steps)
    procs.append(w)
    return log, rx, sh, w


def assert_delivered(got: list[dict], expected: list[dict], max_dups: int) -> int:
    """Nothing lost, nothing foreign; duplicates are exact copies, at most ``max_dups``.
    Returns the number of duplicates."""
    want = {key(d): canon(d) for d in expected}
    first: dict[tuple, str] = {}
    dups = 0
    for d in got:
        k = key(d)
        c = canon(d)
        assert k in want, f"unexpected event {k}: {c[:300]}"
        if k in first:
            dups += 1
            assert c == first[k], f"duplicate of {k} differs from the first copy"
        else:
            first[k] = c
    missing = set(want) - set(first)
    assert not missing, f"{len(missing)} events lost, e.g. {sorted(missing)[:5]}"
    assert {d["id"] for d in got} == {d["id"] for d in expected}
    for k, c in first.items():
        assert c == want[k], f"event {k} differs from `auditpipe parse`:\n{c[:500]}\n{want[k][:500]}"
    assert dups <= max_dups, f"{dups} duplicates, more than {max_dups}"
    return dups


def duplicate_runs(got: list[dict]) -> list[int]:
    """Lengths of the runs of consecutive documents that were copies of earlier ones."""
    seen: set = set()
    runs: list[int] = []
    prev = False
    for d in got:
        dup = key(d) in seen
        seen.add(key(d))
        if dup:
            if prev:
                runs[-1] += 1
            else:
                runs.append(1)
        prev = dup
    return runs


def all_there(rx: Receiver, expected: list[dict]):
    want = {key(d) for d in expected}
    return lambda: want <= {key(d) for d in rx.docs()}


# ------------------------------------------------------------------------------------ tests


@pytest.mark.slow
def test_run_to_serve_exact_across_rotation(tmp_path, corpus, expected, procs):
    steps = plan(corpus, {}, rotate_at=0.5)
    log, rx, sh, w = start_pipeline(tmp_path, corpus, steps, procs)
    w.finish()
    assert (log.parent / "audit.log.1").exists()
    assert wait_for(all_there(rx, expected), 60), f"{len(rx.docs())} of {len(expected)} events arrived"
    sh.stop()
    st = sh.read_status()
    rx.stop()
    assert st["running"] is False and st["source"] == "file"
    assert st["counters"]["rules_installed"] == 0 and st["kernel_status"] == {}
    out = st["outputs"][0]["stats"]
    assert out["queued"] == 0 and out["dead_letter_events"] == 0
    assert not (tmp_path / "dead.jsonl").exists()
    assert_delivered(rx.docs(), expected, max_dups=0)


OUTAGE = 10.0  # seconds the receiver stays dead


def ending_lines(corpus: bytes) -> list[int]:
    """Index of every line that ends an event (PROCTITLE, standalone records): an event has exactly one."""
    from auditpipe.parsing import parse_line
    from auditpipe.reassembly.reassembler import ends_event

    lines = corpus.decode("utf-8", "surrogateescape").split("\n")[:-1]
    return [i for i, ln in enumerate(lines) if ends_event(parse_line(ln).type_num)]


class KillWindow:
    """Where a killed shipper's checkpoint was (it resumes there) and what the writer had written
    when it died: the lines a restart reads again."""

    def __init__(self, log: Path, checkpoint: Path, offs: list[int]) -> None:
        rotated = log.parent / "audit.log.1"
        cp = next(iter(json.loads(checkpoint.read_text())["files"].values()))
        base = 0
        if rotated.exists() and cp["ino"] != rotated.stat().st_ino:
            base = rotated.stat().st_size  # the checkpoint is in the new audit.log
        written = log.stat().st_size + (rotated.stat().st_size if rotated.exists() else 0)
        self.at = base + cp["offset"]  # in the corpus
        self.first_line = bisect.bisect_left(offs, self.at)
        self.end_line = bisect.bisect_right(offs, written)
        self.on_boundary = offs[self.first_line] == self.at

    def events(self, ends: list[int]) -> int:
        """Events with a record in the window (+1: the one the writer was in the middle of)."""
        return bisect.bisect_left(ends, self.end_line) - bisect.bisect_left(ends, self.first_line) + 1


def assert_resume_points(windows: list[KillWindow], ends: list[int]) -> None:
    """The checkpoint each killed shipper left was a resume point — just after the last record
    of an event — though the log never went quiet there."""
    ended = set(ends)
    for win in windows:
        assert win.on_boundary and (win.first_line == 0 or win.first_line - 1 in ended), vars(win)


def assert_within_batches(got: list[dict], expected: list[dict], kills: int) -> tuple[int, list[int]]:
    """Nothing lost, duplicates exact copies and at most one batch (``MAX_EVENTS``) per kill.

    A kill resends what was queued and not acknowledged: the HTTP batch in flight (the receiver
    may have written it), and, if the shipper died between a write to its durable queue and the
    checkpoint after it, that write (which `run` keeps to one batch). Each is at most a batch, so
    a run of consecutive duplicates is at most two; together, over the kills, they stay within
    one batch per kill (most kills resend nothing)."""
    dups = assert_delivered(got, expected, max_dups=kills * MAX_EVENTS)
    runs = duplicate_runs(got)
    assert all(n <= 2 * MAX_EVENTS for n in runs), runs
    return dups, runs


@pytest.mark.slow
def test_receiver_and_shipper_killed_nothing_lost(tmp_path, corpus, expected, procs):
    steps = plan(corpus, {0.2: "g1", 0.45: "g2", 0.75: "g3"}, rotate_at=0.55, chunk_lines=60, pause=0.04)
    offs, ends = line_offsets(corpus), ending_lines(corpus)
    log, rx, sh, w = start_pipeline(tmp_path, corpus, steps, procs)
    windows = []

    def kill_shipper() -> None:
        sh.kill9()
        windows.append(KillWindow(log, sh.checkpoint, offs))  # final: the dead cannot commit
        sh.start()

    w.wait_state("waiting g1")
    assert wait_for(lambda: len(rx.docs()) >= 100, 30)
    # 1. the receiver dies (SIGKILL) while the shipper is sending
    w.open_gate("g1")
    time.sleep(0.3)
    rx.kill9()
    down = time.monotonic()
    # 2. the shipper dies too, mid-stream, with the receiver down: its durable queue and its
    #    checkpoint carry everything over the restart
    time.sleep(0.4)
    kill_shipper()
    w.wait_state("waiting g2")
    assert wait_for(lambda: ((sh.read_status() or {}).get("outputs") or [{}])[0].get("stats", {}).get("retries", 0),
                    OUTAGE)
    time.sleep(max(0.0, OUTAGE - (time.monotonic() - down)))
    rx.start()
    # 3. with the receiver back, the shipper dies again mid-stream (a batch may be in flight),
    #    just after the rotation
    w.open_gate("g2")
    assert wait_for(lambda: (log.parent / "audit.log.1").exists(), 10)
    time.sleep(0.3)
    kill_shipper()
    w.open_gate("g3")
    w.finish()
    assert wait_for(all_there(rx, expected), 60), f"{len(rx.docs())} documents, {len(expected)} events expected"
    sh.stop()
    rx.stop()
    st = sh.read_status()
    assert st["outputs"][0]["stats"]["queued"] == 0
    assert not (tmp_path / "dead.jsonl").exists()
    assert_resume_points(windows, ends)
    # duplicates: one batch per kill (3 kills) — see assert_within_batches
    dups, runs = assert_within_batches(rx.docs(), expected, kills=3)
    print(f"\n{len(rx.docs())} documents for {len(expected)} events: {dups} duplicates in runs of {runs} "
          f"(batch size {MAX_EVENTS}); read again after the shipper kills: "
          f"{[win.events(ends) for win in windows]} events")


@pytest.mark.slow
def test_shipper_killed_again_and_again_duplicates_stay_within_a_batch(tmp_path, corpus, expected, procs):
    """The shipper SIGKILLed every ~0.4 s while the log is written without pause (no quiet
    moment, a rotation on the way): after each restart it resends at most one batch."""
    steps = plan(corpus, {}, rotate_at=0.6, chunk_lines=30, pause=0.03)
    offs, ends = line_offsets(corpus), ending_lines(corpus)
    log, rx, sh, w = start_pipeline(tmp_path, corpus, steps, procs)
    kills = []
    while w.proc.poll() is None and len(kills) < 8:
        time.sleep(0.4)
        sh.kill9()
        kills.append(KillWindow(log, sh.checkpoint, offs))
        sh.start()
    w.finish()
    assert len(kills) >= 4, "the writer finished too soon to kill the shipper mid-stream"
    assert wait_for(all_there(rx, expected), 60), f"{len(rx.docs())} documents, {len(expected)} events expected"
    sh.stop()
    rx.stop()
    assert_resume_points(kills, ends)
    dups, runs = assert_within_batches(rx.docs(), expected, kills=len(kills))
    print(f"\n{len(kills)} kills: {dups} duplicates in runs of {runs}; read again: "
          f"{[win.events(ends) for win in kills]} events")


def test_shipper_killed_before_its_first_checkpoint_loses_nothing(tmp_path, corpus, procs):
    """`run` starts on an empty audit.log (no checkpoint yet: it starts at the end, 0) and is
    killed while the first event is still open, so it never committed a position. The restart must
    resume at 0, not decide "start at the end" a second time and skip what was written meanwhile."""
    lines = corpus.decode("utf-8", "surrogateescape").split("\n")
    syscall = next(i for i, ln in enumerate(lines) if "type=SYSCALL" in ln and "type=PROCTITLE" in lines[i + 1])
    first, rest = lines[syscall], lines[syscall + 1]  # an event in two writes: SYSCALL, then PROCTITLE
    log = tmp_path / "log" / "audit.log"
    log.parent.mkdir()
    log.touch()
    rx = Receiver(tmp_path, free_port())
    procs.append(rx)
    rx.start()
    sh = Shipper(tmp_path, log, rx.url)
    sh.config.write_text(sh.config.read_text() + "[reassembly]\nwall_timeout = 60.0\ntimeout = 60.0\n")
    procs.append(sh)
    sh.start()
    with open(log, "a", encoding="utf-8", errors="surrogateescape") as f:
        f.write(first + "\n")
    assert wait_for(lambda: (sh.read_status() or {}).get("counters", {}).get("records_received") == 1, 10)
    sh.kill9()  # the event is open: nothing could be committed yet
    with open(log, "a", encoding="utf-8", errors="surrogateescape") as f:
        f.write(rest + "\n")
    sh.start()
    assert wait_for(lambda: len(rx.docs()) >= 1, 15), "the event written before the kill never arrived"
    sh.stop()
    rx.stop()
    docs = rx.docs()
    assert [[r["type"] for r in d["records"]] for d in docs] == [["SYSCALL", "PROCTITLE"]]


@pytest.mark.slow
def test_raw_forwarding_is_reassembled_by_the_receiver(tmp_path, corpus, expected, procs):
    """[[outputs]] format = "raw": the shipper forwards the audit records themselves (Fluent Bit
    json_lines, the lines as read, across the rotation) and the receiver reassembles and
    normalizes them into exactly what `auditpipe parse` makes of the corpus."""
    steps = plan(corpus, {}, rotate_at=0.5, pause=0.01)
    _, rx, sh, w = start_pipeline(tmp_path, corpus, steps, procs, http_format="raw")
    w.finish()
    wait_for(lambda: len(rx.docs()) >= len(expected), 20)
    records = rx.metric("auditpipe_receiver_records_total")
    events_in = rx.metric("auditpipe_receiver_events_in_total")
    sh.stop()
    rx.stop()
    assert (records, events_in) == (len(corpus.splitlines()), 0), "the receiver got events, not raw records"
    assert_delivered(rx.docs(), expected, max_dups=0)
    st = sh.read_status()
    assert st["counters"]["documents"] == 0  # raw outputs only: nothing normalized by the shipper
    assert st["counters"]["records_received"] == records
    assert st["outputs"][0]["stats"]["queued"] == 0 and st["outputs"][0]["stats"]["sent_events"] == records


# ------------------------------------------------------- the receiver's refusals, as a process


def _vm_hwm_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        return next(int(ln.split()[1]) for ln in f if ln.startswith("VmHWM:"))


def _deflate(data_blocks, wbits: int) -> bytes:
    c = zlib.compressobj(9, zlib.DEFLATED, wbits)
    return b"".join(c.compress(b) for b in data_blocks) + c.flush()


def test_serve_refuses_bad_auth_oversize_and_bombs_without_inflating(tmp_path, corpus, procs):
    """`auditpipe serve --max-body 256KB` (what tests/test_http_receiver.py checks on the Receiver
    class, here on the real process and its CLI wiring): bad or missing credentials → 401, also for
    a gzip bomb, which is then not inflated at all (credentials first); a body over the limit on the
    wire → 413, declared or streamed; a body over the limit once inflated → 413, exactly the limit
    → 200; gzip (single- and multi-member) and deflate bombs → 413 after inflating at most
    limit + 1 bytes, the process' peak memory barely moving; and the receiver still serves."""
    cap = 256 << 10
    rx = Receiver(tmp_path, free_port(), FMT, "--max-body", "256KB")
    procs.append(rx)
    rx.start()
    good_lines = corpus.split(b"\n")[:3]
    good = b"".join(json.dumps({"date": 1.0, "log": ln.decode()}).encode() + b"\n" for ln in good_lines)
    auth = {"X-Auditpipe-Secret": SECRET}
    ndjson = {"Content-Type": "application/x-ndjson"}
    gz = {"Content-Encoding": "gzip", **ndjson}
    zeros = [b"\0" * (1 << 20)] * 100
    bomb = _deflate(zeros, 31)  # 100 MB of zeros, ~100 KB on the wire: under the wire limit
    assert len(bomb) < cap
    member = gzip.compress(b"\0" * cap, 9)
    multi = member * max(2, (cap // 2) // len(member))  # many members, each under the limit
    assert len(multi) < cap and len(multi) // len(member) * cap > 50 * cap
    raw_deflate_bomb = _deflate(zeros, 15)
    inflated = "auditpipe_receiver_inflated_bytes_total"

    with httpx.Client(base_url=rx.url.rsplit("/", 1)[0], timeout=30) as c:
        post = c.post
        assert post("/ingest", content=good, headers=ndjson).status_code == 401  # no secret
        assert post("/ingest", content=good, headers={**ndjson, "X-Auditpipe-Secret": "nope"}).status_code == 401
        before = rx.metric(inflated)
        r = post("/ingest", content=bomb, headers={**gz, "X-Auditpipe-Secret": "nope"})
        assert r.status_code == 401 and rx.metric(inflated) == before  # refused before inflating

        over = b"x" * (cap + 1)
        assert post("/ingest", content=over, headers={**auth, "Content-Type": "text/plain"}).status_code == 413

        def chunks():  # no Content-Length: the limit holds while streaming
            for _ in range(cap // 4096 + 2):
                yield b"y" * 4096
        assert post("/ingest", content=chunks(), headers={**auth, "Content-Type": "text/plain"}).status_code == 413

        filler = good + b"\n" * (cap - len(good))  # blank lines pad the body to exactly the limit
        r = post("/ingest", content=gzip.compress(filler), headers={**gz, **auth})
        assert r.status_code == 200 and r.json()["records"] == 3, r.text
        r = post("/ingest", content=gzip.compress(filler + b"\n"), headers={**gz, **auth})
        assert r.status_code == 413, r.text

        hwm = _vm_hwm_kib(rx.proc.pid)
        for body, enc in ((bomb, "gzip"), (multi, "gzip"), (raw_deflate_bomb, "deflate")):
            before = rx.metric(inflated)
            r = post("/ingest", content=body, headers={**ndjson, **auth, "Content-Encoding": enc})
            assert r.status_code == 413 and "decompressed" in r.json()["error"], (enc, r.text)
            assert rx.metric(inflated) - before <= cap + 1
        assert _vm_hwm_kib(rx.proc.pid) - hwm < 32 << 10, "the bombs were inflated in memory"

        r = post("/ingest", content=gzip.compress(good), headers={**gz, **auth})
        assert r.status_code == 200 and r.json()["records"] == 3
        assert c.get("/healthz").json()["status"] == "ok"
        # only the two accepted requests' records got in; every refusal was counted
        assert rx.metric("auditpipe_receiver_records_total") == 6
        text = c.get("/metrics").text
        assert re.search(r'auditpipe_receiver_requests_total\{code="401"\} 3.0', text)
        assert re.search(r'auditpipe_receiver_requests_total\{code="413"\} 6.0', text)
    rx.stop()
    assert {d["id"] for d in rx.docs()} == {line.split(b"audit(")[1].split(b")")[0].decode() for line in good_lines}
