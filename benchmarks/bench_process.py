#!/usr/bin/env python3
"""What the process-context stage costs: CPU with the stage on vs off, and memory per process.

    .venv/bin/python benchmarks/bench_process.py [--corpus ../shared/corpus/bench.log.gz] [--runs 3]
    sudo .venv/bin/python benchmarks/bench_process.py --live [--rate 1000] [--seconds 10]

Offline: the ECS pipeline over the bench corpus (parse → reassemble → normalize) with and
without ProcessStage (records only, no /proc: the corpus is another time's), CPU seconds of
this process, median of --runs; prints the ratio and the stage's cost per event.

Memory: a table of 100,000 live processes (real-looking executables, arguments, a cgroup, a
parent chain), each annotated once so its cached output dicts exist, measured with tracemalloc.

--live (root): registers as the audit daemon with one rule (execve of the load generator's
children, by its login uid), runs ``execload RATE SECONDS`` (../shared/bench) and feeds what
the kernel sends through the ECS pipeline in this process and encodes each document as the file
output does (to /dev/null), twice with the stage reading /proc and twice without; prints the CPU
per event of this process for each and the ratio (issue 12's target is ≤ 1.15×). The pipeline
alone (no reader thread, queue or file write): `auditpipe run` itself is measured by
``benchmarks/live_overhead.sh --process``.
"""

from __future__ import annotations

import argparse
import gc
import gzip
import os
import random
import statistics
import subprocess
import sys
import time
import tracemalloc
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "tests"))

from auditpipe.normalize import make_normalizer
from auditpipe.pipeline.core import Pipeline
from auditpipe.process.config import ProcessConfig
from auditpipe.process.stage import ProcessStage, staged

SHARED = Path(os.environ.get("AUDITPIPE_SHARED", ROOT.parent / "shared"))
DEFAULT_CORPUS = SHARED / "corpus" / "bench.log.gz"


def cpu() -> float:
    t = os.times()
    return t.user + t.system


def offline(lines: list[str], with_stage: bool) -> tuple[float, int]:
    normalize = make_normalizer("ecs")
    if with_stage:
        st = ProcessStage(ProcessConfig(read_proc=False), "ecs")
        normalize = staged(normalize, [st], time.time)
    pl = Pipeline(normalize)
    t0 = cpu()
    docs = pl.feed_lines(lines)
    docs += pl.flush()
    return cpu() - t0, pl.reassembler.events


def memory(n: int = 100_000) -> tuple[int, int]:
    """Bytes tracemalloc sees for a table of ``n`` processes (and for the stage's caches)."""
    rnd = random.Random(1)
    exes = [f"/usr/bin/tool{i}" for i in range(200)]
    st = ProcessStage(ProcessConfig(read_proc=False, max_entries=2 * n), "ecs")
    cg = st._cgroup("0::/system.slice/docker-" + "ab" * 32 + ".scope\n")
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    t = st.table
    procs = []
    for pid in range(2, n + 2):
        p = t.new(pid, None, 1_700_000_000.0 + pid, True, 0.0)
        p.ticks = pid
        exe = exes[rnd.randrange(len(exes))]
        p.exe = t.intern(exe)
        p.name = t.intern(exe.rsplit("/", 1)[1])
        p.args = [p.name, "--option", f"value-{pid}"]
        p.uid = p.euid = p.auid = "1000"
        p.ses = "3"
        p.sid = p.pgid = pid
        p.cg = cg
        if procs:
            par = procs[rnd.randrange(max(0, len(procs) - 50), len(procs))]
            p.parent, p.ppid = par, par.pid
        procs.append(p)
    table_bytes = tracemalloc.get_traced_memory()[0] - before
    for p in procs:  # steady state: every process was in an event once
        st._annotate({}, {"pid": p.pid}, p, p.ppid)
    total = tracemalloc.get_traced_memory()[0] - before
    tracemalloc.stop()
    return table_bytes, total


def live(rate: int, seconds: float) -> None:
    from conftest_kernel import kernel_lock  # the kernel tests' host-wide lock

    from auditpipe.kernel.netlink import AuditNetlink, open_unicast
    from auditpipe.kernel.rules import compile_rules
    from auditpipe.sinks.encode import to_lines

    load = "/tmp/execload"
    if not os.path.exists(load):
        subprocess.run(["gcc", "-O2", "-o", load, str(SHARED / "bench" / "execload.c")], check=True)
    auid = 7_900_000 + os.getpid() % 100_000
    (rule,) = compile_rules(f"-a always,exit -F arch=b64 -S execve -F auid={auid} -F key=bench-process")
    results = {}
    with kernel_lock(), AuditNetlink() as nl:
        status = nl.get_status()
        if status["pid"]:
            sys.exit(f"another audit daemon is registered (pid {status['pid']}): stop it first")
        try:
            nl.add_rule(rule.data)
            nl.set_status(enabled=1, backlog_limit=8192)
            for on in ("off", "on", "on, no /proc") * 2:
                normalize = make_normalizer("ecs")
                st = None
                if on != "off":
                    cfg = ProcessConfig(state_dir="", read_proc=on == "on")
                    st = ProcessStage.for_live(cfg, "ecs", time.time())
                    normalize = staged(normalize, [st], time.time)
                pl = Pipeline(normalize)
                with open_unicast() as rx:
                    lost0 = nl.get_status()["lost"]
                    t0 = cpu()
                    end = float("inf")
                    gen = subprocess.Popen(["sh", "-c", f'echo {auid} > /proc/self/loginuid && exec "$@"', "sh",
                                            load, str(rate), str(seconds)], stdout=subprocess.DEVNULL)
                    docs = 0
                    with open(os.devnull, "wb") as out:  # encoded and written, as `run` does
                        while gen.poll() is None or time.monotonic() < end:
                            if gen.poll() is not None and end == float("inf"):
                                end = time.monotonic() + 1.0
                            for t, payload in rx.recv_messages(timeout=0.05):
                                got = pl.feed_kernel(t, payload)
                                if got:
                                    out.write(b"".join(to_lines(got)))
                                    docs += len(got)
                        got = pl.flush()
                        out.write(b"".join(to_lines(got)))
                        docs += len(got)
                    used = cpu() - t0
                    lost = nl.get_status()["lost"] - lost0
                results.setdefault(on, []).append(used / max(docs, 1))
                print(f"live stage {on}: {docs} events, {used:.2f} s CPU, kernel lost {lost}"
                      + (f", table {len(st.table)}" if st else ""), flush=True)
        finally:
            nl.set_status(enabled=status["enabled"], backlog_limit=status["backlog_limit"])
            nl.delete_rule(rule.data)
    off = statistics.median(results["off"])
    for variant in ("on", "on, no /proc"):
        on = statistics.median(results[variant])
        print(f"live {rate}/s: CPU per event with the stage ({variant}) / without = {on / off:.2f}x "
              f"({1e6 * on:.0f} µs vs {1e6 * off:.0f} µs per event, median)")


def main() -> None:
    gc.freeze()  # the collector settings every auditpipe command uses (cli/__init__.py)
    gc.set_threshold(100_000, 50, 100)
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--corpus", default=str(DEFAULT_CORPUS))
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--live", action="store_true")
    ap.add_argument("--rate", type=int, default=1000)
    ap.add_argument("--seconds", type=float, default=10)
    a = ap.parse_args()
    if a.live:
        live(a.rate, a.seconds)
        return
    with gzip.open(a.corpus, "rt", encoding="utf-8", errors="surrogateescape") as f:
        lines = f.read().splitlines()
    off, on = [], []
    for _ in range(a.runs):
        t, events = offline(lines, False)
        off.append(t)
        t, _ = offline(lines, True)
        on.append(t)
    m_off, m_on = statistics.median(off), statistics.median(on)
    print(f"offline ECS over {len(lines)} records / {events} events: stage off {m_off:.2f} s, "
          f"on {m_on:.2f} s CPU = {m_on / m_off:.2f}x; {1e6 * (m_on - m_off) / events:.1f} µs per event")
    table, total = memory()
    print(f"memory for 100,000 live processes: table {table / 1e6:.1f} MB "
          f"({table / 100_000:.0f} B each), with cached output dicts {total / 1e6:.1f} MB "
          f"({total / 100_000:.0f} B each)")


if __name__ == "__main__":
    main()
