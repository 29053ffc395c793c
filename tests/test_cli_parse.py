"""`auditpipe parse` end to end: files, gzip, stdin, several files, rejects, --strict, summary."""

from __future__ import annotations

import gzip
import json
import os
import subprocess
import sys

from click.testing import CliRunner

from auditpipe.cli import main

from conftest import shared_path

GOOD = [
    'type=SYSCALL msg=audit(1700000000.100:10): arch=c000003e syscall=59 success=yes exit=0 items=0 comm="true" exe="/usr/bin/true" key="k"',
    'type=EXECVE msg=audit(1700000000.100:10): argc=2 a0="true" a1=612062',
    "type=PROCTITLE msg=audit(1700000000.100:10): proctitle=7472756500612062",
    "type=USER_LOGIN msg=audit(1700000001.000:11): pid=1 uid=0 auid=0 ses=1 msg='op=login acct=\"root\" res=success'",
]


def run(args, input=None):
    return CliRunner().invoke(main, ["parse", *args], input=input, catch_exceptions=False)


def test_parse_file_to_output(tmp_path):
    src = tmp_path / "audit.log"
    src.write_text("\n".join(GOOD) + "\n")
    out = tmp_path / "out.jsonl"
    res = run([str(src), "-o", str(out)])
    assert res.exit_code == 0
    docs = [json.loads(line) for line in out.read_text().splitlines()]
    assert [d["id"] for d in docs] == ["1700000000.100:10", "1700000001.000:11"]
    assert docs[0]["execve"] == {"argc": 2, "argv": ["true", "a b"]}
    assert docs[0]["proctitle"] == ["true", "a b"]
    assert docs[0]["timestamp"] == "2023-11-14T22:13:20.100Z"
    assert [r["type"] for r in docs[0]["records"]] == ["SYSCALL", "EXECVE", "PROCTITLE"]
    assert docs[1]["records"][0]["fields"]["msg"] == {"op": "login", "acct": "root", "res": "success"}
    assert "4 records, 2 events, 0 partial, 0 rejects, 0 lost serials" in res.stderr


def test_rotated_set_in_order_gzip_and_stdin(tmp_path):
    a = tmp_path / "audit.log.1.gz"
    a.write_bytes(gzip.compress(("\n".join(GOOD[:2]) + "\n").encode()))
    b = tmp_path / "audit.log"
    b.write_text("\n".join(GOOD[2:]) + "\n")
    res = run([str(a), str(b)])
    docs = [json.loads(line) for line in res.stdout.splitlines()]
    assert len(docs) == 2 and len(docs[0]["records"]) == 3  # the event spans the two files
    res = run(["-"], input="\n".join(GOOD))
    assert len(res.stdout.splitlines()) == 2


def test_rejects_reported_kept_verbatim_and_strict(tmp_path):
    bad = ["garbage line", "type=SYSCALL msg=audit(oops): x=1", "\x00\x01binary"]
    src = tmp_path / "audit.log"
    src.write_text("\n".join([GOOD[0], bad[0], GOOD[2], bad[1], GOOD[3], bad[2]]) + "\n")
    rej = tmp_path / "rejects.log"
    res = run([str(src), "--rejects", str(rej), "-o", str(tmp_path / "o")])
    assert res.exit_code == 0
    assert f"{src}:2: rejected: missing type=" in res.stderr
    assert f"{src}:4: rejected: bad timestamp" in res.stderr
    assert rej.read_text().splitlines() == bad
    assert "3 rejects" in res.stderr
    assert len((tmp_path / "o").read_text().splitlines()) == 2  # the rest went through
    assert run([str(src), "--strict", "-o", os.devnull]).exit_code == 1


def test_non_utf8_bytes_round_trip_through_the_cli(tmp_path):
    name = b"/tmp/\xff\xfe caf\xc3\xa9"
    src = tmp_path / "audit.log"
    src.write_bytes(b"type=PATH msg=audit(1.000:1): item=0 name=" + name.hex().upper().encode() + b" nametype=NORMAL\n"
                    b"type=CWD msg=audit(1.000:1): cwd=\"/\xff\"\n")
    res = subprocess.run([sys.executable, "-m", "auditpipe", "parse", str(src)], capture_output=True, check=True)
    doc = json.loads(res.stdout)
    fields = [r["fields"] for r in doc["records"]]
    assert fields[0]["name"].encode("utf-8", "surrogateescape") == name
    assert fields[1]["cwd"].encode("utf-8", "surrogateescape") == b"/\xff"


def test_whole_bench_corpus_counts():
    path = shared_path("corpus", "bench.log.gz")
    res = subprocess.run([sys.executable, "-m", "auditpipe", "parse", str(path), "-o", os.devnull],
                         capture_output=True, text=True, check=True)
    assert "143115 records, 20649 events, 0 partial, 0 rejects, 0 lost serials, 0 late records" in res.stderr


def test_include_raw_makes_coalesced_byte_exact(tmp_path):
    path = b"type=PATH msg=audit(1700000000.100:10): name=\"/\xff\"\n"
    data = b"".join(line.encode() + b"\n" for line in GOOD[:2]) + path + GOOD[2].encode() + b"\n"
    src = tmp_path / "audit.log"
    src.write_bytes(data)
    res = subprocess.run([sys.executable, "-m", "auditpipe", "parse", str(src), "--include-raw"], capture_output=True, check=True)
    doc = json.loads(res.stdout)
    rebuilt = b"".join(r["raw"].encode("utf-8", "surrogateescape") + b"\n" for r in doc["records"])
    assert rebuilt == data
    assert "raw" not in json.loads(subprocess.run([sys.executable, "-m", "auditpipe", "parse", str(src)],
                                                  capture_output=True, check=True).stdout)["records"][0]


def test_truncated_and_multi_member_gzip_and_gzip_on_stdin(tmp_path):
    whole = ("\n".join(GOOD * 400) + "\n").encode()  # 1,600 lines
    full = gzip.compress(whole)
    cut = tmp_path / "audit.log.2.gz"
    cut.write_bytes(full[: len(full) * 2 // 3])
    res = subprocess.run([sys.executable, "-m", "auditpipe", "parse", str(cut), "-o", os.devnull],
                         capture_output=True, text=True)
    assert res.returncode == 1
    assert f"{cut}: read error after line" in res.stderr
    got = int(res.stderr.split(" records,")[0].rsplit(" ", 1)[1])
    assert 0 < got < 1600  # what could be decompressed was parsed; the damaged tail reported
    two = tmp_path / "two.gz"
    two.write_bytes(full + full)  # `cat a.gz b.gz`: two gzip members
    res = subprocess.run([sys.executable, "-m", "auditpipe", "parse", str(two), "-o", os.devnull],
                         capture_output=True, text=True, check=True)
    assert "3200 records" in res.stderr
    res = subprocess.run([sys.executable, "-m", "auditpipe", "parse", "-", "-o", os.devnull], input=full,
                         capture_output=True, check=True)
    assert b"1600 records" in res.stderr


def test_missing_file_and_directory_are_clear_errors(tmp_path):
    res = run([str(tmp_path / "nope.log")])
    assert res.exit_code == 2 and "does not exist" in res.output
    res = run([str(tmp_path)])
    assert res.exit_code == 2 and "is a directory" in res.output
