"""Panther normalizer on hand-built Record/Event stand-ins (no parser involved)."""

from __future__ import annotations

from datetime import UTC, datetime
from itertools import count
from types import SimpleNamespace

import pytest

from auditpipe.normalize.panther import format_panther_time, make_panther_normalizer

PARSE_TIME = 1700000000.5  # 2023-11-14 22:13:20.500 UTC


def rec(type_, fields, *, time="1615114232.375", serial=100, node=None, enriched=None):
    sec, msec = time.split(".")
    return SimpleNamespace(
        node=node, type=type_, type_num=0, time=time, sec=int(sec), msec=int(msec), serial=serial,
        fields=fields, enriched=enriched, raw="",
    )


def event(*records):
    first = records[0]
    return SimpleNamespace(
        node=first.node, time=first.time, sec=first.sec, msec=first.msec, serial=first.serial,
        records=list(records), partial=False, id=f"{first.time}:{first.serial}",
    )


def fake_sockaddr(hexstr):
    """Just enough of decode_sockaddr: AF_INET, AF_INET6 and AF_UNIX."""
    b = bytes.fromhex(hexstr)
    fam = int.from_bytes(b[:2], "little")
    if fam == 2:
        return {"family": "inet", "port": int.from_bytes(b[2:4], "big"), "addr": ".".join(map(str, b[4:8]))}
    if fam == 10:
        import ipaddress

        return {"family": "inet6", "port": int.from_bytes(b[2:4], "big"),
                "addr": str(ipaddress.IPv6Address(b[8:24]))}
    if fam == 1:
        return {"family": "local", "path": b[2:].split(b"\0", 1)[0].decode()}
    raise ValueError("unknown family")


@pytest.fixture
def normalize():
    ids = count(1)
    return make_panther_normalizer(
        now=lambda: PARSE_TIME, row_id=lambda: f"row-{next(ids)}", decode_sockaddr=fake_sockaddr
    )


def test_format_panther_time():
    assert format_panther_time(1615114232, 375) == "2021-03-07 10:50:32.375"
    assert format_panther_time(0, 5) == "1970-01-01 00:00:00.005"


def test_syscall_row(normalize):
    r = rec("SYSCALL", {"arch": "c000003e", "syscall": "59", "success": "yes", "exit": "0",
                        "uid": "1000", "auid": "1000", "comm": "ls", "argc_extra": "x"},
            enriched={"ARCH": "x86_64", "SYSCALL": "execve", "UID": "alice"})
    [row] = normalize(event(r))
    assert row == {
        "type": "SYSCALL",
        "arch": "c000003e", "syscall": "59", "success": "yes", "exit": "0",
        "uid": "1000", "auid": "1000", "comm": "ls",
        "timestamp": 1615114232.375,
        "eventId": "1615114232.375:100",
        "extra_message_fields": {"argc_extra": "x", "ARCH": "x86_64", "SYSCALL": "execve", "UID": "alice"},
        "p_log_type": "Linux.Auditd",
        "p_event_time": "2021-03-07 10:50:32.375",
        "p_parse_time": "2023-11-14 22:13:20.500",
        "p_row_id": "row-1",
        "p_any_actor_ids": ["1000"],
    }


def test_user_login_msg_fields(normalize):
    r = rec("USER_LOGIN", {
        "pid": "1113", "uid": "0", "auid": "4294967295", "ses": "4294967295",
        "msg": {"op": "login", "acct": "bob", "exe": "/usr/sbin/sshd", "hostname": "gw.example.net",
                "addr": "192.0.2.7", "terminal": "sshd", "res": "failed"},
    })
    [row] = normalize(event(r))
    # schema-named keys of msg='…' are columns, the others go to extra_message_fields
    assert row["acct"] == "bob" and row["exe"] == "/usr/sbin/sshd" and row["res"] == "failed"
    assert row["hostname"] == "gw.example.net" and row["addr"] == "192.0.2.7"
    assert row["extra_message_fields"] == {"op": "login"}
    assert "msg" not in row
    assert row["p_any_ip_addresses"] == ["192.0.2.7"]
    assert row["p_any_domain_names"] == ["gw.example.net"]
    assert row["p_any_actor_ids"] == ["0"]


def test_unset_values_are_not_indicators(normalize):
    r = rec("USER_AUTH", {"pid": "1", "uid": "4294967295",
                          "msg": {"op": "PAM:authentication", "hostname": "?", "addr": "?", "terminal": "?"}})
    [row] = normalize(event(r))
    assert row["addr"] == "?" and row["hostname"] == "?"  # kept as written …
    for k in ("p_any_ip_addresses", "p_any_domain_names", "p_any_actor_ids"):
        assert k not in row  # … but no indicators
    r = rec("USER_AUTH", {"uid": "", "msg": {"hostname": "", "addr": "0.0.0.0"}})
    [row] = normalize(event(r))
    assert not any(k.startswith("p_any_") for k in row)


def test_hostname_that_is_an_ip_is_an_ip_indicator(normalize):
    r = rec("USER_AUTH", {"uid": "0", "msg": {"hostname": "127.0.0.1", "addr": "127.0.0.1"}})
    [row] = normalize(event(r))
    assert row["p_any_ip_addresses"] == ["127.0.0.1"]  # deduplicated
    assert "p_any_domain_names" not in row


def test_sockaddr_indicators(normalize):
    v4 = rec("SOCKADDR", {"saddr": "020000357F0000010000000000000000"})
    v6 = rec("SOCKADDR", {"saddr": "0A000009000000002001" "0DB8000000000000000000000001" "00000000"})
    any4 = rec("SOCKADDR", {"saddr": "020008FB000000000000000000000000"})
    unix = rec("SOCKADDR", {"saddr": "01002F6465762F6C6F6700"})
    bad = rec("SOCKADDR", {"saddr": "FFFF"})
    rows = normalize(event(v4, v6, any4, unix, bad))
    assert [r.get("p_any_ip_addresses") for r in rows] == [["127.0.0.1"], ["2001:db8::1"], None, None, None]
    assert rows[0]["saddr"] == "020000357F0000010000000000000000"  # the column stays the hex


def test_one_row_per_record_shared_event_id(normalize):
    e = event(
        rec("SYSCALL", {"syscall": "2"}), rec("CWD", {"cwd": "/"}),
        rec("PATH", {"item": "0", "name": "/etc/x"}), rec("PROCTITLE", {"proctitle": "cat\0/etc/x"}),
    )
    rows = normalize(e)
    assert [r["type"] for r in rows] == ["SYSCALL", "CWD", "PATH", "PROCTITLE"]
    assert {r["eventId"] for r in rows} == {"1615114232.375:100"}
    assert len({r["p_row_id"] for r in rows}) == 4
    assert rows[2]["extra_message_fields"] == {"item": "0"}


def test_node_and_reserved_names_go_to_extra(normalize):
    r = rec("UNKNOWN[1334]", {"type": "x", "timestamp": "y", "eventId": "z", "p_row_id": "w", "pid": "1"},
            node="web-01.example.com")
    [row] = normalize(event(r))
    assert row["type"] == "UNKNOWN[1334]"
    assert row["timestamp"] == 1615114232.375
    assert row["p_row_id"] == "row-1"
    assert row["extra_message_fields"] == {"type": "x", "timestamp": "y", "eventId": "z", "p_row_id": "w",
                                           "node": "web-01.example.com"}
    assert "p_any_domain_names" not in row  # node is not the schema's hostname


def test_msg_that_is_text_and_collisions(normalize):
    r = rec("USER_CMD", {"uid": "0", "msg": "free text"})
    [row] = normalize(event(r))
    assert row["extra_message_fields"] == {"msg": "free text"}
    # a msg key that a body key already filled keeps the body's value as the column
    r = rec("USER_ACCT", {"uid": "0", "msg": {"uid": "5", "op": "x"}})
    [row] = normalize(event(r))
    assert row["uid"] == "0" and row["extra_message_fields"] == {"uid": "5", "op": "x"}


def test_timestamps_keep_milliseconds(normalize):
    for t, expect in (("1615114232.001", "1615114232.001"), ("1615114232.000", "1615114232.0"),
                      ("1795290411.928", "1795290411.928")):
        [row] = normalize(event(rec("EOE", {}, time=t)))
        assert repr(row["timestamp"]) == expect
        assert row["eventId"].startswith(t + ":")
        assert "extra_message_fields" not in row


@pytest.mark.parametrize("clock, expect", [
    (lambda: 1700000000, "2023-11-14 22:13:20.000"),
    (lambda: 1700000000.1234, "2023-11-14 22:13:20.123"),
    (lambda: datetime(2023, 11, 14, 22, 13, 20, 999999, tzinfo=UTC), "2023-11-14 22:13:20.999"),
])
def test_parse_time_clock_kinds(clock, expect):
    n = make_panther_normalizer(now=clock, row_id=lambda: "r", decode_sockaddr=fake_sockaddr)
    [row] = n(event(rec("EOE", {})))
    assert row["p_parse_time"] == expect

