"""Tailer.poll_offsets(): the byte offset after each line, and checkpoint_at() (issue 4).

A reader that commits a checkpoint in the middle of a poll's lines needs, for each line, where
the next one starts in the file followed; lines of a file being finished (a rotation, a resume
plan) have no position a checkpoint could name (None)."""

from __future__ import annotations

import json
import os
import random
from pathlib import Path

from auditpipe.sources.tail import Tailer


def line(i: int) -> str:
    return f"type=SYSCALL msg=audit(1700000000.{i % 1000:03d}:{i}): arch=c000003e syscall=59 n={i}\n"


def write(path, a: int, b: int) -> None:
    with open(path, "a") as f:
        f.write("".join(line(i) for i in range(a, b)))


def append(path, data: bytes) -> None:
    with open(path, "ab") as f:
        f.write(data)


def only(got):
    """The single (name, path, lines, offsets) of a poll."""
    assert len(got) == 1, got
    return got[0]


def ends_of(data: bytes, start: int = 0) -> list[int]:
    """Offsets after every non-blank line of ``data`` (which is at ``start`` in its file)."""
    out, pos = [], start
    for ln in data.split(b"\n")[:-1]:
        pos += len(ln) + 1
        if ln:
            out.append(pos)
    return out


def test_offsets_are_bytes_after_each_line(tmp_path):
    p = tmp_path / "audit.log"
    write(p, 0, 5)
    t = Tailer([str(p)], start="head")
    name, path, lines, offs = only(t.poll_offsets())
    assert name == path == str(p)
    data = p.read_bytes()
    assert [ln + "\n" for ln in lines] == [line(i) for i in range(5)]
    assert offs == ends_of(data) and offs[-1] == len(data)
    write(p, 5, 7)
    _, _, lines, offs2 = only(t.poll_offsets())
    assert len(lines) == 2 and offs2 == ends_of(p.read_bytes()[len(data):], len(data))
    assert t.poll_offsets() == []


def test_blank_lines_left_out_but_counted(tmp_path):
    p = tmp_path / "audit.log"
    data = b"\n" + line(1).encode() + b"\n\n" + line(2).encode() + b"\n"
    p.write_bytes(data)
    t = Tailer([str(p)], start="head")
    _, _, lines, offs = only(t.poll_offsets())
    assert len(lines) == 2 and all(lines)
    assert offs == [1 + len(line(1)), 1 + len(line(1)) + 2 + len(line(2))]
    # the blank line at the end is read (the tailer's position is past it) but is no line
    assert t.snapshot()[str(p)]["offset"] == len(data)


def test_non_utf8_and_multibyte_offsets_are_bytes(tmp_path):
    p = tmp_path / "audit.log"
    raws = [b'type=PATH msg=audit(1.1:1): name=\xff\xfe\x1dUID="root"',
            "type=PATH msg=audit(1.1:2): name=\"h\u00e9llo \u2603\"".encode(),
            b"type=PATH msg=audit(1.1:3): name=plain"]
    data = b"\n".join(raws) + b"\n"
    p.write_bytes(data)
    t = Tailer([str(p)], start="head")
    _, _, lines, offs = only(t.poll_offsets())
    assert [ln.encode("utf-8", "surrogateescape") for ln in lines] == raws
    assert offs == ends_of(data)
    # the same lines as poll() gives
    assert Tailer([str(p)], start="head").poll() == [(str(p), lines)]


def test_partial_line_gets_its_offset_once_complete(tmp_path):
    p = tmp_path / "audit.log"
    p.write_text("")
    t = Tailer([str(p)], start="head")
    append(p, line(1).encode()[:20])
    assert t.poll_offsets() == []
    append(p, line(1).encode()[20:] + line(2).encode()[:5])
    _, _, lines, offs = only(t.poll_offsets())
    assert offs == [len(line(1))]
    append(p, line(2).encode()[5:])
    _, _, lines, offs = only(t.poll_offsets())
    assert lines == [line(2)[:-1]] and offs == [len(line(1)) + len(line(2))]


def test_rotation_mid_poll_old_lines_have_no_offset(tmp_path):
    p = str(tmp_path / "audit.log")
    write(p, 0, 3)
    t = Tailer([p], start="head")
    only(t.poll_offsets())
    write(p, 3, 5)  # written after our last read, then rotated away
    os.rename(p, p + ".1")
    write(p, 5, 8)
    name, path, lines, offs = only(t.poll_offsets())
    assert (name, path) == (p, p)
    assert [int(ln.rsplit("n=", 1)[1]) for ln in lines] == list(range(3, 8))
    assert offs[:2] == [None, None]
    assert offs[2:] == ends_of(Path(p).read_bytes())
    # checkpoint_at names the new file
    cp = t.checkpoint_at(p, offs[3])
    assert cp["ino"] == os.stat(p).st_ino and cp["offset"] == offs[3]


def test_rotated_file_ending_without_newline(tmp_path):
    """The last line of a file left for good is handed out without its newline: its offset is
    the file's end."""
    p = str(tmp_path / "audit.log")
    write(p, 0, 2)
    t = Tailer([p], start="head")
    _, _, _, offs = only(t.poll_offsets())
    append(p, b"type=SYSCALL msg=audit(1.1:9): cut")
    os.rename(p, p + ".1")
    write(p, 2, 3)
    _, _, lines, offs = only(t.poll_offsets())
    assert lines[0].endswith("cut") and offs == [None, len(line(2))]


def test_copytruncate_copy_lines_have_no_offset(tmp_path):
    p = str(tmp_path / "audit.log")
    write(p, 0, 4)
    t = Tailer([p], start="head")
    only(t.poll_offsets())
    write(p, 4, 6)
    with open(p, "rb") as src, open(p + ".1", "wb") as dst:
        dst.write(src.read())
    os.truncate(p, 0)
    write(p, 6, 8)
    _, _, lines, offs = only(t.poll_offsets())
    assert len(lines) == 4 and offs[:2] == [None, None]
    assert offs[2:] == ends_of(Path(p).read_bytes())
    cp = t.checkpoint_at(p, offs[-1])
    assert cp["fingerprint"] == Path(p).read_bytes()[:256].hex()


def test_resume_plan_older_files_have_no_offset(tmp_path):
    p = str(tmp_path / "audit.log")
    state = str(tmp_path / "state.json")
    write(p, 0, 3)
    t = Tailer([p], start="head", state_file=state)
    only(t.poll_offsets())
    t.commit()
    t.close()
    write(p, 3, 5)
    os.rename(p, p + ".1")
    write(p, 5, 6)
    t = Tailer([p], start="end", state_file=state)
    _, _, lines, offs = only(t.poll_offsets())
    assert len(lines) == 3 and offs == [None, None, len(line(5))]


def test_checkpoint_at_is_the_snapshot_entry_at_that_offset(tmp_path):
    p = str(tmp_path / "audit.log")
    write(p, 0, 4)
    t = Tailer([p], start="head")
    _, _, _, offs = only(t.poll_offsets())
    snap = t.snapshot()[p]
    assert t.checkpoint_at(p, offs[-1]) == snap
    assert t.checkpoint_at(p, offs[1]) == {**snap, "offset": offs[1]}


def test_commit_at_any_line_resumes_just_after_it(tmp_path):
    """A checkpoint made (as a reader does) of ``checkpoint_at`` right after the poll and the
    offset after line i resumes at line i + 1, whatever i, also once its file was rotated away."""
    p = str(tmp_path / "audit.log")
    state = str(tmp_path / "state.json")
    write(p, 0, 6)
    t = Tailer([p], start="head", state_file=state)
    points = []  # (line number, checkpoint entry)

    def poll() -> None:
        _, _, lines, offs = only(t.poll_offsets())
        base = t.checkpoint_at(p, 0)
        points.extend((int(ln.rsplit("n=", 1)[1]), {**base, "offset": off})
                      for ln, off in zip(lines, offs) if off is not None)

    poll()
    write(p, 6, 8)
    os.rename(p, p + ".1")
    write(p, 8, 12)
    poll()
    t.close()
    assert [n for n, _ in points] == [0, 1, 2, 3, 4, 5, 8, 9, 10, 11]  # 6, 7: finished after the rotation
    for n, entry in points:
        with open(state, "w") as f:
            json.dump({"version": 1, "files": {p: entry}}, f)
        t2 = Tailer([p], start="end", state_file=state)
        rest = [int(ln.rsplit("n=", 1)[1]) for _, lines in t2.poll() for ln in lines]
        t2.close()
        assert rest == list(range(n + 1, 12)), n


def test_poll_offsets_agrees_with_poll_on_random_writes(tmp_path):
    """Random chunks (cut anywhere, blank lines, non-UTF-8, rotations): poll_offsets gives the
    lines poll gives, and every offset is the end of that line in the file followed."""
    rng = random.Random(4)
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()
    pa, pb = str(a / "audit.log"), str(b / "audit.log")
    for q in (pa, pb):
        open(q, "w").close()
    ta, tb = Tailer([pa], start="head"), Tailer([pb], start="head")
    pending = b""
    for _ in range(400):
        if not pending:
            n = rng.randrange(1000)
            body = bytes(rng.choice(b"abc =\x1d\xff\xc3\xa9") for _ in range(rng.randrange(0, 40)))
            pending = b"type=X msg=audit(1.1:%d): %b\n" % (n, body) + b"\n" * (rng.random() < 0.1)
        k = rng.randrange(1, len(pending) + 1)
        for q in (pa, pb):
            append(q, pending[:k])
        pending = pending[k:]
        if rng.random() < 0.03 and not pending:
            for q in (pa, pb):
                os.rename(q, q + ".1")
                open(q, "w").close()
        if rng.random() < 0.5:
            plain = ta.poll()
            with_offs = tb.poll_offsets()
            assert [ln for _, _, ln, _ in with_offs] == [ln for _, ln in plain]
            for _, path, lines, offs in with_offs:
                data = Path(path).read_bytes()
                for ln, off in zip(lines, offs):
                    if off is not None:
                        enc = ln.encode("utf-8", "surrogateescape")
                        assert data[off - len(enc) - 1:off] == enc + b"\n"
