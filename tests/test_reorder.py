"""The per-sender reorder buffer on its own (sans-I/O): chunks of one sender in any order give
the events `auditpipe parse` makes of the stream."""

import json
import random

import pytest
from conftest import shared_path

from auditpipe.normalize import make_normalizer
from auditpipe.parsing import parse_line
from auditpipe.pipeline import Pipeline
from auditpipe.reassembly import Reassembler
from auditpipe.sources.receiver.reorder import Chunk, ReorderBuffer


@pytest.fixture(scope="module")
def lines():
    text = shared_path("corpus", "raw-node.log").read_text(encoding="utf-8", errors="surrogateescape")
    return [ln for ln in text.split("\n") if ln]


def keys(events):
    return sorted((e.id, tuple(r.type for r in e.records)) for e in events)


def expected(lines):
    r = Reassembler()
    out = []
    for ln in lines:
        out += r.feed(parse_line(ln))
    return keys(out + r.flush())


def chunks_of(lines, size):
    recs = [parse_line(ln) for ln in lines]
    out = []
    for i in range(0, len(recs), size):
        part = [(rec, 1000.0 + (i + k) * 1e-6, k) for k, rec in enumerate(recs[i:i + size])]
        out.append((i, part))
    return out


@pytest.mark.parametrize("ranged", [False, True])
def test_chunks_in_any_order_give_parse_events(lines, ranged):
    """Chunks shuffled: by dates alone, or with their stream positions (X-Auditpipe-Range)."""
    want = expected(lines)
    chunks = chunks_of(lines, 97)  # 97 records: chunk boundaries fall inside events
    random.Random(7).shuffle(chunks)
    buf = ReorderBuffer(window=60)
    out = []
    arrived_ends = set()
    for seq, (base, part) in enumerate(chunks, 1):
        head_known = ranged and (base == 0 or base in arrived_ends)
        out += buf.add(Chunk(part, seq, base if ranged else None, head_known), now=float(seq))
        arrived_ends.add(base + len(part))
    early = len(out)
    out += buf.flush(now=1000.0)
    assert keys(out) == want
    assert early > 0.9 * len(want), "complete events must leave before the window, not at the end"
    assert buf.held_records == 0


def test_window_releases_what_never_completes(lines):
    syscall = next(ln for ln in lines if "type=SYSCALL" in ln)
    buf = ReorderBuffer(window=5)
    assert buf.add(Chunk([(parse_line(syscall), 1.0, 3)], 1), now=0.0) == []
    assert buf.expire(4.9) == []
    out = buf.expire(5.0)
    assert [r.type for r in out[0].records] == ["SYSCALL"] and buf.expired == 1


def test_the_same_records_again_are_dropped(lines):
    part = [(parse_line(ln), 5.0 + k * 1e-6, k) for k, ln in enumerate(lines[:200])]
    buf = ReorderBuffer(window=60)
    first = buf.add(Chunk(part, 1, None, in_order=True), now=0.0)
    again = buf.add(Chunk(part, 2, None, False), now=1.0)
    rest = buf.flush(now=2.0)
    assert again == [] and buf.duplicates == 200
    assert keys(first + rest) == expected(lines[:200])


def test_receiver_pipeline_normalizes_released_events(lines):
    """The normalized documents equal parse's (the buffer only changes when events leave)."""
    p = Pipeline(make_normalizer("coalesced"), Reassembler())
    want = json.loads(json.dumps(p.feed_lines(lines[:500]) + p.flush()))
    buf = ReorderBuffer(window=60)
    evs = buf.add(Chunk([(parse_line(ln), None, k) for k, ln in enumerate(lines[:500])], 1, None, in_order=True), 0.0)
    evs += buf.flush(1.0)
    norm = make_normalizer("coalesced")
    got = json.loads(json.dumps([d for e in evs for d in norm(e)]))
    assert sorted(map(json.dumps, got)) == sorted(map(json.dumps, want))
