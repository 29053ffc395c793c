"""Damaged and hostile input files, for real: flipped bytes in gzip trailers and deflate data,
members after a damaged one, a stream with no newline at all (/dev/zero through a pipe)."""

import gzip
import io
import os
import random
import shutil
import subprocess
import sys
import time

import pytest
from conftest import shared_path

from auditpipe.sources.files import (
    DamagedInput,
    GzipStream,
    LineSplitter,
    iter_line_chunks,
)


def read_all(data: bytes, chunk: int = 1 << 20, max_line: int = 1 << 20):
    got, problems = [], None
    try:
        for lines in iter_line_chunks(GzipStream(io.BytesIO(data), chunk=chunk), max_line=max_line):
            got += lines
    except DamagedInput as e:
        problems = e.problems
    return [ln for ln in got if ln], problems


def member(m: int, n: int = 3000, level: int = 6) -> bytes:
    return gzip.compress(b"".join(b"type=USER msg=audit(1.%d:%d): member=%d line=%d\n" % (m, i, m, i)
                                  for i in range(n)), level)


def lines_of(m: int, n: int = 3000) -> list[str]:
    return [f"type=USER msg=audit(1.{m}:{i}): member={m} line={i}" for i in range(n)]


def parse(path, *args, **kw):
    return subprocess.run([sys.executable, "-m", "auditpipe", "parse", str(path), "-o", os.devnull, *args],
                          capture_output=True, text=True, check=False, **kw)


def test_flipped_crc_trailer_byte_keeps_every_line_of_the_bench_corpus(tmp_path):
    """Issue 8: one flipped byte in the CRC trailer gave 0 of 143,115 records; zcat gives all."""
    copy = tmp_path / "bench.log.gz"
    shutil.copyfile(shared_path("corpus", "bench.log.gz"), copy)
    data = bytearray(copy.read_bytes())
    data[-6] ^= 0x01  # a byte of the CRC-32 in the member's trailer
    copy.write_bytes(bytes(data))
    res = parse(copy)
    assert res.returncode == 1, res.stderr
    assert "auditpipe parse: 143115 records, 20649 events" in res.stderr
    assert f"damaged trailer of the gzip member at byte 0 (trailer at byte {len(data) - 8}" in res.stderr


def test_members_after_a_damaged_one_are_read(tmp_path):
    """A stored-block member whose block lengths are broken fails at once: reading resumes at
    the next member, and says where."""
    ms = [member(0), member(1, level=0), member(2), member(3)]
    bad = bytearray(ms[1])
    bad[10 + 3] ^= 0xFF  # NLEN of the first stored block: "invalid stored block lengths"
    ms[1] = bytes(bad)
    data = b"".join(ms)
    got, problems = read_all(data)
    assert got == lines_of(0) + lines_of(2) + lines_of(3)
    assert len(problems) == 1
    at1, at2 = len(ms[0]), len(ms[0]) + len(ms[1])
    assert f"corrupt deflate data in the gzip member at byte {at1}" in problems[0]
    assert f"resumed at the gzip member at byte {at2}" in problems[0]
    path = tmp_path / "audit.log.1.gz"
    path.write_bytes(data)
    res = parse(path)
    assert res.returncode == 1 and "9000 records" in res.stderr and f"byte {at2}" in res.stderr


def test_corruption_mid_member_keeps_what_came_before(tmp_path):
    """An invalid block type in the second stored block: the first block's lines come out, the
    cut line is a reject, the following members are all read."""
    ms = [member(0, level=0), member(1)]
    bad = bytearray(ms[0])
    first_len = int.from_bytes(bad[11:13], "little")
    bad[10 + 5 + first_len] |= 0x06  # BTYPE = 11: "invalid block type"
    got, problems = read_all(bytes(bad) + ms[1], chunk=4096)
    before = [ln for ln in got if "member=0" in ln]
    assert 0 < len(before) < 3000
    assert before[:-1] == lines_of(0)[:len(before) - 1]  # all whole lines up to the damage
    assert got[len(before):] == lines_of(1)
    assert "invalid block type" in problems[0] and f"byte {len(ms[0])}" in problems[0]


def test_trailing_zero_padding_is_fine_and_garbage_is_reported():
    data = member(0)
    assert read_all(data + b"\0" * 4096) == (lines_of(0), None)
    got, problems = read_all(data + b"not gzip at all")
    assert got == lines_of(0) and problems == [f"15 bytes that are not gzip data ignored at byte {len(data)}"]


@pytest.mark.parametrize("seed", range(5))
def test_line_splitter_matches_split_at_any_block_boundaries(seed):
    rnd = random.Random(seed)
    lines = [bytes(rnd.choice(b"ab\xff ") for _ in range(rnd.choice([0, 1, 5, 40, 300, 2000])))
             for _ in range(400)]
    data = b"\n".join(lines) + (b"\n" if seed % 2 else b"")
    limit = 1000
    sp = LineSplitter(limit)
    got, pos = [], 0
    while pos < len(data):
        n = rnd.choice([1, 7, 100, 999, 5000])
        got += sp.feed(data[pos:pos + n])
        pos += n
    got += sp.finish()
    want = [ln.decode("utf-8", "surrogateescape") if len(ln) <= limit else "" for ln in lines]
    if not seed % 2 and not lines[-1]:
        want = want[:-1]
    assert got == want
    too_long = [i + 1 for i, ln in enumerate(lines) if len(ln) > limit]
    assert [s[0] for s in sp.skipped] == too_long
    assert [s[2] for s in sp.skipped] == [len(lines[i - 1]) for i in too_long]


def test_overlong_line_skipped_and_reported_where(tmp_path):
    good = lines_of(0, 10)
    path = tmp_path / "audit.log"
    path.write_bytes(("\n".join(good[:5]) + "\n").encode() + b"x" * (3 << 20) + b"\n"
                     + ("\n".join(good[5:]) + "\n").encode())
    res = parse(path, "--rejects", str(tmp_path / "rejects"))
    assert res.returncode == 1
    assert "10 records" in res.stderr and "0 rejects" in res.stderr
    assert "1 line(s) longer than 1048576 bytes skipped (the first at line 6 (byte " in res.stderr
    res = parse(path, "--max-line-bytes", str(4 << 20))
    assert res.returncode == 0 and "1 rejects" in res.stderr


def vm_hwm_kib(pid: int) -> int | None:
    """The process's peak RSS so far; None once it has exited (a zombie has no VmHWM). Not
    wait4's ru_maxrss: exec carries the forking parent's (pytest's) RSS into it."""
    try:
        with open(f"/proc/{pid}/status") as f:
            return next((int(ln.split()[1]) for ln in f if ln.startswith("VmHWM:")), None)
    except (FileNotFoundError, ProcessLookupError):
        return None


def test_dev_zero_on_stdin_runs_in_bounded_memory():
    """Issue 9: 300 MB without a newline grew to 476 MB and copied quadratically."""
    feeder = subprocess.Popen(["head", "-c", "300M", "/dev/zero"], stdout=subprocess.PIPE)
    proc = subprocess.Popen([sys.executable, "-m", "auditpipe", "parse", "-", "-o", os.devnull],
                            stdin=feeder.stdout, stderr=subprocess.PIPE, text=True)
    feeder.stdout.close()
    peak = 0
    t0 = time.monotonic()
    while proc.poll() is None and time.monotonic() - t0 < 120:
        hwm = vm_hwm_kib(proc.pid)
        if hwm is None:
            break
        peak = max(peak, hwm)
        time.sleep(0.05)
    _, err = proc.communicate(timeout=60)
    feeder.wait()
    assert peak > 0, "never saw the process running"
    assert proc.returncode == 1, err
    assert "1 line(s) longer than 1048576 bytes skipped (the first at line 1 (byte 0), 314572800 bytes)" in err
    assert peak < 120 * 1024, f"peak RSS {peak} KiB"  # interpreter + 1 MiB line + 1 MiB chunks
    assert time.monotonic() - t0 < 60  # linear, not quadratic
