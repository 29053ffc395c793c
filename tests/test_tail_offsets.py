"""Tailer.poll_offsets(): the byte offset after each line, and checkpoint_at() (issue 4).

A reader that commits a checkpoint in the middle of a poll's lines needs, for each line, where
the next one starts in its file, and which file that is: a poll that meets a rotation (or a
resume plan) hands out the rest of the old file first, as a part of its own."""

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
    """The single (name, entry, lines, offsets) of a poll."""
    assert len(got) == 1, got
    return got[0]


def nums(lines):
    return [int(ln.rsplit("n=", 1)[1]) for ln in lines]


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
    name, entry, lines, offs = only(t.poll_offsets())
    assert name == entry["path"] == str(p) and entry == t.snapshot()[name]
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


def test_rotation_mid_poll_the_old_file_is_a_part_of_its_own(tmp_path):
    p = str(tmp_path / "audit.log")
    write(p, 0, 3)
    t = Tailer([p], start="head")
    _, first, _, _ = only(t.poll_offsets())
    write(p, 3, 5)  # written after our last read, then rotated away
    os.rename(p, p + ".1")
    write(p, 5, 8)
    (n1, old, lines1, offs1), (n2, new, lines2, offs2) = t.poll_offsets()
    assert n1 == n2 == p
    assert (nums(lines1), nums(lines2)) == ([3, 4], [5, 6, 7])
    assert old["ino"] == first["ino"] == os.stat(p + ".1").st_ino and old["offset"] == os.path.getsize(p + ".1")
    assert offs1 == ends_of(Path(p + ".1").read_bytes())[3:]
    assert new["ino"] == os.stat(p).st_ino and new == t.snapshot()[p]
    assert offs2 == ends_of(Path(p).read_bytes())
    assert t.checkpoint_at(p, offs2[1]) == {**new, "offset": offs2[1]}


def test_rotated_file_ending_without_newline(tmp_path):
    """The last line of a file left for good is handed out without its newline: its offset is
    the file's end."""
    p = str(tmp_path / "audit.log")
    write(p, 0, 2)
    t = Tailer([p], start="head")
    only(t.poll_offsets())
    append(p, b"type=SYSCALL msg=audit(1.1:9): cut")
    os.rename(p, p + ".1")
    write(p, 2, 3)
    (_, _, lines1, offs1), (_, _, lines2, offs2) = t.poll_offsets()
    assert lines1 == ["type=SYSCALL msg=audit(1.1:9): cut"] and offs1 == [os.path.getsize(p + ".1")]
    assert nums(lines2) == [2] and offs2 == [len(line(2))]


def test_copytruncate_copy_is_a_part_of_its_own(tmp_path):
    p = str(tmp_path / "audit.log")
    write(p, 0, 4)
    t = Tailer([p], start="head")
    only(t.poll_offsets())
    write(p, 4, 6)
    with open(p, "rb") as src, open(p + ".1", "wb") as dst:
        dst.write(src.read())
    os.truncate(p, 0)
    write(p, 6, 8)
    (_, copy, lines1, offs1), (_, live, lines2, offs2) = t.poll_offsets()
    assert (nums(lines1), nums(lines2)) == ([4, 5], [6, 7])
    assert copy["ino"] == os.stat(p + ".1").st_ino and offs1 == ends_of(Path(p + ".1").read_bytes())[4:]
    assert live["ino"] == os.stat(p).st_ino and offs2 == ends_of(Path(p).read_bytes())
    assert live["fingerprint"] == Path(p).read_bytes()[:256].hex()


def test_resume_plan_older_files_are_parts_of_their_own(tmp_path):
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
    (_, old, lines1, offs1), (_, new, lines2, offs2) = t.poll_offsets()
    assert (nums(lines1), nums(lines2)) == ([3, 4], [5])
    assert old["ino"] == os.stat(p + ".1").st_ino and offs1[-1] == os.path.getsize(p + ".1")
    assert new["ino"] == os.stat(p).st_ino and offs2 == [len(line(5))]


def test_checkpoint_at_is_the_snapshot_entry_at_that_offset(tmp_path):
    p = str(tmp_path / "audit.log")
    write(p, 0, 4)
    t = Tailer([p], start="head")
    _, _, _, offs = only(t.poll_offsets())
    snap = t.snapshot()[p]
    assert t.checkpoint_at(p, offs[-1]) == snap
    assert t.checkpoint_at(p, offs[1]) == {**snap, "offset": offs[1]}


def test_commit_at_any_line_resumes_just_after_it(tmp_path):
    """The checkpoint made of a line's part entry and offset resumes at the next line, whatever
    the line — also in a file rotated away since, and in one finished during the poll."""
    p = str(tmp_path / "audit.log")
    state = str(tmp_path / "state.json")
    write(p, 0, 6)
    t = Tailer([p], start="head", state_file=state)
    points = []  # (line number, checkpoint entry)

    def poll() -> None:
        for _, entry, lines, offs in t.poll_offsets():
            points.extend((n, {**entry, "offset": off}) for n, off in zip(nums(lines), offs))

    poll()
    write(p, 6, 8)
    os.rename(p, p + ".1")
    write(p, 8, 12)
    poll()
    t.close()
    assert [n for n, _ in points] == list(range(12))
    for n, entry in points:
        with open(state, "w") as f:
            json.dump({"version": 1, "files": {p: entry}}, f)
        t2 = Tailer([p], start="end", state_file=state)
        rest = [x for _, lines in t2.poll() for x in nums(lines)]
        assert t2.followers[p].lost_checkpoints == 0
        t2.close()
        assert rest == list(range(n + 1, 12)), n


def by_inode(directory, ino: int) -> bytes:
    return next(f.read_bytes() for f in directory.iterdir() if f.stat().st_ino == ino)


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
            assert [x for _, _, ln, _ in with_offs for x in ln] == [x for _, ln in plain for x in ln]
            for _, entry, lines, offs in with_offs:
                data = by_inode(b, entry["ino"])
                for ln, off in zip(lines, offs):
                    enc = ln.encode("utf-8", "surrogateescape")
                    assert data[off - len(enc) - 1:off] == enc + b"\n", (ln, off)
