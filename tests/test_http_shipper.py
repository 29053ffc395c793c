import base64
import gzip
import hashlib
import hmac
import json
import threading
import time

import httpx
import pytest

from auditpipe.sinks import auth
from auditpipe.sinks.http import HttpConfig, HttpShipper, QueueSink, raw_record
from auditpipe.sinks.queue import DiskQueue


class Recorder:
    """httpx.MockTransport handler answering from a script of statuses (then 200)."""

    def __init__(self, script=()):
        self.script = list(script)
        self.requests = []

    def __call__(self, request: httpx.Request):
        body = request.read()
        self.requests.append((request, body))
        if self.script:
            s = self.script.pop(0)
            if isinstance(s, Exception):
                raise s
            if isinstance(s, tuple):
                return httpx.Response(s[0], headers=s[1], text="slow down")
            return httpx.Response(s, text=f"status {s}")
        return httpx.Response(200, json={"ok": True})

    def lines(self, i):
        req, body = self.requests[i]
        if req.headers.get("content-encoding") == "gzip":
            body = gzip.decompress(body)
        return [json.loads(x) for x in body.splitlines()]


def make(tmp_path, script=(), **kw):
    q = DiskQueue(tmp_path / "q")
    rec = Recorder(script)
    kw.setdefault("url", "http://127.0.0.1:9/ingest")
    kw.setdefault("tls", False)
    cfg = HttpConfig(**kw)
    client = httpx.Client(transport=httpx.MockTransport(rec))
    sh = HttpShipper(q, cfg, client=client, rng=lambda: 0.0)
    return q, rec, sh


def test_json_lines_batch_gzip_and_ack(tmp_path):
    q, rec, sh = make(tmp_path, max_wait=0)
    QueueSink(q).write([{"event": i} for i in range(10)])
    assert sh.step() == 10
    assert q.pending == 0
    req, _ = rec.requests[0]
    assert req.headers["content-type"] == "application/x-ndjson"
    assert req.headers["content-encoding"] == "gzip"
    assert rec.lines(0) == [{"event": i} for i in range(10)]
    assert sh.sent_events == 10 and sh.sent_batches == 1


def test_raw_records_fluent_bit_shape(tmp_path):
    q, rec, sh = make(tmp_path, format="raw", gzip=False, max_wait=0)
    line = "type=SYSCALL msg=audit(1700000000.123:42): arch=c000003e syscall=59"
    QueueSink(q).write_raw([line + "\n", ""], date=1700000000.123456)
    sh.step()
    _, body = rec.requests[0]
    assert body.startswith(b'{"date":1700000000.123456,"log":"type=SYSCALL')
    assert rec.lines(0) == [{"date": 1700000000.123456, "log": line}]
    assert "content-encoding" not in rec.requests[0][0].headers


def test_raw_record_non_utf8_survives():
    s = b"type=PATH msg=audit(1.1:1): name=\xff".decode("utf-8", "surrogateescape")
    doc = json.loads(raw_record(s, 1.0))
    assert doc["log"].encode("utf-8", "surrogateescape").endswith(b"\xff")


@pytest.mark.parametrize("scheme,secret,header", [
    ("shared-secret", "s3cret", None), ("shared-secret", "s3cret", "X-Token"),
    ("hmac", "k3y", None), ("hmac", "k3y", "X-Sig"),
    ("bearer", "tok", None), ("basic", "user:pw", None),
])
def test_auth_headers_verify(tmp_path, scheme, secret, header):
    q, rec, sh = make(tmp_path, auth=scheme, secret=secret, auth_header=header, max_wait=0)
    QueueSink(q).write([{"a": 1}])
    sh.step()
    req, body = rec.requests[0]
    name = auth.header_for(scheme, header)
    assert name in req.headers
    assert auth.check(scheme, secret, req.headers, body, header)
    assert not auth.check(scheme, secret + "x", req.headers, body, header)
    if scheme == "hmac":
        assert req.headers[name] == hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
        assert not auth.check(scheme, secret, req.headers, body + b"x", header)
    if scheme == "basic":
        assert req.headers["authorization"] == "Basic " + base64.b64encode(b"user:pw").decode()


def test_auth_config_validation():
    with pytest.raises(ValueError):
        HttpConfig(url="http://127.0.0.1:1/", tls=False, auth="hmac")
    with pytest.raises(ValueError):
        HttpConfig(url="http://127.0.0.1:1/", tls=False, auth="basic", secret="nocolon")
    with pytest.raises(ValueError):
        HttpConfig(url="http://127.0.0.1:1/")  # TLS is on by default
    HttpConfig(url="https://127.0.0.1:1/")


def test_retry_transient_then_success(tmp_path):
    script = [httpx.ConnectError("refused"), 503, 408, (429, {"Retry-After": "0"}), 500]
    q, rec, sh = make(tmp_path, script, max_wait=0, backoff_initial=0.001, backoff_max=0.01)
    QueueSink(q).write([{"n": 1}, {"n": 2}])
    sh.step()
    assert sh.retries == 5
    assert len(rec.requests) == 6
    assert q.pending == 0 and sh.dead_events == 0
    # the same bytes were resent every time
    assert len({b for _, b in rec.requests}) == 1


def test_backoff_exponential_with_jitter_and_cap(tmp_path):
    q, rec, sh = make(tmp_path, backoff_initial=0.5, backoff_max=4)
    sh.rng = lambda: 1.0
    assert [sh.backoff(a) for a in range(5)] == [0.5, 1.0, 2.0, 4.0, 4.0]  # capped
    sh.rng = lambda: 0.0
    assert [sh.backoff(a) for a in range(4)] == [0.25, 0.5, 1.0, 2.0]


@pytest.mark.parametrize("status", [400, 401, 403, 404, 413, 422, 301])
def test_permanent_errors_go_to_dead_letter(tmp_path, status):
    dl = tmp_path / "dead.jsonl"
    q, rec, sh = make(tmp_path, [status], max_wait=0, dead_letter=str(dl), max_events=2)
    QueueSink(q).write([{"bad": 1}, {"bad": 2}])
    QueueSink(q).write([{"good": 1}])
    sh.step()
    assert sh.dead_events == 2 and sh.dead_batches == 1 and sh.retries == 0
    assert q.pending == 1  # dead-lettered batch acknowledged, the rest still queued
    entry = json.loads(dl.read_text())
    assert entry["reason"] == f"HTTP {status}: status {status}"
    assert entry["output"] == "http http://127.0.0.1:9/ingest" and entry["events"] == 2
    assert [json.loads(x) for x in entry["body"]] == [{"bad": 1}, {"bad": 2}]
    sh.step()
    assert q.pending == 0 and sh.sent_events == 1


def test_max_retries_exhausted_dead_letters(tmp_path):
    dl = tmp_path / "dead.jsonl"
    q, rec, sh = make(tmp_path, [500, 500, 500], max_wait=0, max_retries=2,
                      backoff_initial=0.001, dead_letter=str(dl))
    QueueSink(q).write([{"x": 1}])
    sh.step()
    assert sh.dead_events == 1 and len(rec.requests) == 3
    assert json.loads(dl.read_text())["reason"].startswith("retries exhausted: HTTP 500")


def test_batching_by_count_and_bytes(tmp_path):
    q, rec, sh = make(tmp_path, max_wait=0, max_events=7, max_bytes=10_000)
    QueueSink(q).write([{"i": i} for i in range(20)])
    while sh.step(poll=0):
        pass
    assert [len(rec.lines(i)) for i in range(len(rec.requests))] == [7, 7, 6]
    q2, rec2, sh2 = make(tmp_path / "b", max_wait=0, max_events=1000, max_bytes=2_000, gzip=False)
    QueueSink(q2).write([{"pad": "x" * 90} for _ in range(100)])
    while sh2.step(poll=0):
        pass
    sizes = [len(b) for _, b in rec2.requests]
    assert all(s <= 2_000 for s in sizes) and sum(len(b.splitlines()) for _, b in rec2.requests) == 100


def test_default_batch_bytes_under_one_megabyte(tmp_path):
    q, rec, sh = make(tmp_path, max_wait=0, gzip=False)
    QueueSink(q).write([{"pad": "y" * 3000} for _ in range(600)])
    while sh.step(poll=0):
        pass
    assert len(rec.requests) > 1
    assert max(len(b) for _, b in rec.requests) < 1_000_000


def test_batching_by_time_collects_late_records(tmp_path):
    q, rec, sh = make(tmp_path, max_wait=0.5, max_events=100)
    qs = QueueSink(q)
    qs.write([{"i": 0}])

    def later():
        time.sleep(0.1)
        qs.write([{"i": 1}])

    t = threading.Thread(target=later)
    t.start()
    t0 = time.monotonic()
    sh.step()
    t.join()
    assert 0.4 <= time.monotonic() - t0 < 3
    assert rec.lines(0) == [{"i": 0}, {"i": 1}]


def test_stop_during_backoff_keeps_batch_for_restart(tmp_path):
    q, rec, sh = make(tmp_path, [503] * 1000, max_wait=0, backoff_initial=0.05, backoff_max=0.05)
    QueueSink(q).write([{"keep": 1}])
    th = sh.start()
    time.sleep(0.3)
    sh.stop()
    assert not th.is_alive()
    assert sh.retries >= 1
    assert q.pending == 1
    q.close()
    q = DiskQueue(tmp_path / "q")
    assert [json.loads(p) for _, p in q.get_batch()] == [{"keep": 1}]
    q.close()


def test_thread_ships_and_drains(tmp_path):
    q, rec, sh = make(tmp_path, max_wait=0.05)
    sh.start()
    qs = QueueSink(q)
    for i in range(50):
        qs.write([{"i": i}])
    assert sh.drain(5)
    sh.stop()
    got = [d["i"] for i in range(len(rec.requests)) for d in rec.lines(i)]
    assert got == list(range(50))


def test_raw_body_is_what_fluent_bit_in_http_takes(tmp_path):
    """application/json, one JSON object per line (Fluent Bit's in_http answers 400 to
    application/x-ndjson); a run of lines is one queue record but every line is counted."""
    q, rec, sh = make(tmp_path, format="raw", gzip=False, max_wait=0)
    bad = b"type=PATH msg=audit(1.1:1): name=\xff".decode("utf-8", "surrogateescape")
    lines = [f"type=SYSCALL msg=audit(1.{i}:{i}): x=\"a\\b\"" for i in range(300)] + [bad, "", "  "]
    qs = QueueSink(q, raw_record_bytes=4096)
    assert qs.write_raw(lines, date=1.5) == 301 and qs.accepted == 301
    assert 1 < q.pending < 301  # runs of lines, each at most 4096 bytes
    while sh.step(poll=0):
        pass
    assert {r.headers["content-type"] for r, _ in rec.requests} == {"application/json"}
    got = [d for i in range(len(rec.requests)) for d in rec.lines(i)]
    assert got == [{"date": 1.5, "log": ln} for ln in lines[:301]]
    assert sh.sent_events == 301


def test_drain_after_restart_waits_for_the_backlog(tmp_path):
    """A backlog found at start is not 'idle' just because it has all been read."""
    q = DiskQueue(tmp_path / "q")
    QueueSink(q).write([{"i": i} for i in range(30)])
    q.close()
    q, rec, sh = make(tmp_path, [503, 503], max_wait=0, backoff_initial=0.2, backoff_max=0.2)
    sh.start()
    try:
        assert sh.drain(10) and q.pending == 0
    finally:
        sh.stop()
    assert [d["i"] for i in range(len(rec.requests)) for d in rec.lines(i)][-30:] == list(range(30))


@pytest.mark.parametrize("bad,msg", [
    ({"max_events": 0}, "never send"), ({"timeout": 0}, "never deliver"), ({"max_bytes": 10}, "at least 1024"),
    ({"backoff_initial": 0}, "backoff_initial"), ({"max_retries_5xx": -1}, "0 or more"),
])
def test_options_that_could_never_deliver_are_refused(bad, msg):
    with pytest.raises(ValueError, match=msg):
        HttpConfig(url="http://127.0.0.1:1/", tls=False, **bad)


def test_config_file_refuses_them_with_the_line(tmp_path):
    from auditpipe.config import ConfigError, load_config

    text = '[[outputs]]\ntype = "http"\nurl = "http://127.0.0.1:1/"\ntls = false\nmax_events = 0\n'
    with pytest.raises(ConfigError, match=r"run.toml:\d+: .*max_events:? must be at least 1"):
        load_config(str(tmp_path / "run.toml"), text=text)
