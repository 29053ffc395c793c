#!/usr/bin/env python3
"""Throughput of `auditpipe serve --workers 1` against `--workers 2`, in one run (issue 14).

    .venv/bin/python benchmarks/bench_serve.py [--corpus ../shared/corpus/bench.log.gz] [--runs 5]
        [--senders 8] [--body-records 2000] [--format coalesced] [--repeat 1] [--control]

The corpus is split into ``--senders`` contiguous parts, one per sender (``X-Auditpipe-Sender``,
so each part is reassembled in one place), and each part into ``text/plain`` bodies of
``--body-records`` raw lines, built before the clock starts. The senders cost little CPU: one
asyncio task each, a keep-alive socket, the pre-built request written whole and the answer read
(every answer must be 200). Each round starts `serve --workers 1` and `serve --workers 2` (the
order alternates), posts everything, and takes the wall time from the first request to the last
answer, and the CPU seconds (utime + stime, /proc/PID/stat) of the serve process and its
workers over the same interval. The output is /dev/null (the file output, no fsync).

Prints per worker count the median records/s, records per CPU-second of the serve processes
(robust to other load on the machine, unlike wall time), the cores each used (CPU seconds / wall
seconds: below 1 and 2, the machine was busy with other work), the seconds their threads were
runnable but waited for a CPU per second of the run (schedstat: what other load took), and the ratios workers=2 /
workers=1 within each round as min/median/max, with the load average before and after. Target
(issue 14): ≥ 1.8× the records/s with 2 workers on 2 cores. On a shared machine run it under
``nice -n -20`` (root) so that the processes measured get the cores first.

``--control`` adds a third mode each round, ``1+1``: two one-process serves side by side, half
the senders each (its "front" column is the first of the two). It does the work of
``--workers 2`` with no split at all, so its CPU ratio to ``--workers 1`` is what two busy cores
cost by themselves (shared caches, a sibling hyper-thread), the floor for ``--workers 2``'s.
"""

from __future__ import annotations

import argparse
import asyncio
import gzip
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench_parse import _spread  # min/median/max, as the other benchmarks print them

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_CORPUS = Path(os.environ.get("AUDITPIPE_SHARED", ROOT.parent / "shared")) / "corpus" / "bench.log.gz"
TARGET = 1.8


def build_requests(lines: list[bytes], senders: int, per_body: int) -> list[list[bytes]]:
    """Per sender, its whole HTTP/1.1 requests (headers and body), in order."""
    part = -(-len(lines) // senders)
    out = []
    for n in range(senders):
        mine = lines[n * part:(n + 1) * part]
        reqs = []
        for i in range(0, len(mine), per_body):
            body = b"\n".join(mine[i:i + per_body]) + b"\n"
            head = (f"POST /ingest HTTP/1.1\r\nHost: bench\r\nX-Auditpipe-Sender: bench-{n}/1\r\n"
                    f"Content-Type: text/plain\r\nContent-Length: {len(body)}\r\n\r\n").encode()
            reqs.append(head + body)
        out.append(reqs)
    return out


async def _sender(port: int, reqs: list[bytes]) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        for req in reqs:
            writer.write(req)
            await writer.drain()
            head = await reader.readuntil(b"\r\n\r\n")
            status = head.split(b" ", 2)[1]
            m = re.search(rb"(?i)content-length:\s*(\d+)", head)
            answer = await reader.readexactly(int(m.group(1))) if m else b""
            if status != b"200":
                raise RuntimeError(f"serve answered {status.decode()}: {answer[:200]!r}")
    finally:
        writer.close()


async def post_all(port: int | list[int], requests: list[list[bytes]]) -> None:
    """Every sender at once; with several ports, sender i posts to port i % len(ports)."""
    ports = port if isinstance(port, list) else [port]
    await asyncio.gather(*(_sender(ports[i % len(ports)], reqs) for i, reqs in enumerate(requests)))


def cpu_seconds(pids: list[int]) -> float:
    tick = os.sysconf("SC_CLK_TCK")
    total = 0
    for pid in pids:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rpartition(")")[2].split()
        total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / tick


def waited_seconds(pids: list[int]) -> float:
    """Seconds the threads of ``pids`` were runnable but waiting for a CPU (schedstat)."""
    total = 0
    for pid in pids:
        for tid in os.listdir(f"/proc/{pid}/task"):
            try:
                with open(f"/proc/{pid}/task/{tid}/schedstat") as f:
                    total += int(f.read().split()[1])
            except FileNotFoundError:
                pass  # a thread that ended
    return total / 1e9


def children(pid: int) -> list[int]:
    with open(f"/proc/{pid}/task/{pid}/children") as f:
        return [int(x) for x in f.read().split()]


def start_serve(workers: int, fmt: str, err: Path) -> tuple[subprocess.Popen, int]:
    with open(err, "wb") as e:
        proc = subprocess.Popen([sys.executable, "-m", "auditpipe", "serve", "--listen", "127.0.0.1:0", "--auth",
                                 "none", "--output", os.devnull, "--fsync", "never", "--rotate-size", "0",
                                 "--format", fmt, "--workers", str(workers)],
                                stdout=subprocess.DEVNULL, stderr=e, cwd=ROOT)
    end = time.monotonic() + 60
    while time.monotonic() < end and proc.poll() is None:
        m = re.search(r"listening on http://[^:]*:(\d+)", err.read_text())
        if m:
            return proc, int(m.group(1))
        time.sleep(0.05)
    proc.kill()
    raise RuntimeError(f"serve did not start: {err.read_text()}")


def one_run(workers: int, fmt: str, requests: list[list[bytes]], tmp: Path
            ) -> tuple[float, float, float, float, float]:
    """(wall seconds, CPU seconds of serve and its workers, of the front alone, of the senders,
    seconds serve's threads waited for a CPU) for posting everything. ``workers`` 0: the
    control — two one-process serves side by side, half the senders each."""
    started = [start_serve(max(workers, 1), fmt, tmp / f"serve-{workers}-{i}.err") for i in range(1 if workers else 2)]
    try:
        pids = [pid for proc, _ in started for pid in (proc.pid, *children(proc.pid))]
        assert len(pids) == (workers + 1 if workers > 1 else len(started)), pids
        waited0 = waited_seconds(pids)
        cpu0, front0, own0, t0 = cpu_seconds(pids), cpu_seconds(pids[:1]), time.process_time(), time.perf_counter()
        asyncio.run(post_all([port for _, port in started], requests))
        wall, cpu = time.perf_counter() - t0, cpu_seconds(pids) - cpu0
        front, own = cpu_seconds(pids[:1]) - front0, time.process_time() - own0
        waited = waited_seconds(pids) - waited0
    finally:
        rcs = []
        for proc, _ in started:
            proc.send_signal(signal.SIGTERM)
            rcs.append(proc.wait(120))
    if any(rcs):
        raise RuntimeError(f"serve exited {rcs}: {(tmp / f'serve-{workers}-0.err').read_text()}")
    return wall, cpu, front, own, waited


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--corpus", type=Path, default=DEFAULT_CORPUS)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--senders", type=int, default=8)
    ap.add_argument("--body-records", type=int, default=2000)
    ap.add_argument("--format", default="coalesced", choices=("coalesced", "ecs", "panther", "jsonl"))
    ap.add_argument("--repeat", type=int, default=1, help="Post the corpus this many times per run.")
    ap.add_argument("--control", action="store_true",
                    help="Also run two one-process serves side by side (half the senders each) each round: "
                         "what two busy cores cost the same work, whatever the design of --workers.")
    args = ap.parse_args()
    data = gzip.decompress(args.corpus.read_bytes()) if args.corpus.suffix == ".gz" else args.corpus.read_bytes()
    lines = [ln for ln in data.split(b"\n") if ln] * args.repeat
    del data
    requests = build_requests(lines, args.senders, args.body_records)
    records = len(lines)
    load_before = os.getloadavg()
    modes = (1, 2, 0) if args.control else (1, 2)
    results: dict[int, list[tuple[float, float, float, float, float]]] = {m: [] for m in modes}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.runs):
            for workers in (modes if r % 2 == 0 else modes[::-1]):
                results[workers].append(one_run(workers, args.format, requests, Path(tmp)))
    load_after = os.getloadavg()
    print(f"corpus: {args.corpus} × {args.repeat} ({records:,} records), {args.senders} senders, "
          f"{args.body_records} records a body, --format {args.format}, {args.runs} rounds, {os.cpu_count()} cores")
    print(f"load average before {load_before[0]:.2f} {load_before[1]:.2f}, after {load_after[0]:.2f} "
          f"{load_after[1]:.2f} (wall-time figures depend on it; records per CPU-second do not)")
    print(f"{'workers':>7} {'rec/s min/median/max':>28} {'rec per CPU-s (median)':>23} {'front CPU %':>11} "
          f"{'senders CPU %':>13} {'cores used':>10} {'waited for a CPU':>16}")
    for workers, ms in results.items():
        rates = [records / m[0] for m in ms]
        print(f"{workers or '1+1':>7} {min(rates):>9,.0f}/{statistics.median(rates):,.0f}/{max(rates):,.0f} "
              f"{statistics.median(records / m[1] for m in ms):>23,.0f} "
              f"{statistics.median(100 * m[2] / m[1] for m in ms):>11.0f} "
              f"{statistics.median(100 * m[3] / m[1] for m in ms):>13.0f} "
              f"{statistics.median(m[1] / m[0] for m in ms):>10.2f} "
              f"{statistics.median(m[4] / m[0] for m in ms):>14.2f} s/s")
    speedups = [one[0] / two[0] for one, two in zip(results[1], results[2], strict=True)]
    cpu_cost = [two[1] / one[1] for one, two in zip(results[1], results[2], strict=True)]
    print(f"throughput workers=2 / workers=1 (pairwise, min/median/max): {_spread(speedups)}")
    print(f"CPU seconds workers=2 / workers=1 (the price of the split): {_spread(cpu_cost)}")
    if args.control:
        pair = [two[1] / one[1] for one, two in zip(results[1], results[0], strict=True)]
        print(f"CPU seconds of two one-process serves side by side / workers=1 (two busy cores): {_spread(pair)}")
        print(f"throughput of the two side by side / workers=1: "
              f"{_spread([one[0] / two[0] for one, two in zip(results[1], results[0], strict=True)])}")
    # what the same CPU cost gives on two otherwise idle cores: one process uses one core (the
    # GIL), the workers two, less what the senders take
    idle = [(2 - two[3] / two[0]) / c for c, two in zip(cpu_cost, results[2], strict=True)]
    print(f"on two idle cores, from the CPU cost (a projection, not a measurement): {_spread(idle)}")
    ok = statistics.median(speedups) >= TARGET
    print(f"target ≥ {TARGET}×: {'ok' if ok else 'MISSED'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
