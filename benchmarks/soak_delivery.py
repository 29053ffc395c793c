#!/usr/bin/env python3
"""Delivery soak (issue 8, "Done means"): file source → HTTP → `auditpipe serve` under kills.

    .venv/bin/python benchmarks/soak_delivery.py [--minutes 20] [--rate 2000] [--queue-tmpfs-mb 4]

A writer appends audit records to audit.log at ``--rate`` records/s (the bench corpus again and
again; each pass gets its own ``node=soak-N`` and its times moved past the previous pass, so
every event stays unique and time keeps going forward). `auditpipe run`
follows it ([source] type = "file": the kernel is not touched) and ships coalesced events as
gzip'd JSON lines with a shared secret through its durable queue, which lives on a small tmpfs
(root: ``mount -t tmpfs``) that fills while the receiver is down and frees when it is back.
`auditpipe serve` writes what it receives. Every 60 s the receiver is SIGKILLed and restarted
10 s later; every 90 s the shipper is SIGKILLed and restarted at once. RSS of both is sampled
every 5 s.

At the end the writer stops, the pipeline drains, and the receiver's output is compared with
`auditpipe parse` of everything written, by (node, id, record types): events in = events out,
duplicates (allowed: at most one batch, ``max_events``, per kill), RSS first/max/last per
process. Not a test: it prints figures and exits 1 if an event is missing or duplicates pass
the bound.
"""

from __future__ import annotations

import argparse
import collections
import gzip
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from bench_delivery import cli, free_port, wait_for  # same directory: the runner puts it on sys.path

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_CORPUS = Path(os.environ.get("AUDITPIPE_SHARED", ROOT.parent / "shared")) / "corpus" / "bench.log.gz"
SECRET = "soak-secret"
MAX_EVENTS = 200


def rss_mib(pid: int) -> float | None:
    try:
        with open(f"/proc/{pid}/status") as f:
            return next(int(ln.split()[1]) for ln in f if ln.startswith("VmRSS:")) / 1024
    except (OSError, StopIteration):
        return None


class Proc:
    """A process this script starts, restarts and kills by its own pid; RSS sampled."""

    def __init__(self, name: str, argv: list[str], cwd: Path, ready) -> None:
        self.name, self.argv, self.cwd, self.ready = name, argv, cwd, ready
        self.proc: subprocess.Popen | None = None
        self.starts = 0
        self.rss: list[list[float]] = []  # per instance

    def start(self) -> None:
        self.starts += 1
        errlog = self.cwd / f"{self.name}-{self.starts}.err"
        with open(errlog, "wb") as err:
            self.proc = subprocess.Popen(self.argv, stdout=subprocess.DEVNULL, stderr=err, cwd=self.cwd)
        self.rss.append([])
        if not wait_for(lambda: self.ready(self) or self.proc.poll() is not None, 60):
            raise SystemExit(f"{self.name} did not start")
        if self.proc.poll() is not None:
            raise SystemExit(f"{self.name} exited: see {errlog}")

    def kill9(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)

    def stop(self) -> int | None:
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGTERM)
            try:
                return self.proc.wait(120)
            except subprocess.TimeoutExpired:
                self.kill9()
        return self.proc.returncode if self.proc else None

    def sample(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            v = rss_mib(self.proc.pid)
            if v is not None:
                self.rss[-1].append(v)


def corpus_lines(path: Path) -> list[str]:
    with gzip.open(path, "rt", encoding="utf-8", errors="surrogateescape") as f:
        return [ln for ln in f.read().split("\n") if ln]


_STAMP = re.compile(r"msg=audit\((\d+)\.")


def split_stamps(lines: list[str]) -> tuple[list[tuple[str, int, str]], int]:
    """Each line as (text before the seconds, seconds, text after), and the corpus' time span."""
    parts = []
    for ln in lines:
        m = _STAMP.search(ln)
        assert m, ln[:80]
        parts.append((ln[:m.start(1)], int(m.group(1)), ln[m.end(1):]))
    secs = [p[1] for p in parts]
    return parts, max(secs) - min(secs) + 10


def writer(log: Path, lines: list[str], rate: int, stop: threading.Event, written: list[int]) -> None:
    """Append ``rate`` records a second, in 10 steps a second, pass after pass of the corpus."""
    parts, span = split_stamps(lines)
    step = max(1, rate // 10)
    t0 = time.monotonic()
    n = 0
    with open(log, "a", encoding="utf-8", errors="surrogateescape") as f:
        while not stop.is_set():
            p, i = divmod(n, len(lines))
            chunk = parts[i:i + step]
            f.write("".join(f"node=soak-{p} {a}{sec + p * span}{b}\n" for a, sec, b in chunk))
            f.flush()
            n += len(chunk)
            written[0] = n
            time.sleep(max(0.0, t0 + n / rate - time.monotonic()))


def shipper_config(tmp: Path, log: Path, url: str, queue: Path, http_format: str) -> Path:
    cfg = tmp / "run.toml"
    cfg.write_text(f"""
log_level = "warning"
[source]
type = "file"
path = "{log}"
checkpoint = "{tmp / 'checkpoint.json'}"
start = "head"
[rules]
files = []
[normalize]
format = "coalesced"
[[outputs]]
type = "http"
url = "{url}"
format = "{http_format}"
auth = "shared-secret"
secret = "{SECRET}"
gzip = true
tls = false
max_events = {MAX_EVENTS}
max_wait = 0.2
backoff_initial = 0.2
backoff_max = 2.0
timeout = 10.0
queue_dir = "{queue}"
dead_letter = "{tmp / 'dead.jsonl'}"
drain_timeout = 10.0
[status]
path = "{tmp / 'status.json'}"
interval = 1.0
""")
    return cfg


def read_keys(path: Path, counter: collections.Counter) -> None:
    if not path.exists():
        return
    with open(path, "rb") as f:
        for line in f:
            if line.endswith(b"\n"):
                d = json.loads(line)
                counter[(d.get("node"), d["id"], tuple(r["type"] for r in d["records"]))] += 1


def mount_tmpfs(path: Path, mib: int) -> bool:
    path.mkdir()
    if os.geteuid() != 0:
        print("not root: the queue is on an ordinary directory (it never fills)")
        return False
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={mib}m", "tmpfs", str(path)], check=True)
    return True


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--minutes", type=float, default=20.0)
    ap.add_argument("--rate", type=int, default=2000, help="records per second written")
    ap.add_argument("--corpus", type=Path, default=DEFAULT_CORPUS)
    ap.add_argument("--queue-tmpfs-mb", type=int, default=4)
    ap.add_argument("--receiver-every", type=float, default=60.0)
    ap.add_argument("--receiver-down", type=float, default=10.0)
    ap.add_argument("--shipper-every", type=float, default=90.0)
    ap.add_argument("--http-format", choices=["json_lines", "raw"], default="json_lines",
                    help="ship events (json_lines) or the records themselves for the receiver to reassemble")
    args = ap.parse_args()
    lines = corpus_lines(args.corpus)
    tmp = Path(tempfile.mkdtemp(prefix="auditpipe-soak-"))
    log = tmp / "audit.log"
    log.touch()
    queue = tmp / "queue"
    mounted = mount_tmpfs(queue, args.queue_tmpfs_mb)
    out = tmp / "received.jsonl"
    port = free_port()
    rx = Proc("serve", cli("serve", "--listen", f"127.0.0.1:{port}", "--auth", "shared-secret", "--auth-secret",
                           SECRET, "--output", str(out), "--format", "coalesced", "--rotate-size", "0"),
              tmp, lambda p: "listening on" in (tmp / f"serve-{p.starts}.err").read_text())
    status = tmp / "status.json"

    def shipper_ready(p: Proc) -> bool:
        try:
            st = json.loads(status.read_text())
        except (OSError, ValueError):
            return False
        return bool(st.get("running") and st.get("pid") == p.proc.pid)

    sh = Proc("run", cli("run", "--config", str(shipper_config(tmp, log, f"http://127.0.0.1:{port}/ingest", queue,
                                                                 args.http_format))),
              tmp, shipper_ready)
    stop = threading.Event()
    written = [0]
    kills = {"serve": 0, "run": 0}
    queue_full_seen = 0
    try:
        rx.start()
        sh.start()
        wt = threading.Thread(target=writer, args=(log, lines, args.rate, stop, written))
        wt.start()
        t0 = time.monotonic()
        end = t0 + args.minutes * 60
        next_rx, next_sh, next_sample = t0 + args.receiver_every, t0 + args.shipper_every, t0
        rx_back = None
        while time.monotonic() < end:
            now = time.monotonic()
            if now >= next_sample:
                rx.sample()
                sh.sample()
                if mounted:
                    st = os.statvfs(queue)
                    queue_full_seen += st.f_bavail * st.f_frsize < 256 << 10
                next_sample += 5
            if rx_back is None and now >= next_rx:
                rx.kill9()
                kills["serve"] += 1
                rx_back = now + args.receiver_down
                next_rx += args.receiver_every
            if rx_back is not None and now >= rx_back:
                rx.start()
                rx_back = None
            if now >= next_sh:
                sh.kill9()
                kills["run"] += 1
                sh.start()
                next_sh += args.shipper_every
            time.sleep(0.1)
        stop.set()
        wt.join()
        if rx_back is not None:
            rx.start()
        print(f"wrote {written[0]:,} records in {args.minutes:g} min; draining …", flush=True)
        subprocess.run(cli("parse", str(log), "--format", "coalesced", "-o", str(tmp / "expected.jsonl")),
                       check=True, capture_output=True)
        expected: collections.Counter = collections.Counter()
        read_keys(tmp / "expected.jsonl", expected)
        got: collections.Counter = collections.Counter()

        def drained() -> bool:
            got.clear()
            read_keys(out, got)
            return set(expected) <= set(got)
        wait_for(drained, 300, 2.0)
        sh.stop()
        rx.stop()
        got.clear()
        read_keys(out, got)
    finally:
        stop.set()
        sh.kill9()
        rx.kill9()
        if mounted:
            subprocess.run(["umount", "-l", str(queue)], check=False)
    missing = sum(1 for k in expected if k not in got)
    extra = sum(1 for k in got if k not in expected)
    dups = sum(n - 1 for n in got.values() if n > 1)
    bound = MAX_EVENTS * (kills["serve"] + kills["run"])

    def rss_line(p: Proc) -> str:
        flat = [v for inst in p.rss for v in inst]
        if not flat:
            return f"{p.name}: no samples"
        firsts = [inst[0] for inst in p.rss if inst]
        lasts = [inst[-1] for inst in p.rss if inst]
        return (f"{p.name}: RSS MiB first {firsts[0]:.0f}, max {max(flat):.0f}, last {lasts[-1]:.0f}; "
                f"per instance first→last: {', '.join(f'{a:.0f}→{b:.0f}' for a, b in zip(firsts, lasts))}")
    print(f"events expected {len(expected):,}, received distinct {sum(1 for k in got if k in expected):,}, "
          f"missing {missing:,}, unexpected {extra:,}, duplicates {dups:,} (bound {bound:,}: {MAX_EVENTS} per kill)")
    tmpfs = (f"{args.queue_tmpfs_mb} MiB, nearly full in {queue_full_seen} of the 5-s samples" if mounted
             else "not used")
    print(f"kills: receiver {kills['serve']}, shipper {kills['run']}; queue tmpfs {tmpfs}")
    print(rss_line(sh))
    print(rss_line(rx))
    dead = tmp / "dead.jsonl"
    if dead.exists():
        print(f"dead letters: {len(dead.read_bytes().splitlines())}")
    print(f"work directory (logs, output): {tmp}")
    return 0 if missing == 0 and extra == 0 and dups <= bound else 1


if __name__ == "__main__":
    sys.exit(main())
