#!/usr/bin/env python3
"""The Parquet lake against the JSON-lines file output, and DuckDB against aureport, in one run.

    .venv/bin/python benchmarks/bench_lake.py [--corpus ../shared/corpus/bench.log.gz] [--copies 50] [--runs 3]

1. Write: the bench corpus normalized to ECS once; then the same documents (serialized, as the
   queue hands them over) into the file output (``FileSink``) and into the lake
   (``LakeWriter.send`` in batches of 5000, then ``close``). Events/s of each, bytes on disk per
   event. Target (issue 10): lake ≤ 25 % of JSON-lines bytes.
2. Query: the corpus shifted in time ``--copies`` times (≈ 1 M events with the default 50):
   a lake of those ECS documents, and the equivalent audit.log (every record's time and serial
   shifted the same way). "Count events by action" and "failed logins by address" with DuckDB
   (``auditpipe query``, the whole process) against aureport's nearest reports on the log:
   ``aureport -e --summary`` (events by type) and ``aureport -l --failed`` (failed logins with
   their address; counting its rows by address is not timed). Median of ``--runs``. Target:
   DuckDB 10× faster than aureport.
"""

from __future__ import annotations

import argparse
import gzip
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timedelta
from pathlib import Path

import orjson

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from auditpipe.cli.common import build_normalizer  # noqa: E402
from auditpipe.lake.config import LakeOutput  # noqa: E402
from auditpipe.lake.writer import LakeWriter  # noqa: E402
from auditpipe.pipeline import Pipeline  # noqa: E402
from auditpipe.reassembly import Reassembler  # noqa: E402
from auditpipe.sinks.file import FileSink  # noqa: E402

DEFAULT_CORPUS = ROOT.parent / "shared" / "corpus" / "bench.log.gz"
BATCH = 5000
_STAMP = re.compile(rb"audit\((\d+)\.(\d+):(\d+)\)")

BY_ACTION = "SELECT action, count(*) AS n FROM events GROUP BY action ORDER BY n DESC"
FAILED_BY_ADDRESS = ("SELECT source_ip, count(*) AS failed FROM events WHERE message_type = 'user_login' "
                     "AND outcome = 'failure' GROUP BY source_ip ORDER BY failed DESC")


def ecs_payloads(log: bytes) -> list[bytes]:
    pipe = Pipeline(build_normalizer("ecs"), Reassembler())
    lines = log.decode("utf-8", "surrogateescape").split("\n")
    docs = pipe.feed_lines(lines, "bench", 1) + pipe.flush()
    return [orjson.dumps(d) for d in docs]


def du(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file() and not p.name.startswith("."))


def bench_write(payloads: list[bytes], tmp: Path, runs: int) -> None:
    def jsonl() -> Path:
        out = tmp / "events.jsonl"
        out.unlink(missing_ok=True)
        sink = FileSink(out, max_bytes=0)
        for i in range(0, len(payloads), BATCH):
            sink.write(payloads[i:i + BATCH])
        sink.close()
        return out

    def lake() -> Path:
        out = tmp / "lake-write"
        shutil.rmtree(out, ignore_errors=True)
        w = LakeWriter(LakeOutput(path=str(out)))
        for i in range(0, len(payloads), BATCH):
            w.send(payloads[i:i + BATCH])
        w.close()
        return out

    rows = []
    for name, fn in (("JSON-lines file output", jsonl), ("lake (Parquet, zstd)", lake)):
        times = []
        for _ in range(runs):
            t0 = time.perf_counter()
            path = fn()
            times.append(time.perf_counter() - t0)
        size = path.stat().st_size if path.is_file() else du(path)
        rows.append((name, statistics.median(times), size))
    n = len(payloads)
    print(f"\n1. write {n:,} ECS events (median of {runs})")
    print(f"{'output':<26}{'seconds':>9}{'events/s':>12}{'bytes':>14}{'bytes/event':>13}")
    for name, sec, size in rows:
        print(f"{name:<26}{sec:>9.2f}{n / sec:>12,.0f}{size:>14,}{size / n:>13.1f}")
    ratio = rows[1][2] / rows[0][2]
    print(f"lake bytes = {ratio:.1%} of JSON-lines (target ≤ 25%: {'met' if ratio <= 0.25 else 'NOT met'}); "
          f"lake write speed = {rows[0][1] / rows[1][1]:.2f}× the file output's")


def bench_parse(log: bytes, tmp: Path, runs: int) -> None:
    """The whole command: audit.log → ECS → JSON lines, or → lake."""
    plain = tmp / "bench.log"
    plain.write_bytes(log)
    auditpipe = str(ROOT / ".venv" / "bin" / "auditpipe")
    base = [auditpipe, "parse", str(plain), "--format", "ecs", "--no-progress"]
    print(f"\n   the whole command, {plain.stat().st_size:,} bytes of audit.log (median of {runs})")
    rows = []
    for name, extra in (("parse -o events.jsonl", ["-o", str(tmp / "e.jsonl")]),
                        ("parse --lake DIR", ["--lake", str(tmp / "parse-lake")])):
        times = []
        for _ in range(runs):
            shutil.rmtree(tmp / "parse-lake", ignore_errors=True)
            times.append(timed(base + extra)[0])
        rows.append((name, statistics.median(times)))
        print(f"   {name:<24}{rows[-1][1]:>8.2f} s")
    print(f"   lake / JSON-lines wall time: {rows[1][1] / rows[0][1]:.2f}")


def shift_log(log: bytes, copies: int, span: int, serial_span: int, out: Path) -> None:
    with open(out, "wb") as f:
        for k in range(copies):
            f.write(_STAMP.sub(_shifter(k * span, k * serial_span), log))


def _shifter(ds: int, dn: int):
    return lambda m: b"audit(%d.%s:%d)" % (int(m[1]) + ds, m[2], int(m[3]) + dn)


def shift_docs(payloads: list[bytes], copies: int, span: int, serial_span: int, lake: Path) -> int:
    w = LakeWriter(LakeOutput(path=str(lake)))
    docs = [orjson.loads(p) for p in payloads]
    stamps = [datetime.fromisoformat(d["@timestamp"]) for d in docs]
    n = 0
    for k in range(copies):
        batch = []
        for d, ts in zip(docs, stamps, strict=True):
            shifted = ts + timedelta(seconds=k * span)
            d["@timestamp"] = shifted.isoformat(timespec="milliseconds").replace("+00:00", "Z")
            d["auditd"]["sequence"] += serial_span if k else 0
            batch.append(orjson.dumps(d))
        for i in range(0, len(batch), BATCH):
            w.send(batch[i:i + BATCH])
        n += len(batch)
    w.close()
    return n


def timed(cmd: list[str]) -> tuple[float, bytes]:
    t0 = time.perf_counter()
    r = subprocess.run(cmd, capture_output=True, check=False)
    return time.perf_counter() - t0, r.stdout


def bench_query(log: bytes, payloads: list[bytes], tmp: Path, copies: int, runs: int) -> None:
    secs = [int(m[1]) for m in _STAMP.finditer(log)]
    serials = [int(m[3]) for m in _STAMP.finditer(log)]
    span, serial_span = max(secs) - min(secs) + 1, max(serials) - min(serials) + 1
    big_log, lake = tmp / "audit.log", tmp / "lake"
    t0 = time.perf_counter()
    shift_log(log, copies, span, serial_span, big_log)
    n = shift_docs(payloads, copies, span, serial_span, lake)
    print(f"\n2. query {n:,} events ({copies} time-shifted copies; lake {du(lake):,} bytes, "
          f"audit.log {big_log.stat().st_size:,} bytes; built in {time.perf_counter() - t0:.0f}s)")
    auditpipe = str(ROOT / ".venv" / "bin" / "auditpipe")
    cases = [
        ("count events by action", [auditpipe, "query", "--lake", str(lake), "--format", "csv", BY_ACTION],
         ["aureport", "-if", str(big_log), "-e", "--summary"]),
        ("failed logins by address", [auditpipe, "query", "--lake", str(lake), "--format", "csv", FAILED_BY_ADDRESS],
         ["aureport", "-if", str(big_log), "-l", "--failed"]),
    ]
    print(f"{'query':<28}{'duckdb s':>10}{'aureport s':>12}{'ratio':>8}")
    for name, ours, peer in cases:
        a = [timed(ours) for _ in range(runs)]
        b = [timed(peer) for _ in range(runs)]
        da, db = statistics.median(t for t, _ in a), statistics.median(t for t, _ in b)
        verdict = "met" if db / da >= 10 else "NOT met"
        print(f"{name:<28}{da:>10.2f}{db:>12.2f}{db / da:>7.1f}×  (target 10×: {verdict})")
        if name.startswith("failed"):
            ours_total = sum(int(line.split(b",")[-1]) for line in a[0][1].splitlines()[1:] if line)
            peer_rows = sum(1 for line in b[0][1].splitlines() if re.match(rb"^\d+\. ", line))
            print(f"{'':<28}answers: duckdb {ours_total:,} failed logins, aureport {peer_rows:,} rows")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--corpus", type=Path, default=DEFAULT_CORPUS)
    ap.add_argument("--copies", type=int, default=50)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--skip-query", action="store_true")
    args = ap.parse_args()
    data = args.corpus.read_bytes()
    log = gzip.decompress(data) if args.corpus.suffix == ".gz" else data
    payloads = ecs_payloads(log)
    with tempfile.TemporaryDirectory(prefix="bench-lake-") as t:
        tmp = Path(t)
        bench_write(payloads, tmp, args.runs)
        bench_parse(log, tmp, args.runs)
        if not args.skip_query:
            if not shutil.which("aureport"):
                print("aureport not found (apt-get install auditd): query comparison skipped")
            else:
                bench_query(log, payloads, tmp, args.copies, args.runs)
    return 0


if __name__ == "__main__":
    sys.exit(main())
