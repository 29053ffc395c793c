import json
import os

import pytest

from auditpipe.sources.tail import (Candidate, Checkpoint, FileStat, Tailer, decide, expand, find_copy, resume_plan,
                                    rotated_siblings)


def line(i):
    return f"type=SYSCALL msg=audit(1700000000.{i % 1000:03d}:{i}): arch=c000003e syscall=59 n={i}\n"


def write(path, a, b):
    with open(path, "a") as f:
        f.write("".join(line(i) for i in range(a, b)))


def nums(batches):
    return [int(ln.rsplit("n=", 1)[1]) for _, lines in batches for ln in lines]


# ---- decisions ----------------------------------------------------------------------------------
def test_decide():
    me = FileStat(1, 10, 500)
    assert decide(me, 500, FileStat(1, 10, 500)) == "idle"
    assert decide(me, 400, FileStat(1, 10, 500)) == "read"
    assert decide(me, 500, FileStat(1, 11, 20)) == "rotated"
    assert decide(me, 500, None) == "gone"
    assert decide(me, 500, FileStat(1, 10, 100)) == "truncated"
    assert decide(me, 500, FileStat(1, 10, 900), head_changed=True) == "truncated"


def test_find_copy():
    cands = [Candidate("a.1", FileStat(1, 20, 900), b"HEADER-x"), Candidate("a.2", FileStat(1, 21, 900), b"OTHER")]
    assert find_copy(b"HEADER", 800, cands).path == "a.1"
    assert find_copy(b"HEADER", 950, cands) is None  # copy shorter than what we read: not ours
    assert find_copy(b"HEADER", 800, cands, exclude=(1, 20)) is None
    assert find_copy(b"", 0, cands) is None


def test_resume_plan_cases():
    cur = Candidate("log", FileStat(1, 30, 100), b"C" * 10)
    r1 = Candidate("log.1", FileStat(1, 20, 500), b"B" * 10)
    r2 = Candidate("log.2", FileStat(1, 10, 500), b"A" * 10)
    cp = lambda ino, off, fp: Checkpoint("log", 1, ino, off, fp.hex())  # noqa: E731
    assert resume_plan(None, cur, [r1, r2], "end") == ([("log", 100)], False)
    assert resume_plan(None, cur, [r1, r2], "head") == ([("log", 0)], False)
    assert resume_plan(cp(30, 40, b"C" * 10), cur, [r1, r2], "end") == ([("log", 40)], False)
    # rotated twice since the checkpoint: the rest of log.2, all of log.1, then log
    assert resume_plan(cp(10, 300, b"A" * 10), cur, [r1, r2], "end") == (
        [("log.2", 300), ("log.1", 0), ("log", 0)], False)
    # same inode, other bytes (copytruncate): continue in the copy, then the live file from 0
    r1copy = Candidate("log.1", FileStat(1, 20, 500), b"Z" * 10)
    cur_t = Candidate("log", FileStat(1, 30, 50), b"N" * 10)
    assert resume_plan(cp(30, 400, b"Z" * 10), cur_t, [r1copy], "end") == ([("log.1", 400), ("log", 0)], False)
    # the checkpointed file is gone: start the live one from its head and say so
    assert resume_plan(cp(99, 10, b"Q"), cur, [r1], "end") == ([("log", 0)], True)


def test_rotated_siblings_and_expand(tmp_path):
    base = tmp_path / "audit.log"
    for name in ["audit.log", "audit.log.1", "audit.log.2", "audit.log.10", "audit.log.3.gz", "audit.log.bak"]:
        (tmp_path / name).write_text("")
    assert rotated_siblings(str(base)) == [str(base) + s for s in (".1", ".2", ".10")]
    assert expand([str(tmp_path / "audit.log*")]) == [str(tmp_path / "audit.log"), str(tmp_path / "audit.log.bak")]


# ---- the loop -----------------------------------------------------------------------------------
def test_start_end_vs_head(tmp_path):
    p = tmp_path / "audit.log"
    write(p, 0, 5)
    t = Tailer([str(p)], start="end")
    assert t.poll() == []
    write(p, 5, 8)
    assert nums(t.poll()) == [5, 6, 7]
    t2 = Tailer([str(p)], start="head")
    assert nums(t2.poll()) == list(range(8))


def test_partial_line_waits_for_newline(tmp_path):
    p = tmp_path / "audit.log"
    p.write_text("")
    t = Tailer([str(p)], start="head")
    with open(p, "a") as f:
        f.write(line(1)[:20])
    assert t.poll() == []
    with open(p, "a") as f:
        f.write(line(1)[20:])
    assert nums(t.poll()) == [1]


def test_rename_rotation_reads_rest_of_old_file(tmp_path):
    p = tmp_path / "audit.log"
    write(p, 0, 10)
    t = Tailer([str(p)], start="head")
    assert nums(t.poll()) == list(range(10))
    write(p, 10, 15)  # written after our last read, before rotation
    os.rename(p, str(p) + ".1")
    assert nums(t.poll()) == list(range(10, 15))  # name gone: finish what we have
    write(p, 15, 20)
    assert nums(t.poll()) == list(range(15, 20))
    assert t.followers[str(p)].rotations == 1


def test_double_rotation_between_polls(tmp_path):
    p = str(tmp_path / "audit.log")
    write(p, 0, 3)
    t = Tailer([p], start="head")
    assert nums(t.poll()) == [0, 1, 2]
    write(p, 3, 5)
    os.rename(p, p + ".1")
    write(p, 5, 7)
    os.rename(p + ".1", p + ".2")
    os.rename(p, p + ".1")
    write(p, 7, 9)
    assert nums(t.poll()) == list(range(3, 9))


def test_copytruncate_reads_rest_from_copy(tmp_path):
    p = str(tmp_path / "audit.log")
    write(p, 0, 10)
    t = Tailer([p], start="head")
    assert nums(t.poll()) == list(range(10))
    write(p, 10, 13)
    # logrotate copytruncate: copy, then truncate in place (same inode)
    with open(p, "rb") as src, open(p + ".1", "wb") as dst:
        dst.write(src.read())
    os.truncate(p, 0)
    write(p, 13, 15)
    assert nums(t.poll()) == list(range(10, 15))
    assert t.followers[p].truncations == 1


def test_copytruncate_refilled_past_offset(tmp_path):
    p = str(tmp_path / "audit.log")
    write(p, 0, 2)
    t = Tailer([p], start="head")
    assert nums(t.poll()) == [0, 1]
    with open(p, "rb") as src, open(p + ".1", "wb") as dst:
        dst.write(src.read())
    os.truncate(p, 0)
    write(p, 100, 140)  # larger than before: only the changed head tells
    assert nums(t.poll()) == list(range(100, 140))


def test_checkpoint_restart_resumes_exactly(tmp_path):
    p = str(tmp_path / "audit.log")
    state = str(tmp_path / "state.json")
    write(p, 0, 10)
    t = Tailer([p], start="head", state_file=state)
    assert nums(t.poll()) == list(range(10))
    t.commit()
    write(p, 10, 12)
    assert nums(t.poll()) == [10, 11]  # read, but "crash" before commit
    t.close()
    assert oct(os.stat(state).st_mode & 0o777) == "0o600"
    t = Tailer([p], start="end", state_file=state)
    assert nums(t.poll()) == [10, 11]  # redelivered, nothing skipped, nothing before
    t.commit()
    t.close()
    # rotation while stopped: the rest of the old file, then the new one
    write(p, 12, 14)
    os.rename(p, p + ".1")
    write(p, 14, 16)
    t = Tailer([p], start="end", state_file=state)
    assert nums(t.poll()) == [12, 13, 14, 15]
    t.commit()
    cp = json.load(open(state))["files"][p]
    assert cp["offset"] == os.path.getsize(p) and cp["ino"] == os.stat(p).st_ino


def test_checkpoint_copytruncate_while_stopped(tmp_path):
    p = str(tmp_path / "audit.log")
    state = str(tmp_path / "state.json")
    write(p, 0, 5)
    t = Tailer([p], start="head", state_file=state)
    t.poll()
    t.commit()
    t.close()
    write(p, 5, 7)
    with open(p, "rb") as src, open(p + ".1", "wb") as dst:
        dst.write(src.read())
    os.truncate(p, 0)
    write(p, 7, 8)
    t = Tailer([p], start="end", state_file=state)
    assert nums(t.poll()) == [5, 6, 7]


def test_missing_file_appears_later(tmp_path):
    p = str(tmp_path / "audit.log")
    t = Tailer([p], start="end")
    assert t.poll() == []
    write(p, 0, 3)
    assert nums(t.poll()) == [0, 1, 2]  # a file that appears is read from its head


def test_non_utf8_and_0x1d_preserved(tmp_path):
    p = tmp_path / "audit.log"
    raw = b"type=PATH msg=audit(1.1:1): name=\xff\x1dUID=\"root\"\n"
    p.write_bytes(raw)
    t = Tailer([str(p)], start="head")
    [(path, lines)] = t.poll()
    assert lines[0].encode("utf-8", "surrogateescape") + b"\n" == raw


def test_bad_start_value():
    with pytest.raises(ValueError):
        Tailer(["/nonexistent"], start="middle")


def test_concurrent_writer_with_rename_rotations(tmp_path):
    import threading
    import time

    p = str(tmp_path / "audit.log")
    open(p, "w").close()
    total, every = 20000, 1500
    done = threading.Event()

    def writer():
        f = open(p, "a")
        for i in range(total):
            f.write(line(i))
            if i % 97 == 0:
                f.flush()
            if i and i % every == 0:
                f.close()
                gens = rotated_siblings(p)
                for g in reversed(gens):
                    n = int(g.rsplit(".", 1)[1])
                    os.rename(g, f"{p}.{n + 1}")
                os.rename(p, p + ".1")
                f = open(p, "a")
        f.close()
        done.set()

    t = Tailer([p], start="head", max_read=64 << 10)
    th = threading.Thread(target=writer)
    th.start()
    got = []
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        got += nums(t.poll())
        if done.is_set() and len(got) >= total:
            break
        if done.is_set():
            got += nums(t.poll())
            if len(got) >= total:
                break
        time.sleep(0.001)
    th.join()
    assert got == list(range(total))
    assert t.followers[p].rotations >= 1


# ---- the runner over a followed file: tail → pipeline → outputs with safe checkpoints ----------
# (the checkpoint contract itself: pipeline.checkpoint.FileCheckpoint, tests/test_live_file_checkpoint.py)
CORPUS = os.path.join(os.environ.get("AUDITPIPE_SHARED", os.path.join(os.path.dirname(__file__), "..", "..",
                                                                      "shared")), "corpus", "raw-node.log")


def _pipeline():
    from auditpipe.normalize import make_normalizer
    from auditpipe.pipeline import Pipeline
    from auditpipe.reassembly import Reassembler
    return Pipeline(make_normalizer("coalesced"), Reassembler(timeout=2.0))


class ListSink:
    def __init__(self):
        self.docs = []

    def write(self, docs):
        self.docs += docs
        return len(docs)

    def close(self):
        pass


def _runner(tmp_path, log, state, sink, start="head"):
    from auditpipe.config import Config, HeartbeatConfig, NormalizeConfig, StatusConfig, StdoutOutput
    from auditpipe.pipeline.live import LiveRunner
    from auditpipe.pipeline.outputs import Output, Outputs
    from auditpipe.sources.file_source import FileTailSource

    cfg = Config(normalize=NormalizeConfig(format="coalesced"), status=StatusConfig(path=str(tmp_path / "status.json")),
                 outputs=[StdoutOutput()], heartbeat=HeartbeatConfig(interval=0))  # events only
    src = FileTailSource(str(log), state, interval=0.01, start=start)
    return LiveRunner(cfg, src, outputs=Outputs([Output(sink, StdoutOutput())]))


def _run_until(runner, pred, timeout=20.0):
    import threading
    import time
    th = threading.Thread(target=runner.run, daemon=True)
    th.start()
    end = time.monotonic() + timeout
    while time.monotonic() < end and not pred():
        time.sleep(0.02)
    runner.request_stop()
    th.join(10)


def test_follow_delivers_everything(tmp_path):
    with open(CORPUS, "rb") as f:
        data = f.read()
    p = tmp_path / "audit.log"
    p.write_bytes(data)
    ref = _pipeline()
    lines = [ln for ln in data.decode("utf-8", "surrogateescape").split("\n") if ln]
    expect = ref.feed_lines(lines) + ref.flush()
    sink = ListSink()
    _run_until(_runner(tmp_path, p, str(tmp_path / "st.json"), sink), lambda: len(sink.docs) >= len(expect) - 5)
    assert [d["id"] for d in sink.docs] == [d["id"] for d in expect]
    assert json.load(open(tmp_path / "st.json"))["files"][str(p)]["offset"] == len(data)


def test_follow_checkpoint_never_passes_an_open_event(tmp_path):
    """A crash (the process dies: no flush, no final commit) while an event is open: the
    checkpoint is before that event's first record, and the restart delivers it whole."""
    with open(CORPUS, encoding="utf-8", errors="surrogateescape") as f:
        lines = [ln for ln in f.read().split("\n") if ln]
    # cut inside an event: a SYSCALL whose next record has the same serial
    serial = lambda ln: ln.split("msg=audit(", 1)[1].split(")", 1)[0]  # noqa: E731
    cut = next(i for i in range(2000, len(lines) - 1)
               if " type=SYSCALL " in f" {lines[i]}" and serial(lines[i + 1]) == serial(lines[i]))
    p = tmp_path / "audit.log"
    head = "".join(ln + "\n" for ln in lines[:cut + 1])
    p.write_text(head, encoding="utf-8", errors="surrogateescape")
    event_start = len(head.encode("utf-8", "surrogateescape")) - len((lines[cut] + "\n").encode("utf-8", "surrogateescape"))
    state = str(tmp_path / "st.json")
    sink1 = ListSink()
    first = _runner(tmp_path, p, state, sink1)
    first.reassembler.wall_timeout = 3600.0  # the open event stays open
    first._shutdown = lambda: first.source.close()  # "crash": nothing flushed, nothing committed
    _run_until(first, lambda: first.checkpoint.commits > 0 and first.source.queue.put_items > 0 and
               first.reassembler.in_flight > 0 and not first.source.queue._q, timeout=5)
    offset = json.load(open(state))["files"][str(p)]["offset"]
    assert 0 < offset <= event_start  # the open event's records will be read again
    with open(p, "a", encoding="utf-8", errors="surrogateescape") as f:
        f.write("".join(ln + "\n" for ln in lines[cut + 1:]))
    sink2 = ListSink()
    ref = _pipeline()
    expect = ref.feed_lines(lines) + ref.flush()
    ids = {d["id"] for d in expect}
    _run_until(_runner(tmp_path, p, state, sink2, start="end"),
               lambda: {d["id"] for d in sink1.docs + sink2.docs} >= ids - {expect[-1]["id"]})
    got = {d["id"] for d in sink1.docs + sink2.docs}
    assert got == ids  # nothing lost (some may come twice)
    cut_id = next(d["id"] for d in expect if d["id"].endswith(":" + serial(lines[cut]).split(":")[1]))
    whole = [d for d in sink2.docs if d["id"] == cut_id]
    assert whole and len(whole[0]["records"]) >= 2  # the cut event came out whole after the restart
