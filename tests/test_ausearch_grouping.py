"""Grouping identical to auparse: for every shared file ausearch reads, the same events with the
same records (ausearch prints an event's records in its own order, so records are compared as a
set per event, and events as a multiset)."""

from __future__ import annotations

import gzip
import shutil
import subprocess
from collections import Counter

import pytest

from conftest import CONFORMANCE, CORPUS
from helpers import events_of_file

AUSEARCH = shutil.which("ausearch")
pytestmark = pytest.mark.skipif(AUSEARCH is None, reason="ausearch not installed (apt-get install auditd)")


# audit-rhel7.log is not a log: one record of each type, sorted by type name, from events days
# apart. auparse's grouping of it is an artefact of its internal event-table eviction (it even
# drops SOCKADDR 517643–517647 and SYSCALL 512226 from its output), not a grouping to match.
NOT_A_LOG = {"audit-rhel7.log"}


def _files():
    out = []
    for folder in (CORPUS, CONFORMANCE):
        if folder.exists():
            out += sorted(p for p in folder.rglob("*") if p.suffix in (".log", ".txt")
                          and p.name not in ("README.txt", "LICENSE.txt") and p.name not in NOT_A_LOG)
    return out


def ausearch_events(path) -> Counter:
    res = subprocess.run([AUSEARCH, "--input", str(path)], capture_output=True, env={"LC_ALL": "C", "TZ": "UTC"})
    events: list[list[bytes]] = []
    for line in res.stdout.split(b"\n"):
        if line == b"----":
            events.append([])
        elif line.startswith(b"time->") or not line:
            continue
        elif events:
            events[-1].append(line)
    # ausearch passes comment lines of laurel's captures through as if they were events
    return Counter(tuple(sorted(e)) for e in events
                   if e and all(line.startswith((b"type=", b"node=")) for line in e))


def our_events(path) -> Counter:
    evs, _ = events_of_file(path)
    # ausearch prints records without their ENRICHED part
    return Counter(tuple(sorted(r.raw.split("\x1d", 1)[0].encode("utf-8", "surrogateescape") for r in e.records))
                   for e in evs)


@pytest.mark.parametrize("path", _files(), ids=lambda p: str(p.relative_to(p.parents[2])))
def test_same_grouping_as_ausearch(path):
    theirs = ausearch_events(path)
    if not theirs:
        pytest.skip("ausearch reads no event from this file")
    ours = our_events(path)
    missing = theirs - ours
    assert not missing, f"events ausearch has that we do not: {list(missing)[:3]}"
    # ausearch silently drops some records it cannot parse (an AppArmor AVC in audit-ubuntu16.log);
    # we keep them. Any other difference is a grouping difference.
    printed = {line for event in theirs for line in event}
    extra = Counter({e: n for e, n in (ours - theirs).items() if any(line in printed for line in e)})
    assert not extra, f"events we have that ausearch does not: {list(extra)[:3]}"


def test_same_grouping_as_ausearch_bench(tmp_path):
    src = CORPUS / "bench.log.gz"
    if not src.exists():
        pytest.fail(f"shared material missing: {src}")
    plain = tmp_path / "bench.log"
    plain.write_bytes(gzip.decompress(src.read_bytes()))
    assert ausearch_events(plain) == our_events(plain)
