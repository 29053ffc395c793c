import io
import json
import os
import stat

import pytest

from auditpipe.sinks.encode import dumps_line
from auditpipe.sinks.file import FileSink, rotate_files
from auditpipe.sinks.stdout import StdoutSink


def test_dumps_line_orjson_and_surrogate_fallback():
    assert dumps_line({"a": 1}) == b'{"a":1}\n'
    raw = b"caf\xe9 \xff"
    s = raw.decode("utf-8", "surrogateescape")
    line = dumps_line({"name": s, "ok": "é"})
    assert line.endswith(b"\n")
    back = json.loads(line)
    assert back["name"].encode("utf-8", "surrogateescape") == raw
    assert back["ok"] == "é"
    assert b"\\udce9" in line


def test_dumps_line_passthrough_bytes():
    assert dumps_line(b'{"x":1}') == b'{"x":1}\n'
    assert dumps_line(b'{"x":1}\n') == b'{"x":1}\n'
    assert dumps_line('{"x":1}') == b'{"x":1}\n'


def test_file_sink_writes_and_mode(tmp_path):
    p = tmp_path / "sub" / "out.jsonl"
    old = os.umask(0)
    try:
        with FileSink(p) as s:
            assert s.write([{"a": 1}, b'{"b":2}']) == 2
    finally:
        os.umask(old)
    assert stat.S_IMODE(os.stat(p).st_mode) == 0o600
    assert [json.loads(x) for x in p.read_text().splitlines()] == [{"a": 1}, {"b": 2}]


def test_file_sink_custom_mode_and_existing_file_tightened(tmp_path):
    p = tmp_path / "out.jsonl"
    p.write_text("")
    os.chmod(p, 0o666)
    with FileSink(p, mode=0o640) as s:
        s.write([{"a": 1}])
    assert stat.S_IMODE(os.stat(p).st_mode) == 0o640


def test_rotation_generations_and_line_boundaries(tmp_path):
    p = tmp_path / "out.jsonl"
    docs = [{"i": i, "pad": "x" * (41 - len(str(i)))} for i in range(100)]
    line_len = len(dumps_line(docs[0]))
    with FileSink(p, max_bytes=line_len * 10, generations=3) as s:
        for i in range(0, 100, 7):
            s.write(docs[i:i + 7])
        assert s.rotations == 9
    names = sorted(os.listdir(tmp_path))
    assert names == ["out.jsonl", "out.jsonl.1", "out.jsonl.2", "out.jsonl.3"]
    seen = []
    for name in ["out.jsonl.3", "out.jsonl.2", "out.jsonl.1", "out.jsonl"]:
        data = (tmp_path / name).read_bytes()
        assert len(data) <= line_len * 10
        assert data.endswith(b"\n")
        seen += [json.loads(x)["i"] for x in data.splitlines()]
        assert stat.S_IMODE(os.stat(tmp_path / name).st_mode) == 0o600
    # the newest 40 documents survive, in order, none split or duplicated
    assert seen == list(range(60, 100))


def test_rotation_oversize_single_line_still_written(tmp_path):
    p = tmp_path / "o.jsonl"
    with FileSink(p, max_bytes=10, generations=1) as s:
        s.write([{"big": "y" * 50}, {"big": "z" * 50}])
    assert json.loads((tmp_path / "o.jsonl.1").read_text())["big"] == "y" * 50
    assert json.loads(p.read_text())["big"] == "z" * 50


def test_rotation_reopen_appends_and_counts_existing_size(tmp_path):
    p = tmp_path / "o.jsonl"
    with FileSink(p, max_bytes=100) as s:
        s.write([{"v": "a" * 60}])
    with FileSink(p, max_bytes=100) as s:
        s.write([{"v": "b" * 60}])
    assert (tmp_path / "o.jsonl.1").exists()


def test_rotate_files_zero_generations(tmp_path):
    p = tmp_path / "x"
    p.write_text("1")
    rotate_files(str(p), 0)
    assert not p.exists()


@pytest.mark.parametrize("policy", ["never", "batch", "interval"])
def test_fsync_policies(tmp_path, monkeypatch, policy):
    calls = []
    real = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (calls.append(fd), real(fd)))
    s = FileSink(tmp_path / "f.jsonl", fsync=policy, fsync_interval=3600)
    s.write([{"a": 1}])
    s.write([{"a": 2}])
    after_writes = len(calls)
    s.close()
    if policy == "never":
        assert after_writes == 0
    elif policy == "batch":
        assert after_writes == 2
    else:
        assert after_writes == 0 and len(calls) == 1
    with pytest.raises(ValueError):
        FileSink(tmp_path / "g", fsync="sometimes")


def test_write_bytes_block(tmp_path):
    p = tmp_path / "b.jsonl"
    with FileSink(p) as s:
        assert s.write_bytes(b'{"a":1}\n{"a":2}') == 2
    assert p.read_bytes() == b'{"a":1}\n{"a":2}\n'


def test_stdout_sink_and_broken_pipe():
    buf = io.BytesIO()
    s = StdoutSink(buf)
    assert s.write([{"a": 1}, b'{"b":2}\n']) == 2
    assert buf.getvalue() == b'{"a":1}\n{"b":2}\n'

    class Broken(io.BytesIO):
        def write(self, b):
            raise BrokenPipeError

    s2 = StdoutSink(Broken())
    assert s2.write([{"a": 1}]) == 0
    assert s2.closed
    assert s2.write([{"a": 1}]) == 0


def _append_shared(path: str, who: int, batches: int) -> None:
    sink = FileSink(path, max_bytes=20_000, generations=1000, shared=True)
    for b in range(batches):
        sink.write([{"w": who, "b": b, "i": i, "pad": "x" * (b % 7) * 10} for i in range(17)])
    sink.close()


def test_shared_file_rotated_by_several_processes(tmp_path):
    """``shared=True`` (serve's workers writing their own documents): four processes append and
    rotate the one file at the same time. Every line is there exactly once, whole, and every
    generation stays within the size (no process rotated on a stale size)."""
    import multiprocessing

    path = tmp_path / "out.jsonl"
    ctx = multiprocessing.get_context("fork")
    procs = [ctx.Process(target=_append_shared, args=(str(path), w, 150)) for w in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    files = [path, *sorted(tmp_path.glob("out.jsonl.*"), key=lambda f: int(f.suffix[1:]))]  # newest first
    assert len(files) > 10
    got = []
    for f in files:
        data = f.read_bytes()
        assert len(data) <= 20_000 and data.endswith(b"\n"), f
        got += [json.loads(x) for x in data.splitlines()]
    assert sorted((d["w"], d["b"], d["i"]) for d in got) == [(w, b, i) for w in range(4) for b in range(150)
                                                               for i in range(17)]
    for w in range(4):  # each process's lines in its order, across generations (oldest first)
        mine = [(d["b"], d["i"]) for f in reversed(files) for d in map(json.loads, f.read_bytes().splitlines())
                if d["w"] == w]
        assert mine == sorted(mine)


def test_shared_sink_creates_its_directory_and_survives_a_failed_reopen(tmp_path):
    """A shared file in a directory not made yet opens as an unshared one does; when the file
    cannot be opened again after another process rotated it, the write is refused (held by the
    caller) and the next one opens it and goes on, instead of a sink closed for good."""
    from auditpipe.sinks.errors import OutputUnavailable

    path = tmp_path / "new" / "out.jsonl"
    sink = FileSink(str(path), shared=True)
    sink.write([{"n": 1}])
    os.rename(path, tmp_path / "new" / "out.jsonl.1")  # another worker rotated it …
    os.mkdir(path)  # … and the new file cannot be opened (EISDIR)
    with pytest.raises(OutputUnavailable, match="EISDIR"):
        sink.write([{"n": 2}])
    os.rmdir(path)
    assert sink.write([{"n": 2}]) == 1
    sink.close()
    assert [json.loads(line)["n"] for line in path.read_text().splitlines()] == [2]
    with pytest.raises(ValueError, match="closed"):
        sink.write([{"n": 3}])
