"""Peers' test inputs parse with no reject, and laurel's own expected argv is reproduced."""

from __future__ import annotations

import json

import pytest

from conftest import CONFORMANCE, shared_path
from helpers import coalesce_file


def _laurel_records():
    return sorted((CONFORMANCE / "laurel").glob("record-*.txt")) if CONFORMANCE.exists() else []


@pytest.mark.parametrize("path", _laurel_records(), ids=lambda p: p.name)
def test_laurel_records_parse_without_reject(path):
    rejects = []
    docs, pipe = coalesce_file(path, rejects)
    assert rejects == []
    assert docs and pipe.counters.records == sum(len(d["records"]) for d in docs)
    expected = path.with_suffix(".json")
    if expected.exists():  # one laurel event per line
        for line in expected.read_text().splitlines():
            want = json.loads(line)
            if "EXECVE" in want and "ARGV" in want["EXECVE"]:
                ours = [d for d in docs if d["id"] == want["ID"]]
                assert ours and ours[0]["execve"]["argv"] == want["EXECVE"]["ARGV"]
                assert ours[0]["execve"]["argc"] == want["EXECVE"]["argc"]


def test_long_segmented_execve_argv():
    docs, _ = coalesce_file(shared_path("conformance", "laurel", "record-execve-long.txt"))
    want = json.loads(shared_path("conformance", "laurel", "record-execve-long.json").read_text())
    (doc,) = [d for d in docs if "execve" in d]
    assert doc["execve"]["argv"] == want["EXECVE"]["ARGV"]


def _auparse_logs():
    folder = CONFORMANCE / "go-libaudit" / "auparse" / "testdata"
    return sorted(folder.glob("*.log")) if folder.exists() else []


@pytest.mark.parametrize("path", _auparse_logs(), ids=lambda p: p.name)
def test_go_libaudit_auparse_inputs_parse(path):
    rejects = []
    docs, pipe = coalesce_file(path, rejects)
    golden = json.loads(path.with_name(path.name + ".golden").read_text())
    # the one line go-libaudit cannot parse either (its golden entry is null) is the one we
    # reject: `type=UNKNOWN[1329] msg=?` has no timestamp or serial, so it belongs to no event
    assert [line for _, line, _ in rejects] == [
        raw for raw, g in zip(path.read_text().splitlines(), golden) if g is None
    ]
    assert pipe.counters.records + len(rejects) == len(golden)
