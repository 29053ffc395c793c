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


# ---- follow(): tail → pipeline → sink with safe checkpoints ------------------------------------
CORPUS = "/work/shared/corpus/raw-node.log"
if not os.path.exists(CORPUS):
    CORPUS = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "corpus", "raw-node.log")


def _pipeline(wall=None):
    from auditpipe.normalize import make_normalizer
    from auditpipe.pipeline import Pipeline
    from auditpipe.reassembly import Reassembler
    return Pipeline(make_normalizer("coalesced"), Reassembler(timeout=2.0, wall_timeout=wall))


class ListSink:
    def __init__(self):
        self.docs = []

    def write(self, docs):
        self.docs += docs
        return len(docs)

    def flush(self):
        pass


class Crash(Exception):
    pass


def test_follow_delivers_everything(tmp_path):
    import threading
    from auditpipe.sources.tail import follow
    with open(CORPUS, "rb") as f:
        data = f.read()
    p = tmp_path / "audit.log"
    p.write_bytes(data)
    ref = _pipeline()
    lines = [ln for ln in data.decode("utf-8", "surrogateescape").split("\n") if ln]
    expect = ref.feed_lines(lines) + ref.flush()
    t = Tailer([str(p)], start="head", state_file=str(tmp_path / "st.json"))
    sink, stop = ListSink(), threading.Event()
    th = threading.Thread(target=follow, args=(t, _pipeline(), sink, stop), kwargs={"interval": 0.01})
    th.start()
    import time
    end = time.monotonic() + 20
    while time.monotonic() < end and len(sink.docs) < len(expect) - 5:
        time.sleep(0.02)
    stop.set()
    th.join(10)
    assert [d["id"] for d in sink.docs] == [d["id"] for d in expect]
    assert json.load(open(tmp_path / "st.json"))["files"][str(p)]["offset"] == len(data)


def test_follow_checkpoint_never_passes_an_open_event(tmp_path):
    import threading
    from auditpipe.sources.tail import follow
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

    pipe = _pipeline()
    real_tick = pipe.tick
    calls = []

    def tick(now):  # "crash" while the second batch is being processed
        calls.append(now)
        if len(calls) == 1:
            with open(p, "a", encoding="utf-8", errors="surrogateescape") as f:
                f.write("".join(ln + "\n" for ln in lines[cut + 1:cut + 40]))
        else:
            raise Crash()
        return real_tick(now)

    pipe.tick = tick
    sink1 = ListSink()
    t = Tailer([str(p)], start="head", state_file=state)
    with pytest.raises(Crash):
        follow(t, pipe, sink1, threading.Event(), interval=0.001)
    t.close()
    offset = json.load(open(state))["files"][str(p)]["offset"]
    assert offset <= event_start  # the open event's records will be read again
    # restart, the rest of the file arrives
    with open(p, "a", encoding="utf-8", errors="surrogateescape") as f:
        f.write("".join(ln + "\n" for ln in lines[cut + 40:]))
    sink2, stop = ListSink(), threading.Event()
    t2 = Tailer([str(p)], start="end", state_file=state)
    th = threading.Thread(target=follow, args=(t2, _pipeline(), sink2, stop), kwargs={"interval": 0.01})
    th.start()
    import time
    time.sleep(1.0)
    stop.set()
    th.join(10)
    ref = _pipeline()
    expect = ref.feed_lines(lines) + ref.flush()
    got = {d["id"] for d in sink1.docs + sink2.docs}
    assert got == {d["id"] for d in expect}  # nothing lost (some may come twice)
    cut_id = next(d["id"] for d in expect if d["id"].endswith(":" + serial(lines[cut]).split(":")[1]))
    whole = [d for d in sink2.docs if d["id"] == cut_id]
    assert whole and len(whole[0]["records"]) >= 2  # the cut event came out whole after the restart


def test_follow_commits_a_position_once_its_events_are_out():
    import threading
    from auditpipe.sources.tail import follow

    class R:
        events = 0
        in_flight = 0

    class P:
        """Every line opens an event; the events of one poll leave at the next poll's tick."""
        reassembler = R()
        prev = cur = 0

        def feed_lines(self, lines, where, now):
            R.in_flight += len(lines)
            self.cur = len(lines)
            return []

        def tick(self, now):
            R.events += self.prev
            R.in_flight -= self.prev
            self.prev, self.cur = self.cur, 0
            return []

        def flush(self):
            return []

    class T:
        def __init__(self):
            self.polls = [[("f", ["a", "b"])], [("f", ["c"])], [], []]
            self.pos = 0
            self.commits = []

        def poll(self):
            batch = self.polls.pop(0) if self.polls else []
            if batch:
                self.pos += 1
            if not self.polls:
                stop.set()
            return batch

        def snapshot(self):
            return {"pos": self.pos}

        def commit(self, snap=None):
            self.commits.append(snap)

    stop = threading.Event()
    t = T()
    follow(t, P(), ListSink(), stop, interval=0)
    # initial commit; after poll 1 nothing is safe; poll 2 emits poll 1's events → commit {pos 1};
    # poll 3 emits poll 2's → commit {pos 2}; final commit at stop
    assert t.commits == [None, {"pos": 1}, {"pos": 2}, None]
