"""The Elasticsearch output end to end, every part real: the durable queue and the generic
shipper (sinks/shipper.py) driving the official client into the loopback bulk server running as
its own process, which is killed (SIGKILL) and restarted, scripted into 429 storms, and
`auditpipe run` itself killed mid-stream and restarted. Nothing is lost, and the stable `_id`s
turn every resend into a 409 instead of a duplicate."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import orjson
import pytest
from conftest import shared_path
from es_server import free_port
from helpers import events_of_file

from auditpipe.normalize.ecs import make_ecs_normalizer
from auditpipe.normalize.idresolve import IdResolver
from auditpipe.pipeline.hostinfo import read_host_metadata
from auditpipe.sinks.elasticsearch import ElasticsearchOutput, open_elasticsearch

SERVER = str(Path(__file__).with_name("es_server.py"))


class ServerProcess:
    def __init__(self, port: int, store: Path) -> None:
        self.port, self.store = port, store
        self.url = f"http://127.0.0.1:{port}"
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen([sys.executable, SERVER, "--port", str(self.port), "--store", str(self.store)],
                                     stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        assert self.proc.stdout.readline().strip() == "ready"

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)

    def script(self, **kw) -> None:
        httpx.post(f"{self.url}/_test/script", json=kw, timeout=5).raise_for_status()

    def state(self) -> dict:
        return httpx.get(f"{self.url}/_test/state", timeout=5).json()

    def stored_ids(self) -> list[str]:
        if not self.store.exists():
            return []
        # the server appends while we read: a last line without its newline is still being written
        lines = self.store.read_text().split("\n")[:-1]
        return [json.loads(line)["_id"] for line in lines if line.strip()]


@pytest.fixture
def server(tmp_path):
    s = ServerProcess(free_port(), tmp_path / "store.jsonl")
    s.start()
    yield s
    s.kill()


def wait_for(pred, timeout: float = 60.0) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if pred():
            return True
        time.sleep(0.05)
    return bool(pred())


def test_queue_shipper_through_429_storms_and_server_kills(server, tmp_path):
    cfg = ElasticsearchOutput(hosts=[server.url], queue_dir=str(tmp_path / "q"), max_events=100, timeout=3,
                              backoff_initial=0.05, backoff_max=0.3, dead_letter=str(tmp_path / "dead.jsonl"))
    docs = [{"_id": f"d{i:05d}", "@timestamp": "2026-01-01T00:00:00.000Z", "event": {"sequence": i}}
            for i in range(2000)]
    server.script(item_429=700, request_status=[429, 503, 500])
    out = open_elasticsearch(cfg)
    try:
        out.write(docs[:1000])
        assert wait_for(lambda: len(server.stored_ids()) >= 300)
        server.kill()  # mid-stream, with batches in flight
        out.write(docs[1000:])  # accepted while the cluster is away: on disk
        time.sleep(1.0)
        server.start()
        server.script(item_429=300)
        assert wait_for(lambda: len(set(server.stored_ids())) == 2000), len(set(server.stored_ids()))
        assert out.shipper.idle() or wait_for(out.shipper.idle, 10)
    finally:
        out.close(drain_timeout=5)
    ids = server.stored_ids()
    assert sorted(set(ids)) == [d["_id"] for d in docs] and len(ids) == 2000  # each stored once
    assert server.state()["violations"] == []
    stats = out.stats()
    assert stats["dead_letter_events"] == 0 and stats["retries"] > 0
    # a batch stored just before the kill had no answer: sent again, it came back 409
    assert stats["created"] + stats["duplicates"] == 2000
    assert stats["retried_items"] >= 1000 and stats["refused_items"] == 0
    assert not (tmp_path / "dead.jsonl").exists()


def test_refused_documents_are_dead_lettered_with_the_item_error(server, tmp_path):
    cfg = ElasticsearchOutput(hosts=[server.url], queue_dir=str(tmp_path / "q"), max_wait=0.05,
                              dead_letter=str(tmp_path / "dead.jsonl"), shape="pipeline")
    server.script(refuse_marker="poison")
    out = open_elasticsearch(cfg)
    try:
        out.write([{"_id": "a", "@timestamp": "t", "x": 1}, {"_id": "b", "@timestamp": "t", "x": "poison"}])
        assert wait_for(lambda: (tmp_path / "dead.jsonl").exists() and server.stored_ids() == ["a"])
    finally:
        out.close(drain_timeout=2)
    (dead,) = [json.loads(line) for line in (tmp_path / "dead.jsonl").read_text().splitlines()]
    text = json.dumps(dead)
    assert "document_parsing_exception" in text and "poison" in text
    assert out.stats()["dead_letter_events"] == 1


def expected_ids() -> set[str]:
    meta = read_host_metadata()
    normalize = make_ecs_normalizer(IdResolver(), host_metadata=meta, document_ids=True)
    events, _ = events_of_file(shared_path("corpus", "enriched.log"))
    return {d["_id"] for e in events for d in normalize(e)}


@pytest.mark.slow
def test_auditpipe_run_killed_and_restarted_loses_nothing(server, tmp_path):
    corpus = shared_path("corpus", "enriched.log")
    conf = tmp_path / "a.toml"
    conf.write_text(f"""
[heartbeat]
interval = 0  # the index must hold exactly the parsed events
[source]
type = "file"
path = "{corpus}"
start = "head"
checkpoint = "{tmp_path / 'ckpt'}"
[status]
path = "{tmp_path / 'status.json'}"
[[outputs]]
type = "elasticsearch"
hosts = ["{server.url}"]
queue_dir = "{tmp_path / 'q'}"
max_events = 40
max_wait = 0.05
backoff_initial = 0.05
backoff_max = 0.5
""")
    server.script(delay=0.15, item_429=60)
    cmd = [sys.executable, "-m", "auditpipe", "run", "-c", str(conf)]
    want = expected_ids()
    log = open(tmp_path / "run.log", "ab")  # noqa: SIM115 - closed at the end
    for kill_at in (150, 500):  # two SIGKILLs of auditpipe while it ships
        run = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=log)
        try:
            assert wait_for(lambda n=kill_at, p=run: len(server.stored_ids()) >= n or p.poll() is not None)
            assert run.poll() is None, (tmp_path / "run.log").read_text()
        finally:
            os.kill(run.pid, signal.SIGKILL)
            run.wait(10)
    server.script(delay=0.0)
    run = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=log)
    try:
        assert wait_for(lambda: set(server.stored_ids()) == want, 90), len(want - set(server.stored_ids()))
    finally:
        run.send_signal(signal.SIGTERM)
        run.wait(30)
        log.close()
    ids = server.stored_ids()
    assert len(ids) == len(set(ids)) == len(want) == 949
    st = server.state()
    assert st["violations"] == [] and st["requests"] > 949 // 40
    doc = orjson.loads(server.store.read_text().splitlines()[0])["doc"]
    assert doc["data_stream"]["dataset"] == "auditd_manager.auditd" and doc["agent"]["type"] == "auditpipe"
