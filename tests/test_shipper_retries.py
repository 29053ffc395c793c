"""Retry classes against a real loopback receiver: a 500 is retried a bounded number of times
and then dead-lettered (a body that crashes the receiver must not block the queue), while an
unreachable receiver, 429 and 503 are retried for as long as it takes (the queue is durable)."""

import json
import time

from loopback_http import LoopbackReceiver

from auditpipe.sinks.http import HttpConfig, HttpShipper
from auditpipe.sinks.queue import DiskQueue
from auditpipe.sinks.shipper import QueueSink


def shipper(tmp_path, url, **kw):
    q = DiskQueue(tmp_path / "q")
    cfg = HttpConfig(url=url, tls=False, max_wait=0, backoff_initial=0.01, backoff_max=0.02,
                     dead_letter=str(tmp_path / "dead.jsonl"), **kw)
    return q, HttpShipper(q, cfg)


def test_500_bounded_then_dead_letter_and_the_queue_moves_on(tmp_path):
    with LoopbackReceiver([500] * 4) as rx:
        q, sh = shipper(tmp_path, rx.url, max_retries_5xx=3, max_events=2)
        QueueSink(q).write([{"poison": 1}, {"poison": 2}, {"fine": 3}])
        sh.step()
        assert len(rx.requests) == 4 and sh.retries == 3  # 1 + max_retries_5xx attempts
        assert sh.dead_events == 2 and q.pending == 1
        entry = json.loads((tmp_path / "dead.jsonl").read_text())
        assert entry["reason"].startswith("retries exhausted: HTTP 500")
        assert [json.loads(b) for b in entry["body"]] == [{"poison": 1}, {"poison": 2}]
        sh.step()
        assert rx.docs() == [{"fine": 3}] and q.pending == 0
        assert sh.stats()["dead_letter_events"] == 2
        q.close()


def test_default_bound_for_500_is_finite(tmp_path):
    with LoopbackReceiver([500] * 50) as rx:
        q, sh = shipper(tmp_path, rx.url)
        QueueSink(q).write([{"x": 1}])
        sh.step()
        assert len(rx.requests) == 11 and sh.dead_events == 1
        q.close()


def test_unavailable_and_429_are_retried_past_the_5xx_bound(tmp_path):
    script = [503, 429, 502, 504, 408] * 3 + [500]
    with LoopbackReceiver(script) as rx:
        q, sh = shipper(tmp_path, rx.url, max_retries_5xx=1)
        QueueSink(q).write([{"keep": 1}])
        sh.step()
        assert sh.dead_events == 0 and sh.retries == 16
        assert rx.docs() == [{"keep": 1}] and q.pending == 0
        q.close()


def test_receiver_down_is_retried_until_it_is_back(tmp_path, caplog):
    caplog.set_level("WARNING", logger="auditpipe.sinks.shipper")
    rx = LoopbackReceiver().start()
    rx.stop()
    q, sh = shipper(tmp_path, rx.url, max_retries_5xx=0)
    QueueSink(q).write([{"n": i} for i in range(5)])
    sh.start()
    try:
        time.sleep(0.5)  # 20+ refused connections
        assert sh.retries > 10 and sh.dead_events == 0 and q.pending == 5
        assert "ConnectError" in (sh.last_error or "")
        rx.start()
        end = time.monotonic() + 10
        while q.pending and time.monotonic() < end:
            time.sleep(0.02)
    finally:
        sh.stop()
        rx.stop()
        q.close()
    assert rx.docs() == [{"n": i} for i in range(5)] and sh.dead_events == 0
    # one line when it starts failing and one when it delivers again, not one per retry
    lines = [r.getMessage() for r in caplog.records if r.name == "auditpipe.sinks.shipper"]
    assert len(lines) == 2, lines
    assert "retrying with backoff" in lines[0] and "delivering again after" in lines[1]
