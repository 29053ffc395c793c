#!/usr/bin/env python3
"""Throughput of `auditpipe parse` against its peers, on the same corpus, in one run.

    .venv/bin/python benchmarks/bench_parse.py [--corpus ../shared/corpus/bench.log.gz] [--runs 9]

Every program reads the same decompressed copy of the corpus (ausearch cannot read gzip) and
writes to /dev/null; wall, CPU and peak memory of the whole process (workers included).
Pairwise and interleaved: each round runs laurel and then every program (in an order that
rotates), and each program's ratio to laurel is taken within its round, so a busy neighbour
on a shared machine weighs on both sides of a ratio. Prints per program the median and the
min/median/max of the CPU (and wall) ratios, and checks the targets of issue 14:
`parse --format ecs` CPU ≤ 1.0× laurel's on one core (``--jobs 1``), coalesced ≤ 0.8×, panther
≤ 1.0× with peak memory ≤ 64 MiB, and `parse --jobs 2` wall time ≤ 0.6× laurel's.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_CORPUS = Path(os.environ.get("AUDITPIPE_SHARED", ROOT.parent / "shared")) / "corpus" / "bench.log.gz"

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


TIME = shutil.which("time", path="/usr/bin:/bin")


def timed(cmd, stdin_path=None, cwd=None, stderr=None) -> tuple[float, float, float]:
    """(wall seconds, CPU seconds, peak MiB) of one run of ``cmd`` and the processes it waited for.
    The peak comes from /usr/bin/time around the command (a child forked from this process would
    count this process's pages in its own peak); without it, peak is 0. ``stderr``: a file for
    the command's stderr."""
    peak_file = tempfile.NamedTemporaryFile(prefix="bench-peak-", delete=False)
    peak_file.close()
    if TIME:
        cmd = [TIME, "-f", "%M", "-o", peak_file.name, *cmd]
    with open(stdin_path, "rb") if stdin_path else open(os.devnull, "rb") as stdin:
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, stdin=stdin, stdout=subprocess.DEVNULL, stderr=stderr or subprocess.DEVNULL,
                                cwd=cwd)
        _, status, ru = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - t0
        proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode:
        raise subprocess.CalledProcessError(proc.returncode, cmd)
    text = Path(peak_file.name).read_text().strip()
    os.unlink(peak_file.name)
    peak = int(text.split()[-1]) / 1024 if TIME and text else 0.0
    return wall, ru.ru_utime + ru.ru_stime, peak


LAUREL = "laurel (translate on)"
#: program → (measure, bound): the targets of issue 14, as ratios to laurel in the same round
TARGETS = {
    "auditpipe parse --format ecs --jobs 1": ("cpu", 1.0),
    "auditpipe parse --format coalesced --jobs 1": ("cpu", 0.8),
    "auditpipe parse --format panther --jobs 1": ("cpu", 1.0),
    "auditpipe parse --format ecs --jobs 2": ("wall", 0.6),
}
PANTHER_PEAK_MIB = 64


def _spread(values: list[float]) -> str:
    return f"{min(values):.2f}/{statistics.median(values):.2f}/{max(values):.2f}"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--corpus", type=Path, default=DEFAULT_CORPUS)
    ap.add_argument("--runs", type=int, default=9)
    ap.add_argument("--no-ausearch", action="store_true", help="Leave out ausearch (quicker).")
    args = ap.parse_args()
    auditpipe = shutil.which("auditpipe", path=str(ROOT / ".venv" / "bin")) or shutil.which("auditpipe")
    if not auditpipe or not shutil.which("laurel"):
        print("bench_parse: needs auditpipe (scripts/setup.sh) and laurel (apt install laurel)", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory() as tmp:
        plain = Path(tmp) / "bench.log"
        data = gzip.decompress(args.corpus.read_bytes()) if args.corpus.suffix == ".gz" else args.corpus.read_bytes()
        plain.write_bytes(data)
        records = data.count(b"\n")
        del data  # a forked child counts the parent's pages in its peak until it execs
        (Path(tmp) / "laurel.toml").write_text(LAUREL_CONFIG.format(dir=tmp))
        progs: list[tuple[str, list[str], str | None]] = []
        for fmt, jobs in (("ecs", 1), ("coalesced", 1), ("panther", 1), ("ecs", 2), ("coalesced", 2)):
            # --jobs rows through jobs_probe (the same CLI in the same interpreter): it tells the
            # parent's CPU from the workers'
            head = [auditpipe] if jobs == 1 else [sys.executable, str(Path(__file__).with_name("jobs_probe.py"))]
            progs.append((f"auditpipe parse --format {fmt} --jobs {jobs}",
                          [*head, "parse", str(plain), "--format", fmt, "--jobs", str(jobs), "-o", os.devnull,
                           "--no-progress"], None))
        if shutil.which("ausearch") and not args.no_ausearch:
            progs += [
                ("ausearch --format raw", ["ausearch", "--input", str(plain), "--format", "raw"], None),
                ("ausearch -i", ["ausearch", "-i", "--input", str(plain)], None),
            ]
        laurel = [LAUREL, ["laurel", "-c", str(Path(tmp) / "laurel.toml")], str(plain)]
        runs: dict[str, list[tuple[float, float, float]]] = {LAUREL: []}
        ratios: dict[str, list[tuple[float, float]]] = {name: [] for name, _, _ in progs}
        probes: dict[str, list[tuple[dict, float]]] = {}
        loads: list[float] = []
        for r in range(args.runs):
            loads.append(os.getloadavg()[0])
            ref = timed(laurel[1], laurel[2])
            (Path(tmp) / "laurel.log").unlink(missing_ok=True)
            runs[LAUREL].append(ref)
            order = progs[r % len(progs):] + progs[:r % len(progs)]
            for name, cmd, stdin in order:
                with tempfile.TemporaryFile("w+") as err:
                    m = timed(cmd, stdin, stderr=err)
                    err.seek(0)
                    probe = [line for line in err if line.startswith("jobs_probe ")]
                if probe:
                    probes.setdefault(name, []).append((json.loads(probe[-1].split(" ", 1)[1]), ref[1]))
                runs.setdefault(name, []).append(m)
                ratios[name].append((m[0] / ref[0], m[1] / ref[1]))
        loads.append(os.getloadavg()[0])
    print(f"corpus: {args.corpus} ({records:,} records), {args.runs} rounds, output discarded, "
          f"{os.cpu_count()} cores")
    print("wall/cpu/peak: medians; ratios to laurel's run of the same round as min/median/max")
    print(f"{'program':44} {'wall s':>6} {'cpu s':>6} {'MiB':>5} {'rec/s':>8} {'cpu × laurel':>15} "
          f"{'wall × laurel':>15}  target")
    failed = 0
    for name, ms in runs.items():
        wall = statistics.median(m[0] for m in ms)
        cpu = statistics.median(m[1] for m in ms)
        peak = statistics.median(m[2] for m in ms)
        rs = ratios.get(name)
        cpu_r = _spread([c for _, c in rs]) if rs else "1"
        wall_r = _spread([w for w, _ in rs]) if rs else "1"
        verdict = ""
        if name in TARGETS and rs:
            measure, bound = TARGETS[name]
            got = statistics.median(c if measure == "cpu" else w for w, c in rs)
            ok = got <= bound and (not name.endswith("panther --jobs 1") or peak <= PANTHER_PEAK_MIB)
            verdict = f"{measure} ≤ {bound}×" + (f", ≤ {PANTHER_PEAK_MIB} MiB" if "panther" in name else "")
            verdict += " ok" if ok else " MISSED"
            failed += not ok
        print(f"{name:44} {wall:6.2f} {cpu:6.2f} {peak:5.0f} {records / wall:8,.0f} {cpu_r:>15} {wall_r:>15}  "
              f"{verdict}")
    print(f"targets missed: {failed}" if failed else "all targets met")
    _print_probes(probes)
    print(f"load average (1 min) at each round's start: {_spread(loads)} (min/median/max); wall times and "
          "wall ratios move with it, CPU seconds much less")
    return 0


def _print_probes(probes: dict[str, list[tuple[dict, float]]]) -> None:
    """Where the --jobs runs spent their CPU, and the wall time they would take on two idle cores:
    the parent's CPU (start-up before the fork, then cutting, checking, copying) plus the busiest
    worker's CPU (pessimistic: the parent's share after the fork overlaps the workers)."""
    if not probes:
        return
    print("--jobs runs, CPU seconds (medians): parent before the fork / parent in all / each worker; critical path "
          "= parent + busiest worker, and as a ratio to laurel's CPU (= its wall on an idle core) min/median/max")
    print(f"{'program':44} {'start':>6} {'parent':>6} {'workers':>13} {'regroups':>8} {'critical s':>10} "
          f"{'crit × laurel':>15}")
    for name, rows in probes.items():
        crit = [p["parent"] + max(p["workers"]) for p, _ in rows]
        workers = "/".join(f"{statistics.median(sorted(p['workers'])[i] for p, _ in rows):.2f}"
                           for i in range(len(rows[0][0]["workers"])))
        print(f"{name:44} {statistics.median(p['before_fork'] for p, _ in rows):6.2f} "
              f"{statistics.median(p['parent'] for p, _ in rows):6.2f} {workers:>13} "
              f"{statistics.median(p['regroups'] for p, _ in rows):8.0f} {statistics.median(crit):10.2f} "
              f"{_spread([c / ref for c, (_, ref) in zip(crit, rows, strict=True)]):>15}")


if __name__ == "__main__":
    sys.exit(main())
