"""`detect hunt`: the same Sigma rules over the Parquet lake find what the stream found."""

from __future__ import annotations

import subprocess
import sys
from datetime import UTC, datetime

import pyarrow as pa
import pyarrow.parquet as pq
from conftest import SHARED
from test_detect import EXECVE_EVENT, events

from auditpipe.detect.config import DetectConfig
from auditpipe.detect.engine import DetectStage, load_rules
from auditpipe.detect.hunt import hunt, parse_since
from auditpipe.normalize.ecs import make_ecs_normalizer
from auditpipe.normalize.jsonl import dumps_line

SIGMA_LINUX = SHARED / "sigma" / "rules" / "linux"
EXTRA = [
    # a created file the file_event rules look at, and an outgoing connection to a callback port
    ('type=SYSCALL msg=audit(1700000300.000:30): arch=c000003e syscall=257 success=yes exit=3 a0=ffffff9c a1=1 '
    'a2=241 a3=1b6 items=2 ppid=1 pid=90 auid=1000 uid=0 gid=0 euid=0 suid=0 fsuid=0 egid=0 sgid=0 fsgid=0 '
    'tty=pts0 ses=3 comm="bash" exe="/usr/bin/bash" key=(null)'),
    'type=CWD msg=audit(1700000300.000:30): cwd="/root"',
    ('type=PATH msg=audit(1700000300.000:30): item=0 name="/etc/cron.d/" inode=1 dev=fe:00 mode=040755 ouid=0 '
    'ogid=0 rdev=00:00 nametype=PARENT cap_fp=0 cap_fi=0 cap_fe=0 cap_fver=0 cap_frootid=0'),
    ('type=PATH msg=audit(1700000300.000:30): item=1 name="/etc/cron.d/evil" inode=2 dev=fe:00 mode=0100644 '
    'ouid=0 ogid=0 rdev=00:00 nametype=CREATE cap_fp=0 cap_fi=0 cap_fe=0 cap_fver=0 cap_frootid=0'),
    'type=PROCTITLE msg=audit(1700000300.000:30): proctitle=62617368',
]


def _lake(tmp_path, docs_by_event):
    """A lake in the lake layout (docs/lake.md), one file per (date, host)."""
    rows: dict[tuple[str, str], list] = {}
    for ev, doc in docs_by_event:
        ts = datetime.fromtimestamp(ev.ts, tz=UTC)
        host = ev.node or "h1"
        rows.setdefault((ts.strftime("%Y-%m-%d"), host), []).append(
            (dumps_line(doc).decode().rstrip("\n"), ev.id, ts, host))
    for (day, host), rs in rows.items():
        d = tmp_path / "lake" / "ecs" / f"date={day}" / f"host={host}"
        d.mkdir(parents=True)
        table = pa.table({"document": [r[0] for r in rs], "event_id": [r[1] for r in rs],
                          "timestamp": pa.array([r[2] for r in rs], pa.timestamp("us", tz="UTC")),
                          "host": [r[3] for r in rs]})
        pq.write_table(table, d / "part-0.parquet")
    return tmp_path / "lake"


def test_hunt_finds_what_the_stream_finds(tmp_path):
    assert SIGMA_LINUX.is_dir(), f"shared Sigma rules missing at {SIGMA_LINUX}"
    lines = [ln for ln in (SHARED / "corpus" / "enriched.log").read_text(errors="surrogateescape").split("\n") if ln]
    evs = events(lines + EXECVE_EVENT + EXTRA)
    norm = make_ecs_normalizer(include_raw=True)
    rules = load_rules([str(SIGMA_LINUX)])
    stage = DetectStage(DetectConfig(rules=[str(SIGMA_LINUX)], dedup_minutes=0), "ecs", rules=rules)
    stream = set()
    pairs = []
    for ev in evs:
        docs = norm(ev)
        assert len(docs) == 1
        pairs.append((ev, docs[0]))
        for a in stage.process(ev, docs, 0.0)[1:]:
            stream.add((a["rule"]["id"], a["signal"]["event_ids"][0]))
    lake = _lake(tmp_path, pairs)
    matches, problems = hunt(rules.sigma, str(lake), None)
    hunted = {(m["rule_id"], m["event_id"]) for m in matches}
    assert not problems
    assert hunted == stream
    cats = {r.category for r in rules.sigma if any(r.id == rid for rid, _ in hunted)}
    assert {"auditd", "process_creation", "file_event"} <= cats
    # --since cuts by the timestamp column: the corpus is from 2026, the synthetic events from 2023
    recent, _ = hunt(rules.sigma, str(lake), datetime(2025, 1, 1, tzinfo=UTC).timestamp())
    assert recent and all(not m["event_id"].startswith("17000") for m in recent)
    assert len(recent) < len(matches)


def test_hunt_cli(tmp_path):
    evs = events(EXECVE_EVENT)
    norm = make_ecs_normalizer(include_raw=True)
    lake = _lake(tmp_path, [(ev, norm(ev)[0]) for ev in evs])
    r = subprocess.run([sys.executable, "-m", "auditpipe", "detect", "hunt", str(SIGMA_LINUX), "--lake", str(lake),
                        "--since", "all"], capture_output=True, text=True, timeout=120, check=False)
    assert r.returncode == 0, r.stderr
    assert "1700000100.000:20" in r.stdout and "Remove Immutable File Attribute" in r.stdout
    assert parse_since("30d", 100 * 86400.0) == 70 * 86400.0
