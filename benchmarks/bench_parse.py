#!/usr/bin/env python3
"""Throughput of `auditpipe parse` against its peers, on the same corpus, in one run.

    .venv/bin/python benchmarks/bench_parse.py [--corpus ../shared/corpus/bench.log.gz] [--runs 3]

Every program reads the same decompressed copy of the corpus (ausearch cannot read gzip) and
writes to /dev/null; wall and CPU time of the whole process, median of --runs. Prints records/s
and each program's wall time relative to laurel's. Speed targets live here, not in the tests:
issue 2 asks coalesced ≤ 1.5× laurel's wall time, issue 5 the same for ECS.
"""

from __future__ import annotations

import argparse
import gzip
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_CORPUS = ROOT.parent / "shared" / "corpus" / "bench.log.gz"

LAUREL_CONFIG = """directory = "{dir}"
user = "root"
statusreport-period = 0
input = "stdin"
[auditlog]
file = "laurel.log"
size = 10000000000
generations = 1
[transform]
execve-argv = ["array"]
[translate]
universal = true
user-db = true
drop-raw = false
[enrich]
pid = false
execve-env = []
container = false
systemd = false
script = false
"""


def timed(cmd, stdin_path=None, cwd=None) -> tuple[float, float]:
    """(wall seconds, CPU seconds of the child) for one run."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    with open(stdin_path, "rb") if stdin_path else open(os.devnull, "rb") as stdin:
        subprocess.run(cmd, stdin=stdin, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True, cwd=cwd)
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--corpus", type=Path, default=DEFAULT_CORPUS)
    ap.add_argument("--runs", type=int, default=3)
    args = ap.parse_args()
    auditpipe = shutil.which("auditpipe", path=str(ROOT / ".venv" / "bin")) or shutil.which("auditpipe")
    with tempfile.TemporaryDirectory() as tmp:
        plain = Path(tmp) / "bench.log"
        data = gzip.decompress(args.corpus.read_bytes()) if args.corpus.suffix == ".gz" else args.corpus.read_bytes()
        plain.write_bytes(data)
        records = data.count(b"\n")
        progs: list[tuple[str, list[str], str | None]] = []
        if auditpipe:
            progs += [
                ("auditpipe parse --format coalesced", [auditpipe, "parse", str(plain), "-o", os.devnull, "--no-progress"], None),
                ("auditpipe parse --format ecs", [auditpipe, "parse", str(plain), "--format", "ecs", "-o", os.devnull, "--no-progress"], None),
                ("auditpipe parse --format panther", [auditpipe, "parse", str(plain), "--format", "panther", "-o", os.devnull, "--no-progress"], None),
            ]
        if shutil.which("laurel"):
            (Path(tmp) / "laurel.toml").write_text(LAUREL_CONFIG.format(dir=tmp))
            progs.append(("laurel (translate on)", ["laurel", "-c", str(Path(tmp) / "laurel.toml")], str(plain)))
        if shutil.which("ausearch"):
            progs += [
                ("ausearch --format raw", ["ausearch", "--input", str(plain), "--format", "raw"], None),
                ("ausearch -i", ["ausearch", "-i", "--input", str(plain)], None),
            ]
        results = {}
        for name, cmd, stdin in progs:
            runs = []
            for _ in range(args.runs):
                try:
                    runs.append(timed(cmd, stdin))
                except subprocess.CalledProcessError as e:
                    print(f"{name}: failed ({e})", file=sys.stderr)
                    break
                (Path(tmp) / "laurel.log").unlink(missing_ok=True)
            if runs:
                results[name] = (statistics.median(w for w, _ in runs), statistics.median(c for _, c in runs),
                                 min(w for w, _ in runs))
    ref, _, ref_best = results.get("laurel (translate on)", (None, None, None))
    print(f"corpus: {args.corpus} ({records:,} records), {args.runs} runs each, output discarded")
    print("(wall/cpu: median; best: the fastest run — on a shared VM the best is the steadier figure)")
    print(f"{'program':38} {'wall s':>7} {'cpu s':>7} {'best s':>7} {'records/s':>11} {'× laurel':>9} {'best ×':>7}")
    for name, (wall, cpu, best) in results.items():
        ratio = f"{wall / ref:.2f}" if ref else "-"
        best_ratio = f"{best / ref_best:.2f}" if ref_best else "-"
        print(f"{name:38} {wall:7.2f} {cpu:7.2f} {best:7.2f} {records / wall:11,.0f} {ratio:>9} {best_ratio:>7}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
