"""Alerts to chat: an HTTP output with ``format = "webhook"`` posts each alert as a Slack/Teams-
style incoming-webhook message (one request per alert), retried like other HTTP requests —
driven end to end by a real `auditpipe serve` with detection rules, into a loopback webhook."""

from __future__ import annotations

import json

import pytest

from auditpipe.config import ConfigError, load_config
from loopback_http import LoopbackReceiver
from test_serve_config import SERVE, Serve, corpus_lines, detect_setup


def test_webhook_output_needs_alerts():
    with pytest.raises(ConfigError, match=r":1: \[\[outputs\]\] #1 documents: a webhook output posts alerts"):
        load_config(text='[[outputs]]\ntype = "http"\nformat = "webhook"\nurl = "https://hooks.example/x"\n')


def test_alerts_posted_one_per_request_with_retries(tmp_path):
    lines = corpus_lines(5215)
    detect, alerts = detect_setup(tmp_path, lines)
    # the 3rd message: 429 (retried from there), the 4th: 400 (refused alone), the 5th: 500 once
    hook = LoopbackReceiver(script=[200, 200, 429, 200, 400, 500]).start()
    try:
        rx = Serve(tmp_path, SERVE + detect + f"""
[[outputs]]
path = "{tmp_path / 'events.jsonl'}"
[[outputs]]
type = "http"
format = "webhook"
documents = "alerts"
url = "{hook.url}"
tls = false
backoff_initial = 0.05
queue_dir = "{tmp_path / 'q'}"
dead_letter = "{tmp_path / 'dead.jsonl'}"
""")
        rx.post(lines)
        rx.stop()
    finally:
        hook.stop()
    requests = hook.requests
    assert all(h["Content-Type"] == "application/json" and "Content-Encoding" not in h for h, _, _ in requests)
    bodies = [(json.loads(b), status) for _, b, status in requests]
    assert [s for _, s in bodies[:6]] == [200, 200, 429, 200, 400, 500]
    assert bodies[2][0] == bodies[3][0] and bodies[5][0] == bodies[6][0]  # the same message again
    delivered = [b for b, s in bodies if s == 200]
    want = [a["signal"]["event_ids"][0] for a in alerts]
    got = [dict((f["title"], f["value"]) for f in b["fields"])["Events"] for b in delivered]
    refused = want[3]
    assert sorted(got) == sorted(w for w in want if w != refused)  # each once, in order of the stream
    first = delivered[0]
    assert first["text"].startswith("[HIGH] ") and " on web-01.example.com" in first["text"]
    assert first["attachments"][0]["fields"] == first["fields"]
    dead = [json.loads(x) for x in (tmp_path / "dead.jsonl").read_text().splitlines()]
    assert len(dead) == 1 and "HTTP 400" in dead[0]["reason"]
    assert json.loads(dead[0]["body"][0])["signal"]["event_ids"] == [refused]
