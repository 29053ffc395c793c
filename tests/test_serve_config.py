"""`auditpipe serve --config FILE`: run's TOML plus [serve]; every output type through the same
`Outputs` as `run` (routing by `documents`), detection alerts, and Prometheus metrics — each
through a real `auditpipe serve` process on loopback."""

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
from click.testing import CliRunner

from auditpipe.cli import main
from auditpipe.config import load_config
from auditpipe.pipeline.assembly import build_pipeline
from es_server import ServerThread
from helpers import events_of_lines

CORPUS = Path(os.environ.get("AUDITPIPE_SHARED", Path(__file__).parents[2] / "shared")) / "corpus" / "raw-node.log"
SECRET = "s3cret"
HDR = {"X-Auditpipe-Secret": SECRET, "Content-Type": "application/x-ndjson"}


def corpus_lines(n: int = 1500) -> list[str]:
    with open(CORPUS, encoding="utf-8", errors="surrogateescape") as f:
        return [ln for ln in f.read().split("\n") if ln][:n]


def fluent(lines: list[str], first: int = 0) -> bytes:
    """Fluent Bit json_lines; ``date`` keeps the stream order across requests."""
    return b"".join(json.dumps({"date": 1.0 + first + i, "log": ln}).encode() + b"\n" for i, ln in enumerate(lines))


class Serve:
    """A real `auditpipe serve --config` process; the port it bound and, with metrics, that one."""

    def __init__(self, tmp: Path, toml: str, *extra: str) -> None:
        cfg = tmp / "serve.toml"
        cfg.write_text(toml)
        self.proc = subprocess.Popen([sys.executable, "-m", "auditpipe", "serve", "--config", str(cfg), *extra],
                                     stderr=subprocess.PIPE, text=True)
        self.port = self.metrics_port = None
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and self.port is None:
            line = self.proc.stderr.readline()
            if m := re.search(r"metrics on http://[^:]*:(\d+)", line):
                self.metrics_port = int(m.group(1))
            if m := re.search(r"listening on https?://[^:]*:(\d+)", line):
                self.port = int(m.group(1))
            if not line and self.proc.poll() is not None:
                break
        assert self.port, f"serve did not start: {self.proc.stderr.read() if self.proc.poll() is not None else ''}"
        self.url = f"http://127.0.0.1:{self.port}/"

    def post(self, lines: list[str], sender: str = "web-01/test", chunk: int = 500) -> None:
        with httpx.Client(timeout=30) as c:
            for i in range(0, len(lines), chunk):
                r = c.post(self.url, content=fluent(lines[i:i + chunk], i),
                           headers={**HDR, "X-Auditpipe-Sender": sender})
                assert r.status_code == 200, r.text

    def stop(self) -> str:
        self.proc.send_signal(signal.SIGTERM)
        err = self.proc.stderr.read()
        assert self.proc.wait(60) == 0, err
        return err


SERVE = """
[serve]
listen = "127.0.0.1:0"
auth = "shared-secret"
auth_secret = "s3cret"
event_wait = 0.5
"""


def test_es_output_from_the_config(tmp_path):
    """[[outputs]] type = "elasticsearch" into the loopback bulk server: one document per event
    `parse` makes, each created once, with the ECS host metadata and the stable _id. Two named
    senders post the same records without node=: each event is there twice, under each sender's
    host (one host's ids must not swallow the other's)."""
    lines = [ln.split(" ", 1)[1] for ln in corpus_lines()]  # node=… taken off
    want = len(events_of_lines(lines)[0])
    es = ServerThread()
    try:
        rx = Serve(tmp_path, SERVE + f"""
[normalize]
format = "ecs"
[[outputs]]
type = "elasticsearch"
hosts = ["{es.url}"]
queue_dir = "{tmp_path / 'q'}"
max_wait = 0.2
""")
        rx.post(lines, sender="alpha/1")
        rx.post(lines, sender="beta/1")
        rx.stop()
        st = es.state
        assert not st.violations, st.violations
        hosts = collections.Counter(d["host"]["name"] for d in st.docs.values())
        assert hosts == {"alpha": want, "beta": want}
        assert all(d["data_stream"]["type"] == "logs" for d in st.docs.values())
    finally:
        es.stop()


def test_lake_output_then_query(tmp_path):
    """[[outputs]] type = "lake": the files serve completes are what `auditpipe query` reads."""
    lines = corpus_lines()
    events = events_of_lines(lines)[0]
    lake = tmp_path / "lake"
    rx = Serve(tmp_path, SERVE + f"""
[normalize]
format = "ecs"
[[outputs]]
type = "lake"
path = "{lake}"
queue_dir = "{tmp_path / 'lq'}"
""")
    rx.post(lines)
    rx.stop()
    r = CliRunner().invoke(main, ["query", "--lake", str(lake), "--format", "json",
                                  "SELECT count(*) AS n, count(DISTINCT event_id) AS ids FROM events"])
    assert r.exit_code == 0, r.output
    row = json.loads(r.output.strip().splitlines()[0]) if r.output.lstrip().startswith("{") else json.loads(r.output)[0]
    assert row["n"] == len(events) and row["ids"] == len({e.id for e in events})


RULE = '''
RULE_ID = "test.chown"
SEVERITY = "HIGH"
TAGS = ["attack.t1222.002"]
def rule(event):
    return event.deep_get("process", "executable") == "/usr/bin/chown"
def dedup(event):
    return event.deep_get("process", "args")[-1]
'''


def detect_setup(tmp_path: Path, lines: list[str]) -> tuple[str, list[dict]]:
    """The [normalize]/[detect] sections of a chown rule, and the alerts `parse`'s pipeline
    makes with them from ``lines`` (what serve must give)."""
    rules = tmp_path / "rules"
    rules.mkdir()
    (rules / "chown.py").write_text(RULE)
    detect = f'[normalize]\nformat = "ecs"\n[detect]\nrules = ["{rules}"]\n'
    pipe = build_pipeline(load_config(text=detect), role="parse")
    alerts = [d for d in pipe.feed_lines(lines) + pipe.flush() if d["event"]["kind"] == "signal"]
    assert len(alerts) > 10
    return detect, alerts


@pytest.mark.parametrize("workers", ["1", "2"])
def test_detect_alerts_routed_to_an_alerts_output(tmp_path, workers):
    """[detect] rules in serve: alerts go only to the `documents = "alerts"` output, events only
    to the events output; one alert per chown event of the corpus."""
    lines = corpus_lines(5215)
    detect, want = detect_setup(tmp_path, lines)
    rx = Serve(tmp_path, SERVE + detect + f"""
[[outputs]]
path = "{tmp_path / 'events.jsonl'}"
[[outputs]]
path = "{tmp_path / 'alerts.jsonl'}"
documents = "alerts"
""", "--metrics-listen", "127.0.0.1:0", "--workers", workers)
    rx.post(lines)
    metrics = httpx.get(f"http://127.0.0.1:{rx.metrics_port}/metrics").text
    rx.stop()
    alerts = [json.loads(x) for x in (tmp_path / "alerts.jsonl").read_text().splitlines()]
    events = [json.loads(x) for x in (tmp_path / "events.jsonl").read_text().splitlines()]
    assert alerts and all(a["event"]["kind"] == "signal" and a["rule"]["id"] == "test.chown" for a in alerts)
    assert not any(e.get("event", {}).get("kind") == "signal" for e in events)
    assert sorted(a["signal"]["event_ids"] for a in alerts) == sorted(a["signal"]["event_ids"] for a in want)
    assert re.search(r'^auditpipe_receiver_requests_total\{code="200"\} (\d+)', metrics, re.M).group(1) == str(
        -(-len(lines) // 500))
    assert re.search(r"^auditpipe_receiver_records_total 5215\.0$", metrics, re.M), metrics


def test_rule_counts_are_not_summed_over_workers(tmp_path):
    """Every worker compiles the same rules: with senders on both, the rule counts are the
    configuration's, while the events counted are the sum of the workers'."""
    from auditpipe.sources.receiver.workers import worker_index

    lines = corpus_lines(5215)
    detect, _ = detect_setup(tmp_path, lines)
    senders = {worker_index(f"host-{i}/t", 2): f"host-{i}/t" for i in range(20)}
    assert len(senders) == 2
    rx = Serve(tmp_path, SERVE + detect + f'[[outputs]]\npath = "{tmp_path / "events.jsonl"}"\n',
               "--metrics-listen", "127.0.0.1:0", "--workers", "2")
    for sender in senders.values():
        rx.post(lines[:300], sender=sender)
    metrics = httpx.get(f"http://127.0.0.1:{rx.metrics_port}/metrics").text
    rx.stop()
    assert re.search(r"^auditpipe_detect_detect_rules_python 1\.0$", metrics, re.M), metrics
    assert re.search(r"^auditpipe_receiver_records_total 600\.0$", metrics, re.M), metrics


@pytest.mark.parametrize("workers", ["1", "2"])
def test_metrics_of_the_receiver(tmp_path, workers):
    """--metrics-listen: the receiver's requests, rejects, bad lines, senders, held records,
    connection actions and the outputs' state, scraped from a second listener."""
    rx = Serve(tmp_path, SERVE + f"""
[[outputs]]
path = "{tmp_path / 'out.jsonl'}"
[metrics]
listen = "127.0.0.1:0"
""", "--workers", workers)
    lines = corpus_lines(600)
    rx.post(lines[:300], sender="a/1")
    rx.post(lines[300:], sender="b/1")
    with httpx.Client() as c:
        bad = c.post(rx.url, content=b'{"date": 1, "log": "not an audit line"}\n' + fluent(lines[:1]), headers=HDR)
        assert bad.status_code == 200 and bad.json()["rejected"] == 1
        assert c.post(rx.url, content=b"x", headers={**HDR, "Content-Type": "application/msgpack"}).status_code == 415
        assert c.post(rx.url, content=b"x", headers={"Content-Type": "text/plain"}).status_code == 401
        text = c.get(f"http://127.0.0.1:{rx.metrics_port}/metrics").text
    rx.stop()

    def value(pattern: str) -> float:
        m = re.search(rf"^{pattern} ([0-9.e+]+)$", text, re.M)
        assert m, f"{pattern} not in metrics:\n{text}"
        return float(m.group(1))

    assert value(r'auditpipe_receiver_requests_total\{code="200"\}') == 3
    assert value(r'auditpipe_receiver_requests_total\{code="401"\}') == 1
    assert value(r'auditpipe_receiver_refused_bodies_total\{reason="415"\}') == 1
    assert value("auditpipe_receiver_rejected_lines_total") == 1
    assert value("auditpipe_receiver_senders") == 3  # two named senders and one connection
    assert value("auditpipe_receiver_records_total") == 602  # the bad line is a record that failed to parse
    assert value("auditpipe_rejects_total") == 1
    assert value("auditpipe_output_errors_total") == 0
    assert value("auditpipe_receiver_output_unavailable") == 0
    assert "auditpipe_receiver_held_records" in text and "auditpipe_events_total" in text


@pytest.mark.parametrize("toml,msg", [
    ('[serve]\nlisten = "127.0.0.1:0"\n', "--auth"),
    ('[serve]\nauth = "none"\n', "--listen"),
    ('[serve]\nlisten = "127.0.0.1:0"\nauth = "none"\nmax_conections = 3\n', ":4: [serve] max_conections: unknown"),
    ('[serve]\nlisten = "127.0.0.1:0"\nauth = "none"\ntls_key = "k"\n', "[serve] tls_key: needs tls_cert"),
    ('[serve]\nlisten = "127.0.0.1:0"\nauth = "none"\nmax_body = "lots"\n', ":4: [serve] max_body: could not"),
    ('[serve]\nlisten = "127.0.0.1:0"\nauth = "none"\nworkers = -1\n', "[serve] workers: workers must be 0"),
])
def test_config_errors(tmp_path, toml, msg):
    (tmp_path / "c.toml").write_text(toml)
    r = CliRunner().invoke(main, ["serve", "--config", str(tmp_path / "c.toml")], env={"AUDITPIPE_AUTH_SECRET": ""})
    assert r.exit_code == 2 and msg in r.output, r.output


def test_options_override_the_file(tmp_path):
    """--listen and --output win over [serve] listen and [[outputs]]."""
    out = tmp_path / "cli.jsonl"
    rx = Serve(tmp_path, f"""
[serve]
listen = "127.0.0.1:1"
auth = "none"
[[outputs]]
path = "{tmp_path / 'file.jsonl'}"
""", "--listen", "127.0.0.1:0", "--output", str(out), "--format", "coalesced")
    with httpx.Client() as c:
        assert c.post(rx.url, content=fluent(corpus_lines(50)), headers={"Content-Type": "application/x-ndjson"}
                      ).status_code == 200
    rx.stop()
    docs = [json.loads(x) for x in out.read_text().splitlines()]
    assert docs and "id" in docs[0] and not (tmp_path / "file.jsonl").exists()


def test_raw_http_output_relays_the_records(tmp_path):
    """An `http` output with format = "raw" in serve forwards the records as received (a relay
    tier), while a file output beside it gets the documents."""
    from loopback_http import LoopbackReceiver

    lines = corpus_lines(300)
    with LoopbackReceiver() as upstream:
        rx = Serve(tmp_path, SERVE + f"""
[[outputs]]
path = "{tmp_path / 'docs.jsonl'}"
[[outputs]]
type = "http"
format = "raw"
url = "{upstream.url}"
tls = false
max_wait = 0.05
queue_dir = "{tmp_path / 'q'}"
""")
        rx.post(lines)
        rx.stop()
        relayed = upstream.docs()
        senders = {h.get("X-Auditpipe-Sender") for h, _, _ in upstream.requests}
    assert [d["log"] for d in relayed] == lines
    assert len(senders) == 1 and None not in senders  # the relay names itself to the next tier
    assert len((tmp_path / "docs.jsonl").read_text().splitlines()) == len(events_of_lines(lines)[0])
