"""The rule compiler: auditctl semantics, every problem located, and ``auditctl -l`` text.

LISTING pairs a rule with the line real ``auditctl -l`` (audit 3.0.9, Linux 6.18) printed after
``auditctl`` loaded it; test_rules_kernel.py re-checks the table against the installed auditctl.
"""

from __future__ import annotations

import pytest

from auditpipe.kernel.rules import (RuleData, RuleErrors, compile_rules, expected_listing,
                                    format_rule, parse_rules, split_line)
from auditpipe.kernel.rules.syntax import c_number
from auditpipe.tables import SYSCALL_NUMBERS, K

USERS = {("user", "root"): 0, ("group", "root"): 0, ("user", "alice"): 1000}
WATCHDIR = "/tmp/auditpipe-test-watchdir"


def resolve(kind, name):
    return USERS.get((kind, name))


def compile1(line, **kw):
    kw.setdefault("machine", "x86_64")
    kw.setdefault("resolve", resolve)
    kw.setdefault("is_dir", lambda p: p == WATCHDIR)
    (item,) = compile_rules(line, "t.rules", **kw)
    return item


LISTING = [
    ("-a always,exit -F arch=b64 -S execve -F key=x", None),
    ("-w /etc/passwd -p wa -k identity", None),
    (f"-w {WATCHDIR}/ -k dirwatch", f"-w {WATCHDIR} -p rwxa -k dirwatch"),
    (f"-w {WATCHDIR} -p r", None),
    ("-a always,exit -F arch=b64 -S openat -F exe=/bin/ls -k k1",
     "-a always,exit -F arch=b64 -S openat -F exe=/bin/ls -F key=k1"),
    ("-a always,exit -F arch=b64 -S openat -F auid!=unset -F uid=root -F gid=root",
     "-a always,exit -F arch=b64 -S openat -F auid!=-1 -F uid=0 -F gid=0"),
    ("-a always,exit -F arch=b64 -S openat -F auid!=-1 -F auid>=1000", None),
    ("-a always,exit -F arch=b32 -S open -F exit=-EACCES -F a0=0x10 -F a1=-1",
     "-a always,exit -F arch=b32 -S open -F exit=-EACCES -F a0=0x10 -F a1=0xFFFFFFFF"),
    ("-a always,exit -F arch=b64 -S openat -F exit=5 -F exit=-9999 -F a2&=7 -F a3&8",
     "-a always,exit -F arch=b64 -S openat -F exit=5 -F exit=-9999 -F a2&=0x7 -F a3&0x8"),
    ("-a always,exit -F dir=/etc -F perm=wa", "-w /etc -p wa"),
    ("-a never,exit -F path=/etc/passwd -F perm=wa -F key=x", "-w /etc/passwd -p wa -k x"),
    ("-a always,exit -S all -F pid=12345 -F saddr_fam=2", None),
    ("-a never,task -F uid=1234", None),
    ("-a always,user -F uid=1234", None),
    ("-a always,exit -F arch=b64 -S openat -F filetype=file -F success=0 -F sessionid=5",
     "-a always,exit -F arch=b64 -S openat -F filetype=32768 -F success=0 -F sessionid=5"),
    ("-a always,exit -F arch=b64 -S openat -F obj_uid=1234 -C uid!=euid -F inode=123 "
     "-F devmajor=8 -F ppid=1", None),
    ("-a always,exit -F arch=b64 -S openat -F sessionid=unset -F loginuid=5 -F pers=1",
     "-a always,exit -F arch=b64 -S openat -F sessionid=-1 -F auid=5 -F pers=1"),
    ("-a always,exit -F arch=b64 -S openat -F key=a -F key=b -k c",
     "-a always,exit -F arch=b64 -S openat -F key=a -F key=b -F key=c"),
    ("-a always,exclude -F msgtype=CRYPTO_KEY_USER", None),
    ("-a always,exclude -F msgtype=1300", "-a always,exclude -F msgtype=SYSCALL"),
    ("-A always,exit -F arch=b64 -S execve -k pre",
     "-a always,exit -F arch=b64 -S execve -F key=pre"),
    ("-a always,exit -F arch=b64 -S execve -F exe!=/bin/ls",
     "-a always,exit -F arch=b64 -S execve -F exe=/bin/ls"),
    ("-a always,exit -S execve", None),
    ("-a always,exit -F arch=b64 -S execve -F uid=0x10 -F gid=010",
     "-a always,exit -F arch=b64 -S execve -F uid=16 -F gid=8"),
    ("-a always,exit -F arch=c000003e -S execve -F euid=5",
     "-a always,exit -F arch=b64 -S execve -F euid=5"),
    ("-a always,exit -F arch=i686 -S execve -F euid=6",
     "-a always,exit -F arch=b32 -S execve -F euid=6"),
    ("-a always,exit -F arch=x86_64 -S 335", "-a always,exit -F arch=b64 -S 335"),
    ("-a always,exclude -F uid=5 -F exe=/bin/ls", None),
    ("-a always,exit -F arch=b64 -S execve -F obj_gid=root -F fsgid=5 -C auid!=uid -C gid=egid",
     "-a always,exit -F arch=b64 -S execve -F obj_gid=0 -F fsgid=5 -C uid!=auid -C gid=egid"),
    ("-a always,exit -F arch=b64 -S all -F devminor=3 -F success!=1", None),
    ("-a always,exit -F arch=b64 -S openat -F subj_user=foo", None),
]


@pytest.mark.parametrize("line,expected", LISTING, ids=[x[0][:60] for x in LISTING])
def test_listing_matches_auditctl(line, expected):
    assert format_rule(compile1(line).data, "x86_64") == (expected or line)


def test_syscalls_resolve_per_arch():
    b64 = RuleData.from_bytes(compile1("-a always,exit -F arch=b64 -S execve").data)
    b32 = RuleData.from_bytes(compile1("-a always,exit -F arch=b32 -S execve").data)
    assert b64.syscalls() == [SYSCALL_NUMBERS["x86_64"]["execve"]]
    assert b32.syscalls() == [SYSCALL_NUMBERS["i386"]["execve"]]
    arm = RuleData.from_bytes(compile1("-a always,exit -F arch=b32 -S execve",
                                       machine="aarch64").data)
    assert arm.syscalls() == [SYSCALL_NUMBERS["armeb"]["execve"]]
    assert arm.fields[0].value == K.ARCH_ARM


def test_all_mask_is_the_kernel_form():
    r = RuleData.from_bytes(compile1("-a always,exit -S all").data)
    assert r.mask[:63] == [0xFFFFFFFF] * 63 and r.mask[63] == 0x0000FFFF
    assert RuleData.from_bytes(compile1("-a never,task -F uid=1").data).mask == [0] * 64


def test_keys_are_joined_and_appended_last():
    r = RuleData.from_bytes(compile1("-a always,exit -F arch=b64 -S open -k a -F uid=0 "
                                     "-F key=b -k c").data)
    assert [f.field for f in r.fields] == [K.ARCH, K.UID, K.FILTERKEY]
    assert r.fields[-1].text == b"a\x01b\x01c"


def test_mismatch_warning_without_arch():
    item = compile1("-a always,exit -S open")
    assert any("32/64 bit syscall mismatch" in w for w in item.warnings)
    assert compile1("-a always,exit -F arch=b64 -S open").warnings == ()


def test_control_lines():
    items = compile_rules("-D\n-b 8192\n-f 1\n-r 0x10\n--backlog_wait_time 60000\n"
                          "--loginuid-immutable\n-e 1\n-i\n-D -k mykey\n", "c.rules")
    got = [(i.line, i.control, i.value) for i in items]
    assert got == [(1, "delete_all", None), (2, "backlog_limit", 8192), (3, "failure", 1),
                   (4, "rate_limit", 16), (5, "backlog_wait_time", 60000),
                   (6, "loginuid_immutable", None), (7, "enabled", 1),
                   (8, "ignore_errors", None), (9, "delete_all", "mykey")]


BAD = """\
# comment line, then a good rule
-a always,exit -F arch=b64 -S execve -k ok
-a always,exit -S execve -F arch=b64
-a always,exit -k early -F arch=b64 -S execve
-a always,user -F exit=-EACCES
-a always,entry -F uid=5
-a always,exit -F uid=0 -k nokey
-a always,exit -F arch=b64 -S execve -F pid=12abc
-a always,exit -F arch=b64 -S nosuchcall -F uid=nosuchuser
-a always,exit -F loginuid_set=1
-w etc/passwd
-e 3
-a always,exit -F arch=b64 -S execve -F exit=-ENOTANERRNO
-F uid=0
-b 10 -a always,exit
-a always,task -S open
-a always,exit -C uid=pid
-w "/unterminated
-a always,exit -F arch=b64 -S execve trailing
-l
"""


def test_every_problem_is_reported_with_file_and_line():
    items, errors = parse_rules(BAD, "bad.rules", machine="x86_64", resolve=resolve)
    assert [i.line for i in items] == [2]
    got = [str(e) for e in errors]
    expect = [
        "bad.rules:3: -F arch must be given before -S",
        "bad.rules:4: -k needs a watch, syscall, exe or fstype given before it",
        "bad.rules:5: exit can only be used with the exit list",
        "bad.rules:6: the 'entry' list is deprecated; use exit",
        "bad.rules:7: -k needs a watch, syscall, exe or fstype given before it",
        "bad.rules:8: -F pid=12abc: not a (non-negative) number",
        "bad.rules:9: unknown syscall 'nosuchcall' for arch x86_64",
        "bad.rules:9: unknown user: nosuchuser",
        "bad.rules:10: -F unknown field: loginuid_set",
        "bad.rules:11: the watch path must start with '/': etc/passwd",
        "bad.rules:12: -e must be 0, 1 or 2, was '3'",
        "bad.rules:13: -F exit=-ENOTANERRNO: unknown errno name or number",
        "bad.rules:14: a list (-a, -A or -d) must be given before -F",
        "bad.rules:15: control options (-D -b -e -f -r -i -c --backlog_wait_time ...) cannot "
        "be mixed with a rule on one line",
        "bad.rules:16: syscalls cannot be used on the task list",
        "bad.rules:17: -C uid=pid: the kernel cannot compare uid with pid",
        "bad.rules:18: unterminated \" quote",
        "bad.rules:19: unexpected argument 'trailing' (not after an option)",
        "bad.rules:20: -l (list) is not supported in rules files",
    ]
    assert got == expect
    with pytest.raises(RuleErrors) as ei:
        compile_rules(BAD, "bad.rules", machine="x86_64", resolve=resolve)
    assert str(ei.value).splitlines() == expect


@pytest.mark.parametrize("line,message", [
    ("-a always,exit -F arch=b64 -S execve -F uid", "missing operator"),
    ("-a always,exit -F arch=b64 -S execve -F =3", "missing field name"),
    ("-a always,exit -F arch=b64 -S execve -F uid=", "missing value"),
    ("-a always,exit -F arch=b64 -S execve -F uid=99999999999", "does not fit in 32 bits"),
    ("-a always,exit -F arch=b64 -S execve -F gid=unset", "unknown group: unset"),
    ("-a always,exit -F arch=b64 -S 2040", "out of range"),
    ("-a always,exit -F arch=mips -S execve", "no syscall table for arch 0x8"),
    ("-a always,exit -F arch=nonsense", "unknown arch"),
    ("-a always,exit -F arch>b64", "only takes the = and != operators"),
    ("-a always,exclude -F arch=b64", "cannot be used on the exclude list"),
    ("-a always,filesystem -F uid=0", "cannot be used on the filesystem list"),
    ("-a always,exit -F msgtype=SYSCALL", "msgtype can only be used with the exclude or user"),
    ("-a always,exit -F path=/etc/", "must not end with '/'"),
    ("-a always,exit -F path=/a -F dir=/b", "only one path/dir"),
    ("-a always,exit -F perm=rq", "permission 'q' is not one of"),
    ("-w /etc -p rwxab", "too long"),
    ("-a always,exit -F arch=b64 -S open -k a\x01b", "key separator"),
    ("-a always,exit -F arch=b64 -S open -k " + "k" * 257, "keys exceed 256 bytes"),
    ("-a possible,exit", "deprecated"),
    ("-a always,exit,task", "expected LIST,ACTION"),
    ("-a always,exit -a always,exit", "only one -a"),
    ("-a always,exit -w /etc", "cannot be combined"),
    ("-a always,exit -F filetype=weird", "unknown file type"),
    ("-a always,exit -F a0=xyz", "not a number"),
    ("-R other.rules", "nested rule files"),
])
def test_problem_messages(line, message):
    _, errors = parse_rules(line, "x.rules", machine="x86_64", resolve=resolve)
    assert errors and message in errors[0].message, [str(e) for e in errors]
    assert errors[0].line == 1


def test_tokenizer_escapes_and_quotes():
    assert split_line(r"-w /a\ b -k x") == ["-w", "/a b", "-k", "x"]
    assert split_line(r"-k a\\b") == ["-k", "a\\b"]
    assert split_line("-w '/folder with space' -p wa") == ["-w", "/folder with space", "-p", "wa"]
    assert split_line('-w "/x y"\t-k  z') == ["-w", "/x y", "-k", "z"]
    assert split_line("-k ''") == ["-k", ""]


def test_c_numbers():
    assert [c_number(s) for s in ("0", "10", "010", "0x1F", "-5", "0X10")] == [0, 10, 8, 31, -5,
                                                                               16]
    assert [c_number(s) for s in ("", "08", "1e3", "12abc", "+1", "0x")] == [None] * 6


def test_resolver_and_unset():
    r = RuleData.from_bytes(compile1("-a always,exit -F arch=b64 -S open -F uid=alice "
                                     "-F auid=unset -F euid=-2").data)
    assert [f.value for f in r.fields[1:]] == [1000, 0xFFFFFFFF, 0xFFFFFFFE]


def test_io_uring_list_takes_operation_names_and_numbers():
    r = RuleData.from_bytes(compile1("-a always,io_uring -S 18,0 -k u").data)
    assert r.list == K.FILTER_URING_EXIT and r.syscalls() == [0, 18]
    (item,) = compile_rules("-a always,io_uring -S openat,openat2 -k u", machine="x86_64")
    assert item.rule.syscalls() == [18, 28]
    assert format_rule(item.data) == "-a always,io_uring -S openat,openat2 -F key=u"
    _, errors = parse_rules("-a always,io_uring -S execve", machine="x86_64")
    assert "unknown io_uring operation 'execve'" in errors[0].message


def test_fstype_by_name():
    (item,) = compile_rules("-a never,filesystem -F fstype=tracefs\n")
    assert item.rule.fields[0].value == 0x74726163
    assert format_rule(item.data) == "-a never,filesystem -F fstype=tracefs"
    (item,) = compile_rules("-a never,filesystem -F fstype=0x64626720")
    assert format_rule(item.data) == "-a never,filesystem -F fstype=debugfs"
    _, errors = parse_rules("-a never,filesystem -F fstype=nosuchfs")
    assert "unknown file system type" in errors[0].message


def test_delete_rules_and_watch_removal():
    (d,) = compile_rules("-d always,exit -F arch=b64 -S open", machine="x86_64")
    (w,) = compile_rules("-W /etc/passwd -p wa", is_dir=lambda p: False)
    assert (d.op, w.op) == ("delete", "delete")
    assert format_rule(w.data) == "-w /etc/passwd -p wa"


def test_expected_listing_follows_kernel_order():
    text = """\
-a always,exclude -F msgtype=CWD
-a always,exit -F arch=b64 -S open -k one
-w /etc/passwd -p wa -k two
-A always,exit -F arch=b64 -S close -k first
-a always,user -F uid=5
-d always,exit -F arch=b64 -S open -k one
-a never,task -F uid=3
"""
    items = compile_rules(text, machine="x86_64", is_dir=lambda p: False)
    assert expected_listing(items, "x86_64") == [
        "-a always,user -F uid=5",
        "-a never,task -F uid=3",
        "-a always,exit -F arch=b64 -S close -F key=first",
        "-w /etc/passwd -p wa -k two",
        "-a always,exclude -F msgtype=CWD",
    ]
    items = compile_rules(text + "-D\n-a always,user -F uid=9\n", machine="x86_64",
                          is_dir=lambda p: False)
    assert expected_listing(items, "x86_64") == ["-a always,user -F uid=9"]


def test_format_unknown_values():
    r = RuleData(K.FILTER_EXIT, K.ALWAYS)
    r.set_all_syscalls()
    from auditpipe.kernel.rules import Field
    r.fields = [Field(K.ARCH, K.EQUAL, 0x1234), Field(99, K.EQUAL, 7),
                Field(K.MSGTYPE, K.EQUAL, 4000), Field(K.EXIT, K.EQUAL, 0xFFFFF000)]
    assert format_rule(r, "x86_64") == ("-a always,exit -F arch=0x1234 -S all f99=7 "
                                        "-F msgtype=4000 -F exit=-4096")
