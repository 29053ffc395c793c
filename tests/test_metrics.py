"""Integrity accounting: a real Prometheus listener on 127.0.0.1 scraped over HTTP; two
instances share nothing; heartbeat events with deltas in every format; config sections."""

from __future__ import annotations

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from auditpipe.config import load_config
from auditpipe.metrics.config import HeartbeatConfig, split_listen
from auditpipe.metrics.heartbeat import HeartbeatStage
from auditpipe.metrics.prom import MetricsServer
from auditpipe.pipeline.stages import Stage
from test_config import error_of


def scrape(port: int) -> dict[tuple[str, tuple], float]:
    r = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5)
    r.raise_for_status()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for fam in text_string_to_metric_families(r.text) for s in fam.samples}


def test_metrics_served_from_live_counters():
    counters = {"kernel_lost": 3, "kernel_backlog": 17, "serial_gaps": 2, "queue_depth.http-1": 40,
                "queue_depth.file-0": 0, "dead_lettered": 1, "detect.alerts": 5, "note": "x"}
    other = {"kernel_lost": 999}
    with MetricsServer("127.0.0.1:0", lambda: counters) as srv, \
            MetricsServer("127.0.0.1:0", lambda: other) as srv2:
        got = scrape(srv.port)
        assert got[("auditpipe_kernel_lost_total", ())] == 3
        assert got[("auditpipe_kernel_backlog", ())] == 17
        assert got[("auditpipe_serial_gaps_total", ())] == 2
        assert got[("auditpipe_queue_depth", (("part", "http-1"),))] == 40
        assert got[("auditpipe_dead_lettered_total", ())] == 1
        assert got[("auditpipe_detect_alerts", ())] == 5     # unknown keys are not dropped
        assert not any("note" in name for name, _ in got)    # non-numbers are
        counters["kernel_lost"] = 10
        assert scrape(srv.port)[("auditpipe_kernel_lost_total", ())] == 10
        assert scrape(srv2.port)[("auditpipe_kernel_lost_total", ())] == 999
        assert ("auditpipe_serial_gaps_total", ()) not in scrape(srv2.port)
    with pytest.raises(httpx.TransportError):
        httpx.get(f"http://127.0.0.1:{srv.port}/metrics", timeout=2)


def test_listen_addresses_and_config(tmp_path):
    assert split_listen("127.0.0.1:9464") == ("127.0.0.1", 9464)
    assert split_listen("[::1]:9") == ("::1", 9)
    assert split_listen(":9464") == ("127.0.0.1", 9464)
    with pytest.raises(ValueError):
        split_listen("localhost")
    cfg = load_config(text='[metrics]\nlisten = "127.0.0.1:9464"\n[heartbeat]\ninterval = 30\n'
                           '[rules]\ncheck_interval = 5\non_drift = "reinstall"\n')
    assert cfg.metrics.listen == "127.0.0.1:9464" and cfg.heartbeat.interval == 30
    assert (cfg.rules.check_interval, cfg.rules.on_drift) == (5, "reinstall")
    assert load_config(text="").heartbeat.interval == 60 and load_config(text="").rules.on_drift == "alert"
    e = error_of('[metrics]\nlisten = "9464"\n', tmp_path)
    assert ":2:" in str(e) and "HOST:PORT" in str(e)
    e = error_of("[heartbeat]\ninterval = -1\n", tmp_path)
    assert ":2:" in str(e)
    e = error_of('[rules]\non_drift = "panic"\n', tmp_path)
    assert ":2:" in str(e)


class Clock:
    def __init__(self) -> None:
        self.counters = {"events": 0, "kernel_lost": 0, "serial_gaps": 0}

    def __call__(self):
        return self.counters


@pytest.mark.parametrize("fmt", ["ecs", "panther", "coalesced"])
def test_heartbeat_every_interval_with_deltas(fmt):
    c = Clock()
    hb = HeartbeatStage(HeartbeatConfig(interval=60), c, fmt=fmt, host="web-01")
    assert isinstance(hb, Stage)
    assert hb.tick(1000.0) == []            # starts the schedule
    c.counters.update(events=50, kernel_lost=2)
    assert hb.tick(1059.0) == []
    (doc,) = hb.tick(1060.2)
    c.counters.update(events=80)
    (doc2,) = hb.tick(1200.0)               # a stall: one heartbeat, schedule kept (1180 passed)
    assert hb.tick(1230.0) == []
    (last,) = hb.close(1235.0)
    if fmt == "ecs":
        assert doc["event"] == {"kind": "metric", "module": "auditpipe",
                                "dataset": "auditpipe.metric", "action": "heartbeat"}
        assert doc["@timestamp"] == "1970-01-01T00:17:40.200Z"
        assert doc["host"] == {"name": "web-01"}
        beat = doc["auditpipe"]["heartbeat"]
        assert beat["deltas"] == {"events": 50, "kernel_lost": 2, "serial_gaps": 0}
        assert doc2["auditpipe"]["heartbeat"]["deltas"]["events"] == 30
        assert doc2["auditpipe"]["heartbeat"]["counters"]["events"] == 80
        assert last["auditpipe"]["heartbeat"]["final"] is True
        assert "2 lost" in doc["message"]
    elif fmt == "panther":
        assert doc["type"] == "AUDITPIPE_HEARTBEAT" and doc["p_log_type"] == "Linux.Auditd"
        assert doc["p_event_time"] == "1970-01-01 00:17:40.200" and doc["node"] == "web-01"
        assert doc["heartbeat"]["deltas"]["kernel_lost"] == 2
    else:
        assert doc["records"][0]["type"] == "AUDITPIPE_HEARTBEAT"
        assert doc["records"][0]["fields"]["heartbeat"]["deltas"]["events"] == 50
    assert hb.metrics() == {"sent": 3}


def test_heartbeat_off():
    hb = HeartbeatStage(HeartbeatConfig(interval=0), Clock())
    assert hb.tick(0) == hb.tick(10_000) == hb.close(10_001) == []


def test_ops_wiring_from_config():
    from auditpipe.kernel.drift import DriftMonitor
    from auditpipe.pipeline.ops import ops_stages, start_metrics

    cfg = load_config(text='[normalize]\nformat = "panther"\n[heartbeat]\ninterval = 5\n'
                           '[rules]\non_drift = "reinstall"\n[metrics]\nlisten = "127.0.0.1:0"\n')
    counters = Clock()
    stages = ops_stages(cfg, counters, host="h", netlink=object(), installed=[b"x"])
    assert [s.name for s in stages] == ["rules-drift", "heartbeat"]
    assert isinstance(stages[0], DriftMonitor) and stages[0].on_drift == "reinstall"
    assert [s.name for s in ops_stages(cfg, counters)] == ["heartbeat"]
    off = load_config(text="[heartbeat]\ninterval = 0\n")
    assert ops_stages(off, counters) == [] and start_metrics(off.metrics, counters) is None
    srv = start_metrics(cfg.metrics, counters)
    try:
        assert scrape(srv.port)[("auditpipe_events_total", ())] == 0
    finally:
        srv.close()
