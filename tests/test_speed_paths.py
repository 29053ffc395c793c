"""The fast paths give exactly what the general paths give, on every shared corpus."""

from __future__ import annotations

import gzip

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st
from tests.conftest import shared_path

from auditpipe.parsing import record

CORPORA = ("enriched.log", "raw-node.log", "bench.log.gz")


def _lines(name: str) -> list[str]:
    path = shared_path("corpus", name)
    data = gzip.decompress(path.read_bytes()) if name.endswith(".gz") else path.read_bytes()
    return data.decode("utf-8", "surrogateescape").splitlines()


def _syscall_bodies(name: str) -> list[str]:
    bodies = []
    for line in _lines(name):
        m = record._HEADER.match(line)
        if m and m.group(2) == "SYSCALL":
            bodies.append(line[m.end():].partition(record.GS)[0])
    return bodies


@pytest.mark.parametrize("name", CORPORA)
def test_syscall_fixed_keys_equal_general_path(name):
    bodies = _syscall_bodies(name)
    assert bodies, f"no SYSCALL records in {name}"
    for body in bodies:
        fast = record._syscall_fields(body)
        assert fast is not None, f"usual SYSCALL shape not matched: {body}"
        general = record._parse_fields(body, record._SYSCALL)
        assert list(fast.items()) == list(general.items()), body


@pytest.mark.parametrize("body", [
    # hex-encoded comm / exe / key, quotes in odd places, a missing key, an extra word: general path
    'arch=c000003e syscall=59 success=yes exit=0 a0=1 a1=2 a2=3 a3=4 items=2 ppid=1 pid=2 auid=0 uid=0 gid=0 '
    'euid=0 suid=0 fsuid=0 egid=0 sgid=0 fsgid=0 tty=(none) ses=1 comm=6120622063 exe="/bin/x" key=(null)',
    'arch=c000003e syscall=59 success=yes exit=0 a0=1 a1=2 a2=3 a3=4 items=2 ppid=1 pid=2 auid=0 uid=0 gid=0 '
    'euid=0 suid=0 fsuid=0 egid=0 sgid=0 fsgid=0 tty=(none) ses=1 comm="x" exe="/bin/x" key=6B31016B32',
    'arch=c000003e syscall=59 success=yes exit=0 a0=1 a1=2 a2=3 a3=4 items=2 ppid=1 pid=2 auid=0 uid=0 gid=0 '
    'euid=0 suid=0 fsuid=0 egid=0 sgid=0 fsgid=0 tty=(none) ses=1 comm="x" exe="/bin/x" subj=unconfined key="k"',
    'arch="c000003e" syscall=59 success=yes exit=0 a0=1 a1=2 a2=3 a3=4 items=2 ppid=1 pid=2 auid=0 uid=0 '
    'gid=0 euid=0 suid=0 fsuid=0 egid=0 sgid=0 fsgid=0 tty=(none) ses=1 comm="x" exe="/bin/x" key=(null)',
    'arch=c000003e syscall=59 a0=1 a1=2 a2=3 a3=4 items=2 ppid=1 pid=2 auid=0 uid=0 gid=0 euid=0 suid=0 '
    'fsuid=0 egid=0 sgid=0 fsgid=0 tty=(none) ses=1 comm="x" exe="/bin/x" key=(null)',
    'arch=c000003e syscall=59 success=yes exit=0 a0=1 a1=2 a2=3 a3=4 items=2 ppid=1 pid=2 auid=0 uid=0 gid=0 '
    'euid=0 suid=0 fsuid=0 egid=0 sgid=0 fsgid=0 tty=(none) ses=1 comm="x" exe="/bin/x" key=(null) extra',
])
def test_syscall_odd_shapes_parse_as_before(body):
    fields, _ = record.parse_body(body, record._SYSCALL)
    assert list(fields.items()) == list(record._parse_fields(body, record._SYSCALL).items())
    if "subj=" in body:
        assert record._syscall_fields(body) == {**fields}
        assert fields["key"] == "k"
    if "6120622063" in body:
        assert record._syscall_fields(body) is None and fields["comm"] == "a b c"


def _regex_header(line: str):
    m = record._HEADER.match(line)
    if m is None:
        return None
    node, type_, time, sec, msec, serial = m.groups()
    return node, type_, time, int(sec), int(msec), int(serial), m.end()


_HEADER_PARTS = st.sampled_from(["node=", "type=", " msg=audit(", "node=h ", "type=SYSCALL", "):", ")", ":",
                                 ".", " ", "1", "0", "9", "١", "x", "SYSCALL", "=", "(", "\t", "é"])


@settings(max_examples=3000, deadline=None)
@given(st.lists(_HEADER_PARTS, max_size=14).map("".join))
@example("node=a type=X msg=audit(1.2:3): a=b")
@example("node= type=X msg=audit(01.002:0003)  y")
@example("type=X msg=audit(1.2:3):")
@example("type=X msg=audit(1.2:3)x")
@example("type=X msg=audit(١.2:3): a")
@example("type= msg=audit(1.2:3): a")
@example("node=a b type=X msg=audit(1.2:3): a")
def test_header_split_equals_regex(line):
    """The string-method header reader accepts and splits exactly what the regex does."""
    assert record._split_header(line) == _regex_header(line)


@settings(max_examples=1000, deadline=None)
@given(st.lists(st.lists(_HEADER_PARTS, max_size=14).map("".join), max_size=6))
@example(["type=A msg=audit(1.2:3): a", "type=B msg=audit(1.2:3): b", "type=C msg=audit(1.2:4): c"])
@example(["type=A msg=audit(1.2:3): a", "type=B msg=audit(١.2:3): b", "type=B msg=audit(1.2:3)x"])
def test_header_split_with_a_parser_equals_regex(lines):
    """With a parser the last ``time:serial``'s numbers are reused: the same answers, line after line."""
    memo = record.Parser()
    for line in lines:
        assert record._split_header(line, memo) == _regex_header(line), line


@pytest.mark.parametrize("name", CORPORA)
def test_header_split_equals_regex_on_corpus(name):
    memo = record.Parser()
    for line in _lines(name):
        assert record._split_header(line) == _regex_header(line) == record._split_header(line, memo), line


def test_an_absurdly_long_timestamp_is_a_reject_not_a_crash():
    """int() of more than 4,300 digits raises ValueError: the stream must get a ParseError."""
    for stamp in ("1" * 5000 + ".123:1", "1.2:" + "9" * 5000):
        with pytest.raises(record.ParseError, match="bad timestamp"):
            record.parse_line(f"type=SYSCALL msg=audit({stamp}): a=b", record.Parser())
        with pytest.raises(record.ParseError, match="bad timestamp"):
            record.parse_kernel(1300, f"audit({stamp}): a=b".encode())
