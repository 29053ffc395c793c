#!/usr/bin/env python3
"""Elasticsearch output throughput: durable queue → shipper → official client → bulk API.

    .venv/bin/python benchmarks/bench_es.py [--corpus ../shared/corpus/bench.log.gz] [--runs 3]

The corpus is normalized once (ECS with host metadata and document ids, as `run` does for an
elasticsearch output; not timed) and its documents are put into a fresh durable queue. Then,
per configuration (shape indexed|pipeline × gzip on|off), a `QueueShipper` with the
`ElasticsearchTransport` drains the queue into the loopback bulk server (tests/es_server.py
``--lean``: sources checked by their bytes, not parsed) in another process, so only the output's
own work is counted: wall time from start until every
record is acknowledged, and the CPU seconds of this process (all threads) in that interval.
Prints events/s and CPU-s per 10k events, best of ``--runs``. Not a test.

No peer runs here: neither Elastic Agent/Auditbeat nor Fluent Bit's es output can be installed
on these machines (see benchmarks/bench_delivery.py for Fluent Bit's HTTP figure).
"""

from __future__ import annotations

import argparse
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from es_server import free_port
from helpers import events_of_file

from auditpipe.normalize.ecs import make_ecs_normalizer
from auditpipe.normalize.idresolve import IdResolver
from auditpipe.pipeline.hostinfo import read_host_metadata
from auditpipe.sinks.elasticsearch import ElasticsearchOutput, ElasticsearchTransport
from auditpipe.sinks.encode import dumps_line
from auditpipe.sinks.queue import DiskQueue
from auditpipe.sinks.shipper import Batching, QueueShipper

DEFAULT_CORPUS = ROOT.parent / "shared" / "corpus" / "bench.log.gz"


def cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def payloads(corpus: Path) -> list[bytes]:
    normalize = make_ecs_normalizer(IdResolver(), host_metadata=read_host_metadata(), document_ids=True)
    events, _ = events_of_file(corpus)
    return [dumps_line(d)[:-1] for e in events for d in normalize(e)]


def one_run(docs: list[bytes], shape: str, compression: str, workdir: Path) -> tuple[float, float]:
    port = free_port()
    server = subprocess.Popen([sys.executable, str(ROOT / "tests/es_server.py"), "--port", str(port), "--lean"],
                              stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        assert server.stdout.readline().strip() == "ready"
        qdir = workdir / f"q-{shape}-{compression}-{port}"
        queue = DiskQueue(qdir, max_bytes=1 << 30)
        for i in range(0, len(docs), 500):
            queue.put_many(docs[i:i + 500])
        cfg = ElasticsearchOutput(hosts=[f"http://127.0.0.1:{port}"], shape=shape, compression=compression)
        shipper = QueueShipper(queue, ElasticsearchTransport(cfg), Batching(cfg.max_events, cfg.max_bytes, 0.05))
        c0, t0 = cpu(), time.perf_counter()
        shipper.start()
        while queue.pending:
            time.sleep(0.005)
        wall, used = time.perf_counter() - t0, cpu() - c0
        shipper.stop()
        queue.close()
        shutil.rmtree(qdir, ignore_errors=True)
        return wall, used
    finally:
        server.kill()
        server.wait(10)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--corpus", type=Path, default=DEFAULT_CORPUS)
    ap.add_argument("--runs", type=int, default=3)
    a = ap.parse_args()
    docs = payloads(a.corpus)
    mb = sum(len(d) for d in docs) / 1e6
    print(f"{len(docs)} documents ({mb:.1f} MB of JSON) from {a.corpus.name}")
    print(f"{'shape':9} {'compression':11} {'events/s':>9} {'CPU-s/10k':>9} {'wall s':>7}")
    with tempfile.TemporaryDirectory() as tmp:
        for shape in ("indexed", "pipeline"):
            for compression in ("gzip", "none"):
                runs = [one_run(docs, shape, compression, Path(tmp)) for _ in range(a.runs)]
                wall = min(r[0] for r in runs)
                used = min(r[1] for r in runs)
                print(f"{shape:9} {compression:11} {len(docs) / wall:9.0f} {used / len(docs) * 1e4:9.3f} {wall:7.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
