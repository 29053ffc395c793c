"""The process table stage on audit records written out here (every field chosen by the test),
the filter stage, saved state, and the /proc reader against this host's real /proc."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import msgspec
import pytest

from auditpipe.normalize import make_normalizer
from auditpipe.pipeline.core import Pipeline
from auditpipe.process.cgroup import parse_cgroup
from auditpipe.process.config import FilterConfig, FilterRule, ProcessConfig
from auditpipe.process.filter import FilterStage
from auditpipe.process.procfs import ProcReader, parse_stat
from auditpipe.process.stage import ProcessStage, staged
from auditpipe.process.state import StateStore

NR = {"execve": 59, "clone": 56, "fork": 57, "exit_group": 231, "setsid": 112, "setpgid": 109,
      "open": 2}
HEX = "0123456789abcdef" * 4


class Log:
    """Audit lines of one made-up x86_64 host; ``t`` advances 10 ms per event."""

    def __init__(self) -> None:
        self.serial = 100
        self.t = 1_700_000_000.0

    def event(self, call: str, pid: int, ppid: int, exe: str, exit: int = 0, args=None,
              key: str = "k", a0: str = "0", a1: str = "0", uid: int = 1000) -> list[str]:
        self.serial += 1
        self.t += 0.01
        h = f"msg=audit({self.t:.3f}:{self.serial})"
        comm = exe.rsplit("/", 1)[-1][:15]
        ids = " ".join(f"{k}={uid}" for k in ("uid", "gid", "euid", "suid", "fsuid", "egid", "sgid", "fsgid"))
        lines = [(f'type=SYSCALL {h}: arch=c000003e syscall={NR[call]} success=yes exit={exit} '
                 f'a0={a0} a1={a1} a2=0 a3=0 items=0 ppid={ppid} pid={pid} auid=1000 {ids} '
                 f'tty=pts0 ses=3 comm="{comm}" exe="{exe}" key="{key}"')]
        if args is not None:
            lines.append(f"type=EXECVE {h}: argc={len(args)} " +
                         " ".join(f'a{i}="{a}"' for i, a in enumerate(args)))
        lines.append(f"type=EOE {h}: ")
        return lines


def run(lines, fmt="ecs", stages=None, **cfg):
    st = ProcessStage(ProcessConfig(read_proc=False, **cfg), fmt)
    opts = {"now": lambda: 0.0, "row_id": lambda: "r"} if fmt == "panther" else {}
    pl = Pipeline(staged(make_normalizer(fmt, **opts), stages(st) if stages else [st], lambda: 1000.0))
    docs = pl.feed_lines(lines) + pl.flush()
    return docs, st


def chain_log():
    """bash 100 (parent 50, never seen) forks 200, which execs sh; sh forks 300 → /bin/true."""
    log = Log()
    lines = log.event("execve", 100, 50, "/usr/bin/bash", args=["bash"])
    lines += log.event("clone", 100, 50, "/usr/bin/bash", exit=200, a0="1200011")
    lines += log.event("setsid", 200, 100, "/usr/bin/bash", exit=200)
    lines += log.event("execve", 200, 100, "/bin/sh", args=["sh", "-c", "true; true"])
    lines += log.event("fork", 200, 100, "/bin/sh", exit=300)
    lines += log.event("execve", 300, 200, "/bin/true", args=["/bin/true"])
    return log, lines


def test_chain_parent_ancestors_leaders_and_entity_ids():
    _, lines = chain_log()
    docs, st = run(lines)
    true = docs[-1]["process"]
    sh = docs[3]["process"]
    bash = docs[0]["process"]
    assert true["executable"] == "/bin/true" and true["pid"] == 300
    assert true["parent"]["pid"] == 200 and true["parent"]["executable"] == "/bin/sh"
    assert true["parent"]["args"] == ["sh", "-c", "true; true"]
    assert true["parent"]["entity_id"] == sh["entity_id"]
    assert [a.get("executable") for a in true["ancestors"]] == ["/bin/sh", "/usr/bin/bash", None]
    assert true["ancestors"][1]["entity_id"] == bash["entity_id"]
    assert true["ancestors"][2] == {"pid": 50, "unknown": True}  # never seen: said, not guessed
    # 200 called setsid: it leads the session and group of itself and of 300
    assert true["session_leader"]["pid"] == 200 and true["session_leader"]["entity_id"] == sh["entity_id"]
    assert true["group_leader"]["pid"] == 200
    assert true["session_leader"]["user"] == {"id": "1000"}
    # a leader is compact (the issue's pid, entity_id, executable, user): no arguments, which
    # the same process as the parent carries
    assert set(true["session_leader"]) == {"pid", "entity_id", "executable", "name", "start", "user"}
    assert true["group_leader"] == true["session_leader"]
    assert bash["session_leader"] == {"unknown": True}  # bash's session is not known
    assert true["entry_leader"] == {"unknown": True}  # the chain stops at an unknown process
    # forked processes have a start time (the fork's); one first seen at its exec does not
    assert true["start"] == "2023-11-14T22:13:20.050Z" and "start" not in bash
    eids = {docs[i]["process"]["entity_id"] for i in (0, 3, 5)}
    assert len(eids) == 3
    assert st.metrics()["forks"] == 2 and st.metrics()["execs"] == 3


def test_clone_of_a_thread_is_not_a_process():
    log = Log()
    lines = log.event("execve", 100, 50, "/usr/bin/app", args=["app"])
    lines += log.event("clone", 100, 50, "/usr/bin/app", exit=101, a0="3d0f00")  # CLONE_THREAD
    lines += log.event("open", 101, 50, "/usr/bin/app")
    docs, st = run(lines)
    assert st.metrics()["forks"] == 0
    assert docs[-1]["process"]["parent"] == {"pid": 50, "unknown": True}


def test_reused_pid_gets_no_stale_parent():
    log = Log()
    lines = log.event("execve", 100, 50, "/usr/bin/bash", args=["bash"])
    lines += log.event("fork", 100, 50, "/usr/bin/bash", exit=400)
    lines += log.event("execve", 400, 100, "/usr/bin/curl", args=["curl", "x"])
    # pid 400 is handed to another process, child of 60 (no exit was audited)
    lines += log.event("execve", 400, 60, "/usr/bin/ls", args=["ls"])
    lines += log.event("open", 400, 60, "/usr/bin/ls")
    docs, st = run(lines)
    first, second, later = docs[2]["process"], docs[3]["process"], docs[4]["process"]
    assert first["parent"]["pid"] == 100
    assert second["parent"] == {"pid": 60, "unknown": True}
    assert second["ancestors"] == [{"pid": 60, "unknown": True}]
    assert second["entity_id"] != first["entity_id"] and later["entity_id"] == second["entity_id"]
    assert st.metrics()["reused_pids"] == 1


def test_exit_then_same_pid_same_parent_is_a_new_process():
    log = Log()
    lines = log.event("fork", 100, 50, "/usr/bin/bash", exit=400)
    lines += log.event("execve", 400, 100, "/usr/bin/curl", args=["curl"])
    lines += log.event("exit_group", 400, 100, "/usr/bin/curl")
    lines += log.event("fork", 100, 50, "/usr/bin/bash", exit=400)
    lines += log.event("execve", 400, 100, "/usr/bin/wget", args=["wget"])
    docs, _ = run(lines)
    assert docs[1]["process"]["entity_id"] != docs[4]["process"]["entity_id"]
    assert docs[4]["process"]["parent"]["pid"] == 100


def test_labels_propagate_to_descendants_and_argv_labels():
    _, lines = chain_log()
    docs, _st = run(lines, label_exe={"/bash$": "shell"}, label_argv={"^sh -c true": "script"})
    assert docs[0]["process"]["labels"] == ["shell"]
    assert docs[3]["process"]["labels"] == ["script", "shell"]
    assert docs[-1]["process"]["labels"] == ["script", "shell"]
    docs, _ = run(lines, label_exe={"/bash$": "shell"}, propagate_labels=False)
    assert "labels" not in docs[-1]["process"]


def test_ancestor_depth_is_bounded():
    log = Log()
    lines = log.event("execve", 10, 1, "/bin/a0", args=["a0"])
    for i in range(1, 12):
        lines += log.event("fork", 10 * i, 10 * (i - 1) or 1, f"/bin/a{i - 1}", exit=10 * (i + 1))
        lines += log.event("execve", 10 * (i + 1), 10 * i, f"/bin/a{i}", args=[f"a{i}"])
    docs, _ = run(lines, ancestors=3)
    assert [a["pid"] for a in docs[-1]["process"]["ancestors"]] == [110, 100, 90]
    docs, _ = run(lines)  # the default: 4, each item compact (no arguments)
    anc = docs[-1]["process"]["ancestors"]
    assert [a["pid"] for a in anc] == [110, 100, 90, 80]
    assert set(anc[0]) == {"pid", "entity_id", "executable", "name", "start"}


def test_coalesced_gets_context_panther_rows_unchanged():
    _, lines = chain_log()
    docs, _ = run(lines, fmt="coalesced")
    assert docs[-1]["context"]["process"]["parent"]["executable"] == "/bin/sh"
    rows, _ = run(lines, fmt="panther")
    assert rows and not any("context" in r or "process" in r for r in rows)


def test_expiry_after_grace_and_bound():
    log = Log()
    lines = log.event("fork", 100, 50, "/usr/bin/bash", exit=400)
    lines += log.event("exit_group", 400, 100, "/usr/bin/bash")
    _, st = run(lines, grace=30)
    assert st.table.get(400) is not None
    st.tick(1000.0 + 29)
    assert st.table.get(400) is not None
    st.tick(1000.0 + 36)  # the next walk, 5 s later
    assert st.table.get(400) is None and st.table.get(100) is not None
    assert st.metrics()["expired"] == 1
    for pid in range(1000, 1100):
        st.table.new(pid, 1, 1.0, False, now=float(pid))
    st.table.max_entries = 50
    st.tick(2000.0)
    assert len(st.table) <= 50 and st.table.get(1099) is not None and st.table.get(1000) is None


def test_state_roundtrip_keeps_identity_and_exited_parents(tmp_path):
    _, lines = chain_log()
    docs, st = run(lines, label_exe={"/bash$": "shell"})
    st.state = StateStore(str(tmp_path))
    st.close(2000.0)
    data = msgspec.json.decode((tmp_path / "process-table.json").read_bytes())
    assert data["version"] == 1 and len(data["entries"]) == 3
    st2 = ProcessStage(ProcessConfig(read_proc=False), "ecs", state=StateStore(str(tmp_path)), now=2001.0)
    assert st2.metrics()["restored"] == 3
    p = st2.table.get(300)
    assert p.entity_id == docs[-1]["process"]["entity_id"]
    assert p.parent.entity_id == docs[3]["process"]["entity_id"] and p.parent.parent.pid == 100
    assert p.labels == {"shell"}
    log = Log()
    log.t += 5
    more = log.event("execve", 300, 200, "/bin/true", args=["/bin/true"])
    d = Pipeline(staged(make_normalizer("ecs"), [st2], lambda: 2002.0)).feed_lines(more)
    assert d[0]["process"]["parent"]["entity_id"] == docs[3]["process"]["entity_id"]


def test_state_leaves_out_exited_processes_without_running_descendants(tmp_path):
    """What a restart can still need: running processes and their ancestors, exited or not."""
    log, lines = chain_log()
    lines += log.event("fork", 100, 50, "/usr/bin/bash", exit=400)
    lines += log.event("execve", 400, 100, "/bin/ls", args=["ls"])
    lines += log.event("exit_group", 400, 100, "/bin/ls")  # ls ends; nothing below it runs
    lines += log.event("exit_group", 200, 100, "/bin/sh")  # sh ends; /bin/true (300) runs on
    _, st = run(lines)
    assert st.table.get(400).exited is not None and st.table.get(200).exited is not None
    StateStore(str(tmp_path)).save(st.table, 50, 0.0)
    data = msgspec.json.decode((tmp_path / "process-table.json").read_bytes())
    assert sorted(e[0] for e in data["entries"]) == [100, 200, 300]


def test_state_saved_at_exit_leaves_out_processes_gone_since_their_last_event(tmp_path):
    """A process seen a moment ago that /proc no longer lists is gone: the state saved at exit
    does not carry it as running (the reaper's idle wait is for the running stream only)."""
    proc, state = tmp_path / "proc", tmp_path / "state"
    proc.mkdir()
    (proc / "stat").write_text("btime 1700000000\n")
    fake_proc(proc, 700, 1, "/usr/bin/bash", "0::/user.slice\n")
    st = ProcessStage(ProcessConfig(), "ecs", reader=ProcReader(str(proc)), now=0.0,
                      state=StateStore(str(state)))
    lines = Log().event("execve", 701, 700, "/bin/true", args=["true"])  # gone: no /proc/701
    Pipeline(staged(make_normalizer("ecs", resolver=None), [st], lambda: 1.0)).feed_lines(lines)
    assert st.table.get(701).exited is None
    st.close(1.0)
    data = msgspec.json.decode((state / "process-table.json").read_bytes())
    assert [e[0] for e in data["entries"]] == [700]


def test_damaged_state_file_is_counted_not_fatal(tmp_path):
    (tmp_path / "process-table.json").write_bytes(b"{not json")
    st = ProcessStage(ProcessConfig(read_proc=False), "ecs", state=StateStore(str(tmp_path)))
    assert st.metrics()["state_errors"] == 1 and len(st.table) == 0


def test_state_is_bounded(tmp_path):
    log = Log()
    lines = []
    for pid in range(1000, 1200):
        lines += log.event("execve", pid, 1, "/bin/x", args=["x"])
    _, st = run(lines)
    n = StateStore(str(tmp_path)).save(st.table, 50, 0.0)
    assert n == 50


# ------------------------------------------------------------------------------- filter
def filtered(lines, *rules, label_exe=None):
    made = []

    def stages(st):
        made.append(FilterStage(FilterConfig(rules=list(rules)), "ecs"))  # labels from the documents
        return [st, made[0]]

    return run(lines, stages=stages, label_exe=label_exe or {})[0], made[0]


def test_filter_by_key_label_executable_raw_with_counts():
    log = Log()
    lines = log.event("execve", 100, 50, "/usr/bin/bash", args=["bash"], key="exec")
    lines += log.event("fork", 100, 50, "/usr/bin/bash", exit=200, key="proc")
    lines += log.event("execve", 200, 100, "/usr/bin/curl", args=["curl", "evil.example"], key="exec")
    lines += log.event("open", 200, 100, "/usr/bin/curl", key="files")
    lines += log.event("execve", 300, 60, "/usr/bin/ls", args=["ls"], key="exec")
    rules = [FilterRule(name="keep-curl", action="keep", raw="evil\\.example"),
             FilterRule(name="shells", label="shell"),
             FilterRule(name="files", key="files"),
             FilterRule(name="ls", executable="/ls$")]
    docs, f = filtered(lines, *rules, label_exe={"/bash$": "shell"})
    # bash events dropped by label (its child curl inherits it), curl's exec kept by the earlier
    # raw rule, ls dropped by executable
    assert [d["process"]["executable"] for d in docs] == ["/usr/bin/curl"]
    assert docs[0]["process"]["args"] == ["curl", "evil.example"]
    assert f.metrics() == {"dropped.keep-curl": 0, "dropped.shells": 3, "dropped.files": 0,
                           "dropped.ls": 1, "dropped": 4}


def test_filter_metrics_and_keep_first():
    log = Log()
    lines = []
    for _ in range(5):
        lines += log.event("open", 100, 50, "/usr/bin/noisy", key="files")
    for _ in range(3):
        lines += log.event("open", 101, 50, "/usr/bin/noisy", key="files")
    lines += log.event("open", 102, 50, "/usr/bin/quiet", key="other")
    fs = {}

    def stages(st):
        fs["f"] = FilterStage(FilterConfig(rules=[
            FilterRule(name="noisy", action="keep_first", first=2, key="files"),
            FilterRule(name="never", key="nope")]), "ecs")
        return [st, fs["f"]]

    docs, _ = run(lines, stages=stages)
    assert [d["process"]["pid"] for d in docs] == [100, 100, 101, 101, 102]
    assert fs["f"].metrics() == {"dropped.noisy": 4, "dropped.never": 0, "dropped": 4}


def _labels_and_filter_config(state_dir, fmt: str) -> str:
    """[process] labelling shells, [filter] dropping them and keeping one "files" event per
    process; made-up records, so this host's /proc must not answer for them."""
    return f"""
[normalize]
format = "{fmt}"
[process]
state_dir = "{state_dir}"
read_proc = false
label_exe = {{ "/bash$" = "shell" }}
[[filter.rules]]
name = "shells"
label = "shell"
[[filter.rules]]
name = "once"
action = "keep_first"
key = "files"
"""


def test_filter_of_panther_rows_asks_the_process_stage(tmp_path):
    """Panther rows carry no process context: the assembly links the filter to the process
    stage, whose labels (inherited: ls's parent is a labelled bash) and identities it uses."""
    from auditpipe.config import load_config
    from auditpipe.pipeline.assembly import build_normalizer, build_stages

    cfg = load_config(text=_labels_and_filter_config(tmp_path, "panther"))
    ps, fs = build_stages(cfg, "run")[:2]
    assert fs.labels == ps.labels_of and fs.identity == ps.identity_of
    log = Log()
    lines = log.event("execve", 100, 50, "/usr/bin/bash", args=["bash"])
    lines += log.event("fork", 100, 50, "/usr/bin/bash", exit=200)
    lines += log.event("execve", 200, 100, "/usr/bin/ls", args=["ls"])  # a shell's child: labelled
    for pid in (300, 300, 301):
        lines += log.event("open", pid, 60, "/usr/bin/cat", key="files")
    rows = Pipeline(staged(build_normalizer(cfg.normalize), [ps, fs], time.time)).feed_lines(lines)
    assert fs.metrics() == {"dropped.shells": 3, "dropped.once": 1, "dropped": 4}
    assert len({r["eventId"] for r in rows}) == 2  # cat 300 once, cat 301


def test_filter_without_process_stage_counts_per_pid():
    log = Log()
    lines = log.event("open", 100, 50, "/x", key="files") * 1
    lines += log.event("open", 100, 50, "/x", key="files")
    lines += log.event("open", 200, 50, "/x", key="files")
    f = FilterStage(FilterConfig(rules=[FilterRule(name="n", action="keep_first", key="files"),
                                        FilterRule(name="l", label="shell")]), "panther")
    pl = Pipeline(staged(make_normalizer("coalesced"), [f], lambda: 0.0))
    docs = pl.feed_lines(lines) + pl.flush()
    assert len(docs) == 2 and f.metrics()["dropped.n"] == 1


# ------------------------------------------------------------------------------- cgroups
@pytest.mark.parametrize("text,expect", [
    (f"0::/system.slice/docker-{HEX}.scope", {"container": {"id": HEX, "runtime": "docker"}}),
    (f"12:pids:/docker/{HEX}\n0::/", {"container": {"id": HEX, "runtime": "docker"}}),
    (("0::/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod0a1b2c3d_1111_2222_3333_444455556666"
     f".slice/cri-containerd-{HEX}.scope"),
     {"container": {"id": HEX, "runtime": "containerd"},
      "orchestrator": {"type": "kubernetes",
                       "resource": {"type": "pod", "id": "0a1b2c3d-1111-2222-3333-444455556666"}}}),
    (f"0::/kubepods/besteffort/pod0a1b2c3d-1111-2222-3333-444455556666/{HEX}",
     {"container": {"id": HEX},
      "orchestrator": {"type": "kubernetes",
                       "resource": {"type": "pod", "id": "0a1b2c3d-1111-2222-3333-444455556666"}}}),
    (f"0::/machine.slice/crio-{HEX}.scope", {"container": {"id": HEX, "runtime": "cri-o"}}),
    (f"0::/user.slice/user-1000.slice/user@1000.service/user.slice/libpod-{HEX}.scope",
     {"container": {"id": HEX, "runtime": "podman"}}),
    (f"0::/machine.slice/libpod-conmon-{HEX}.scope", {"systemd": {"unit": f"libpod-conmon-{HEX}.scope"}}),
    ("0::/lxc.payload.web1/system.slice/sshd.service", {"container": {"id": "web1", "runtime": "lxc", "name": "web1"}}),
    ("4:memory:/lxc/db2\n0::/", {"container": {"id": "db2", "runtime": "lxc", "name": "db2"}}),
    ("1:name=systemd:/system.slice/cron.service\n0::/", {"systemd": {"unit": "cron.service"}}),
    ("0::/user.slice/user-1000.slice/session-4.scope", {"systemd": {"unit": "session-4.scope"}}),
    ("4:memory:/process_api/edbd0f9d4cefc2803b24acc67669e960\n0::/", {}),
])
def test_cgroup_paths(text, expect):
    assert parse_cgroup(text).as_dict() == expect


def fake_proc(tmp_path, pid, ppid, exe, cgroup, passwd=None):
    d = tmp_path / str(pid)
    d.mkdir()
    (d / "stat").write_text(f"{pid} ({exe.rsplit('/', 1)[-1]}) S {ppid} {pid} {pid} 0 -1 0 0 0 0 0 0 0 0 0 20 0 1 0 "
                            f"{5000 + pid} 0 0\n")
    (d / "cgroup").write_text(cgroup)
    (d / "cmdline").write_bytes(exe.encode() + b"\0")
    (d / "status").write_text("Name:\tx\nUid:\t0\t0\t0\t0\n")
    os.symlink(exe, d / "exe")
    if passwd is not None:
        (d / "root" / "etc").mkdir(parents=True)
        (d / "root" / "etc" / "passwd").write_text(passwd)


def test_container_user_names_never_come_from_the_host(tmp_path):
    """A process in a container: its uid's name from the container's /etc/passwd (via
    /proc/<pid>/root), or no name at all; never the host's name for that number."""
    (tmp_path / "stat").write_text("btime 1700000000\n")
    fake_proc(tmp_path, 700, 1, "/usr/bin/containerd-shim", "0::/system.slice/containerd.service\n")
    fake_proc(tmp_path, 701, 700, "/bin/sh", f"0::/system.slice/docker-{HEX}.scope\n",
              passwd="root:x:0:0::/root:/bin/sh\nappuser:x:1000:1000::/app:/bin/sh\n")
    fake_proc(tmp_path, 702, 700, "/bin/sh", f"0::/system.slice/docker-{'e' * 64}.scope\n")
    st = ProcessStage(ProcessConfig(), "ecs", reader=ProcReader(str(tmp_path)),
                      user_name=lambda uid: "host-" + uid, now=0.0)
    log = Log()
    lines = log.event("open", 701, 700, "/bin/sh", uid=1000) + log.event("open", 702, 700, "/bin/sh", uid=1000)
    docs = Pipeline(staged(make_normalizer("ecs", resolver=None), [st], lambda: 1.0)).feed_lines(lines)
    c1, c2 = docs[0], docs[1]
    assert c1["container"] == {"id": HEX, "runtime": "docker"}
    assert c1["user"]["id"] == "1000" and c1["user"]["name"] == "appuser"
    assert c1["process"]["session_leader"]["user"] == {"id": "1000", "name": "appuser"}  # itself
    assert "name" not in c2["user"] and c2["user"]["id"] == "1000"  # no passwd to read: number only
    assert c1["process"]["entry_leader"]["pid"] == 701
    assert c1["process"]["entry_leader"]["entry_meta"] == {"type": "container"}
    assert c1["process"]["parent"]["user"] == {"id": "0", "name": "host-0"}  # the shim runs on the host


# ------------------------------------------------------------------------------- real /proc
def test_stat_parsed_from_bytes_with_any_name():
    st = parse_stat(7, b"7 (a) b (c)) S 1 7 5 0 -1 0 0 0 0 0 0 0 0 0 20 0 1 0 4242 0 0\n")
    assert (st.comm, st.ppid, st.pgid, st.sid, st.ticks) == ("a) b (c)", 1, 7, 5, 4242)
    assert parse_stat(7, b"7 (x) S 1 7") is None  # cut short: no start time


def test_gone_processes_are_asked_of_the_kernel_only_for_this_hosts_proc(tmp_path):
    """kill(pid, 0) answers "gone" without a /proc lookup; a zombie still counts (its stat is
    there), a reaped process does not. A reader rooted elsewhere reads its files whatever this
    host's pids are (4194305 is above every pid_max)."""
    reader = ProcReader()
    child = subprocess.Popen(["true"])
    deadline = time.monotonic() + 10
    while (reader._read_bytes(f"{child.pid}/stat") or b"").rpartition(b")")[2].split()[:1] != [b"Z"]:
        assert time.monotonic() < deadline, "the child never became a zombie"
        time.sleep(0.01)
    assert reader.exists(child.pid) and reader.stat(child.pid).ppid == os.getpid()
    child.wait()
    assert reader._kill is not None  # libc's kill: "gone" as errno, not an exception
    assert not reader.exists(child.pid) and reader.stat(child.pid) is None
    assert reader.exists(os.getpid()) and reader.exists(1)
    reader._kill = None  # without ctypes: os.kill, the same answers
    assert not reader.exists(child.pid) and reader.exists(os.getpid())
    fake_proc(tmp_path, 4194305, 1, "/bin/sh", "0::/\n")
    assert ProcReader(str(tmp_path)).stat(4194305).ppid == 1


def test_seeded_from_real_proc_with_parent_and_start():
    reader = ProcReader()
    child = subprocess.Popen(["sleep", "30"])
    try:
        time.sleep(0.1)
        st = ProcessStage(ProcessConfig(), "ecs", reader=reader, now=time.time())
        p = st.table.get(child.pid)
        assert p.exe.endswith("sleep") and p.args == ["sleep", "30"] and p.exact
        assert p.parent.pid == os.getpid() and p.parent.exe == os.path.realpath(sys.executable)
        assert abs(p.start - time.time()) < 5
        assert p.entity_id == st.table.get(child.pid).entity_id
        me = st.table.get(os.getpid())
        assert p.sid == me.sid and p.parent is me
        st2 = ProcessStage(ProcessConfig(), "ecs", reader=reader, now=time.time())
        assert st2.table.get(child.pid).entity_id == p.entity_id  # stable: same boot, pid, start
    finally:
        child.kill()
        child.wait()


def test_reused_pid_with_the_same_parent_told_apart_by_proc_start(tmp_path):
    """Without an exit record and with the same ppid, only /proc's start time tells the new
    process from the old one: it gets its own entity id and not the old one's arguments."""
    (tmp_path / "stat").write_text("btime 1700000000\n")
    fake_proc(tmp_path, 100, 1, "/usr/bin/bash", "0::/\n")
    st = ProcessStage(ProcessConfig(), "ecs", reader=ProcReader(str(tmp_path)), now=0.0)
    log = Log()
    log.t = 1_700_000_000.0 + 200
    first = log.event("execve", 400, 100, "/usr/bin/curl", args=["curl", "secret"])
    fake_proc(tmp_path, 400, 100, "/usr/bin/curl", "0::/\n")  # ticks 5400: started at +54 s
    pl = Pipeline(staged(make_normalizer("ecs"), [st], lambda: 1.0))
    d1 = pl.feed_lines(first)
    (tmp_path / "400" / "stat").write_text(
        "400 (ls) S 100 400 400 0 -1 0 0 0 0 0 0 0 0 0 20 0 1 0 25000 0 0\n")  # a new start
    log.t += 60
    d2 = pl.feed_lines(log.event("execve", 400, 100, "/usr/bin/ls", args=["ls"])) + pl.flush()
    assert d1[0]["process"]["parent"]["pid"] == d2[0]["process"]["parent"]["pid"] == 100
    assert d2[0]["process"]["entity_id"] != d1[0]["process"]["entity_id"]
    assert d2[0]["process"]["start"] == "2023-11-14T22:17:30.000Z"  # btime + 25000 ticks


def test_unaudited_exits_found_in_proc_then_expire(tmp_path):
    """Rules that watch only execve never say a process ended: a process idle for a while that
    /proc no longer lists is marked exited, and expires after the grace."""
    (tmp_path / "stat").write_text("btime 1700000000\n")
    fake_proc(tmp_path, 100, 1, "/usr/bin/bash", "0::/\n")
    st = ProcessStage(ProcessConfig(grace=10), "ecs", reader=ProcReader(str(tmp_path)), now=0.0)
    log = Log()
    Pipeline(staged(make_normalizer("ecs"), [st], lambda: 1.0)).feed_lines(
        log.event("execve", 400, 100, "/bin/true", args=["true"]))
    assert st.table.get(400).exited is None
    st.tick(3.0)
    assert st.table.get(400).exited is None  # not yet looked at
    st.tick(7.0)
    assert st.table.get(400).exited == 7.0 and st.table.get(100).exited is None  # 100 is in /proc
    st.tick(18.0)
    assert st.table.get(400) is None and st.table.get(100) is not None


def test_parse_process_context_from_the_input_itself(tmp_path):
    _, lines = chain_log()
    log = tmp_path / "audit.log"
    log.write_text("\n".join(lines) + "\n")
    out = subprocess.run([sys.executable, "-m", "auditpipe", "parse", "--format", "ecs", "--process-context",
                          str(log)], capture_output=True, check=True).stdout
    docs = [msgspec.json.decode(x) for x in out.splitlines()]
    assert docs[-1]["process"]["parent"]["executable"] == "/bin/sh"
    assert docs[-1]["process"]["ancestors"][-1] == {"pid": 50, "unknown": True}
    plain = subprocess.run([sys.executable, "-m", "auditpipe", "parse", "--format", "ecs", str(log)],
                           capture_output=True, check=True).stdout
    assert b"ancestors" not in plain


@pytest.mark.parametrize("name", ["enriched.log", "raw-node.log"])
@pytest.mark.parametrize("fmt", ["ecs", "coalesced", "panther"])
def test_real_corpora_pass_through_unharmed(shared, name, fmt):
    """Every event of the shared real logs goes through: same number of documents, each with its
    process's entity id; the ECS documents differ from the plain ones only by additions."""
    from conftest import CORPUS

    lines = (CORPUS / name).read_text(encoding="utf-8", errors="surrogateescape").splitlines()
    opts = {"now": lambda: 0.0, "row_id": lambda: "r"} if fmt == "panther" else {}
    plain = Pipeline(make_normalizer(fmt, **opts))
    base = plain.feed_lines(lines) + plain.flush()
    docs, st = run(lines, fmt=fmt, label_exe={"/bash$": "shell"})
    assert len(docs) == len(base) and st.metrics()["events"] == plain.reassembler.events
    if fmt != "ecs":
        return
    with_pid = [d for d in docs if "pid" in d.get("process", {})]
    assert len(with_pid) > 500 and all("entity_id" in d["process"] for d in with_pid)
    for b, d in zip(base, docs, strict=True):
        for k, v in b.items():
            if k == "process":
                assert all(d[k][kk] == vv for kk, vv in v.items() if kk != "parent")
                assert d[k].get("parent", {}).get("pid") == v.get("parent", {}).get("pid") or "parent" not in v
            elif k != "user":
                assert d[k] == v, k


def test_cached_context_follows_an_ancestors_exec_and_setsid():
    """A child's parent/ancestors/leaders are cached; an exec or setsid of a process others
    have cached must show in their next events."""
    log = Log()
    lines = log.event("execve", 100, 50, "/usr/bin/bash", args=["bash"])
    lines += log.event("fork", 100, 50, "/usr/bin/bash", exit=200)
    lines += log.event("fork", 200, 100, "/usr/bin/bash", exit=300)
    lines += log.event("execve", 300, 200, "/usr/bin/sleep", args=["sleep", "9"])
    lines += log.event("execve", 100, 50, "/usr/bin/zsh", args=["zsh"])  # the grandparent execs
    lines += log.event("setsid", 200, 100, "/usr/bin/bash", exit=200)
    lines += log.event("open", 300, 200, "/usr/bin/sleep")
    docs, _ = run(lines)
    before, after = docs[3]["process"], docs[-1]["process"]
    assert [a.get("executable") for a in before["ancestors"]] == ["/usr/bin/bash", "/usr/bin/bash", None]
    assert [a.get("executable") for a in after["ancestors"]] == ["/usr/bin/bash", "/usr/bin/zsh", None]
    assert before["session_leader"] == {"unknown": True}
    assert after["session_leader"] == {"unknown": True}  # 300 kept its old session: setsid is 200's own
    assert docs[-2]["process"]["session_leader"]["pid"] == 200


def test_builders_from_the_typed_config_and_filter_reading_labels_from_documents(tmp_path):
    """What `run` builds from [process] and [filter]: the filter finds the labels and process
    identity in the documents the process stage wrote, with no link between the two stages."""
    from auditpipe.config import load_config
    from auditpipe.process.filter import build_filter_stage
    from auditpipe.process.stage import build_process_stage

    cfg = load_config(text=_labels_and_filter_config(tmp_path, "ecs"))
    ps, fs = build_process_stage(cfg), build_filter_stage(cfg)
    assert ps.reader is None and ps.state is not None and fs is not None
    assert build_process_stage(load_config(text="")).reader is not None
    assert build_process_stage(load_config(text="[process]\nenabled = false\n")) is None
    assert build_filter_stage(load_config(text="")) is None
    log = Log()
    lines = log.event("execve", 100, 50, "/usr/bin/bash", args=["bash"])
    lines += log.event("execve", 200, 60, "/usr/bin/ls", args=["ls"], key="files")
    lines += log.event("open", 200, 60, "/usr/bin/ls", key="files")
    docs = Pipeline(staged(make_normalizer("ecs"), [ps, fs], time.time)).feed_lines(lines)
    assert [d["process"]["pid"] for d in docs] == [200]
    assert fs.metrics() == {"dropped.shells": 1, "dropped.once": 1, "dropped": 2}
    ps.close(time.time())
    assert (tmp_path / "process-table.json").exists()
