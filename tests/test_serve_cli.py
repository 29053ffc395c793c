import gzip
import json
import os
import re
import signal
import subprocess
import sys
import time

import httpx
import pytest
from click.testing import CliRunner

from auditpipe.cli import main
from auditpipe.cli.serve_cmd import split_listen
from auditpipe.sinks import auth

CORPUS = "/work/shared/corpus/raw-node.log"
if not os.path.exists(CORPUS):
    CORPUS = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "corpus", "raw-node.log")


def test_split_listen():
    assert split_listen("127.0.0.1:8088") == ("127.0.0.1", 8088)
    assert split_listen("[::1]:9") == ("::1", 9)
    assert split_listen(":80") == ("0.0.0.0", 80)


@pytest.mark.parametrize("args,msg", [
    (["--listen", "127.0.0.1:0", "--output", "o"], "Missing option '--auth'"),
    (["--listen", "127.0.0.1:0", "--output", "o", "--auth", "hmac"], "needs --auth-secret"),
    (["--listen", "nope", "--output", "o", "--auth", "none"], "HOST:PORT"),
    (["--listen", "127.0.0.1:0", "--output", "o", "--auth", "none", "--max-body", "0"], "positive"),
    (["--listen", "127.0.0.1:0", "--output", "o", "--auth", "none", "--workers", "-1"], "--workers"),
])
def test_usage_errors(args, msg):
    r = CliRunner().invoke(main, ["serve", *args], env={"AUDITPIPE_AUTH_SECRET": ""})
    assert r.exit_code == 2 and msg in r.output


def start(tmp_path, *extra, env=None):
    out = tmp_path / "out.jsonl"
    proc = subprocess.Popen(
        [sys.executable, "-m", "auditpipe", "serve", "--listen", "127.0.0.1:0", "--output", str(out), *extra],
        stderr=subprocess.PIPE, text=True, env={**os.environ, **(env or {})})
    deadline = time.monotonic() + 20
    port = None
    while time.monotonic() < deadline:
        line = proc.stderr.readline()
        m = re.search(r"listening on https?://[^:]*:(\d+)", line)
        if m:
            port = int(m.group(1))
            break
        if not line and proc.poll() is not None:
            break
    assert port, "server did not start"
    return proc, port, out


def test_serve_process_hmac_end_to_end(tmp_path):
    with open(CORPUS, encoding="utf-8", errors="surrogateescape") as f:
        lines = [ln for ln in f.read().split("\n") if ln][:500]
    proc, port, out = start(tmp_path, "--auth", "hmac", "--format", "ecs",
                            env={"AUDITPIPE_AUTH_SECRET": "k3y"})
    try:
        body = gzip.compress(b"".join(json.dumps({"date": 1.0, "log": ln}).encode() + b"\n" for ln in lines))
        url = f"http://127.0.0.1:{port}/"
        hdr = {"Content-Encoding": "gzip", "Content-Type": "application/x-ndjson"}
        r = httpx.post(url, content=body, headers={**hdr, **auth.client_headers("hmac", "k3y", body)})
        assert r.status_code == 200 and r.json()["records"] == 500
        r = httpx.post(url, content=body, headers={**hdr, **auth.client_headers("hmac", "bad", body)})
        assert r.status_code == 401
        assert httpx.get(f"http://127.0.0.1:{port}/healthz").status_code == 200
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(20)
    assert proc.returncode == 0
    docs = [json.loads(x) for x in out.read_text().split("\n") if x]
    assert len(docs) > 50  # every event flushed on SIGTERM
    assert all("@timestamp" in d for d in docs)
    assert oct(os.stat(out).st_mode & 0o777) == "0o600"
