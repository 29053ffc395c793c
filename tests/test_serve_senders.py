"""Sender identity from our shipper (issue 8, item 3): the HTTP output names itself
(`X-Auditpipe-Sender: <host>/<instance id>`, kept in its queue's SENDER file) and the queue span
of each batch (`X-Auditpipe-Range`). Two shippers of the same corpus behind one address, each
SIGKILLed in the middle and restarted on its queue: `auditpipe serve` gives exactly `parse`'s
events for each — no merge across senders, no event split by the restart, no record twice."""

from __future__ import annotations

import collections
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from auditpipe.normalize import make_normalizer
from auditpipe.pipeline import Pipeline
from auditpipe.reassembly import Reassembler
from auditpipe.sinks.http import HttpConfig, HttpTransport, sender_identity

CORPUS = Path(os.environ.get("AUDITPIPE_SHARED", Path(__file__).parents[2] / "shared")) / "corpus" / "raw-node.log"

#: a shipper process: the HTTP output (raw records) on QUEUE_DIR; "fill" queues the corpus
#: first, then (both modes) it delivers until the queue is empty
SHIPPER = """
import sys, time
from auditpipe.sinks import open_sink
url, queue, mode, corpus = sys.argv[1:5]
sink = open_sink({"type": "http", "url": url, "tls": False, "format": "raw", "max_events": 4,
                  "max_bytes": 4096, "max_wait": 0.01, "queue_dir": queue, "queue_fsync": "never",
                  "auth": "shared-secret", "secret": "s"})
if mode == "fill":
    lines = [ln for ln in open(corpus, encoding="utf-8", errors="surrogateescape").read().split("\\n") if ln]
    for i in range(0, len(lines), 200):
        sink.write_raw(lines[i:i + 200], date=1.0)
print("queued", flush=True)
sink.close(drain_timeout=120)
print("drained", sink.queue.pending, flush=True)
"""


def coalesced_keys(docs: list[dict]) -> collections.Counter:
    return collections.Counter((d["id"], tuple(r["type"] for r in d["records"])) for d in docs)


def test_sender_file_is_made_once(tmp_path):
    name = sender_identity(str(tmp_path))
    assert re.fullmatch(r"[\x21-\x7e]+/[0-9a-f]{16}", name)
    assert sender_identity(str(tmp_path)) == name != sender_identity(str(tmp_path / ".."))
    t = HttpTransport(HttpConfig(url="http://127.0.0.1:1/", tls=False), sender=name)
    t.at(40, 47)
    _, headers = t.encode([b"{}"])
    assert headers["X-Auditpipe-Sender"] == name and headers["X-Auditpipe-Range"] == "40-47"


def _records_received(port: int) -> float:
    text = httpx.get(f"http://127.0.0.1:{port}/metrics").text
    m = re.search(r"^auditpipe_receiver_records_total ([0-9.e+]+)$", text, re.M)
    return float(m.group(1)) if m else 0.0


@pytest.mark.parametrize("workers", ["1", "2"])
def test_two_shippers_killed_and_restarted_behind_one_address(tmp_path, workers):
    lines = [ln for ln in CORPUS.read_text(encoding="utf-8", errors="surrogateescape").split("\n") if ln]
    p = Pipeline(make_normalizer("coalesced"), Reassembler())
    expect = coalesced_keys(json.loads(json.dumps(p.feed_lines(lines) + p.flush())))
    out = tmp_path / "out.jsonl"
    rx = subprocess.Popen([sys.executable, "-m", "auditpipe", "serve", "--listen", "127.0.0.1:0", "--auth",
                           "shared-secret", "--auth-secret", "s", "--output", str(out), "--event-wait", "10",
                           "--workers", workers],
                          stderr=subprocess.PIPE, text=True)
    try:
        port = None
        while port is None:
            line = rx.stderr.readline()
            assert line, "serve did not start"
            if m := re.search(r"listening on http://[^:]*:(\d+)", line):
                port = int(m.group(1))
        url = f"http://127.0.0.1:{port}/"

        def shipper(q: str, mode: str) -> subprocess.Popen:
            return subprocess.Popen([sys.executable, "-c", SHIPPER, url, str(tmp_path / q), mode, str(CORPUS)],
                                    stdout=subprocess.PIPE, text=True)

        first = [shipper(q, "fill") for q in ("qa", "qb")]
        for s in first:
            assert s.stdout.readline().startswith("queued")
        deadline = time.monotonic() + 60
        while _records_received(port) < 0.4 * len(lines) and time.monotonic() < deadline:
            time.sleep(0.01)
        for s in first:
            s.send_signal(signal.SIGKILL)
            s.wait(10)
        at_kill = _records_received(port)
        assert at_kill < 1.6 * len(lines), "the shippers were not killed in the middle"
        again = [shipper(q, "resume") for q in ("qa", "qb")]
        for s in again:
            assert s.stdout.readline().startswith("queued")
            assert s.stdout.readline().split() == ["drained", "0"]
            s.wait(30)
        senders = {(tmp_path / q / "SENDER").read_text().strip() for q in ("qa", "qb")}
        assert len(senders) == 2
    finally:
        rx.send_signal(signal.SIGTERM)
        err = rx.stderr.read()
        assert rx.wait(60) == 0, err
    got = coalesced_keys([json.loads(x) for x in out.read_bytes().decode("utf-8", "surrogateescape").split("\n") if x])
    want = collections.Counter({k: 2 * n for k, n in expect.items()})
    assert got == want, (sum(got.values()), sum(want.values()), list((got - want).items())[:3],
                         list((want - got).items())[:3])
