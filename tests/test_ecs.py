"""`--format ecs`: auditbeat (Auditd Manager) conformance, go-libaudit summary conformance, our
own corpora, and the normalization table's coverage.

Deliberate differences from the peers are listed here, each with its reason; anything else
that differs fails.
"""

from __future__ import annotations

import gzip
import json
import re

import pytest
from helpers import events_of_file, events_of_lines

from auditpipe import tables
from auditpipe.normalize.ecs import ECS_VERSION, make_ecs_normalizer
from auditpipe.normalize.ecs_table import (
    DEFAULT_SYSCALL_NORM, ECS_CATEGORIES, ECS_TYPES, RECORD_NORMS, SYSCALL_NORMS, load_table,
)
from auditpipe.normalize.idresolve import IdResolver
from auditpipe.normalize.jsonl import dumps_line, loads

from conftest import shared_path

BEATS_FILES = ("auditlogin.log", "chown.log", "passwd.log", "setuid.log", "sudo.log")

# Fields the golden files cannot hold: they are `BeatEvent.Fields` of the module's events, and
# these are set outside them (the timestamp) or by the beat's publisher pipeline.
AGENT_FIELDS = {
    "@timestamp": "kept beside Fields by beats; checked on its own below",
    "event.module": "added by the beats publisher pipeline",
    "ecs.version": "added by the beats publisher pipeline",
    "host.name": "added by beats' host processor (we set it from node=, absent in these logs)",
}

# (file, sequence, field) -> (ours, auditbeat's, why). None = the field is absent.
BEATS_DIFFERENCES = {
    ("chown.log", 263, "file.device"): (
        "fd:02", "00:00",
        "auditbeat copies the PATH record's rdev (the device a device node stands for, 00:00 for "
        "every regular file); the device that holds the file is dev, as the kernel and auparse say"),
    ("sudo.log", 436, "event.category"): (
        ["iam"], "mac",
        "auditbeat has no ECS categorization for USER_ROLE_CHANGE and falls back to its legacy "
        "category string, which is not an ECS event.category value (nor an array)"),
    ("sudo.log", 436, "event.type"): (
        ["user", "change"], None, "as above: ECS categorization for a user's role change"),
}
for _seq in (431, 435, 462):
    BEATS_DIFFERENCES[("sudo.log", _seq, "source.address")] = (
        "127.0.0.1", None, "ECS source.address (the address as given) is filled beside source.ip")


def flatten(doc: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in doc.items():
        if isinstance(v, dict) and v:
            out.update(flatten(v, f"{prefix}{k}."))
        else:
            out[prefix + k] = v
    return out


def beats_docs(name: str, **kw):
    folder = shared_path("conformance", "beats-auditbeat")
    resolver = IdResolver(passwd_file=str(folder / "passwd"), group_file=str(folder / "group"))
    normalize = make_ecs_normalizer(resolver, include_raw=True, include_warnings=False, **kw)
    events, _ = events_of_file(folder / name)
    return [d for e in events for d in normalize(e)], json.loads((folder / f"{name}-expected.json").read_text())


@pytest.mark.parametrize("name", BEATS_FILES)
def test_auditbeat_golden_documents(name):
    ours, expected = beats_docs(name)
    by_seq = {d["auditd"]["sequence"]: d for d in ours}
    assert len(by_seq) == len(ours) == len(expected)
    for want in expected:
        seq = want["auditd"]["sequence"]
        got = flatten(by_seq[seq])
        want = flatten(want)
        for field in sorted(set(got) | set(want)):
            if field in AGENT_FIELDS:
                continue
            diff = BEATS_DIFFERENCES.get((name, seq, field))
            if diff is not None:
                assert (got.get(field), want.get(field)) == diff[:2], (name, seq, field)
                continue
            assert got.get(field) == want.get(field), f"{name} #{seq} {field}"


def test_auditbeat_differences_all_used():
    """Every listed difference still occurs (a stale entry would hide a regression)."""
    seen = set()
    for name in BEATS_FILES:
        ours, expected = beats_docs(name)
        by_seq = {d["auditd"]["sequence"]: flatten(d) for d in ours}
        for want in expected:
            seq = want["auditd"]["sequence"]
            w = flatten(want)
            for (n, s, field) in BEATS_DIFFERENCES:
                if n == name and s == seq and by_seq[seq].get(field) != w.get(field):
                    seen.add((n, s, field))
    assert seen == set(BEATS_DIFFERENCES)


def test_agent_fields_and_timestamp():
    ours, _ = beats_docs("chown.log")
    (doc,) = ours
    assert doc["@timestamp"] == "2021-01-19T21:24:24.740Z"  # audit(1611091464.740:263)
    assert doc["event"]["module"] == "auditd"
    assert doc["ecs"] == {"version": ECS_VERSION}
    assert "host" not in doc


def test_without_raw_there_is_no_original():
    folder = shared_path("conformance", "beats-auditbeat")
    events, _ = events_of_file(folder / "chown.log")
    (doc,) = make_ecs_normalizer(None)(events[0])
    assert "original" not in doc["event"]


# ---------------------------------------------------------------------------- go-libaudit summary

# (test name, part) -> (ours, go-libaudit's, why)
LIBAUDIT_DIFFERENCES = {
    ("make-device", "object.type"): (
        "directory", "file",
        "aucoalesce converts the raw st_mode to a Go os.FileMode, whose type bits differ, so every "
        "path is a 'file'; mode 040755 is a directory (S_IFMT)"),
    ("mount syscall", "object.type"): ("directory", "file", "as above"),
    ("AVC_AppArmor", "category"): (
        ["intrusion_detection", "file"], ["file"],
        "our table categorizes AVC records (auditbeat has none and only the syscall's applies)"),
    ("AVC_AppArmor_unlink", "category"): (["intrusion_detection", "file"], ["file"], "as above"),
    ("AVC_AppArmor_unlink", "type"): (["info", "deletion"], ["deletion"], "as above"),
    ("ANOM_PROMISCUOUS", "type"): (
        ["info", "change"], ["info", "change", "info"],
        "a record's and its syscall's categorizations are merged without repeating values"),
    ("NETFILTER_CFG", "category"): (
        ["configuration", "network"], ["configuration", "process"],
        "the SYSCALL is setsockopt, which our table maps (network); aucoalesce's catch-all says process"),
    ("getpeername syscall", "action"): ("checked-address-of", None, "our table maps getpeername"),
    ("getpeername syscall", "category"): (["network"], ["process"], "as above"),
    ("getpeername syscall", "object"): (
        {"primary": "54.36.214.69", "secondary": "60192", "type": "socket"}, None, "as above: a socket object"),
    ("getsockname syscall", "action"): ("checked-address-of", None, "our table maps getsockname"),
    ("getsockname syscall", "category"): (["network"], ["process"], "as above"),
    ("getsockname syscall", "object"): (
        {"primary": "10.142.0.2", "secondary": "53989", "type": "socket"}, None, "as above: a socket object"),
}


def _libaudit_cases():
    yaml = pytest.importorskip("yaml")
    folder = shared_path("conformance", "go-libaudit", "aucoalesce", "testdata")
    for path in sorted(folder.glob("*.yaml")):
        tests = yaml.safe_load(path.read_text())["tests"]
        golden = {t["test_name"]: t["event"] for t in json.loads(path.with_suffix(".json.golden").read_text())}
        for name, text in tests.items():
            if name in golden:
                yield path.name, name, text, golden[name]


def test_go_libaudit_summaries():
    normalize = make_ecs_normalizer(None)
    seen = set()
    count = 0
    for fname, name, text, gold in _libaudit_cases():
        events, _ = events_of_lines([line for line in text.split("\n") if line.strip()])
        (doc,) = [d for e in events for d in normalize(e)]
        summary = doc["auditd"].get("summary", {})
        ours = {
            "action": doc["event"].get("action"), "category": doc["event"].get("category"),
            "type": doc["event"].get("type"), "object": summary.get("object"), "how": summary.get("how"),
            "actor": summary.get("actor"), "result": doc["auditd"]["result"],
        }
        gs = gold["summary"]
        theirs = {
            "action": gs.get("action"), "category": gold["ecs"]["event"].get("category"),
            "type": gold["ecs"]["event"].get("type"), "object": gs.get("object") or None, "how": gs.get("how"),
            "actor": gs.get("actor"), "result": gold.get("result"),
        }
        for part in ours:
            o, t = ours[part], theirs[part]
            key = (name, part)
            if key in LIBAUDIT_DIFFERENCES:
                assert (o, t) == LIBAUDIT_DIFFERENCES[key][:2], (fname, name, part)
                seen.add(key)
                continue
            if part == "object" and o is not None and t is not None and (name, "object.type") in LIBAUDIT_DIFFERENCES:
                want = dict(t, type=LIBAUDIT_DIFFERENCES[(name, "object.type")][0])
                assert o == want, (fname, name)
                seen.add((name, "object.type"))
                continue
            assert o == t, (fname, name, part)
        count += 1
    assert count >= 25
    assert seen == set(LIBAUDIT_DIFFERENCES)


# ---------------------------------------------------------------------------- our corpora


@pytest.fixture(scope="module")
def enriched_docs():
    events, _ = events_of_file(shared_path("corpus", "enriched.log"))
    normalize = make_ecs_normalizer(IdResolver(enabled=False), include_warnings=True)
    return [d for e in events for d in normalize(e)]


@pytest.fixture(scope="module")
def raw_docs():
    events, _ = events_of_file(shared_path("corpus", "raw-node.log"))
    normalize = make_ecs_normalizer(IdResolver(enabled=False), extra_tags=("corpus",))
    return [d for e in events for d in normalize(e)]


def _execs(docs):
    return [d for d in docs if d["event"].get("action") == "executed" and d["event"]["outcome"] == "success"]


@pytest.mark.parametrize("which", ["enriched_docs", "raw_docs"])
def test_execve_args_exact(which, request):
    docs = request.getfixturevalue(which)
    odd = [d for d in _execs(docs) if d["process"]["args"][:2] == ["/bin/true", "arg with spaces"]]
    assert len(odd) == 3
    for i, d in enumerate(sorted(odd, key=lambda d: d["process"]["args"][2]), 1):
        assert d["process"]["args"] == ["/bin/true", "arg with spaces", str(i), "ünïcödé", "tab\there", 'quote"d']
        assert d["process"]["args_count"] == 6
        assert d["auditd"]["data"]["argc"] == "6"
        assert d["process"]["executable"] == "/usr/bin/true"
        assert d["file"]["path"] == "/bin/true"
        assert d["event"]["category"] == ["process"] and d["event"]["type"] == ["start"]
        assert d["tags"][0] == "exec"
    many = [d for d in _execs(docs) if d["process"]["args"][0] == "echo" and d["process"]["args_count"] == 301]
    assert len(many) == 1 and all(a == "x" * 50 for a in many[0]["process"]["args"][1:])
    # arguments over the kernel's buffer arrive as aN[0], aN[1], ... and are joined again
    long = [d for d in _execs(docs) if d["process"]["args"][0] == "/bin/true"
            and any(len(a) >= 9000 for a in d["process"]["args"])]
    assert long and all(set(a) == {"a"} and len(a) == 9000 for a in long[0]["process"]["args"][1:])


@pytest.mark.parametrize("which", ["enriched_docs", "raw_docs"])
def test_connect_has_destination(which, request):
    docs = request.getfixturevalue(which)
    conns = [d for d in docs if d["event"].get("action") == "connected-to"]
    inet = [d for d in conns if "ip" in d.get("destination", {})]
    assert {d["destination"]["ip"] for d in inet} >= {"127.0.0.1", "::1"}
    d = next(d for d in inet if d["destination"]["ip"] == "::1")
    assert d["destination"]["port"] == 9 and d["network"]["direction"] == "egress"
    assert d["event"]["outcome"] == "failure" and d["auditd"]["data"]["exit"] == "ECONNREFUSED"
    assert d["auditd"]["data"]["socket"] == {"family": "ipv6", "addr": "::1", "port": "9"}  # as auditbeat
    assert d["auditd"]["summary"]["object"] == {"primary": "::1", "secondary": "9", "type": "socket"}
    assert d["event"]["category"] == ["network"] and d["event"]["type"] == ["connection", "start"]
    # a unix socket's path is its address; no destination.path (not ECS: the integration's
    # pipeline renames it, and cannot when the address is there too)
    unix = [d for d in conns if d["auditd"]["data"].get("socket", {}).get("family") == "unix"]
    assert unix and all(d["destination"]["address"] == d["auditd"]["data"]["socket"]["path"]
                        and "path" not in d["destination"] for d in unix)
    accepted = [d for d in docs if d["event"].get("action") == "accepted-connection-from"]
    assert accepted and all(d["network"]["direction"] == "ingress" and "ip" in d["source"] for d in accepted)


@pytest.mark.parametrize("which", ["enriched_docs", "raw_docs"])
def test_failed_open(which, request):
    docs = request.getfixturevalue(which)
    failed = [d for d in docs if d["event"].get("action") == "opened-file" and d["event"]["outcome"] == "failure"]
    paths = {d["file"]["path"] for d in failed}
    assert {"/etc/shadow", "/root/secret", "/etc/sudoers"} <= paths
    for d in failed:
        assert d["auditd"]["result"] == "fail"
        assert d["auditd"]["data"]["exit"] in ("EACCES", "EPERM")
        assert d["tags"][0] == "access"
        assert d["event"]["category"] == ["file"]


def test_host_name_from_node(raw_docs, enriched_docs):
    assert all(d["host"] == {"name": "web-01.example.com"} for d in raw_docs)
    assert not any("host" in d for d in enriched_docs)


def test_tags_are_rule_keys(raw_docs):
    keys = {d["tags"][0] for d in raw_docs if len(d["tags"]) > 1}
    assert {"exec", "access", "identity", "external-access", "perm_mod", "filedel", "setid", "mount",
            "kill9"} <= keys
    assert all(d["tags"][-1] == "corpus" for d in raw_docs)  # extra_tags come after the keys


def test_enriched_names_win(enriched_docs):
    """Names auditd wrote are used with resolution off; `unknown(N)` is not a name."""
    cmd = [d for d in enriched_docs if d["auditd"]["message_type"] == "user_cmd"]
    assert cmd and all(d["user"]["name"] == "corpususer" and d["user"]["id"] == "1001" for d in cmd)
    assert all("name" not in d["user"]["audit"] for d in cmd)  # AUID="unknown(5000)"
    groups = [d for d in enriched_docs if d["auditd"]["message_type"] == "del_group" and "id" in d.get("group", {})]
    assert any(d["group"] == {"id": "1002", "name": "corpusgrp"} for d in groups)
    files = [d["file"] for d in enriched_docs if "uid" in d.get("file", {})]
    assert files and all(f["owner"] == "root" for f in files if f["uid"] == "0")
    assert all(f["group"] == "root" for f in files if f["gid"] == "0")
    assert any(f["group"] == "shadow" for f in files)


def test_unset_ids(enriched_docs):
    start = next(d for d in enriched_docs if d["auditd"]["message_type"] == "daemon_start")
    assert start["auditd"]["summary"]["actor"]["primary"] == "unset"
    assert "session" not in start["auditd"]  # ses=4294967295
    assert "audit" not in start["user"]


def test_every_corpus_event_is_normalized(enriched_docs):
    for d in enriched_docs:
        assert d["event"].get("action"), d["auditd"]["message_type"]
        assert set(d["event"]["category"]) <= ECS_CATEGORIES and set(d["event"]["type"]) <= ECS_TYPES
        assert "no normalization found for event" not in d["auditd"].get("warnings", ())
        dumps_line(d)


def test_documents_survive_json(raw_docs):
    for d in raw_docs:
        assert loads(dumps_line(d)) == d


# ---------------------------------------------------------------------------- table coverage

# Every syscall go-libaudit's normalizations name (facts: the names, not their table).
ELASTIC_SYSCALLS = """
creat fallocate truncate ftruncate open openat readlink readlinkat read write setxattr fsetxattr
lsetxattr removexattr fremovexattr lremovexattr chmod fchmod fchmodat chown fchown fchownat lchown
finit_module init_module delete_module mkdir mkdirat mount rename renameat renameat2 access faccessat
fstatat newfstatat stat stat64 fstat lstat getxattr lgetxattr fgetxattr statfs fstatfs symlink
symlinkat umount umount2 rmdir unlink unlinkat utime utimes futimesat futimens utimensat execve
execveat listen accept accept4 bind connect recv recvfrom recvmsg recvmmsg send sendto sendmsg
sendmmsg kill tkill tgkill setuid seteuid setfsuid setreuid setgid setegid setfsgid setregid
setresuid setresgid settimeofday clock_settime stime adjtimex mknod mknodat sethostname
setdomainname mmap mmap2 brk sched_setparam sched_setscheduler sched_setattr link linkat
""".split()

_TYPE_RE = re.compile(rb"^(?:node=\S+ )?type=([A-Z_0-9]+) ", re.M)
_SYSCALL_RE = re.compile(rb"^(?:node=\S+ )?type=SYSCALL .*? arch=([0-9a-f]+) syscall=(\d+) ", re.M)


def _corpus_facts():
    folder = shared_path("corpus")
    types, syscalls = set(), set()
    for path in sorted(folder.glob("*.log")) + [folder / "bench.log.gz"]:
        data = path.read_bytes()
        if path.suffix == ".gz":
            data = gzip.decompress(data)
        types.update(m.decode() for m in set(_TYPE_RE.findall(data)))
        for arch, num in set(_SYSCALL_RE.findall(data)):
            syscalls.add(tables.syscall_name(int(arch, 16), int(num)))
    return types, syscalls


def test_corpus_syscalls_and_types_have_specific_actions():
    types, syscalls = _corpus_facts()
    assert {"SYSCALL", "EXECVE", "USER_LOGIN", "ANOM_ABEND"} <= types and {"execve", "connect"} <= syscalls
    for name in sorted(syscalls):
        norm = SYSCALL_NORMS.get(name)
        assert norm is not None and norm is not DEFAULT_SYSCALL_NORM and norm.action, name
    for t in sorted(types - {"SYSCALL"}):
        assert t in RECORD_NORMS and RECORD_NORMS[t][-1].action, t


def test_table_covers_elastic_and_every_record_type():
    assert set(ELASTIC_SYSCALLS) <= set(SYSCALL_NORMS)
    for num, name in tables.RECORD_TYPE_NAMES.items():
        if name == "SYSCALL" or (1000 <= num < 1100 and name not in ("USER", "LOGIN")):
            continue  # netlink control messages never reach a log
        assert name in RECORD_NORMS, name


_NORM_ATTRS = ("name", "action", "what", "path_index", "actor_primary", "actor_secondary", "object_primary",
               "object_secondary", "how", "category", "type", "sockaddr", "exit_code", "source_ip", "has_fields",
               "users")


def test_generated_table_is_current():
    """ecs_table_data (what start-up loads) is what scripts/gen_ecs_table.py makes of the TOML."""
    import subprocess
    import sys
    from pathlib import Path

    from auditpipe.normalize.ecs_table import DATA

    script = Path(__file__).resolve().parents[1] / "scripts" / "gen_ecs_table.py"
    assert subprocess.run([sys.executable, str(script), "--check"]).returncode == 0

    def facts(n):
        return [getattr(n, a) for a in _NORM_ATTRS]

    syscalls, records = load_table(DATA)
    assert {k: facts(n) for k, n in syscalls.items()} == {k: facts(n) for k, n in SYSCALL_NORMS.items()}
    assert {k: [facts(n) for n in v] for k, v in records.items()} == {
        k: [facts(n) for n in v] for k, v in RECORD_NORMS.items()}


def test_table_rejects_bad_ecs_values(tmp_path):
    from auditpipe.normalize.ecs_table import DATA

    (tmp_path / "records.toml").write_text((DATA / "records.toml").read_text())
    good = (DATA / "syscalls.toml").read_text()
    (tmp_path / "syscalls.toml").write_text(good.replace('category = ["file"]', 'category = ["files"]', 1))
    with pytest.raises(ValueError, match="not an ECS event.category"):
        load_table(tmp_path)
    (tmp_path / "syscalls.toml").write_text(good + '\n[[syscall]]\nnames = ["open"]\naction = "x"\ncategory = ["file"]\ntype = ["info"]\n')
    with pytest.raises(ValueError, match="listed twice"):
        load_table(tmp_path)


# ---------------------------------------------------------------------------- fast paths


def test_fast_paths_agree_with_general_ones():
    """The SYSCALL fast paths give exactly what the general code gives, on every corpus event."""
    from auditpipe.normalize import ecs_walk
    from auditpipe.normalize.ecs_fields import Names, build_any_user, build_user

    names = Names(IdResolver(enabled=False))
    checked = 0
    for name in ("enriched.log", "raw-node.log"):
        events, _ = events_of_file(shared_path("corpus", name))
        for e in events:
            for r in e.records:
                if r.type != "SYSCALL":
                    continue
                fast = ecs_walk.walk_main(r.fields, r.type_num)
                assert fast == ecs_walk._walk_any(r.fields, r.type_num)
                ids, selinux = fast[1], fast[6]
                a, b = {}, {}
                assert build_user(ids, names, r.enriched, selinux, a) == build_any_user(ids, names, r.enriched, selinux, b)
                assert a == b
                checked += 1
    assert checked > 1500


def test_syscall_fast_path_needs_the_kernels_keys():
    """25 or 26 fields that are not the kernel's SYSCALL keys take the general path, same result."""
    from auditpipe.normalize import ecs_walk

    std = dict(events_of_lines([syscall_line()])[0][0].records[0].fields)
    assert len(std) == 25 and ecs_walk.walk_main(std, 1300) == ecs_walk._walk_any(std, 1300)
    for odd in ({**{k: v for k, v in std.items() if k != "tty"}, "tyt": "pts0"},
                {**{k: v for k, v in std.items() if k != "tty"}, "subj": "u:r:t:s0"},
                {**std, "obj": "u:r:t:s0"}):
        assert ecs_walk.walk_main(odd, 1300) == ecs_walk._walk_any(odd, 1300)


# ---------------------------------------------------------------------------- hand-made events

SYSCALL_HEAD = ("type=SYSCALL msg=audit(1700000000.123:{seq}): arch=c000003e syscall={nr} success={ok} exit={exit} "
                "a0={a0} a1=0 a2=0 a3=0 items={items} ppid=1 pid=42 auid=1000 uid=0 gid=0 euid=0 suid=0 fsuid=0 "
                "egid=0 sgid=0 fsgid=0 tty=pts0 ses=3 comm=\"{comm}\" exe=\"{exe}\" key={key}")


def one_doc(lines, **kw):
    events, _ = events_of_lines(lines)
    docs = [d for e in events for d in make_ecs_normalizer(kw.pop("resolver", None), **kw)(e)]
    assert len(docs) == 1
    return docs[0]


def syscall_line(seq=1, nr=59, ok="yes", exit="0", a0="0", items=0, comm="x", exe="/usr/bin/x", key='"k"'):
    return SYSCALL_HEAD.format(seq=seq, nr=nr, ok=ok, exit=exit, a0=a0, items=items, comm=comm, exe=exe, key=key)


def test_exit_group_has_exit_code():
    d = one_doc([syscall_line(nr=231, a0="fffffffffffffffe")])
    assert d["event"]["action"] == "exited" and d["process"]["exit_code"] == -2
    d = one_doc([syscall_line(nr=231, a0="3")])
    assert d["process"]["exit_code"] == 3
    assert "exit_code" not in one_doc([syscall_line(nr=59)])["process"]


def test_interpreter_how_is_the_command_name():
    d = one_doc([syscall_line(nr=2, comm="myscript", exe="/usr/bin/python3.11")])
    assert d["auditd"]["summary"]["how"] == "myscript"
    d = one_doc([syscall_line(nr=2, comm="cat", exe="/usr/bin/cat")])
    assert d["auditd"]["summary"]["how"] == "/usr/bin/cat"


def test_directory_object_type_from_st_mode():
    d = one_doc([
        syscall_line(nr=83, items=2, exe="/usr/bin/mkdir", comm="mkdir"),
        'type=PATH msg=audit(1700000000.123:1): item=0 name="/tmp" inode=1 dev=00:1f mode=041777 ouid=0 ogid=0 '
        'rdev=00:00 nametype=PARENT',
        'type=PATH msg=audit(1700000000.123:1): item=1 name="/tmp/d" inode=2 dev=00:1f mode=040755 ouid=0 ogid=0 '
        'rdev=00:00 nametype=CREATE',
    ])
    assert d["event"]["action"] == "created-directory"
    assert d["auditd"]["summary"]["object"] == {"primary": "/tmp/d", "type": "directory"}
    assert d["file"]["path"] == "/tmp/d" and d["file"]["mode"] == "0755" and d["file"]["device"] == "00:1f"
    assert len(d["auditd"]["paths"]) == 2 and "items" not in d["auditd"]["data"]


def test_multiple_rule_keys_and_extra_tags():
    key = "exec\x01detect".encode().hex().upper()
    d = one_doc([syscall_line(key=key)], extra_tags=("prod",))
    assert d["tags"] == ["exec", "detect", "prod"]
    d = one_doc([syscall_line(key="(null)")])
    assert "tags" not in d


def test_record_about_a_syscall_merges_categories_and_keys():
    d = one_doc([
        "type=CONFIG_CHANGE msg=audit(1700000000.123:9): auid=1000 ses=3 op=add_rule key=\"exec\" list=4 res=1",
        syscall_line(seq=9, nr=44, key="(null)", exe="/usr/sbin/auditctl", comm="auditctl"),
        "type=PROCTITLE msg=audit(1700000000.123:9): proctitle=617564697463746C002D6C",
    ])
    assert d["auditd"]["message_type"] == "config_change"
    assert d["event"]["action"] == "changed-audit-configuration"
    assert d["event"]["category"] == ["process", "configuration", "network"]
    assert d["event"]["type"] == ["change", "connection", "info"]
    assert d["tags"] == ["exec"]
    assert d["auditd"]["data"]["op"] == "add_rule" and d["auditd"]["data"]["syscall"] == "sendto"
    assert d["auditd"]["summary"]["object"]["primary"] == "add_rule"
    assert d["process"]["title"] == "auditctl -l" and d["process"]["pid"] == 42


def test_avc_variants():
    apparmor = one_doc(['type=AVC msg=audit(1700000000.123:5): apparmor="DENIED" operation="open" '
                        'profile="/usr/sbin/cupsd" name="/etc/ssl/x" pid=9 comm="cupsd" requested_mask="r" '
                        'denied_mask="r" fsuid=0 ouid=0'])
    assert apparmor["event"]["action"] == "violated-apparmor-policy"
    assert apparmor["auditd"]["summary"]["object"] == {"primary": "open", "secondary": "r", "type": "policy"}
    selinux = one_doc(["type=AVC msg=audit(1700000000.123:6): avc:  denied  { read } for  pid=9 comm=\"cat\" "
                       "name=\"shadow\" scontext=user_u:user_r:user_t:s0 tcontext=system_u:object_r:shadow_t:s0 "
                       "tclass=file permissive=0"])
    assert selinux["event"]["action"] == "violated-selinux-policy"
    assert selinux["auditd"]["summary"]["actor"]["primary"] == "user_u:user_r:user_t:s0"
    assert selinux["auditd"]["summary"]["object"]["secondary"] == "file"


def test_unknown_record_type_and_warnings():
    d = one_doc(["type=UNKNOWN[1999] msg=audit(1700000000.123:7): foo=bar"], include_warnings=True)
    assert "action" not in d["event"] and "category" not in d["event"]
    assert d["auditd"]["data"] == {"foo": "bar"}
    assert d["auditd"]["warnings"] == ["no normalization found for event"]
    assert d["event"]["original"] == ["type=UNKNOWN[1999] msg=audit(1700000000.123:7): foo=bar"]
    d = one_doc([syscall_line(nr=1)], include_warnings=True)  # write, but no PATH record
    assert d["auditd"]["warnings"] == ["path message not found"]
    assert "warnings" not in one_doc([syscall_line(nr=1)])["auditd"]


def test_unknown_syscall_is_categorized_like_auditbeat():
    d = one_doc([syscall_line(nr=39)])  # getpid: not in the table
    assert "action" not in d["event"]
    assert d["event"]["category"] == ["process"] and d["event"]["type"] == ["info"]
    assert d["auditd"]["data"]["syscall"] == "getpid"


def test_user_message_without_closing_quote():
    d = one_doc(["type=SERVICE_START msg=audit(1700000000.123:8): pid=1 uid=0 auid=4294967295 ses=4294967295 "
                 "msg='unit=rsyslog comm=\"systemd\" exe=\"/lib/systemd/systemd\" hostname=? addr=? terminal=? res=success"])
    assert d["event"]["outcome"] == "success"
    assert d["auditd"]["summary"]["object"] == {"primary": "rsyslog", "type": "service"}
    assert d["event"]["type"] == ["start"]


def test_resolver_names_and_related_user(tmp_path):
    (tmp_path / "passwd").write_text("root:x:0:0::/root:/bin/sh\nalice:x:1000:1000::/home/alice:/bin/sh\n")
    (tmp_path / "group").write_text("root:x:0:\nalice:x:1000:\n")
    resolver = IdResolver(passwd_file=str(tmp_path / "passwd"), group_file=str(tmp_path / "group"))
    line = ("type=USER_AUTH msg=audit(1700000000.123:3): pid=5 uid=0 auid=1000 ses=2 msg='op=PAM:authentication "
            "acct=\"alice\" exe=\"/usr/bin/su\" hostname=? addr=? terminal=pts/0 res=failed'")
    d = one_doc([line], resolver=resolver)
    assert d["user"]["id"] == "1000" and d["user"]["name"] == "alice"
    assert "effective" not in d["user"]  # acct alice is the user: auditbeat drops the repeat
    assert d["related"] == {"user": ["alice"]}
    assert d["auditd"]["summary"]["actor"] == {"primary": "alice", "secondary": "alice"}
    assert d["event"]["outcome"] == "failure" and d["auditd"]["result"] == "fail"
    d = one_doc([line])  # no resolver: ids, and the names the record holds
    assert "name" not in d["user"] and d["user"]["effective"] == {"name": "alice"}
    assert d["related"] == {"user": ["alice"]}


def test_event_whose_syscall_was_lost():
    d = one_doc([
        'type=EXECVE msg=audit(1700000000.123:11): argc=2 a0="ls" a1="-l"',
        'type=CWD msg=audit(1700000000.123:11): cwd="/root"',
        'type=PATH msg=audit(1700000000.123:11): item=0 name="/usr/bin/ls" inode=5 dev=fe:00 mode=0100755 '
        'ouid=0 ogid=0 rdev=00:00 nametype=NORMAL',
        'type=PROCTITLE msg=audit(1700000000.123:11): proctitle=6C73002D6C',
    ])
    assert d["auditd"]["message_type"] == "execve" and d["event"]["action"] == "executed"
    assert d["process"]["args"] == ["ls", "-l"] and d["process"]["working_directory"] == "/root"
    assert d["process"]["title"] == "ls -l" and d["auditd"]["paths"][0]["name"] == "/usr/bin/ls"
    assert d["auditd"]["data"] == {"argc": "2"}


def test_parts_before_the_syscall_do_not_lead():
    d = one_doc([
        'type=PATH msg=audit(1700000000.123:12): item=0 name="/etc/shadow" inode=5 dev=fe:00 mode=0100640 '
        'ouid=0 ogid=42 rdev=00:00 nametype=NORMAL',
        syscall_line(seq=12, nr=257, ok="no", exit="-13", items=1, comm="cat", exe="/usr/bin/cat"),
    ])
    assert d["auditd"]["message_type"] == "syscall" and d["event"]["action"] == "opened-file"
    assert d["event"]["outcome"] == "failure" and d["auditd"]["data"]["exit"] == "EACCES"
    assert d["file"]["path"] == "/etc/shadow"
