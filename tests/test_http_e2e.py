"""Shipper → receiver on loopback: raw and json_lines, TLS, auth failure, receiver down."""

import asyncio
import gzip
import json
import os
import shutil
import subprocess
import threading
import time

import pytest

from auditpipe.normalize import make_normalizer
from auditpipe.pipeline import Pipeline
from auditpipe.reassembly import Reassembler
from auditpipe.sinks import open_sink
from auditpipe.sinks.file import FileSink
from auditpipe.sources.http_receiver import Receiver, ReceiverConfig, make_ssl_context, start_site

SHARED = "/work/shared" if os.path.isdir("/work/shared") else os.path.join(os.path.dirname(__file__), "..", "..", "shared")


def lines_of(name):
    path = os.path.join(SHARED, "corpus", name)
    opener = gzip.open if name.endswith(".gz") else open
    with opener(path, "rt", encoding="utf-8", errors="surrogateescape") as f:
        return [ln for ln in f.read().split("\n") if ln]


WALL = float(os.environ.get("WALL", "0.5"))


def factory(on_reject):
    return Pipeline(make_normalizer("coalesced"), Reassembler(timeout=2.0, wall_timeout=WALL), on_reject=on_reject)


class ThreadedReceiver:
    """The receiver on its own event loop thread, on an ephemeral loopback port."""

    def __init__(self, out, ssl_context=None, port=0, **cfg):
        cfg.setdefault("auth", "none")
        self.sink = FileSink(out)
        self.receiver = Receiver(ReceiverConfig(tick_interval=0.1, **cfg), factory, self.sink)
        self.ssl_context = ssl_context
        self.want_port = port
        self.loop = asyncio.new_event_loop()
        self.started = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        asyncio.set_event_loop(self.loop)
        self.runner, self.port = self.loop.run_until_complete(
            start_site(self.receiver, "127.0.0.1", self.want_port, self.ssl_context))
        self.started.set()
        self.loop.run_forever()
        self.loop.run_until_complete(self.runner.cleanup())
        self.loop.close()

    def __enter__(self):
        self.thread.start()
        assert self.started.wait(10)
        return self

    def __exit__(self, *exc):
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.sink.close()


def docs_in(path):
    return [json.loads(x) for x in path.read_text().split("\n") if x] if path.exists() else []


def wait_for(pred, timeout=20):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if pred():
            return True
        time.sleep(0.05)
    return False


def test_raw_shipping_hmac_gzip(tmp_path):
    lines = lines_of("raw-node.log")
    p = Pipeline(make_normalizer("coalesced"), Reassembler())
    expect = p.feed_lines(lines) + p.flush()
    out = tmp_path / "recv.jsonl"
    with ThreadedReceiver(out, auth="hmac", secret="k3y") as rx:
        sink = open_sink({"type": "http", "url": f"http://127.0.0.1:{rx.port}/", "tls": False, "format": "raw",
                          "auth": "hmac", "secret": "k3y", "max_wait": 0.05, "queue_dir": str(tmp_path / "q"),
                          "queue_fsync": "never"})
        for i in range(0, len(lines), 500):
            sink.write_raw(lines[i:i + 500])
        sink.close(drain_timeout=30)
        assert sink.queue.pending == 0 and sink.shipper.dead_events == 0
        assert wait_for(lambda: len(docs_in(out)) == len(expect))
    docs = docs_in(out)
    assert sorted(d["id"] for d in docs) == sorted(d["id"] for d in expect)


def test_json_lines_events_passthrough_exact(tmp_path):
    lines = lines_of("enriched.log")
    p = Pipeline(make_normalizer("coalesced"), Reassembler())
    docs = p.feed_lines(lines) + p.flush()
    out = tmp_path / "recv.jsonl"
    with ThreadedReceiver(out, auth="bearer", secret="tok") as rx:
        sink = open_sink({"type": "http", "url": f"http://127.0.0.1:{rx.port}/", "tls": False,
                          "auth": "bearer", "secret": "tok", "max_wait": 0.05, "queue_dir": str(tmp_path / "q")})
        sink.write(docs)
        sink.close(drain_timeout=30)
        assert sink.shipper.sent_events == len(docs)
    assert docs_in(out) == json.loads(json.dumps(docs))


def _cert(tmp_path):
    if not shutil.which("openssl"):
        pytest.skip("openssl not installed")
    cert, key = str(tmp_path / "c.pem"), str(tmp_path / "k.pem")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", key, "-out", cert,
                    "-days", "2", "-subj", "/CN=localhost", "-addext", "subjectAltName=IP:127.0.0.1"],
                   check=True, capture_output=True)
    return cert, key


def test_tls_with_ca_file_and_verification_failure(tmp_path):
    cert, key = _cert(tmp_path)
    out = tmp_path / "recv.jsonl"
    with ThreadedReceiver(out, ssl_context=make_ssl_context(cert, key)) as rx:
        url = f"https://127.0.0.1:{rx.port}/"
        good = open_sink({"type": "http", "url": url, "ca_file": cert, "max_wait": 0.05,
                          "queue_dir": str(tmp_path / "q1")})
        good.write([{"id": "a"}, {"id": "b"}])
        good.close(drain_timeout=10)
        assert good.shipper.sent_events == 2
        # no CA given: the self-signed certificate is refused, nothing is acknowledged
        bad = open_sink({"type": "http", "url": url, "max_wait": 0.05, "backoff_initial": 0.05,
                         "queue_dir": str(tmp_path / "q2")})
        bad.write([{"id": "c"}])
        bad.close(drain_timeout=0.5)
        assert bad.shipper.sent_events == 0 and bad.shipper.retries >= 1
        assert "SSL" in bad.shipper.last_error or "CERTIFICATE" in bad.shipper.last_error.upper()
    assert [d["id"] for d in docs_in(out)] == ["a", "b"]


def test_wrong_secret_goes_to_dead_letter(tmp_path):
    out = tmp_path / "recv.jsonl"
    dl = tmp_path / "dead.jsonl"
    with ThreadedReceiver(out, auth="shared-secret", secret="right") as rx:
        sink = open_sink({"type": "http", "url": f"http://127.0.0.1:{rx.port}/", "tls": False,
                          "auth": "shared-secret", "secret": "wrong", "max_wait": 0.05,
                          "dead_letter": str(dl), "queue_dir": str(tmp_path / "q")})
        sink.write([{"id": "x"}])
        sink.close(drain_timeout=10)
    assert sink.shipper.dead_events == 1
    entry = json.loads(dl.read_text())
    assert entry["reason"].startswith("HTTP 401: ") and "credentials" in entry["reason"]
    assert docs_in(out) == []


def test_receiver_down_then_up_nothing_lost(tmp_path):
    import socket
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    out = tmp_path / "recv.jsonl"
    qdir = str(tmp_path / "q")
    cfg = {"type": "http", "url": f"http://127.0.0.1:{port}/", "tls": False, "max_wait": 0.05,
           "backoff_initial": 0.05, "backoff_max": 0.2, "queue_dir": qdir}
    sink = open_sink(cfg)
    sink.write([{"id": f"e{i}", "n": i} for i in range(100)])  # event-shaped: the receiver refuses unknown shapes
    time.sleep(0.3)
    assert sink.shipper.retries >= 1 and sink.queue.pending == 100
    sink.close(drain_timeout=0)  # "crash": stop with everything unacknowledged
    with ThreadedReceiver(out, port=port):
        sink = open_sink(cfg)  # restart resends from the queue
        sink.write([{"id": "e100", "n": 100}])
        sink.close(drain_timeout=10)
        assert sink.queue.pending == 0
    assert [d["n"] for d in docs_in(out)] == list(range(101))


@pytest.mark.slow
def test_throughput_raw_bench_corpus(tmp_path, capsys):
    lines = lines_of("bench.log.gz")
    out = tmp_path / "recv.jsonl"
    with ThreadedReceiver(out, auth="hmac", secret="k") as rx:
        sink = open_sink({"type": "http", "url": f"http://127.0.0.1:{rx.port}/", "tls": False, "format": "raw",
                          "auth": "hmac", "secret": "k", "max_wait": 0.2, "queue_dir": str(tmp_path / "q")})
        t0 = time.perf_counter()
        for i in range(0, len(lines), 2000):
            sink.write_raw(lines[i:i + 2000])
        sink.close(drain_timeout=300)
        assert wait_for(lambda: rx.receiver.m_records._value.get() >= len(lines), 60)
        dt = time.perf_counter() - t0
    with capsys.disabled():
        print(f"\nshipper→receiver raw: {len(lines)} records in {dt:.1f}s = {len(lines) / dt:,.0f} records/s")
    assert sink.shipper.sent_events == len(lines)


def test_mutual_tls_client_certificate(tmp_path):
    srv_cert, srv_key = _cert(tmp_path)
    cli_cert, cli_key = str(tmp_path / "cc.pem"), str(tmp_path / "ck.pem")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", cli_key, "-out", cli_cert,
                    "-days", "2", "-subj", "/CN=shipper", "-addext", "basicConstraints=critical,CA:TRUE",
                    "-addext", "keyUsage=digitalSignature,keyCertSign"],
                   check=True, capture_output=True)
    out = tmp_path / "recv.jsonl"
    ctx = make_ssl_context(srv_cert, srv_key, client_ca=cli_cert)
    with ThreadedReceiver(out, ssl_context=ctx) as rx:
        url = f"https://127.0.0.1:{rx.port}/"
        good = open_sink({"type": "http", "url": url, "ca_file": srv_cert, "client_cert": cli_cert,
                          "client_key": cli_key, "max_wait": 0.05, "queue_dir": str(tmp_path / "q1")})
        good.write([{"id": "m"}])
        good.close(drain_timeout=10)
        assert good.shipper.sent_events == 1
        anon = open_sink({"type": "http", "url": url, "ca_file": srv_cert, "max_wait": 0.05,
                          "backoff_initial": 0.05, "queue_dir": str(tmp_path / "q2")})
        anon.write([{"id": "n"}])
        anon.close(drain_timeout=0.5)
        assert anon.shipper.sent_events == 0 and anon.queue.pending == 1
    assert [d["id"] for d in docs_in(out)] == ["m"]
