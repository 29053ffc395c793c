"""`auditpipe report`: the tables, the filters, and the HTML page rendered in headless Chromium."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import orjson
import pytest

from auditpipe.lake.config import LakeOutput
from auditpipe.lake.writer import LakeWriter
from conftest import CORPUS
from lake_helpers import build_lake

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = shutil.which("chromium")
NEEDS_CHROMIUM = pytest.mark.skipif(
    CHROMIUM is None, reason="Debian's chromium is not installed (scripts/setup.sh installs it as root)")
HEADLESS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
            "--disable-component-update", "--disable-sync"]


def _heartbeat(host: str, sec: int, lost: int, gaps: int) -> bytes:
    """A heartbeat as the heartbeat stage writes it in ECS (event.module auditpipe)."""
    return orjson.dumps({
        "@timestamp": f"2026-11-21T19:47:{sec:02d}.000Z", "message": "auditpipe heartbeat",
        "event": {"kind": "metric", "module": "auditpipe", "dataset": "auditpipe.metric", "action": "heartbeat"},
        "auditpipe": {"heartbeat": {"deltas": {"kernel_lost": lost, "serial_gaps": gaps, "events": 10}}},
        "host": {"name": host}})


@pytest.fixture(scope="module")
def lake(tmp_path_factory):
    root = tmp_path_factory.mktemp("lake")
    build_lake(root, [CORPUS / "enriched.log", CORPUS / "raw-node.log"])
    w = LakeWriter(LakeOutput(path=str(root)))
    w.send([_heartbeat("web-01.example.com", 12, 7, 2), _heartbeat("web-01.example.com", 22, 5, 0),
            _heartbeat("corpus-host", 15, 0, 1)])
    w.close()
    return root


def _report(*args):
    return subprocess.run([sys.executable, "-m", "auditpipe", "report", *args], capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(ROOT / "src"), "COLUMNS": "200"})


def _failed_logins(path: Path) -> int:
    return sum(1 for line in path.read_text(errors="replace").splitlines()
               if "type=USER_LOGIN" in line and "res=failed" in line)


def test_report_tables(lake):
    r = _report("--lake", str(lake), "--since", "all")
    assert r.returncode == 0, r.stderr
    out = r.stdout
    for title in ("Logins by user and source address", "Failed logins by source address", "Failed logins by user",
                  "Authentications", "Executables run (top 10)", "Account and group changes", "Rule-key hits",
                  "Anomalies", "Files touched, by rule key", "Kernel lost, serial gaps and heartbeats per host"):
        assert title in out, title
    failed = _failed_logins(CORPUS / "enriched.log") + _failed_logins(CORPUS / "raw-node.log")
    assert failed > 0
    assert re.search(rf"│ 127\.0\.0\.1\s+│ {failed}\s+│", out), "failed logins by address = USER_LOGIN res=failed lines"
    assert re.search(rf"│ failed_logins\s+│ {failed}\s+│", out)
    assert re.search(r"│ web-01\.example\.com\s+│ \d+\s+│ [\d:\- ]+│ 2\s+│ [\d:\- ]+│ 12\s+│ 2\s+│", out), \
        "loss per host: two heartbeats, 12 lost, 2 serial gaps"
    assert "anom_abend" in out and "/usr/bin/true" in out


def test_report_filters(lake):
    one = _report("--lake", str(lake), "--since", "all", "--host", "corpus-host")
    assert one.returncode == 0 and "web-01.example.com" not in one.stdout and "corpus-host" in one.stdout
    recent = _report("--lake", str(lake), "--since", "24h")  # the corpora are older than a day
    assert recent.returncode == 0 and re.search(r"│ events\s+│ 0\s+│", recent.stdout)
    bad = _report("--lake", str(lake), "--since", "yesterday")
    assert bad.returncode == 2 and "--since" in bad.stderr


def _chromium(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([CHROMIUM, *HEADLESS, "--enable-logging=stderr", "--v=0", *args],
                          capture_output=True, text=True, timeout=120)


def _console_errors(stderr: str) -> list[str]:
    return [ln for ln in stderr.splitlines() if "CONSOLE" in ln and re.search(r"error|uncaught", ln, re.I)]


@NEEDS_CHROMIUM
def test_html_report_renders_in_headless_chromium(lake, tmp_path):
    page = tmp_path / "report.html"
    r = _report("--lake", str(lake), "--since", "all", "--html", str(page))
    assert r.returncode == 0, r.stderr
    text = page.read_text()
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", text), "self-contained: nothing fetched"
    dom = _chromium("--dump-dom", page.as_uri())
    assert dom.returncode == 0, dom.stderr[-2000:]
    assert 'data-errors="0"' in dom.stdout and not _console_errors(dom.stderr)
    charts = re.findall(r'<svg class="chart" data-chart="(\w+)".*?</svg>', dom.stdout, re.S)
    assert charts == ["events_over_time", "failed_logins_over_time", "top_executables", "loss_per_host"]
    for name in charts:
        svg = re.search(rf'<svg class="chart" data-chart="{name}".*?</svg>', dom.stdout, re.S).group(0)
        assert svg.count('class="bar"') >= 1, f"{name}: no bars drawn"
    shot = tmp_path / "report.png"
    s = _chromium("--window-size=1100,1500", f"--screenshot={shot}", page.as_uri())
    assert s.returncode == 0 and shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 10_000


@NEEDS_CHROMIUM
def test_the_error_check_sees_a_broken_page(tmp_path):
    page = tmp_path / "broken.html"
    page.write_text("<!DOCTYPE html><html><body><script>document.body.dataset.errors='0';"
                    "window.addEventListener('error',function(){document.body.dataset.errors='1'});</script>"
                    "<script>no_such_function()</script></body></html>")
    dom = _chromium("--dump-dom", page.as_uri())
    assert 'data-errors="1"' in dom.stdout
    assert _console_errors(dom.stderr), "chromium's log shows the uncaught error"
