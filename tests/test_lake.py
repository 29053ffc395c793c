"""The Parquet lake: layout and columns, the Transport contract (committed only after rename),
a SIGKILLed writer behind the durable queue, compaction and expiry while a writer runs, and
`auditpipe query` on DuckDB."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import orjson
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from auditpipe.config import load_config
from auditpipe.lake.columns import schema_of
from auditpipe.lake.config import LakeOutput
from auditpipe.lake.maintain import compact, expire
from auditpipe.lake.query import DuckEngine
from auditpipe.lake.writer import LakeWriter
from conftest import CORPUS, SHARED
from lake_helpers import build_lake

ROOT = Path(__file__).resolve().parents[1]
CLI = [sys.executable, "-m", "auditpipe"]


@pytest.fixture(scope="module")
def lake(tmp_path_factory):
    root = tmp_path_factory.mktemp("lake")
    stats = build_lake(root, [CORPUS / "enriched.log", CORPUS / "raw-node.log"])
    return root, stats


def _files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file())


def _ecs_doc(sec: int, serial: int, host: str | None = "h1", action: str = "executed") -> bytes:
    doc = {"@timestamp": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(sec)) + ".250Z",
           "event": {"kind": "event", "action": action, "category": ["process"]},
           "auditd": {"sequence": serial, "message_type": "syscall", "data": {"exit": "-13", "syscall": "openat"}},
           "process": {"pid": 42, "args": ["ls", "-l"]}}
    if host:
        doc["host"] = {"name": host}
    return orjson.dumps(doc)


# ------------------------------------------------------------------------------ layout, columns
def test_layout_is_hive_partitioned_by_event_date_and_host(lake):
    root, _ = lake
    files = _files(root)
    assert files and not [f for f in files if f.name.startswith(".")], "no temporary file may be left"
    rel = {str(f.relative_to(root).parent) for f in files}
    assert rel == {"ecs/date=2026-11-21/host=corpus-host", "ecs/date=2026-11-21/host=web-01.example.com",
                   "panther/date=2026-11-21/host=corpus-host", "panther/date=2026-11-21/host=web-01.example.com"}
    assert all(f.name.startswith("part-") and f.suffix == ".parquet" for f in files)


def test_every_file_has_the_format_schema(lake):
    root, _ = lake
    for f in _files(root):
        fmt = f.relative_to(root).parts[0]
        schema = pq.read_schema(f)
        assert schema.equals(schema_of(fmt), check_metadata=False), f
        assert schema.field("timestamp").type == pa.timestamp("us", tz="UTC")


def test_panther_columns_are_the_schema_fields():
    fields = yaml.safe_load((SHARED / "schemas/linux-auditd.yml").read_text())["fields"]
    names = schema_of("panther").names
    for f in fields:
        assert f["name"] in names, f["name"]
    r = subprocess.run([sys.executable, str(ROOT / "scripts/gen_lake_columns.py"), "--check",
                        "--schema", str(SHARED / "schemas/linux-auditd.yml")], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr


def test_every_event_and_record_is_in_the_lake_with_its_document(lake):
    root, stats = lake
    eng = DuckEngine(str(root))
    events = sum(s["events"] for (fmt, _), s in stats.items() if fmt == "ecs")
    records = sum(s["records"] for (fmt, _), s in stats.items() if fmt == "panther")
    assert eng.arrow("SELECT count(*) n FROM events").to_pylist() == [{"n": events}]
    assert eng.arrow("SELECT count(*) n FROM records").to_pylist() == [{"n": records}]
    # the typed columns agree with the document they came from
    rows = eng.arrow("SELECT action, process_executable, process_args, source_ip, timestamp, event_id, document "
                     "FROM events WHERE action = 'executed' AND process_args IS NOT NULL LIMIT 50").to_pylist()
    assert rows
    for r in rows:
        d = json.loads(r["document"])
        assert r["action"] == d["event"]["action"] and r["process_args"] == d["process"]["args"]
        assert r["timestamp"].isoformat(timespec="milliseconds").replace("+00:00", "Z") == d["@timestamp"]
        assert r["event_id"].endswith(f":{d['auditd']['sequence']}")
    # every ECS event has its records (panther rows) under the same event id
    orphans = eng.arrow("SELECT count(*) n FROM events e ANTI JOIN records r "
                        "ON e.event_id = r.event_id AND e.host = r.host").to_pylist()
    assert orphans == [{"n": 0}]
    eng.close()


# ------------------------------------------------------------------------------ transport contract
def test_committed_only_after_the_file_is_renamed(tmp_path):
    clock = [0.0]
    w = LakeWriter(LakeOutput(path=str(tmp_path), max_file_age=10), monotonic=lambda: clock[0])
    for i in range(3):
        out = w.send([_ecs_doc(1_800_000_000 + i, i), b"{not json", orjson.dumps({"x": 1})])
        assert [p for p, _ in out.refused] == [1, 2]
    assert w.committed() == 0
    assert not list(tmp_path.rglob("part-*.parquet"))
    clock[0] = 11.0  # the open file is past its age: the next poll completes it
    assert w.committed() == 3
    assert len(list(tmp_path.rglob("part-*.parquet"))) == 1
    w.send([_ecs_doc(1_800_000_100, 9, host="h2")])
    assert w.committed() == 3
    w.close()
    assert w.committed() == 4


def test_rolls_by_size(tmp_path):
    w = LakeWriter(LakeOutput(path=str(tmp_path), max_file_bytes=20_000, row_group_rows=200))
    for b in range(20):
        w.send([_ecs_doc(1_800_000_000 + b, b * 1000 + i) for i in range(200)])
    assert w.committed() >= 10
    w.close()
    files = list(tmp_path.rglob("part-*.parquet"))
    assert len(files) >= 5
    assert sum(pq.read_metadata(f).num_rows for f in files) == 4000


def test_documents_without_host_or_from_other_days(tmp_path):
    w = LakeWriter(LakeOutput(path=str(tmp_path), default_host="my host/1"))
    w.send([_ecs_doc(1_800_000_000, 1, host=None), _ecs_doc(1_800_000_000 + 86400, 2, host="a/b")])
    w.close()
    dirs = sorted(str(p.parent.relative_to(tmp_path)) for p in tmp_path.rglob("part-*.parquet"))
    assert dirs == ["ecs/date=2027-01-15/host=my_host_1", "ecs/date=2027-01-16/host=a_b"]


CHILD = textwrap.dedent("""
    import sys, time
    from auditpipe.lake.config import LakeOutput
    from auditpipe.lake.sink import open_lake_output
    out = open_lake_output(LakeOutput(path=sys.argv[1], max_file_age=0.5, row_group_rows=200))
    i = 0
    while True:  # until SIGKILL: 100 documents every 10 ms, each count printed once accepted
        out.write([{"@timestamp": "2027-01-15T08:%02d:%02d.%03dZ" % (j // 60000 % 60, j // 1000 % 60, j % 1000),
                    "auditd": {"sequence": j}, "event": {"action": "executed"}, "host": {"name": "h"}}
                   for j in range(i, i + 100)])
        i += 100
        print(i, flush=True)
        time.sleep(0.01)
""")


def test_sigkill_loses_nothing_and_resends_are_deduplicated(tmp_path):
    lake_dir = tmp_path / "lake"
    p = subprocess.Popen([sys.executable, "-c", CHILD, str(lake_dir)], stdout=subprocess.PIPE, text=True,
                         env={**os.environ, "PYTHONPATH": str(ROOT / "src")})
    try:
        deadline = time.monotonic() + 30  # until one file is complete and the next one is being written
        while time.monotonic() < deadline and not (list(lake_dir.rglob("part-*.parquet"))
                                                   and list(lake_dir.rglob(".part-*.parquet.tmp"))):
            time.sleep(0.02)
    finally:
        p.send_signal(signal.SIGKILL)
        p.wait()
    accepted = int(p.stdout.read().split()[-1])
    assert list(lake_dir.rglob(".part-*.parquet.tmp")), "killed while a file was being written"
    done = sum(pq.read_metadata(f).num_rows for f in lake_dir.rglob("part-*.parquet"))
    assert 0 < done < accepted
    # a fresh writer: the leftover temporary file goes, the queue sends again what was not committed
    from auditpipe.lake.sink import open_lake_output

    out = open_lake_output(LakeOutput(path=str(lake_dir), max_file_age=0.2))
    out.close(drain_timeout=20)
    assert not list(lake_dir.rglob(".part-*")), "the crashed writer's temporary file is removed"
    eng = DuckEngine(str(lake_dir))
    sql = "SELECT count(*) n, count(DISTINCT event_id) d, max(sequence) FROM events"
    n, d, top = eng.arrow(sql).to_pylist()[0].values()
    assert n == d and accepted <= n <= accepted + 100 and top == n - 1, (n, d, accepted)
    eng.close()


# ------------------------------------------------------------------------------ compact, expire
def test_compact_while_a_writer_runs(tmp_path):
    w = LakeWriter(LakeOutput(path=str(tmp_path), max_file_bytes=4_000, row_group_rows=50))
    batches = 150

    def write():
        for b in range(batches):
            w.send([_ecs_doc(1_800_000_000, b * 50 + k) for k in range(50)])
            time.sleep(0.005)
        w.close()

    t = threading.Thread(target=write)
    t.start()
    deadline = time.monotonic() + 30
    while len(list(tmp_path.rglob("part-*.parquet"))) < 4 and time.monotonic() < deadline:
        time.sleep(0.01)
    results = []
    while t.is_alive() or not results:  # compact over and over while the writer adds files
        results.append(compact(str(tmp_path), target_bytes=1 << 20))
    t.join()
    assert sum(r.files_in for r in results) > 3 and not any(r.skipped for r in results)
    eng = DuckEngine(str(tmp_path), dedup=False)
    assert eng.arrow("SELECT count(*) n, count(DISTINCT sequence) d FROM events").to_pylist() == [
        {"n": batches * 50, "d": batches * 50}]
    eng.close()
    compact(str(tmp_path), target_bytes=1 << 20)
    assert len(list(tmp_path.rglob("part-*.parquet"))) == 1, "the partition's small files end as one"


def test_expire_removes_only_old_partitions(tmp_path):
    now = 1_900_000_000
    w = LakeWriter(LakeOutput(path=str(tmp_path)))
    w.send([_ecs_doc(now - d * 86400, d) for d in (0, 1, 89, 91, 200)])
    w.close()
    removed = expire(str(tmp_path), 90 * 86400, now=now)
    assert len(removed) == 2
    left = sorted(p.parent.parent.name for p in tmp_path.rglob("part-*.parquet"))
    assert left == sorted(time.strftime("date=%Y-%m-%d", time.gmtime(now - d * 86400)) for d in (0, 1, 89))
    assert len(list((tmp_path / "ecs").iterdir())) == 3, "the expired partitions' folders are gone"


# ------------------------------------------------------------------------------ CLI
def _cli(*args, **kw):
    return subprocess.run([*CLI, *args], capture_output=True, text=True, cwd=kw.get("cwd"),
                          env={**os.environ, "PYTHONPATH": str(ROOT / "src")})


def test_query_cli_formats_and_errors(lake, tmp_path):
    root, _ = lake
    r = _cli("query", "--lake", str(root), "--format", "csv",
             "SELECT action, count(*) AS n FROM events GROUP BY action ORDER BY n DESC, action LIMIT 3")
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines()[0] == '"action","n"' and len(r.stdout.splitlines()) == 4
    r = _cli("query", "--lake", str(root), "--format", "json", "SELECT category, timestamp FROM events LIMIT 1")
    row = json.loads(r.stdout)
    assert isinstance(row["category"], list) and row["timestamp"].endswith("+00:00")
    out = tmp_path / "x.parquet"
    r = _cli("query", "--lake", str(root), "--format", "parquet", "-o", str(out), "SELECT * FROM records LIMIT 5")
    assert r.returncode == 0 and pq.read_table(out).num_rows == 5
    bad = _cli("query", "--lake", str(root), "SELEC action FROM events")
    assert bad.returncode == 1 and "syntax error" in bad.stderr and "Traceback" not in bad.stderr
    bad = _cli("query", "--lake", str(root), "SELECT nope FROM events")
    assert bad.returncode == 1 and "nope" in bad.stderr and "Traceback" not in bad.stderr
    none = _cli("query", "--lake", str(tmp_path / "nothing"), "SELECT 1")
    assert none.returncode == 1 and "--lake" in none.stderr and "Traceback" not in none.stderr


def test_parse_lake_cli_and_partition_pruning(tmp_path):
    r = _cli("parse", str(CORPUS / "raw-node.log"), "--format", "ecs", "--lake", str(tmp_path))
    assert r.returncode == 0, r.stderr
    eng = DuckEngine(str(tmp_path))
    plan = eng.con.sql("EXPLAIN SELECT count(*) FROM events WHERE date = DATE '2026-11-20'").fetchall()[0][1]
    assert "Scanning Files: 0/1" in plan
    eng.close()
    r = _cli("parse", str(CORPUS / "raw-node.log"), "--format", "coalesced", "--lake", str(tmp_path))
    assert r.returncode == 2 and "--format ecs" in r.stderr


def test_lake_output_config(tmp_path):
    cfg = load_config(text=f'[[outputs]]\ntype = "lake"\npath = "{tmp_path}"\nmax_file_age = 60\n')
    (o,) = cfg.outputs
    assert isinstance(o, LakeOutput) and o.max_file_age == 60 and o.max_file_bytes == 128 << 20
    assert LakeOutput().path == "./auditpipe-data"
    with pytest.raises(Exception, match=r":4: .*compression"):
        load_config(text='[[outputs]]\ntype = "lake"\n\ncompression = "zip"\n')
    with pytest.raises(Exception, match=r":1: .*ecs or panther"):
        load_config(text='[[outputs]]\ntype = "lake"\n[normalize]\nformat = "coalesced"\n')


# ------------------------------------------------------------------------------ batch path
def _lake_table(root: Path, folder: str) -> pa.Table:
    t = pa.concat_tables(pq.read_table(f) for f in sorted((root / folder).rglob("part-*.parquet")))
    return t.sort_by([("doc_hash", "ascending")])


def test_batch_path_writes_what_the_reference_path_writes(tmp_path):
    from auditpipe.cli.common import build_normalizer, run_files

    odd = [orjson.dumps(d) for d in (
        {"@timestamp": "2027-01-15T08:00:00.001Z", "event": {"kind": "signal", "action": "x", "id": "alert-1"},
         "rule": {"name": "r", "id": "1"}, "host": {"name": "é host/1"}},
        {"@timestamp": "2027-01-15T08:00:00.002Z", "event": {"kind": "metric", "action": "heartbeat"},
         "host": {"name": ""}},
        {"@timestamp": "2027-01-15T08:00:00.003Z", "auditd": {"sequence": 7, "data": {"exit": "-13x"}},
         "event": {"original": ["type=SYSCALL msg=audit(1:7): a=1", "type=PATH msg=audit(1:7): b=2"]}},
    )]
    for fast in (True, False):
        root = tmp_path / ("fast" if fast else "slow")
        for corpus, raw in ((CORPUS / "enriched.log", False), (CORPUS / "raw-node.log", True)):
            w = LakeWriter(LakeOutput(path=str(root), default_host="d"), fast=fast)
            run_files([str(corpus)], build_normalizer("ecs", resolve_ids=False, include_raw=raw), lake=w)
            assert (w.stats()["lake_slow_batches"] == 0) == fast, "the corpora take the batch path"
            w.send(odd)
            w.close()
    for folder in ("ecs", "alerts"):
        fast, slow = _lake_table(tmp_path / "fast", folder), _lake_table(tmp_path / "slow", folder)
        assert fast.num_rows == slow.num_rows > 0
        for name in fast.column_names:
            assert fast.column(name).to_pylist() == slow.column(name).to_pylist(), (folder, name)
    t = _lake_table(tmp_path / "fast", "ecs")
    assert t.filter(pa.compute.field("record_types").is_valid()).num_rows > 900, "include_raw fills record_types"


def test_batch_path_falls_back_on_a_surprise(tmp_path):
    w = LakeWriter(LakeOutput(path=str(tmp_path)))
    good = _ecs_doc(1_800_000_000, 1)
    odd = orjson.dumps({"@timestamp": "2027-01-15T08:00:00.001Z", "process": {"pid": "12"}})  # pid as a string
    assert w._fast.tables([good, odd]) is None
    out = w.send([good, odd, b"[1]"])
    assert out.refused == [(2, "not a JSON object")]
    w.close()
    eng = DuckEngine(str(tmp_path))
    assert sorted(eng.arrow("SELECT process_pid FROM events").column(0).to_pylist()) == [12, 42]
    eng.close()


def test_run_writes_the_lake_through_its_queue(tmp_path):
    """`auditpipe run` with a lake output (file source): every event ends in a completed file."""
    cfg = tmp_path / "cfg.toml"
    lake_dir = tmp_path / "lake"
    cfg.write_text(f'[heartbeat]\ninterval = 0\n[source]\ntype = "file"\npath = "{CORPUS / "raw-node.log"}"\nstart = "head"\n'
                   f'checkpoint = "{tmp_path / "ckpt"}"\n[status]\npath = "{tmp_path / "status.json"}"\n'
                   f'[[outputs]]\ntype = "lake"\npath = "{lake_dir}"\nmax_file_age = 0.5\n')
    p = subprocess.Popen([*CLI, "run", "--config", str(cfg)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                         text=True, env={**os.environ, "PYTHONPATH": str(ROOT / "src")})
    try:
        deadline = time.monotonic() + 60
        while not list(lake_dir.rglob("part-*.parquet")) and time.monotonic() < deadline:
            time.sleep(0.1)
    finally:
        p.send_signal(signal.SIGTERM)
        out, _ = p.communicate(timeout=60)
    assert p.returncode == 0, out
    eng = DuckEngine(str(lake_dir))
    got = eng.arrow("SELECT count(*) n, min(host) h FROM events").to_pylist()
    assert got == [{"n": 949, "h": "web-01.example.com"}]
    eng.close()
    assert not list(lake_dir.rglob(".part-*"))


@pytest.mark.skipif(os.geteuid() != 0, reason="mounting a tmpfs needs root")
def test_disk_full_under_the_lake_loses_nothing(tmp_path, caplog):
    """ENOSPC while a file is written: the open files are dropped, the queue sends them again
    once there is room; readers never see a partial file."""
    from auditpipe.lake.sink import open_lake_output

    lake_dir = tmp_path / "lake"
    lake_dir.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(lake_dir)], check=True)
    out = None
    try:
        filler = lake_dir / "filler"
        filler.write_bytes(b"\0" * (4 * 1024 * 1024 - 160 * 1024))
        out = open_lake_output(LakeOutput(path=str(lake_dir), queue_dir=str(tmp_path / "queue"),
                                          max_file_age=0.3, row_group_rows=500, compression="none"))
        noise = {"message": os.urandom(300).hex()}  # 600 more bytes a document (stored uncompressed)
        docs = [orjson.loads(_ecs_doc(1_800_000_000, i)) | noise for i in range(3000)]
        out.write(docs)
        deadline = time.monotonic() + 20
        while out.shipper.queue.pending and time.monotonic() < deadline and not _full(lake_dir):
            time.sleep(0.05)
        time.sleep(1.0)
        done = [pq.read_metadata(f).num_rows for f in lake_dir.rglob("part-*.parquet")]  # each one whole
        assert sum(done) < 3000, "the disk was full before everything was written"
        assert any(r.exc_info and isinstance(r.exc_info[1], OSError) and r.exc_info[1].errno == 28
                   for r in caplog.records), "the writer met ENOSPC"
        filler.unlink()
        deadline = time.monotonic() + 30
        while out.shipper.queue.pending and time.monotonic() < deadline:
            time.sleep(0.1)
        out.close(drain_timeout=10)
        out = None
        eng = DuckEngine(str(lake_dir))
        assert eng.arrow("SELECT count(*) n, count(DISTINCT sequence) d FROM events").to_pylist() == [
            {"n": 3000, "d": 3000}]
        eng.close()
        assert not list(lake_dir.rglob(".part-*"))
    finally:
        if out is not None:
            out.close(drain_timeout=0)
        subprocess.run(["umount", str(lake_dir)], check=False)


def _full(path: Path) -> bool:
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize < 64 * 1024
