"""`parse --jobs N` writes what `--jobs 1` writes, and the compiled build what the pure-Python
one writes: byte for byte, with the same totals."""

from __future__ import annotations

import functools
import os
import random
import re
import subprocess
import sys
from pathlib import Path

import pytest
from tests.conftest import shared_path

from auditpipe.cli.common import build_normalizer
from auditpipe.normalize.jsonl import dumps_line
from auditpipe.pipeline import Pipeline
from auditpipe.pipeline.parallel import ParallelParse
from auditpipe.reassembly import Reassembler

# panther's p_parse_time and p_row_id differ from run to run by design
_PER_RUN = re.compile(rb'"p_parse_time":"[^"]*","p_row_id":"[^"]*"')
_TOTALS = re.compile(r"auditpipe parse: (.*);")


def _parse(path, fmt: str, jobs: int, out, pure: bool = False) -> tuple[bytes, str]:
    env = {**os.environ, "AUDITPIPE_PURE": "1"} if pure else {k: v for k, v in os.environ.items()
                                                               if k != "AUDITPIPE_PURE"}
    proc = subprocess.run([sys.executable, "-m", "auditpipe", "parse", str(path), "--format", fmt, "-o", str(out),
                           "--no-progress", "--jobs", str(jobs)], capture_output=True, text=True, check=True, env=env)
    totals = _TOTALS.search(proc.stderr)
    assert totals, proc.stderr
    return _PER_RUN.sub(b"", out.read_bytes()), totals.group(1)


@pytest.mark.parametrize("fmt", ["ecs", "coalesced", "panther"])
@pytest.mark.parametrize("corpus", ["enriched.log", "raw-node.log", "bench.log.gz"])
def test_jobs_output_equals_one_job(tmp_path, corpus, fmt):
    path = shared_path("corpus", corpus)
    one, one_totals = _parse(path, fmt, 1, tmp_path / "one.json")
    two, two_totals = _parse(path, fmt, 2, tmp_path / "two.json")
    assert one.count(b"\n") > 500
    assert two == one
    assert two_totals == one_totals


def _compiled_modules() -> list[str]:
    code = ("import importlib, pathlib; mods = [l for l in pathlib.Path('../scripts/compiled_modules.txt')"
            ".read_text().split() if l.endswith('.py')]; print(' '.join(m for m in mods if importlib.import_module("
            "m[:-3].replace('/', '.')).__file__.endswith('.so')))")
    root = Path(__file__).resolve().parents[1]
    env = {k: v for k, v in os.environ.items() if k != "AUDITPIPE_PURE"}
    return subprocess.run([sys.executable, "-c", code], cwd=root / "src", capture_output=True, text=True,
                          check=True, env=env).stdout.split()


@pytest.mark.parametrize("fmt", ["ecs", "coalesced", "panther"])
@pytest.mark.parametrize("corpus", ["enriched.log", "raw-node.log", "bench.log.gz"])
def test_compiled_build_output_equals_pure_python(tmp_path, corpus, fmt):
    compiled = _compiled_modules()
    if not compiled:
        pytest.skip("no compiled build here (scripts/build_compiled.sh found no compiler): nothing to compare")
    path = shared_path("corpus", corpus)
    pure, pure_totals = _parse(path, fmt, 1, tmp_path / "pure.json", pure=True)
    fast, fast_totals = _parse(path, fmt, 1, tmp_path / "compiled.json")
    assert pure.count(b"\n") > 500
    assert fast == pure
    assert fast_totals == pure_totals


def test_pure_switch_really_loads_the_source():
    if not _compiled_modules():
        pytest.skip("no compiled build here (scripts/build_compiled.sh found no compiler)")
    out = subprocess.run([sys.executable, "-c", "import auditpipe.parsing.record as r; print(r.__file__)"],
                         env={**os.environ, "AUDITPIPE_PURE": "1"}, capture_output=True, text=True, check=True)
    assert out.stdout.strip().endswith("record.py")


def _messy_lines() -> list[str]:
    """enriched.log with some events dropped whole (lost serials), some records moved later
    (late records, partial events) and a few junk lines (rejects)."""
    text = shared_path("corpus", "enriched.log").read_text("utf-8", "surrogateescape")
    lines = text.splitlines()
    rng = random.Random(7)
    serial = re.compile(r":(\d+)\):")
    dropped = {m.group(1) for line in lines[::97] if (m := serial.search(line))}
    kept = [line for line in lines if not ((m := serial.search(line)) and m.group(1) in dropped)]
    for _ in range(40):
        i = rng.randrange(len(kept) - 300)
        kept.insert(i + rng.randrange(50, 300), kept.pop(i))
    for i in range(0, len(kept), 1000):
        kept.insert(i, "not an audit record")
    return kept


def _serial(lines, make_normalize) -> tuple[bytes, dict, list]:
    rejects: list = []
    p = Pipeline(make_normalize(), Reassembler(), on_reject=lambda *r: rejects.append(r))
    docs = p.feed_lines(lines, "x", 1) + p.flush()
    return b"".join(map(dumps_line, docs)), p.stats(), rejects


@pytest.mark.parametrize("size,max_group", [(150, 1000), (40, 2)])
def test_small_segments_regroup_or_go_alone_and_stay_exact(size, max_group):
    """Segments far smaller than events need: many do not follow (re-run together), and with
    ``max_group`` 2 the parent soon parses alone; either way the bytes and totals are exact."""
    lines = _messy_lines()
    make = functools.partial(build_normalizer, "coalesced")
    want, want_stats, want_rejects = _serial(lines, make)
    assert want_stats["lost_serials"] > 0 and want_stats["late_records"] > 0 and want_stats["rejects"] > 0
    got: list[bytes] = []
    rejects: list = []
    par = ParallelParse(make, 2, got.append, lambda *r: rejects.append(r), max_group=max_group)
    for i in range(0, len(lines), size):
        par.feed(("x", i + 1, lines[i:i + size]))
    stats = par.finish()
    assert par.regroups > 0
    assert (par.alone is not None) == (max_group == 2)
    assert b"".join(got) == want
    assert stats == want_stats
    assert rejects == want_rejects


def _settled_points(lines, make_normalize) -> list[int]:
    p = Pipeline(make_normalize(), Reassembler())
    points = []
    for i, line in enumerate(lines):
        p.feed_lines([line])
        if p.reassembler.settled() and "type=PROCTITLE" in line:
            points.append(i + 1)
    return points


@pytest.mark.parametrize("late", [True, False])
def test_a_record_late_across_a_settled_cut(late):
    """A cut where the first half is settled, and the second half opens with a record of an
    event the first half ended (a late record: partial) or one far older than the newest
    (aged at once): only the check of the keys and times keeps the output exact."""
    make = functools.partial(build_normalizer, "coalesced")
    lines = shared_path("corpus", "enriched.log").read_text("utf-8", "surrogateescape").splitlines()
    cut = _settled_points(lines, make)[len(_settled_points(lines, make)) // 2]
    if late:
        moved = lines[cut - 2]  # a record of the event the PROCTITLE at cut - 1 ended
    else:  # a new event, 10 s older than anything before it
        moved = re.sub(r"audit\((\d+)", lambda m: f"audit({int(m.group(1)) - 10}", lines[cut - 2])
    lines = lines[:cut] + [moved] + lines[cut:]
    want, want_stats, _ = _serial(lines, make)
    got: list[bytes] = []
    par = ParallelParse(make, 2, got.append, lambda *r: None)
    par.feed(("x", 1, lines[:cut]))
    par.feed(("x", cut + 1, lines[cut:]))
    stats = par.finish()
    assert par.regroups == 1
    assert b"".join(got) == want
    assert stats == want_stats
