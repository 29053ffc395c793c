"""`parse --jobs N` writes what `--jobs 1` writes, and the compiled build what the pure-Python
one writes: byte for byte, with the same totals."""

from __future__ import annotations

import functools
import gzip
import io
import itertools
import os
import random
import re
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tests.conftest import shared_path

from auditpipe.cli.common import build_normalizer
from auditpipe.normalize.jsonl import dumps_line
from auditpipe.pipeline import Pipeline
from auditpipe.pipeline.parallel import ParallelParse, Piece, file_pieces
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


@pytest.mark.parametrize("fmt,corpus", [(fmt, corpus) for fmt in ("ecs", "coalesced", "panther")
                                         for corpus in ("enriched.log", "raw-node.log", "bench.log.gz")]
                         + [("ecs", "bench.log")])
def test_jobs_output_equals_one_job(tmp_path, corpus, fmt):
    """Plain files in byte ranges the workers read (bench.log: decompressed here, 27 pieces),
    .gz as text read by the parent."""
    path = shared_path("corpus", corpus) if corpus != "bench.log" else tmp_path / corpus
    if corpus == "bench.log":
        path.write_bytes(gzip.decompress(shared_path("corpus", "bench.log.gz").read_bytes()))
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


def _serial(lines, make_normalize, where="x") -> tuple[bytes, dict, list]:
    rejects: list = []
    p = Pipeline(make_normalize(), Reassembler(), on_reject=lambda *r: rejects.append(r))
    docs = p.feed_lines(lines, where, 1) + p.flush()
    return b"".join(map(dumps_line, docs)), p.stats(), rejects


def _parallel(pieces, make_normalize=None, jobs: int = 2, **kw) -> tuple[bytes, dict, list, ParallelParse]:
    make_normalize = make_normalize or functools.partial(build_normalizer, "coalesced")
    out = io.BytesIO()
    rejects: list = []
    par = ParallelParse(make_normalize(), jobs, out, lambda *r: rejects.append(r), **kw)
    stats = par.run(pieces)
    return out.getvalue(), stats, rejects, par


def _text_pieces(lines, size, where="x"):
    return [Piece(where, None, 0, 0, "\n".join(lines[i:i + size]), i + 1) for i in range(0, len(lines), size)]


@pytest.mark.parametrize("size,max_group", [(150, 1000), (40, 2)])
def test_small_segments_regroup_or_go_alone_and_stay_exact(size, max_group):
    """Pieces far smaller than events need: many do not follow (re-run together), and with
    ``max_group`` 2 one worker soon takes the rest alone; either way the bytes and totals are exact."""
    lines = _messy_lines()
    make = functools.partial(build_normalizer, "coalesced")
    want, want_stats, want_rejects = _serial(lines, make)
    assert want_stats["lost_serials"] > 0 and want_stats["late_records"] > 0 and want_stats["rejects"] > 0
    got, stats, rejects, par = _parallel(_text_pieces(lines, size), make, max_group=max_group)
    assert par.regroups > 0
    assert (par.alone is not None) == (max_group == 2)
    assert got == want
    assert stats == want_stats
    assert rejects == want_rejects


def _write_lines(path: Path, lines) -> Path:
    path.write_bytes("".join(line + "\n" for line in lines).encode("utf-8", "surrogateescape"))
    return path


@pytest.mark.parametrize("size", [4096, 48 << 10])
def test_byte_ranges_read_by_the_workers_number_rejects_in_order(tmp_path, size):
    """A file in byte ranges the workers read: rejects in many pieces come out in input order
    with their true line numbers, and lost serials, late records and bytes are those of one run."""
    lines = _messy_lines()
    path = _write_lines(tmp_path / "messy.log", lines)
    make = functools.partial(build_normalizer, "coalesced")
    want, want_stats, want_rejects = _serial(lines, make, str(path))
    pieces = list(file_pieces(str(path), str(path), size=size))
    assert len(pieces) > 10
    got, stats, rejects, _ = _parallel(pieces, make)
    assert len(want_rejects) > 100  # in every piece (the lines split at 0x1D are rejects too)
    assert rejects == want_rejects
    assert got == want
    assert stats == want_stats


@pytest.mark.parametrize("depth,ahead", [(2, None), (1, 1)])
def test_cuts_inside_events_are_run_again(tmp_path, depth, ahead):
    """Byte ranges cut alternately inside an event (every 40 lines, whatever record that is) and
    after a PROCTITLE: each piece that ends inside an event is re-run with the next, and the
    output is exact (with one task queued per worker and one piece sent ahead, too: the window
    ahead moves as pieces are written, or the workers starve)."""
    lines = shared_path("corpus", "raw-node.log").read_text("utf-8", "surrogateescape").splitlines()
    path = _write_lines(tmp_path / "raw.log", lines)
    make = functools.partial(build_normalizer, "ecs")
    want, want_stats, _ = _serial(lines, make, str(path))
    ends = list(itertools.accumulate(len(line.encode("utf-8", "surrogateescape")) + 1 for line in lines))
    cuts, inside = [0], 0
    for n in range(40, len(lines), 40):
        if n // 40 % 2:
            inside += "type=PROCTITLE" not in lines[n - 1]
        else:
            n = next((i + 1 for i in range(n, len(lines)) if "type=PROCTITLE" in lines[i]), len(lines))
        if n > len(lines) - 1 or ends[n - 1] <= cuts[-1]:
            continue
        cuts.append(ends[n - 1])
    cuts.append(ends[-1])
    assert inside > 30
    pieces = [Piece(str(path), str(path), a, b) for a, b in itertools.pairwise(cuts)]
    got, stats, _, par = _parallel(pieces, make, depth=depth, ahead=ahead)
    assert par.regroups > 20
    assert got == want
    assert stats == want_stats


def test_a_file_smaller_than_a_piece_and_several_files_in_one_stream(tmp_path):
    """One small file is one piece (parsed like --jobs 1); a rotated set of plain and .gz files
    is one stream across files (events continue across them), numbered per file."""
    lines = _messy_lines()
    half = len(lines) // 2 + 7  # inside an event, most likely
    first = _write_lines(tmp_path / "audit.log.1", lines[:half])
    second = tmp_path / "audit.log.gz"
    second.write_bytes(gzip.compress("".join(line + "\n" for line in lines[half:]).encode("utf-8",
                                                                                           "surrogateescape")))
    tiny = _write_lines(tmp_path / "tiny.log", lines[:40])
    for paths in ([tiny], [first, second], [second, first, tiny]):
        one, one_totals, one_err = _cli(paths, "coalesced", 1, tmp_path / "one.json",
                                        "--rejects", str(tmp_path / "one.rej"))
        two, two_totals, two_err = _cli(paths, "coalesced", 2, tmp_path / "two.json",
                                        "--rejects", str(tmp_path / "two.rej"))
        assert two == one and two_totals == one_totals and two_err == one_err
        assert "rejected" in one_err
        assert (tmp_path / "two.rej").read_bytes() == (tmp_path / "one.rej").read_bytes() != b""


def _cli(paths, fmt, jobs, out, *extra) -> tuple[bytes, str, str]:
    proc = subprocess.run([sys.executable, "-m", "auditpipe", "parse", *map(str, paths), "--format", fmt,
                           "-o", str(out), "--no-progress", "--jobs", str(jobs), *extra],
                          capture_output=True, text=True)
    totals = _TOTALS.search(proc.stderr)
    assert totals, proc.stderr
    messages = "".join(line for line in proc.stderr.splitlines(True) if not line.startswith("auditpipe parse:"))
    return out.read_bytes(), totals.group(1) + f" rc={proc.returncode}", messages


def test_overlong_lines_in_a_plain_file_are_reported_as_one_run_reports_them(tmp_path):
    """Lines over --max-line-bytes in pieces the workers read: skipped the same way, and the
    same read error (line and byte of the first) and exit status."""
    lines = shared_path("corpus", "enriched.log").read_text("utf-8", "surrogateescape").splitlines()
    for i in (700, 2900, 4100):
        lines.insert(i, "type=SYSCALL msg=audit(1.1:1): " + "x" * 12000)
    path = _write_lines(tmp_path / "long.log", lines)
    one = _cli([path], "ecs", 1, tmp_path / "one.json", "--max-line-bytes", "9000")
    two = _cli([path], "ecs", 2, tmp_path / "two.json", "--max-line-bytes", "9000")
    assert "read error after line" in one[2] and "rc=1" in one[1]
    assert two == one


def test_output_to_a_pipe(tmp_path):
    """stdout a pipe: the workers' files are sent into it in order."""
    path = shared_path("corpus", "raw-node.log")
    outs = [subprocess.run([sys.executable, "-m", "auditpipe", "parse", str(path), "--no-progress", "--jobs", str(j)],
                           capture_output=True, check=True).stdout for j in (1, 2)]
    assert outs[0].count(b"\n") > 500 and outs[1] == outs[0]


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
    points = _settled_points(lines, make)
    cut = points[len(points) // 2]
    if late:
        moved = lines[cut - 2]  # a record of the event the PROCTITLE at cut - 1 ended
    else:  # a new event, 10 s older than anything before it
        moved = re.sub(r"audit\((\d+)", lambda m: f"audit({int(m.group(1)) - 10}", lines[cut - 2])
    lines = lines[:cut] + [moved] + lines[cut:]
    want, want_stats, _ = _serial(lines, make)
    pieces = [Piece("x", None, 0, 0, "\n".join(lines[:cut]), 1),
              Piece("x", None, 0, 0, "\n".join(lines[cut:]), cut + 1)]
    got, stats, _, par = _parallel(pieces, make)
    assert par.regroups == 1
    assert got == want
    assert stats == want_stats


def test_a_file_cut_short_while_parsed_fails_clearly_and_cleans_up(tmp_path):
    """A piece whose bytes are no longer there (the file truncated under us): the worker's error
    reaches the caller by name, the workers are stopped and their directory is gone."""
    path = shared_path("corpus", "enriched.log")
    size = path.stat().st_size
    pieces = [Piece(str(path), str(path), 0, size // 2), Piece(str(path), str(path), size // 2, size + 4096)]
    par = ParallelParse(build_normalizer("coalesced"), 2, io.BytesIO(), lambda *r: None)
    with pytest.raises(RuntimeError, match="changed while it was parsed"):
        par.run(pieces)
    assert par.tmpdir == "" and par.procs == []


def test_stdin_with_large_replies_does_not_deadlock(tmp_path):
    """stdin reaches the workers as text pieces of ~1 MB while a worker's reply can pass the pipe's
    buffer too (a piece of tiny events ends thousands of keys): the pieces go through files, so
    neither side blocks sending to the other."""
    n = 200_000
    data = "".join(f"type=PROCTITLE msg=audit(1700000000.{s % 1000:03d}:{s + 1}): proctitle=78\n"
                   for s in range(n)).encode()
    outs = []
    for jobs in (1, 2):
        out = tmp_path / f"out-{jobs}.jsonl"
        proc = subprocess.run([sys.executable, "-m", "auditpipe", "parse", "--format", "coalesced", "-o", str(out),
                               "--no-progress", "--jobs", str(jobs)], input=data, capture_output=True, timeout=60)
        assert proc.returncode == 0, proc.stderr
        outs.append(out.read_bytes())
    assert outs[0] == outs[1] and outs[0].count(b"\n") == n


# ------------------------------------------------------------ an unsettled cut: the shadow pass

def _stamp(ms: int, serial: int) -> str:
    return f"msg=audit({1_700_000_000 + ms // 1000}.{ms % 1000:03d}:{serial}):"


def _syscall(ms: int, serial: int, paths: int = 1, eoe: bool = False) -> list[str]:
    """One syscall event: SYSCALL, its PATH items, PROCTITLE (and EOE)."""
    s = _stamp(ms, serial)
    lines = [f"type=SYSCALL {s} arch=c000003e syscall=2 success=yes exit=3 a0=1 a1=0 a2=0 a3=0 items={paths} "
             f"ppid=1 pid={serial % 900 + 2} auid=1000 uid=0 gid=0 euid=0 suid=0 fsuid=0 egid=0 sgid=0 fsgid=0 "
             f'tty=pts0 ses=1 comm="cat" exe="/usr/bin/cat" key=(null)']
    lines += [f'type=PATH {s} item={k} name="/etc/f{serial}" inode={serial} dev=08:01 mode=0100644 ouid=0 '
              f"ogid=0 rdev=00:00 nametype=NORMAL" for k in range(paths)]
    lines.append(f"type=PROCTITLE {s} proctitle=636174")
    if eoe:
        lines.append(f"type=EOE {s}")
    return lines


def _abend(ms: int, serial: int) -> str:
    """ANOM_ABEND: not a type that ends an event, so it stays open until it ages out."""
    return f'type=ANOM_ABEND {_stamp(ms, serial)} auid=1000 uid=0 gid=0 ses=1 pid=7 comm="x" exe="/x" sig=11 res=1'


class _Stream:
    """Events at a steady pace of audit time, serials counting up."""

    def __init__(self, step_ms: int = 10) -> None:
        self.ms, self.serial, self.step = 0, 100, step_ms

    def events(self, n: int, **kw) -> list[str]:
        out: list[str] = []
        for _ in range(n):
            out += self.event(**kw)
        return out

    def event(self, **kw) -> list[str]:
        self.ms += self.step
        self.serial += 1
        return _syscall(self.ms, self.serial, **kw)

    def abend(self) -> str:
        self.ms += self.step
        self.serial += 1
        return _abend(self.ms, self.serial)


def _unsettled_cut() -> tuple[list[list[str]], _Stream, str]:
    """Four pieces: an ANOM_ABEND opens in the first and ages out (2 s of audit time) in the
    third, so the serial run is unsettled at the ends of the first two."""
    s = _Stream()
    first = s.events(30) + [abend := s.abend()] + s.events(20)
    return [first, s.events(60), s.events(200), s.events(40)], s, abend


def _check_shadow(parts: list[list[str]], jobs: int = 2, **kw) -> ParallelParse:
    """The parts as text pieces: the bytes, totals, rejects, and the recently ended keys at the
    end (in their order) are the serial run's with the same reassembler settings."""
    make = functools.partial(build_normalizer, "ecs")
    lines = [line for part in parts for line in part]
    rejects: list = []
    serial = Pipeline(make(), Reassembler(**{k: v for k, v in kw.items() if k in ("max_in_flight", "recent_ids")}),
                      on_reject=lambda *r: rejects.append(r[1:]))
    docs = serial.feed_lines(lines, "x", 1)
    ended = serial.reassembler.recently_ended()
    want = b"".join(map(dumps_line, docs + serial.flush()))
    pieces, n = [], 1
    for part in parts:
        pieces.append(Piece("x", None, 0, 0, "\n".join(part), n))
        n += len(part)
    got, stats, got_rejects, par = _parallel(pieces, make, jobs=jobs, **kw)
    assert got == want
    assert stats == serial.stats()
    assert [r[1:] for r in got_rejects] == rejects
    assert list(par.accepted.recent.items()) == ended
    return par


@pytest.mark.parametrize("jobs", [2, 3])
@pytest.mark.parametrize("recent_ids", [8192, 40])
def test_an_unsettled_cut_is_verified_by_a_shadow_pass_not_run_again(jobs, recent_ids):
    """The kept run of the first piece goes on over the next two in a shadow pass, which finds
    the same events as their own runs: no piece is run twice (and with room for only 40 ended
    keys, the serial run's are those the pass had, not ours updated with them)."""
    parts, _, _ = _unsettled_cut()
    parts[2].insert(3, "not an audit record")
    par = _check_shadow(parts, jobs, recent_ids=recent_ids)
    assert (par.shadows, par.verified, par.twice, par.regroups) == (1, 2, 0, 0)


def test_a_shadow_record_joining_the_kept_runs_open_event_falls_back():
    parts, _, abend = _unsettled_cut()
    parts[1].insert(10, abend.replace("ANOM_ABEND", "ANOM_PROMISCUOUS"))  # same time:serial: joins it
    par = _check_shadow(parts)
    assert par.shadows == 1 and par.verified == 0 and par.twice >= 2


def test_a_late_record_of_an_event_the_kept_run_ended_falls_back():
    parts, _, _ = _unsettled_cut()
    parts[1].insert(5, parts[0][1])  # a PATH of the first event: late, its event partial
    par = _check_shadow(parts)
    assert par.shadows == 1 and par.verified == 0 and par.twice >= 2


@pytest.mark.parametrize("cut", [1, 2, 3])
def test_an_eoe_held_across_a_cut(cut):
    """The piece ``cut`` opens with the EOE of the event the PROCTITLE before it ended: across
    the kept run's end (its open event), inside the pass (the trails differ) or after it (the
    next piece does not follow the verified pieces: all of them again)."""
    parts, _, _ = _unsettled_cut()
    prev = parts[cut - 1]
    assert "type=PROCTITLE" in prev[-1]
    parts[cut].insert(0, "type=EOE " + prev[-1].split(" ")[1])
    par = _check_shadow(parts)
    assert par.shadows == 1 and par.verified == (2 if cut == 3 else 0) and par.twice >= 2


def test_an_event_aged_by_the_serial_runs_newer_time_after_the_verified_pieces():
    """The piece after the verified ones opens an event older than the serial run's newest
    time there minus the timeout (the pass's newest, not any own run's)."""
    parts, s, _ = _unsettled_cut()
    parts[3] = _syscall(s.ms - 2500, s.serial + 1) + parts[3]
    par = _check_shadow(parts)
    assert par.shadows == 1 and par.verified == 2 and par.twice >= 4


def test_max_in_flight_forces_the_kept_runs_open_event_out():
    """With room for 70 open events the ANOM_ABEND leaves in the second piece, forced out, not
    aged: at the point of the serial run (the pass has its queue), and the own runs stand."""
    parts, _, _ = _unsettled_cut()
    par = _check_shadow(parts, max_in_flight=70)
    assert (par.shadows, par.verified, par.twice) == (1, 1, 0)


@pytest.mark.parametrize("size", [2048, 4096, 16384])
def test_many_small_pieces_of_a_file_with_events_open_across_cuts(tmp_path, size):
    """A file in byte ranges of a few events each, with an ANOM_ABEND every 300 events (open for
    about 50 events) and EOEs: each unsettled cut is verified by a shadow pass, or, where the
    event stays open longer than ``max_group`` pieces, its run goes on alone; the bytes are
    those of one run."""
    s = _Stream(step_ms=40)
    lines: list[str] = []
    for k in range(1500):
        lines += s.event(paths=k % 3, eoe=k % 7 == 0)
        if k % 300 == 150:
            lines.append(s.abend())
    path = _write_lines(tmp_path / "open.log", lines)
    make = functools.partial(build_normalizer, "ecs")
    want, want_stats, _ = _serial(lines, make, str(path))
    pieces = list(file_pieces(str(path), str(path), size=size))
    assert len(pieces) > 40
    got, stats, _, par = _parallel(pieces, make)
    assert got == want and stats == want_stats
    if size == 2048:
        assert par.shadows == 1 and par.alone is not None
    else:
        assert (par.shadows, par.twice, par.alone) == (5, 0, None) and par.verified >= 7


@pytest.mark.parametrize("last", ["newest", "oldest"])
def test_the_event_a_piece_ends_with_counts_in_its_times(last):
    """The times the next piece is checked against include the event a piece ends with (its
    run's flush writes it after the reply is made): a first piece whose last event is the
    newest by 5 s, then one opening an event 2.5 s older than that; or a second piece of one
    event only, 2.5 s older than the first piece's newest. The serial run ages that event at
    its first record."""
    s = _Stream()
    first = s.events(20)
    if last == "newest":
        s.ms += 5000
        first += s.event()
    parts = [first, _syscall(s.ms - 2500, s.serial + 100)]
    if last == "newest":
        parts[1] += s.events(10)
    par = _check_shadow(parts)
    assert par.regroups == 1


def _random_log(rng: random.Random, n: int) -> list[str]:
    """``n`` events whose records may interleave (up to three open at once), at an uneven pace of
    audit time (now and then a jump ahead or back), with ANOM_ABENDs, EOEs, records repeated
    later (late), and junk lines."""
    lines: list[str] = []
    ms, serial, started = 0, 100, 0
    open_events: list[list[str]] = []
    widths = rng.choice(((1,), (1, 3), (1, 1, 1, 2)))  # events open at once: one log interleaves more than another
    while started < n or open_events:
        if started < n and (len(open_events) < rng.choice(widths) or not open_events):
            ms = max(0, ms + rng.choice((0, 3, 20, 60, 60, 60, 200, 200, 900)) + rng.choice((0,) * 30 + (2300, -2600)))
            serial += 1
            started += 1
            if rng.random() < 0.03:
                lines.append(_abend(ms, serial))
                continue
            open_events.append(_syscall(ms, serial, paths=rng.randrange(4), eoe=rng.random() < 0.2))
        event = rng.choice(open_events)
        lines.append(event.pop(0))
        if not event:
            open_events.remove(event)
        if rng.random() < 0.004:
            lines.append(rng.choice(lines[-60:]))
        if rng.random() < 0.005:
            lines.append("junk")
    return lines


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 1 << 32), jobs=st.sampled_from([2, 3]), max_group=st.sampled_from([2, 8, 8]),
       max_in_flight=st.sampled_from([6, 4096]), recent_ids=st.sampled_from([12, 8192]))
def test_random_interleavings_in_small_pieces_equal_one_run(seed, jobs, max_group, max_in_flight, recent_ids):
    """Pieces of 5 to 300 lines, most cut after a PROCTITLE not followed by an EOE (as the
    cutters do), against one run."""
    rng = random.Random(seed)
    lines = _random_log(rng, 400)
    parts, i = [], 0
    while i < len(lines):
        k = i + rng.choice((5, 40, 120, 300))
        if rng.random() < 0.8:
            k = next((j + 1 for j in range(k, len(lines) - 1) if "type=PROCTITLE" in lines[j]
                      and "type=EOE" not in lines[j + 1]), len(lines))
        parts.append(lines[i:k])
        i = k
    _check_shadow(parts, jobs, max_group=max_group, max_in_flight=max_in_flight, recent_ids=recent_ids)
