"""Record parsing: headers, value forms, hex decoding, ENRICHED, nested msg, odd bodies."""

from __future__ import annotations

import json

import pytest

from auditpipe.normalize.jsonl import dumps_line
from auditpipe.parsing import (
    ParseError,
    Parser,
    decode_sockaddr,
    execve_argv,
    parse_header,
    parse_kernel,
    parse_line,
    proctitle_argv,
)
from conftest import shared_path


def test_header_with_node_and_enriched():
    line = (
        'node=work type=SYSCALL msg=audit(1615114232.375:15558): arch=c000003e syscall=59 success=yes '
        'exit=0 tty=pts1 ses=1 comm="whoami" exe="/usr/bin/whoami" key=(null)\x1dARCH=x86_64 '
        'SYSCALL=execve AUID="user" UID="root"\n'
    )
    r = parse_line(line)
    assert (r.node, r.type, r.type_num, r.time, r.sec, r.msec, r.serial) == (
        "work", "SYSCALL", 1300, "1615114232.375", 1615114232, 375, 15558)
    assert r.fields["comm"] == "whoami"
    assert r.fields["key"] == "(null)"
    assert r.fields["arch"] == "c000003e"
    assert r.enriched == {"ARCH": "x86_64", "SYSCALL": "execve", "AUID": "user", "UID": "root"}
    assert r.raw == line[:-1]


def test_unknown_type_number_gets_its_name_when_known():
    r = parse_line("type=UNKNOWN[1334] msg=audit(1626883065.201:216697): prog-id=45 op=UNLOAD")
    assert r.type_num == 1334
    assert r.type == "BPF"
    r = parse_line("type=UNKNOWN[1999] msg=audit(1626883065.201:216697): x=1")
    assert (r.type, r.type_num) == ("UNKNOWN[1999]", 1999)


def test_new_type_name_is_kept():
    r = parse_line("type=SOME_FUTURE_TYPE msg=audit(1.002:3): a=b")
    assert (r.type, r.type_num, r.fields) == ("SOME_FUTURE_TYPE", 0, {"a": "b"})


def test_nested_msg_with_quote_inside_double_quotes():
    r = parse_line(
        "type=USER_AUTH msg=audit(1670330949.860:161339): pid=5519 uid=0 auid=4294967295 ses=4294967295 "
        "msg='op=PAM:authentication grantors=? acct=\"system-property('xsl:vendor')/>\" exe=\"/usr/bin/python3.8\" "
        "hostname=? addr=? terminal=? res=failed'\x1dUID=\"root\" AUID=\"unset\""
    )
    assert r.fields["pid"] == "5519"
    m = r.fields["msg"]
    assert m["acct"] == "system-property('xsl:vendor')/>"
    assert m["op"] == "PAM:authentication"
    assert m["res"] == "failed"
    assert m["hostname"] == "?"
    assert r.enriched == {"UID": "root", "AUID": "unset"}


def test_hex_encoded_values_decoded_only_for_encoded_fields():
    r = parse_line(
        'type=USER_CMD msg=audit(1795290418.222:34544): pid=1148 uid=1001 auid=5000 ses=4 '
        "msg='cwd=\"/srv/x\" cmd=636174202F6574632F736861646F77 exe=\"/usr/bin/sudo\" terminal=? res=failed'"
    )
    assert r.fields["msg"]["cmd"] == "cat /etc/shadow"
    assert r.fields["uid"] == "1001"  # numbers are never hex-decoded


def test_avc_perms_and_result():
    r = parse_line(
        "type=AVC msg=audit(1631798689.083:65686): avc:  denied  { setuid } for  pid=15381 comm=\"laurel\" "
        "capability=7  scontext=system_u:system_r:auditd_t:s0 tcontext=system_u:system_r:auditd_t:s0 "
        "tclass=capability permissive=1"
    )
    assert r.fields["seresult"] == "denied"
    assert r.fields["seperms"] == "setuid"
    assert r.fields["tclass"] == "capability"
    assert r.fields["comm"] == "laurel"


def test_apparmor_subject_with_mode_in_parentheses():
    r = parse_line(
        "type=SYSCALL msg=audit(1634623555.431:13835339): arch=c000003e syscall=49 subj==/usr/sbin/ntpd (enforce) key=(null)"
    )
    assert r.fields["subj"] == "=/usr/sbin/ntpd (enforce)"
    assert r.fields["key"] == "(null)"


def test_login_old_and_new_fields_and_words_kept():
    r = parse_line("type=LOGIN msg=audit(1795290411.938:33986): pid=925 uid=0 old-auid=4294967295 auid=5000 "
                   "tty=(none) old-ses=4294967295 ses=4 res=1")
    assert r.fields["old-auid"] == "4294967295" and r.fields["auid"] == "5000" and r.fields["ses"] == "4"
    r = parse_line("type=MAC_POLICY_LOAD msg=audit(1670142818.140:74058301): policy loaded auid=4294967295 ses=4294967295")
    assert r.fields["text"] == "policy loaded"


def test_repeated_keys_are_kept():
    r = parse_line("type=DAEMON_END msg=audit(1.000:2): op=terminate pid=1 subj=x pid=2")
    assert r.fields["pid"] == "1" and r.fields["pid#2"] == "2"


def test_eoe_has_no_body():
    r = parse_line("type=EOE msg=audit(1615225617.302:25836):")
    assert r.type == "EOE" and r.fields == {}


@pytest.mark.parametrize("line", [
    "", "garbage", "type=SYSCALL", "type=SYSCALL msg=audit(abc:1): x=1", "node=x",
    "type=SYSCALL msg=audit(1.2:3", "msg=audit(1.000:1): a=b", "type= msg=audit(1.000:1): a=b",
    "type=SYS CALL msg=audit(1.000:1): a=b",
])
def test_bad_lines_raise_parse_error(line):
    with pytest.raises(ParseError):
        parse_line(line)


def test_non_utf8_round_trips_through_json():
    raw_name = b"caf\xe9 \xff\x00"
    line = "type=PATH msg=audit(1.000:7): item=0 name=" + raw_name.hex().upper() + " nametype=NORMAL"
    r = parse_line(line)
    assert r.fields["name"].encode("utf-8", "surrogateescape") == raw_name
    back = json.loads(dumps_line({"v": r.fields["name"]}))["v"]
    assert back.encode("utf-8", "surrogateescape") == raw_name
    # valid UTF-8 stays as it is, unescaped
    assert dumps_line({"v": "é"}) == '{"v":"é"}\n'.encode()


def test_odd_length_hex_is_kept_verbatim():
    r = parse_line("type=PATH msg=audit(1.000:7): item=0 name=ABC nametype=NORMAL")
    assert r.fields["name"] == "ABC"


def test_proctitle_nul_separated():
    r = parse_line("type=PROCTITLE msg=audit(1.000:1): proctitle=617564697464002D6300636F6E66")
    assert proctitle_argv(r.fields["proctitle"]) == ["auditd", "-c", "conf"]
    r = parse_line('type=PROCTITLE msg=audit(1.000:1): proctitle="whoami"')
    assert proctitle_argv(r.fields["proctitle"]) == ["whoami"]


def test_execve_segmented_argument_across_records_with_split_utf8():
    arg = "é" * 5  # 10 bytes, split in the middle of a character
    b = arg.encode()
    recs = [
        parse_line(f'type=EXECVE msg=audit(1.000:1): argc=3 a0="ls" a1_len={len(b)} a1[0]={b[:5].hex().upper()}'),
        parse_line(f'type=EXECVE msg=audit(1.000:1): a1[1]={b[5:].hex().upper()} a2="x y"'),
    ]
    assert execve_argv(recs) == (3, ["ls", arg, "x y"])


def test_execve_hex_argument():
    r = parse_line("type=EXECVE msg=audit(1.000:1): argc=2 a0=\"echo\" a1=6120620963")
    assert execve_argv([r]) == (2, ["echo", "a b\tc"])


@pytest.mark.parametrize("hexstr,expected", [
    ("02000050A9FEA9FE0000000000000000", {"family": "inet", "addr": "169.254.169.254", "port": 80}),
    ("0A000016000000000000000000000000000000000000000100000000",
     {"family": "inet6", "addr": "::1", "port": 22}),
    ("01002F746D702F736F636B00", {"family": "unix", "path": "/tmp/sock"}),
    ("0100006162630000", {"family": "unix", "path": "@abc", "abstract": True}),
    ("100000000000000000000000", {"family": "netlink", "pid": 0, "groups": 0}),
    ("00000000000000000000000000000000", {"family": "unknown", "family_num": 0}),
    ("ZZ", {"family": "invalid"}),
])
def test_sockaddr(hexstr, expected):
    assert decode_sockaddr(hexstr) == expected


def test_kernel_message():
    r = parse_kernel(1300, b"audit(1700000000.123:42): arch=c000003e syscall=59 comm=\"true\"\0")
    assert (r.type, r.time, r.serial, r.fields["comm"]) == ("SYSCALL", "1700000000.123", 42, "true")
    assert r.raw.startswith("type=SYSCALL msg=audit(1700000000.123:42): ")
    with pytest.raises(ParseError):
        parse_kernel(1300, b"nonsense")


def test_linux_audit_parser_oddities_all_parse():
    folder = shared_path("conformance", "linux-audit-parser")
    n = 0
    for f in sorted(folder.glob("*.txt")):
        for line in f.read_bytes().decode("utf-8", "surrogateescape").split("\n"):
            if not line:
                continue
            r = parse_line(line)
            assert r.type and r.serial > 0, f
            n += 1
    assert n >= 56


def test_enriched_sockaddr_and_unknown_family():
    r = parse_line("type=SOCKADDR msg=audit(1703653288.035:118019478): saddr=01002F746D70\x1dSADDR={ fam=local path=/tmp/{x} }")
    assert r.enriched == {"SADDR": "{ fam=local path=/tmp/{x} }"}
    r = parse_line("type=SOCKADDR msg=audit(1709205350.768:2195413): saddr=0000\x1dSADDR=unknown family(0)")
    assert r.enriched == {"SADDR": "unknown family(0)"}


def test_unicode_digits_are_not_numbers():
    # "²" is a digit to str.isdigit() but not to int(): such a header is a reject, not a crash
    with pytest.raises(ParseError):
        parse_kernel(1300, "audit(1².000:1): a=b".encode())
    r = parse_line('type=EXECVE msg=audit(1.000:1): argc=²  a0="x"')
    assert execve_argv([r]) == (None, ["x"])


def test_long_and_huge_lines():
    long_value = "x" * 20000  # over the kernel's 8,970-byte message limit: still a record
    r = parse_line(f'type=USER_CMD msg=audit(1.000:1): pid=1 cmd="{long_value}"')
    assert r.fields["cmd"] == long_value
    with pytest.raises(ParseError, match="too long"):
        parse_line("type=USER_CMD msg=audit(1.000:1): cmd=" + "x" * (1 << 20))


def test_legacy_login_old_new_words():
    r = parse_line("type=LOGIN msg=audit(1234877011.799:7734): login pid=26125 uid=0 old auid=4294967295 "
                   "new auid=0 old ses=4294967295 new ses=1172")
    assert r.fields == {"pid": "26125", "uid": "0", "old-auid": "4294967295", "auid": "0",
                        "old-ses": "4294967295", "ses": "1172", "text": "login"}
    # today's form is unchanged
    r = parse_line("type=LOGIN msg=audit(1.000:2): pid=1 uid=0 old-auid=4294967295 auid=5000 tty=(none) old-ses=4294967295 ses=4 res=1")
    assert (r.fields["old-auid"], r.fields["auid"], r.fields["old-ses"], r.fields["ses"]) == ("4294967295", "5000", "4294967295", "4")


def test_crlf_line_parses_without_the_cr_and_keeps_it_in_raw():
    r = parse_line('type=CWD msg=audit(1.000:1): cwd="/tmp"\r\n')
    assert r.fields == {"cwd": "/tmp"}
    assert r.raw == 'type=CWD msg=audit(1.000:1): cwd="/tmp"\r'


def test_parse_header_reads_what_parse_line_reads_and_refuses_what_it_refuses():
    """The header-only parse (``parse --jobs``' shadow pass) keeps exactly the lines the full
    parse keeps, with the same header, on both corpora and on lines that are not records."""
    lines = [line for name in ("enriched.log", "raw-node.log")
             for line in shared_path("corpus", name).read_text("utf-8", "surrogateescape").splitlines()]
    lines += ["", "junk", "type=SYSCALL msg=audit(1.2:3)", "node= type=X msg=audit(1.2:3): a=1\r",
              "type=bad! msg=audit(1.2:3): a=1", "type=SYSCALL msg=audit(1.2:x): a=1",
              "type=UNKNOWN[1400] msg=audit(1.2:3):"]
    memo, header_memo = Parser(), Parser()
    kept = 0
    for line in lines:
        try:
            full = parse_line(line, memo)
        except ParseError:
            with pytest.raises(ParseError):
                parse_header(line, header_memo)
            continue
        head = parse_header(line, header_memo)
        kept += 1
        assert (head.node, head.type, head.type_num, head.time, head.sec, head.msec, head.serial) == \
            (full.node, full.type, full.type_num, full.time, full.sec, full.msec, full.serial)
        assert head.fields == {}
    assert kept > 5000
