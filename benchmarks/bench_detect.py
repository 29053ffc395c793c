#!/usr/bin/env python3
"""Cost of detection: the bench corpus to ECS, with and without the detection stage.

    .venv/bin/python benchmarks/bench_detect.py [--corpus ../shared/corpus/bench.log.gz] [--runs 3]
        [--rules ../shared/sigma/rules/linux/auditd ../shared/sigma/rules/linux/process_creation]

Both runs go through the same `Pipeline` (parse → reassemble → ECS) in this process; the second
also runs every event through `DetectStage` with the given rules (default: all 53 auditd rules and
the Linux process_creation rules that can run), dedup on. The two runs alternate; prints the
best-of-N CPU seconds of each, the cost ratio of the best runs and the min/median/max of the
ratio of each pair (target ≤ 1.25×), events/s and alerts/s, all per CPU second of this process
(other load on the machine counts less than in wall time, yet still shows: compare ratios).
Then detection alone: CPU µs per event of ``DetectStage.process`` over the already-assembled
events (min/median/max of N passes). No peer runs Sigma rules on audit events, so there is no
peer column. Not a test: nothing is asserted.
"""

from __future__ import annotations

import argparse
import gc
import gzip
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("AUDITPIPE_SHARED", ROOT.parent / "shared"))
sys.path.insert(0, str(ROOT / "src"))

from auditpipe.detect.config import DetectConfig
from auditpipe.detect.engine import DetectStage, load_rules
from auditpipe.normalize.ecs import make_ecs_normalizer
from auditpipe.normalize.idresolve import IdResolver
from auditpipe.pipeline import Pipeline
from auditpipe.reassembly import Reassembler


def run(lines: list[str], stage: DetectStage | None) -> tuple[float, int, int]:
    """Seconds, events, alerts."""
    base = make_ecs_normalizer(resolver=IdResolver())
    alerts = 0
    if stage is None:
        normalize = base
    else:
        def normalize(event):
            nonlocal alerts
            docs = base(event)
            out = stage.process(event, docs, 0.0)
            alerts += len(out) - len(docs)
            return out

    pipe = Pipeline(normalize, Reassembler())
    t0 = time.process_time()  # CPU seconds: other load on the machine does not count
    for i in range(0, len(lines), 4096):
        pipe.feed_lines(lines[i:i + 4096], "bench", i + 1)
    pipe.flush()
    return time.process_time() - t0, pipe.reassembler.events, alerts


def main() -> None:
    # as the `auditpipe` command does (cli/__init__.py): no rescans of the many small acyclic dicts
    gc.freeze()
    gc.set_threshold(100_000, 50, 100)
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--corpus", default=str(SHARED / "corpus" / "bench.log.gz"))
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--rules", nargs="+", default=[str(SHARED / "sigma" / "rules" / "linux" / "auditd"),
                                                 str(SHARED / "sigma" / "rules" / "linux" / "process_creation")])
    args = ap.parse_args()
    with gzip.open(args.corpus, "rt", encoding="utf-8", errors="surrogateescape", newline="\n") as f:
        lines = f.read().split("\n")
    rules = load_rules(args.rules)
    cats: dict[str, int] = {}
    for r in rules.sigma:
        cats[r.category] = cats.get(r.category, 0) + 1
    print(f"corpus: {args.corpus} ({len(lines):,} lines); rules: {cats}, {len(rules.problems)} not runnable")
    plain, with_detect = [], []
    for _ in range(args.runs):
        plain.append(run(lines, None))
        stage = DetectStage(DetectConfig(rules=args.rules), "ecs", resolver=IdResolver(), rules=rules)
        with_detect.append(run(lines, stage))
    p = min(plain)
    d = min(with_detect)
    pairs = sorted(w[0] / q[0] for q, w in zip(plain, with_detect, strict=True))
    print(f"ECS only:        {p[0]:.2f}s  {p[1] / p[0]:,.0f} events/s")
    print(f"ECS + detection: {d[0]:.2f}s  {d[1] / d[0]:,.0f} events/s  {d[2]} alerts "
          f"({d[2] / d[0]:,.1f} alerts/s)")
    print(f"cost ratio (best runs): {d[0] / p[0]:.3f}x (target <= 1.25x)")
    print(f"cost ratio per pair: min {pairs[0]:.3f}x  median {statistics.median(pairs):.3f}x  max {pairs[-1]:.3f}x")
    detect_alone(lines, rules, args.rules, args.runs)


def detect_alone(lines: list[str], rules, paths: list[str], runs: int) -> None:
    """CPU µs per event of the detection stage alone, over events assembled and normalized once."""
    assembled: list[tuple] = []
    base = make_ecs_normalizer(resolver=IdResolver())

    def keep(event):
        docs = base(event)
        assembled.append((event, docs))
        return docs

    pipe = Pipeline(keep, Reassembler())
    for i in range(0, len(lines), 4096):
        pipe.feed_lines(lines[i:i + 4096], "bench", i + 1)
    pipe.flush()
    gc.freeze()
    per_event = []
    for _ in range(runs):
        stage = DetectStage(DetectConfig(rules=paths), "ecs", resolver=IdResolver(), rules=rules)
        process = stage.process
        t0 = time.process_time()
        for event, docs in assembled:
            process(event, docs, 0.0)
        per_event.append((time.process_time() - t0) / len(assembled) * 1e6)
    per_event.sort()
    print(f"detection alone: {per_event[0]:.1f} / {statistics.median(per_event):.1f} / {per_event[-1]:.1f} "
          f"µs per event (min/median/max of {runs}; {len(assembled):,} events)")


if __name__ == "__main__":
    main()
