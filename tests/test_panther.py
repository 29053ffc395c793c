"""`--format panther`: every row of every record checked against Panther's Linux.Auditd schema.

The validator is built from ../shared/schemas/linux-auditd.yml (read in place): the column names
and their types, the required columns, plus Panther's standard p_ fields. It runs over every row of
the two real corpora and of the conformance logs that parse; one row per record, none lost.
"""

from __future__ import annotations

import ipaddress
import json
import re
from collections import Counter
from itertools import count
from pathlib import Path

import pytest

yaml = pytest.importorskip("yaml")

from auditpipe.normalize.panther import format_panther_time, make_panther_normalizer

from auditpipe.parsing import ParseError, parse_line
from auditpipe.reassembly import Reassembler
from conftest import SHARED

SCHEMA = SHARED / "schemas" / "linux-auditd.yml"
CORPUS = SHARED / "corpus"
CONFORMANCE = SHARED / "conformance"

PARSE_TIME = 1700000000.25
PARSE_TIME_TEXT = "2023-11-14 22:13:20.250"

if not SCHEMA.exists():  # pragma: no cover - the shared material is part of the test set-up
    raise pytest.UsageError(f"shared material missing: {SCHEMA}")


# --------------------------------------------------------------------------------------------
# the validator


class RowValidator:
    """Checks a row against the Linux.Auditd schema (names, types, required) and the p_ fields."""

    P_TIME = re.compile(r"\A\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{3}\Z")  # YYYY-MM-DD HH:MM:SS.fff
    EVENT_ID = re.compile(r"\A\d+\.\d{3}:\d+\Z")
    P_ANY = ("p_any_ip_addresses", "p_any_domain_names", "p_any_actor_ids")

    def __init__(self, schema: dict):
        assert schema["schema"] == "Linux.Auditd"
        self.types = {f["name"]: f for f in schema["fields"]}
        self.required = {f["name"] for f in schema["fields"] if f.get("required")}
        self.log_type = schema["schema"]

    def errors(self, row: dict) -> list[str]:
        errs = []
        for name in self.required:
            if name not in row:
                errs.append(f"missing required {name}")
        for name, value in row.items():
            if name.startswith("p_"):
                errs += self._p_field(name, value)
                continue
            spec = self.types.get(name)
            if spec is None:
                errs.append(f"{name}: not a column of the schema")
                continue
            kind = spec["type"]
            if kind == "string":
                if not isinstance(value, str):
                    errs.append(f"{name}: string expected, got {type(value).__name__}")
            elif kind == "json":
                if not isinstance(value, dict) or not value:
                    errs.append(f"{name}: non-empty JSON object expected")
                elif not all(isinstance(k, str) and isinstance(v, str) for k, v in value.items()):
                    errs.append(f"{name}: map of strings expected: {value!r:.200}")
            elif kind == "timestamp":
                assert spec.get("timeFormats") == ["unix"], spec
                if isinstance(value, bool) or not isinstance(value, (int, float)):
                    errs.append(f"{name}: unix seconds (a number) expected, got {value!r}")
                elif round(value, 3) != value:
                    errs.append(f"{name}: more than millisecond precision: {value!r}")
            else:  # pragma: no cover
                errs.append(f"{name}: schema type {kind} unknown to the validator")
        if "eventId" in row and not self.EVENT_ID.match(row["eventId"]):
            errs.append(f"eventId: {row['eventId']!r} is not SEC.MSEC:SERIAL")
        for name in ("p_log_type", "p_event_time", "p_parse_time", "p_row_id"):
            if name not in row:
                errs.append(f"missing standard field {name}")
        ts = row.get("timestamp")
        if isinstance(ts, (int, float)) and "p_event_time" in row:
            sec, msec = divmod(round(ts * 1000), 1000)
            if format_panther_time(sec, msec) != row["p_event_time"]:
                errs.append("p_event_time is not timestamp")
        try:
            json.dumps(row)  # a row is JSON as it stands (lone surrogates leave as \udcXX)
        except (TypeError, ValueError) as e:
            errs.append(f"not JSON: {e}")
        return errs

    def _p_field(self, name, value) -> list[str]:
        if name == "p_log_type":
            return [] if value == self.log_type else [f"p_log_type {value!r}"]
        if name in ("p_event_time", "p_parse_time"):
            return [] if isinstance(value, str) and self.P_TIME.match(value) else [f"{name}: {value!r}"]
        if name == "p_row_id":
            return [] if isinstance(value, str) and value else [f"p_row_id {value!r}"]
        if name in self.P_ANY:
            if not isinstance(value, list) or not value:
                return [f"{name}: non-empty array expected (omitted when empty)"]
            if len(set(value)) != len(value):
                return [f"{name}: duplicates {value}"]
            errs = []
            for v in value:
                if not isinstance(v, str) or v.strip() in ("", "?", "(none)", "unset", "4294967295"):
                    errs.append(f"{name}: {v!r} is not an indicator")
                elif name == "p_any_ip_addresses":
                    try:
                        if ipaddress.ip_address(v).is_unspecified:
                            errs.append(f"{name}: unspecified address {v}")
                    except ValueError:
                        errs.append(f"{name}: {v!r} is not an IP address")
            return errs
        return [f"{name}: not a standard field this normalizer writes"]


@pytest.fixture(scope="module")
def validator():
    with SCHEMA.open() as f:
        return RowValidator(yaml.safe_load(f))


def test_validator_catches_bad_rows(validator):
    good = {
        "type": "SYSCALL", "pid": "1", "timestamp": 1.5, "eventId": "1.500:2",
        "p_log_type": "Linux.Auditd", "p_event_time": "1970-01-01 00:00:01.500",
        "p_parse_time": PARSE_TIME_TEXT, "p_row_id": "x",
    }
    assert validator.errors(good) == []
    for bad in (
        {"pid": 1}, {"timestamp": "1.5"}, {"nosuch": "x"}, {"extra_message_fields": {"a": 1}},
        {"p_event_time": "1970-01-01T00:00:01Z"}, {"p_any_ip_addresses": []},
        {"p_any_ip_addresses": ["example.com"]}, {"p_any_actor_ids": ["4294967295"]},
        {"eventId": "1.5:2"}, {"p_log_type": "Linux.Audit"},
    ):
        assert validator.errors({**good, **bad}), bad
    assert validator.errors({k: v for k, v in good.items() if k != "type"})


# --------------------------------------------------------------------------------------------
# running a log through parse → reassemble → panther


def normalizer():
    ids = count(1)
    return make_panther_normalizer(now=lambda: PARSE_TIME, row_id=lambda: f"r{next(ids)}")


def run(path: Path, *, allow_bad: bool):
    """(records as parsed, [(record, row)] in event order) for one log file."""
    normalize = normalizer()
    reasm = Reassembler()
    records, events = [], []
    with path.open(encoding="utf-8", errors="surrogateescape", newline="\n") as f:
        for line in f:
            line = line.rstrip("\n")
            if not line.strip():
                continue
            try:
                rec = parse_line(line)
            except ParseError:
                if allow_bad:
                    continue
                raise
            records.append(rec)
            events += reasm.feed(rec)
    events += reasm.flush()
    pairs = []
    for ev in events:
        rows = normalize(ev)
        assert len(rows) == len(ev.records), ev.id
        pairs += zip(ev.records, rows)
    return records, pairs


def check_log(path: Path, validator: RowValidator, *, allow_bad: bool = False) -> int:
    records, pairs = run(path, allow_bad=allow_bad)
    # one row per record, none lost, none invented
    assert len(pairs) == len(records), path
    assert Counter(id(r) for r, _ in pairs) == Counter(id(r) for r in records)
    row_ids = set()
    for rec, row in pairs:
        errs = validator.errors(row)
        assert not errs, (path.name, rec.raw[:300], errs)
        assert row["type"] == rec.type
        assert row["eventId"] == f"{rec.time}:{rec.serial}"
        assert row["timestamp"] == float(rec.time)
        assert row["p_parse_time"] == PARSE_TIME_TEXT
        row_ids.add(row["p_row_id"])
        assert_lossless(rec, row)
    assert len(row_ids) == len(pairs), "p_row_id not unique"
    return len(pairs)


def assert_lossless(rec, row):
    """Every body key, msg key and ENRICHED key of the record is in the row, by its own name."""
    extra = row.get("extra_message_fields", {})
    for k, v in rec.fields.items():
        if k == "msg" and isinstance(v, dict):
            for mk, mv in v.items():
                assert row.get(mk) == mv or extra.get(mk) == mv or mk in rec.fields, (rec.raw, mk)
        else:
            assert row.get(k) == v or extra.get(k) == v, (rec.raw, k)
    for k, v in (rec.enriched or {}).items():
        assert extra.get(k) == v or k in rec.fields, (rec.raw, k)
    if rec.node is not None:
        assert extra.get("node") == rec.node


@pytest.mark.parametrize("name", ["enriched.log", "raw-node.log"])
def test_corpus_every_row_valid(name, validator):
    path = CORPUS / name
    if not path.exists():
        pytest.skip(f"{path} not available")
    assert check_log(path, validator) == 5215


def conformance_logs():
    if not CONFORMANCE.exists():
        return []
    out = []
    for pattern in ("beats-auditbeat/*.log", "go-libaudit/auparse/testdata/*.log", "go-libaudit/testdata/*.log",
                    "audit-userspace/*.log", "laurel/*.txt", "linux-audit-parser/*.txt"):
        out += sorted(CONFORMANCE.glob(pattern))
    return out


@pytest.mark.parametrize("path", conformance_logs(), ids=lambda p: str(p.relative_to(CONFORMANCE)))
def test_conformance_every_row_valid(path, validator):
    check_log(path, validator, allow_bad=True)


# --------------------------------------------------------------------------------------------
# exact rows for a few hand-picked records (read from the corpora by their event id)


def event_rows(corpus: str, stamp: str) -> list[dict]:
    path = CORPUS / corpus
    if not path.exists():
        pytest.skip(f"{path} not available")
    reasm = Reassembler()
    events = []
    with path.open(encoding="utf-8", errors="surrogateescape", newline="\n") as f:
        for line in f:
            if f"audit({stamp})" in line:
                events += reasm.feed(parse_line(line.rstrip("\n")))
    events += reasm.flush()
    assert len(events) == 1, stamp
    return normalizer()(events[0])


def std(stamp: str, event_time: str, row_id: str) -> dict:
    return {
        "timestamp": float(stamp.split(":")[0]),
        "eventId": stamp,
        "p_log_type": "Linux.Auditd",
        "p_event_time": event_time,
        "p_parse_time": PARSE_TIME_TEXT,
        "p_row_id": row_id,
    }


def test_exact_user_login_with_msg():
    """msg='…' keys the schema names become columns; op and the ENRICHED part go to extra."""
    [row] = event_rows("enriched.log", "1795290415.286:34428")
    assert row == {
        "type": "USER_LOGIN",
        "pid": "1113", "uid": "0", "auid": "5000", "ses": "4",
        "acct": "corpususer", "exe": "/usr/sbin/sshd", "hostname": "?", "addr": "127.0.0.1",
        "terminal": "sshd", "res": "failed",
        "extra_message_fields": {"op": "login", "UID": "root", "AUID": "unknown(5000)"},
        **std("1795290415.286:34428", "2026-11-21 19:46:55.286", "r1"),
        "p_any_ip_addresses": ["127.0.0.1"],  # hostname=? is no domain name
        "p_any_actor_ids": ["0"],
    }


def test_exact_user_login_hex_acct():
    """A hex-encoded value inside msg='…' (sshd's unknown user) arrives decoded."""
    [row] = event_rows("enriched.log", "1795290416.222:34451")
    assert row["acct"] == "(invalid user)"
    assert row["res"] == "failed" and row["terminal"] == "sshd"
    assert row["p_any_ip_addresses"] == ["127.0.0.1"]


def test_exact_syscall_sockaddr_ipv4_node():
    """connect(2) to 127.0.0.1:9 on a node= log: SYSCALL, SOCKADDR, PROCTITLE rows."""
    node = {"extra_message_fields": {"node": "web-01.example.com"}}
    stamp, when = "1795290431.758:35179", "2026-11-21 19:47:11.758"
    syscall, sockaddr, proctitle = event_rows("raw-node.log", stamp)
    assert syscall == {
        "type": "SYSCALL",
        "arch": "c000003e", "syscall": "42", "success": "no", "exit": "-111",
        "a0": "3", "a1": "7fffd2067c30", "a2": "10", "a3": "7ff75dad5a08", "items": "0",
        "ppid": "1617", "pid": "1739", "auid": "5000", "uid": "0", "gid": "0", "euid": "0",
        "suid": "0", "fsuid": "0", "egid": "0", "sgid": "0", "fsgid": "0", "tty": "(none)",
        "ses": "6", "comm": "python3", "exe": "/usr/bin/python3.11", "key": "external-access",
        **node, **std(stamp, when, "r1"),
        "p_any_actor_ids": ["0"],
    }
    assert sockaddr == {
        "type": "SOCKADDR", "saddr": "020000097F0000010000000000000000",
        **node, **std(stamp, when, "r2"),
        "p_any_ip_addresses": ["127.0.0.1"],
    }
    assert proctitle == {
        "type": "PROCTITLE", "proctitle": "python3\x00-",  # decoded; NUL between arguments kept
        **node, **std(stamp, when, "r3"),
    }


def test_exact_sockaddr_ipv6():
    rows = event_rows("raw-node.log", "1795290431.758:35180")
    assert [r["type"] for r in rows] == ["SYSCALL", "SOCKADDR", "PROCTITLE"]
    assert rows[1]["saddr"] == "0A000009000000000000000000000000000000000000000100000000"
    assert rows[1]["p_any_ip_addresses"] == ["::1"]
    assert "p_any_ip_addresses" not in rows[0] and "p_any_ip_addresses" not in rows[2]


def test_exact_sockaddr_enriched_and_unspecified():
    """ENRICHED SADDR={…} goes to extra; a bind to :: (unspecified) is no indicator."""
    [row] = [r for r in event_rows("enriched.log", "1795290412.754:34382") if r["type"] == "SOCKADDR"]
    assert row["extra_message_fields"] == {"SADDR": "{ saddr_fam=inet6 laddr=:: lport=2299 }"}
    assert "p_any_ip_addresses" not in row


def test_exact_domain_name_from_hostname():
    path = CONFORMANCE / "beats-auditbeat" / "passwd.log"
    if not path.exists():
        pytest.skip(f"{path} not available")
    lines = [ln for ln in path.read_text(encoding="utf-8", errors="surrogateescape").split("\n")
             if "audit(1610988774.279:815)" in ln]
    reasm = Reassembler()
    events = [e for ln in lines for e in reasm.feed(parse_line(ln))] + reasm.flush()
    [row] = normalizer()(events[0])
    assert row["hostname"] == "ubuntu-bionic" and row["addr"] == "?"
    assert row["p_any_domain_names"] == ["ubuntu-bionic"]
    assert "p_any_ip_addresses" not in row
