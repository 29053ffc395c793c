"""Property and mutation tests: nothing the parser or pipeline is fed makes it raise anything but
ParseError, and every line is accounted for (a record or a reject)."""

from __future__ import annotations

import random

import pytest

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from auditpipe.cli.common import build_normalizer
from auditpipe.normalize.coalesced import make_coalesced_normalizer
from auditpipe.normalize.jsonl import dumps_line, loads
from auditpipe.parsing import ParseError, parse_kernel, parse_line
from auditpipe.pipeline import Pipeline
from auditpipe.reassembly import Reassembler

from conftest import CORPUS, CONFORMANCE

ALPHABET = st.characters(blacklist_categories=("Cs",), blacklist_characters="\n\r") | st.sampled_from(list(" =\"'(){}:\x1d\x00\udcff.%-_"))
keys = st.text(alphabet="abcdefghijklmnopqrstuvwxyz_-0123456789", min_size=1, max_size=8)
values = st.one_of(
    st.text(alphabet="0123456789ABCDEF", max_size=40),
    st.text(ALPHABET, max_size=30).map(lambda s: '"' + s + '"'),
    st.text(ALPHABET, max_size=30),
    st.sampled_from(["(null)", "?", "(none)", "''", '""']),
)
bodies = st.lists(st.tuples(keys, values), max_size=12).map(lambda kv: " ".join(f"{k}={v}" for k, v in kv))
types = st.sampled_from(["SYSCALL", "EXECVE", "PATH", "PROCTITLE", "USER_LOGIN", "AVC", "SOCKADDR", "UNKNOWN[1334]", "EOE"])


def _lines_from_corpora(limit=400):
    lines = []
    for p in [CORPUS / "enriched.log", CORPUS / "raw-node.log", *sorted((CONFORMANCE / "linux-audit-parser").glob("*.txt"))]:
        if p.exists():
            lines += p.read_bytes().decode("utf-8", "surrogateescape").split("\n")[:limit]
    return [line for line in lines if line]


SEED_LINES = _lines_from_corpora()
if not SEED_LINES:  # the shared material is part of the test set-up: its absence is an error
    raise pytest.UsageError(f"shared corpora missing under {CORPUS.parent}")


_OTHER_FORMATS = [build_normalizer("ecs", resolve_ids=False, include_raw=True), build_normalizer("panther")]


def _feed(lines):
    rejects = []
    events = []
    coalesce = make_coalesced_normalizer()

    def every_format(ev):
        events.append(ev)
        for normalize in _OTHER_FORMATS:  # must not raise on anything the parser accepts
            for d in normalize(ev):
                assert loads(dumps_line(d)) is not None
        return coalesce(ev)

    pipe = Pipeline(every_format, Reassembler(), on_reject=lambda w, l, r: rejects.append(l))
    docs = pipe.feed_lines(lines) + pipe.flush()
    for d in docs:
        assert loads(dumps_line(d)) is not None  # every document serializes
    nonblank = sum(1 for line in lines if line)
    assert pipe.counters.records + len(rejects) == nonblank
    assert sum(len(d["records"]) for d in docs) == pipe.counters.records  # no record lost
    return docs


@given(st.text(ALPHABET, max_size=300))
@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow])
def test_random_text_never_crashes(text):
    try:
        parse_line(text)
    except ParseError:
        pass


@given(st.binary(max_size=300), st.integers(0, 3000))
@settings(max_examples=300)
def test_random_kernel_payload_never_crashes(payload, type_num):
    try:
        parse_kernel(type_num, payload)
    except ParseError:
        pass


@given(types, st.integers(0, 2**33), st.integers(0, 999), st.integers(0, 2**32), bodies, st.booleans())
@settings(max_examples=400)
def test_well_formed_headers_always_parse(rtype, sec, msec, serial, body, node):
    line = ("node=h " if node else "") + f"type={rtype} msg=audit({sec}.{msec:03d}:{serial}): {body}"
    r = parse_line(line)
    assert (r.sec, r.msec, r.serial) == (sec, msec, serial)
    assert r.raw == line
    _feed([line])


@given(st.lists(st.integers(0, max(len(SEED_LINES) - 1, 0)), max_size=40), st.randoms(use_true_random=False))
@settings(max_examples=200, suppress_health_check=[HealthCheck.too_slow])
def test_mutated_corpus_lines_are_accounted_for(indices, rnd):
    lines = []
    for i in indices:
        line = SEED_LINES[i]
        op = rnd.randrange(6)
        pos = rnd.randrange(len(line) + 1)
        if op == 0:
            line = line[:pos]  # truncated
        elif op == 1:
            line = line[:pos] + chr(rnd.randrange(0x110000) if rnd.random() < 0.5 else rnd.randrange(256)).replace("\n", "") + line[pos:]
        elif op == 2:
            line = line[:pos] + line[pos + rnd.randrange(1, 20):]
        elif op == 3:
            line = line[:pos] + "\udc80\udcff" + line[pos:]  # bytes that are not UTF-8
        elif op == 4:
            line = line + " x" * rnd.randrange(5000)  # over-long
        if "\ud800" <= line[-1:] <= "\udbff":
            line = line[:-1]
        lines.append(line.replace("\n", ""))
    _feed(lines)


def test_mutation_run_over_whole_corpora():
    """Every line of the shared corpora, each with one random mutation (fixed seed)."""
    rnd = random.Random(1234)
    lines = []
    for line in SEED_LINES * 3:
        pos = rnd.randrange(len(line) + 1)
        cut = rnd.choice([line[:pos], line[:pos] + line[pos + 3:], line[:pos] + "\x00\"'=" + line[pos:], line[pos:]])
        lines.append(cut)
    docs = _feed(lines)
    assert docs


def test_nested_msg_in_unusual_places_does_not_break_normalizers():
    """A nested msg='…' (a dict value) where a normalizer expects only strings: in a PATH record
    and in a record merged into a syscall event (found by the mutation test above)."""
    lines = [
        'type=SYSCALL msg=audit(1.000:5): arch=c000003e syscall=2 success=yes exit=3 items=1 pid=1 uid=0 auid=0 ses=1 comm="x" exe="/x" key=(null)',
        "type=PATH msg=audit(1.000:5): item=0 name=\"/etc/x\" msg='op=odd res=1'",
        "type=CHGRP_ID msg=audit(1.000:5): pid=1 uid=0 msg='op=changing new_gid=4550 res=success'",
        "type=PROCTITLE msg=audit(1.000:5): proctitle=78",
    ]
    docs = _feed(lines)  # CHGRP_ID (user space) ends the event, as in auparse; PROCTITLE starts one
    assert [len(d["records"]) for d in docs] == [3, 1]
