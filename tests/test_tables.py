"""auditpipe.tables: spot checks against known facts, and the generator reproduces the module."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from auditpipe import tables as t
from conftest import shared_path

from conftest import SHARED

ROOT = Path(__file__).resolve().parent.parent
GENERATED = ROOT / "src" / "auditpipe" / "tables" / "generated.py"
SCRIPT = ROOT / "scripts" / "gen_tables.py"


# ---- record types ---------------------------------------------------------------------------

@pytest.mark.parametrize("name,num", [
    ("SYSCALL", 1300), ("PATH", 1302), ("CWD", 1307), ("EXECVE", 1309), ("EOE", 1320),
    ("PROCTITLE", 1327), ("SOCKADDR", 1306), ("USER_LOGIN", 1112), ("USER_AUTH", 1100),
    ("DAEMON_START", 1200), ("ANOM_ABEND", 1701), ("AVC", 1400), ("APPARMOR", 1500),
    ("KERNEL", 2000), ("VIRT_CONTROL", 2500), ("GET", 1000),
])
def test_record_type_numbers(name, num):
    assert t.RECORD_TYPE_NUMBERS[name] == num
    assert t.record_type_number(name) == num


def test_record_type_names_roundtrip():
    for num, name in t.RECORD_TYPE_NAMES.items():
        assert t.RECORD_TYPE_NUMBERS[name] == num
    assert t.record_type_name(1300) == "SYSCALL"
    assert t.record_type_name(1500) == "APPARMOR"      # libaudit's name, not the header's AA
    assert t.RECORD_TYPE_NUMBERS["AA"] == 1500
    assert t.record_type_name(1099) == "UNKNOWN[1099]"
    assert t.record_type_number("UNKNOWN[1334]") == 1334
    assert t.record_type_number("NOPE") is None


def test_record_types_are_only_message_types():
    # range markers and non-message constants must not leak in
    for name in t.RECORD_TYPE_NUMBERS:
        assert "FIRST" not in name and "LAST" not in name, name
    assert all(1000 <= n <= 2999 for n in t.RECORD_TYPE_NAMES)


def test_every_corpus_record_type_has_a_number():
    corpus = shared_path("corpus", "enriched.log")
    seen = set()
    with corpus.open(encoding="utf-8", errors="surrogateescape") as f:
        for line in f:
            m = re.match(r"(?:node=\S+ )?type=(\S+) ", line)
            assert m, line[:100]
            seen.add(m.group(1))
    assert len(seen) > 10
    missing = sorted(n for n in seen if n not in t.RECORD_TYPE_NUMBERS)
    assert not missing


def test_ranges():
    assert t.AUDIT_FIRST_USER_MSG == 1100 and t.AUDIT_LAST_USER_MSG == 1199
    assert t.AUDIT_FIRST_USER_MSG2 == 2100 and t.AUDIT_LAST_USER_MSG2 == 2999
    assert t.AUDIT_FIRST_DAEMON == 1200 and t.AUDIT_LAST_DAEMON == 1299
    assert t.AUDIT_FIRST_EVENT == 1300 and t.AUDIT_LAST_EVENT == 1399
    assert t.AUDIT_FIRST_ANOM_MSG == 2100 and t.AUDIT_FIRST_KERN_ANOM_MSG == 1700


# ---- arches and syscalls --------------------------------------------------------------------

@pytest.mark.parametrize("num,name", [
    (0xC000003E, "x86_64"), (0x40000003, "i386"), (0xC00000B7, "aarch64"),
    (0x40000028, "armeb"),  # libaudit/ausyscall/auparse call 32-bit little-endian ARM "armeb"
    (0xC0000015, "ppc64le"), (0x80000015, "ppc64"), (0x14, "ppc"), (0x80000016, "s390x"),
    (0x16, "s390"),
])
def test_arch_names(num, name):
    assert t.ARCH_NAMES[num] == name
    assert t.arch_name(num) == name
    assert t.arch_name(f"{num:x}") == name
    assert t.ARCH_NUMBERS[name] == num


def test_arch_aliases_and_unknown():
    assert t.ARCH_NUMBERS["arm"] == 0x40000028
    assert t.arch_number("X86_64") == 0xC000003E
    assert t.arch_name(0x12345) is None
    assert t.arch_name("zz") is None


@pytest.mark.parametrize("arch,num,name", [
    ("x86_64", 59, "execve"), ("x86_64", 0, "read"), ("x86_64", 322, "execveat"),
    ("i386", 11, "execve"), ("aarch64", 221, "execve"), ("armeb", 11, "execve"),
    ("ppc64le", 11, "execve"), ("s390x", 11, "execve"),
])
def test_syscalls(arch, num, name):
    assert t.SYSCALLS[arch][num] == name
    assert t.SYSCALL_NUMBERS[arch][name] == num
    assert t.syscall_name(arch, num) == name
    assert t.syscall_name(t.ARCH_NUMBERS[arch], num) == name
    assert t.syscall_number(arch, name) == num


def test_syscall_lookup_variants():
    assert t.syscall_name("c000003e", "59") == "execve"      # as written in SYSCALL records
    assert t.syscall_name("arm", 11) == "execve"             # header name for armeb
    assert t.syscall_name("x86_64", 100000) is None
    assert t.syscall_name("riscv64", 221) == "execve"        # from libaudit's riscv64_table.h
    assert t.syscall_name("no-such-arch", 1) is None
    assert t.syscall_name("x86_64", "x") is None


def test_syscall_tables_are_distinct():
    # ausyscall silently falls back to x86_64 for unknown arches: never store that as another arch
    for arch in ("i386", "aarch64", "armeb", "s390x"):
        assert t.SYSCALLS[arch] != t.SYSCALLS["x86_64"]


@pytest.mark.parametrize("arch,name,num", [
    # newer than Debian 12's ausyscall 3.0.9: taken from libaudit's current tables
    ("x86_64", "lsm_set_self_attr", 460), ("x86_64", "file_setattr", 469),
    ("aarch64", "lsm_set_self_attr", 460), ("i386", "file_setattr", 469),
])
def test_newest_syscalls(arch, name, num):
    assert t.syscall_number(arch, name) == num
    assert t.TABLE_SOURCES[f"syscalls {arch}"].startswith("audit-userspace ")


def test_rule_vocabulary_tables():
    assert t.FSTYPES["debugfs"] == 0x64626720 and t.FSTYPES["tracefs"] == 0x74726163
    assert t.URING_OPS[18] == "openat" and t.URING_OPS[28] == "openat2"
    fields = dict(t.RULE_FIELDS)
    assert fields["auid"] == fields["loginuid"] == t.K.LOGINUID
    assert [n for n, v in t.RULE_FIELDS if v == t.K.LOGINUID][0] == "auid"  # auditctl -l prints auid
    assert t.MACHINES["i686"] == "i386" and t.MACHINES["armv7l"] == "armeb"
    assert t.MACHINES["armv8l"] == "aarch64" and t.MACHINES["riscv64"] == "riscv64"
    assert "uring" not in t.MACHINES


def test_record_types_newer_than_the_headers_names():
    # DM_CTRL/DM_EVENT: in linux/audit.h, named only by libaudit newer than Debian 12's 3.0.9
    assert t.record_type_name(1338) == "DM_CTRL"
    assert t.record_type_name(1339) == "DM_EVENT"
    assert t.TABLE_SOURCES["record type names"].endswith("lib/msg_typetab.h")


# ---- errno, signals, capabilities -----------------------------------------------------------

def test_errno():
    assert t.ERRNO_NAMES[13] == "EACCES"
    assert t.ERRNO_NAMES[1] == "EPERM"
    assert t.ERRNO_NAMES[2] == "ENOENT"
    assert t.ERRNO_NAMES[11] == "EAGAIN"            # not EWOULDBLOCK: first name wins
    assert t.ERRNO_NAMES[35] == "EDEADLK"           # not EDEADLOCK
    assert t.ERRNO_NUMBERS["EWOULDBLOCK"] == 11
    assert t.ERRNO_NUMBERS["ENOSYS"] == 38
    assert t.errno_name(-13) == "EACCES"


def test_signals_and_caps():
    assert t.SIGNAL_NAMES[9] == "SIGKILL"
    assert t.SIGNAL_NAMES[6] == "SIGABRT"
    assert t.SIGNAL_NAMES[11] == "SIGSEGV"
    assert t.SIGNAL_NUMBERS["SIGIOT"] == 6
    assert max(t.SIGNAL_NAMES) == 31
    assert t.CAPABILITIES[0] == "CAP_CHOWN"
    assert t.CAPABILITIES[21] == "CAP_SYS_ADMIN"
    assert "CAP_LAST_CAP" not in t.CAPABILITIES.values()


# ---- field types ----------------------------------------------------------------------------

def test_encoded_fields():
    for name in ("proctitle", "comm", "exe", "name", "path", "cwd", "acct", "cmd", "key",
                 "data", "root_dir", "sw", "vm", "ocomm", "new-disk"):
        assert name in t.ENCODED_FIELDS, name
    for name in ("uid", "pid", "syscall", "arch", "saddr", "success", "exit", "a0", "res"):
        assert name not in t.ENCODED_FIELDS, name


def test_field_types():
    assert t.FIELD_TYPES["uid"] == "uid"
    assert t.FIELD_TYPES["auid"] == "uid"
    assert t.FIELD_TYPES["gid"] == "gid"
    assert t.FIELD_TYPES["saddr"] == "sockaddr"
    assert t.FIELD_TYPES["syscall"] == "syscall"
    assert t.FIELD_TYPES["arch"] == "arch"
    assert t.FIELD_TYPES["exit"] == "exit"
    assert t.FIELD_TYPES["mode"] == "mode"
    assert t.FIELD_TYPES["sig"] == "signal"
    assert t.FIELD_TYPES["proctitle"] == "proctitle"
    assert t.FIELD_TYPES["name"] == "escaped_file"
    assert t.FIELD_TYPES["key"] == "escaped_key"
    assert t.FIELD_TYPES["capability"] == "capability"
    assert t.FIELD_TYPES["res"] == "success"
    assert "pid" not in t.FIELD_TYPES                  # unclassified fields are absent


def test_field_type_adjustments():
    assert t.is_encoded("a1", "EXECVE")
    assert t.is_encoded("a12[3]", "EXECVE")
    assert not t.is_encoded("argc", "EXECVE")
    assert not t.is_encoded("a1_len", "EXECVE")
    assert not t.is_encoded("a1", "SYSCALL")
    assert t.is_encoded("msg", "USER_TTY")
    assert t.is_encoded("proctitle", "PROCTITLE")
    assert t.is_encoded("name", "PATH")
    assert t.is_encoded("comm")
    assert t.field_type("saddr", "AVC") is None
    assert t.field_type("saddr", "SOCKADDR") == "sockaddr"


# ---- rule compiler / netlink constants -----------------------------------------------------

def test_constants():
    K = t.K
    assert (K.PID, K.UID, K.EUID, K.LOGINUID, K.ARCH, K.MSGTYPE) == (0, 1, 2, 9, 11, 12)
    assert (K.EXIT, K.SUCCESS, K.PERM, K.FILETYPE, K.FIELD_COMPARE, K.EXE, K.SADDR_FAM) == (
        103, 104, 106, 108, 111, 112, 113)
    assert (K.ARG0, K.ARG3, K.FILTERKEY) == (200, 203, 210)
    assert (K.FILTER_USER, K.FILTER_TASK, K.FILTER_ENTRY, K.FILTER_WATCH, K.FILTER_EXIT,
            K.FILTER_EXCLUDE, K.FILTER_FS) == (0, 1, 2, 3, 4, 5, 6)
    assert K.FILTER_TYPE == K.FILTER_EXCLUDE
    assert (K.NEVER, K.POSSIBLE, K.ALWAYS) == (0, 1, 2)
    assert K.EQUAL == 0x40000000 and K.NOT_EQUAL == 0x30000000
    assert K.BIT_MASK == 0x08000000 and K.BIT_TEST == 0x48000000
    assert K.LESS_THAN == 0x10000000 and K.GREATER_THAN_OR_EQUAL == 0x60000000
    assert K.LESS_THAN_OR_EQUAL == 0x50000000 and K.OPERATORS == 0x78000000
    assert K.NEGATE == 0x80000000
    assert (K.PERM_EXEC, K.PERM_WRITE, K.PERM_READ, K.PERM_ATTR) == (1, 2, 4, 8)
    assert (K.BITMASK_SIZE, K.MAX_FIELDS, K.MAX_KEY_LEN) == (64, 64, 256)
    assert (K.GET, K.SET, K.LIST_RULES, K.ADD_RULE, K.DEL_RULE, K.GET_FEATURE) == (
        1000, 1001, 1013, 1011, 1012, 1019)
    assert K.STATUS_ENABLED == 1 and K.STATUS_PID == 4 and K.STATUS_BACKLOG_LIMIT == 0x10
    assert (K.FAIL_SILENT, K.FAIL_PRINTK, K.FAIL_PANIC) == (0, 1, 2)
    assert K.NLGRP_READLOG == 1
    assert K.COMPARE_UID_TO_OBJ_UID == 1 and K.COMPARE_SGID_TO_FSGID == 25
    assert K.ARCH_X86_64 == 0xC000003E and K.ARCH_64BIT == 0x80000000
    assert K.UID_UNSET == 0xFFFFFFFF
    assert K.FEATURE_BITMAP_ALL == 0x7F
    assert K.INTERP_SEPARATOR == 0x1D
    assert t.AUDIT_CONSTANTS["AUDIT_FILTER_EXIT"] == 4
    assert t.AUDIT_CONSTANTS["__AUDIT_ARCH_LE"] == 0x40000000
    for short, value in vars(K).items():
        assert t.AUDIT_CONSTANTS[t.K_NAMES[short]] == value


# ---- the generator --------------------------------------------------------------------------

def _sources_missing() -> str | None:
    for header in ("/usr/include/linux/audit.h", "/usr/include/libaudit.h",
                   "/usr/include/asm-generic/errno.h", "/usr/include/linux/capability.h"):
        if not os.path.exists(header):
            return f"{header} missing (linux-libc-dev / libaudit-dev)"
    if not shutil.which("ausyscall"):
        return "ausyscall missing (auditd)"
    return None


def test_generator_reproduces_committed_module(tmp_path):
    """Same sources (files, package versions) => byte-identical module."""
    reason = _sources_missing()
    if reason:
        pytest.skip(reason)
    out = tmp_path / "generated.py"
    r = subprocess.run([sys.executable, str(SCRIPT), "-o", str(out)], capture_output=True,
                       text=True, cwd=ROOT, env={**os.environ, "AUDITPIPE_SHARED": str(SHARED)})
    assert r.returncode == 0, r.stderr
    if out.read_bytes() == GENERATED.read_bytes():
        return
    import difflib
    import runpy

    committed = runpy.run_path(str(GENERATED))["PACKAGE_SOURCES"]
    fresh = runpy.run_path(str(out))["PACKAGE_SOURCES"]
    if committed != fresh:
        pytest.skip("this machine's sources differ from the ones the committed module was made "
                    "from (other package versions, no python3-audit/libauparse-dev, or no "
                    "audit source: see scripts/gen_tables.py --fetch-audit-source):\n"
                    + "\n".join(difflib.unified_diff(committed, fresh, lineterm="")))
    diff = "".join(list(difflib.unified_diff(
        GENERATED.read_text().splitlines(True), out.read_text().splitlines(True),
        "committed", "regenerated"))[:60])
    pytest.fail("generated.py differs from a fresh run of scripts/gen_tables.py with the same "
                "sources (hand edit? nondeterminism?):\n" + diff)


def test_generator_without_the_tables_tree_says_so(tmp_path):
    """Only installed sources: the header names them as the winners and notes the missing tree."""
    reason = _sources_missing()
    if reason:
        pytest.skip(reason)
    out = tmp_path / "generated.py"
    env = {**os.environ, "AUDITPIPE_SHARED": str(tmp_path / "no-shared")}
    r = subprocess.run([sys.executable, str(SCRIPT), "-o", str(out)], capture_output=True,
                       text=True, cwd=ROOT, env=env)
    assert r.returncode == 0, r.stderr
    head = out.read_text().split('"""', 1)[0]
    assert "no audit-userspace tables tree" in head
    assert "syscalls x86_64: ausyscall --dump" in head.replace("#       ", "").replace("\n", " ")
    r = subprocess.run([sys.executable, str(SCRIPT), "-o", str(out), "--tables-src",
                        str(tmp_path)], capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 2 and "x86_64_table.h not found" in r.stderr


def test_generated_module_header():
    head = GENERATED.read_text().split('"""', 1)[0]
    assert head.startswith("# GENERATED FILE - DO NOT EDIT BY HAND.")
    assert "scripts/gen_tables.py" in head
    for src in ("linux/audit.h", "libaudit.h", "ausyscall", "errno-base.h",
                "tables-src/audit-userspace", "Which source each table came from"):
        assert src in head
