"""The process stage on records from the real kernel, received with our netlink client as the
audit daemon: a setsid chain, a reused pid, a restart, and containers named by cgroups made
here in mounted hierarchies.

Rules are narrow: only processes whose login uid this test set (a value no one else uses) are
audited, with this test's key; ``audit_state`` restores the kernel's state afterwards.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import time
import uuid

import pytest
from conftest_kernel import audit_state  # noqa: F401

from auditpipe.kernel.netlink import open_unicast
from auditpipe.kernel.rules import compile_rules
from auditpipe.normalize import make_normalizer
from auditpipe.pipeline.core import Pipeline
from auditpipe.process.config import ProcessConfig
from auditpipe.process.stage import ProcessStage, staged

pytestmark = pytest.mark.kernel

CALLS = "execve,clone,clone3,fork,vfork,setsid,exit_group"
AUID = 7_000_000 + os.getpid() % 1_000_000
KEY = f"auditpipe-proc-{os.getpid()}"
TRUE = os.path.realpath("/bin/true")
SH = os.path.realpath("/bin/sh")
BASH = os.path.realpath("/bin/bash")


@contextlib.contextmanager
def audited(nl, calls: str = CALLS):
    """Registered as the audit daemon with one rule: ``calls`` of processes with our auid."""
    (item,) = compile_rules(f"-a always,exit -F arch=b64 -S {calls} -F auid={AUID} -F key={KEY}")
    with open_unicast() as rx:
        nl.add_rule(item.data)
        nl.set_status(enabled=1)
        try:
            yield rx
        finally:
            nl.set_status(enabled=0)
            nl.delete_rule(item.data)


def spawn(args, **kw) -> subprocess.Popen:
    """A child whose login uid is ours to audit (set by a shell that then execs ``args``)."""
    return subprocess.Popen(["sh", "-c", f'echo {AUID} > /proc/self/loginuid && exec "$@"', "sh", *args],
                            **kw)


def stage_and_pipeline(**cfg):
    st = ProcessStage.for_live(ProcessConfig(**{"state_dir": "", **cfg}), "ecs", now=time.time())
    return st, Pipeline(staged(make_normalizer("ecs"), [st], time.time))


def pump(rx, pl, until, timeout: float = 10.0) -> list[dict]:
    """Feed what the kernel sends into the pipeline as it arrives (as `run` does) until
    ``until(docs)`` holds."""
    docs: list[dict] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for t, payload in rx.recv_messages(timeout=0.1):
            docs += pl.feed_kernel(t, payload)
        if until(docs):
            return docs
    pytest.fail(f"the kernel's records did not arrive within {timeout:g}s: "
                f"{[(d['auditd']['data'].get('syscall'), d['process'].get('executable')) for d in docs]}")


def execs(docs, exe=None):
    return [d for d in docs if d["auditd"]["data"].get("syscall") == "execve"
            and (exe is None or d["process"].get("executable") == exe)]


def test_setsid_chain_parent_ancestors_session_leader(audit_state):  # noqa: F811
    st, pl = stage_and_pipeline()
    with audited(audit_state) as rx:
        child = spawn(["setsid", "bash", "-c", 'sh -c "/bin/true; sleep 0.2"; sleep 0.2'])
        docs = pump(rx, pl, lambda d: bool(execs(d, TRUE)))
        child.wait(10)
    bash = next(d for d in execs(docs, BASH) if d["process"]["pid"] == child.pid)["process"]
    sh = next(d for d in execs(docs, SH) if d["process"]["parent"]["pid"] == child.pid)["process"]
    true = execs(docs, TRUE)[0]["process"]
    assert true["parent"]["pid"] == sh["pid"] and true["parent"]["executable"] == SH
    assert true["parent"]["args"] == ["sh", "-c", "/bin/true; sleep 0.2"]
    assert true["parent"]["entity_id"] == sh["entity_id"]
    anc = true["ancestors"]
    assert [a["pid"] for a in anc[:3]] == [sh["pid"], child.pid, os.getpid()]
    assert anc[1]["entity_id"] == bash["entity_id"] and anc[1]["executable"] == BASH
    assert anc[2]["executable"] == os.path.realpath(sys.executable)  # known from /proc
    for leader in ("session_leader", "group_leader"):
        assert true[leader]["pid"] == child.pid, leader  # setsid made bash the leader
        assert true[leader]["entity_id"] == bash["entity_id"]
        assert true[leader]["executable"] == BASH and true[leader]["user"]["id"] == "0"
    assert len({bash["entity_id"], sh["entity_id"], true["entity_id"]}) == 3
    assert st.metrics()["forks"] >= 1  # bash forked sh (sh's fork of true may still be on its way)


FORKER = r"""
#include <stdio.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
/* fork until the kernel hands out pid argv[1] again; that child runs sleep */
int main(int argc, char **argv) {
    pid_t target = atoi(argv[1]);
    time_t end = time(NULL) + atoi(argv[2]);
    while (time(NULL) < end) {
        pid_t p = fork();
        if (p == 0) {
            if (getpid() == target) execl("/bin/sleep", "sleep", "0.5", (char *)NULL);
            _exit(0);
        }
        if (p < 0) { usleep(1000); continue; }
        waitpid(p, NULL, 0);
        if (p == target) { puts("hit"); return 0; }
    }
    puts("miss");
    return 1;
}
"""


@pytest.mark.slow
def test_reused_pid_gets_no_stale_parent(audit_state, tmp_path):  # noqa: F811
    if shutil.which("gcc") is None:
        pytest.skip("gcc is needed to build the fork loop")
    (tmp_path / "forker.c").write_text(FORKER)
    forker = str(tmp_path / "forker")
    subprocess.run(["gcc", "-O2", "-o", forker, str(tmp_path / "forker.c")], check=True)
    _st, pl = stage_and_pipeline()
    with audited(audit_state, "execve") as rx:
        first = spawn(["bash", "-c", "sleep 0.1; exit 0"])
        docs = pump(rx, pl, lambda d: any(x["process"].get("name") == "sleep" for x in execs(d)))
        first.wait(10)
        old = next(x for x in execs(docs) if x["process"].get("name") == "sleep")["process"]
        target = old["pid"]
        loop = spawn([forker, str(target), "40"], stdout=subprocess.PIPE, text=True)
        docs = pump(rx, pl, lambda d: loop.poll() is not None
                    and any(x["process"]["pid"] == target for x in execs(d)) or loop.poll() == 1,
                    timeout=45)
        out = loop.stdout.read()
    if "miss" in out:
        pytest.skip(f"pid {target} was not handed out again within 40 s (other processes took it)")
    forker_doc = next(x for x in execs(docs) if x["process"]["pid"] == loop.pid)["process"]
    new = next(x for x in execs(docs) if x["process"]["pid"] == target)["process"]
    assert old["parent"]["pid"] == first.pid and old["parent"]["executable"] == BASH
    assert new["parent"]["pid"] == loop.pid and new["parent"]["executable"] == forker
    assert new["parent"]["entity_id"] == forker_doc["entity_id"]
    assert new["entity_id"] != old["entity_id"]
    assert first.pid not in [a.get("pid") for a in new["ancestors"]]
    assert new["ancestors"][1]["pid"] == os.getpid()


def test_restart_keeps_the_parent_of_a_process_started_before(audit_state, tmp_path):  # noqa: F811
    fifo = tmp_path / "go"
    os.mkfifo(fifo)
    state = str(tmp_path / "state")
    st1, pl1 = stage_and_pipeline(state_dir=state)
    with audited(audit_state) as rx:
        sh = spawn(["sh", "-c", f'bash -c "read x < {fifo}; /bin/true; exit 0" & exit 0'])
        docs = pump(rx, pl1, lambda d: bool(execs(d, BASH)) and any(
            x["auditd"]["data"].get("syscall") == "exit_group" and x["process"]["pid"] == sh.pid for x in d))
        sh.wait(10)
        st1.close(time.time())  # "auditpipe stops"; the bash lives on, its parent is gone
        bash = execs(docs, BASH)[0]["process"]
        shdoc = next(d for d in execs(docs, SH) if d["process"]["pid"] == sh.pid)["process"]
        st2, pl2 = stage_and_pipeline(state_dir=state)  # "auditpipe starts again"
        fresh, _ = stage_and_pipeline()  # the same start without the saved table
        with open(fifo, "w") as f:
            f.write("go\n")
        docs = pump(rx, pl2, lambda d: bool(execs(d, TRUE)))
    true = execs(docs, TRUE)[0]["process"]
    assert true["parent"]["pid"] == bash["pid"] and true["parent"]["entity_id"] == bash["entity_id"]
    assert true["ancestors"][1]["pid"] == sh.pid
    assert true["ancestors"][1]["entity_id"] == shdoc["entity_id"]
    assert true["ancestors"][1]["executable"] == SH
    assert st2.metrics()["restored"] >= 2
    assert fresh.table.get(bash["pid"]).parent.pid != sh.pid  # /proc alone: reparented


# ------------------------------------------------------------------------------- cgroups
HEX = uuid.uuid4().hex + uuid.uuid4().hex
POD = str(uuid.uuid4())
V2 = "/sys/fs/cgroup/unified"
V1 = "/sys/fs/cgroup/pids"
CASES = [  # (hierarchy, path under our test cgroup, expected fields)
    (V2, f"docker-{HEX}.scope", {"container": {"id": HEX, "runtime": "docker"}}),
    (V2, f"kubepods-besteffort-pod{POD.replace('-', '_')}.slice/cri-containerd-{HEX}.scope",
     {"container": {"id": HEX, "runtime": "containerd"},
      "orchestrator": {"type": "kubernetes", "resource": {"type": "pod", "id": POD}}}),
    (V2, f"libpod-{HEX}.scope", {"container": {"id": HEX, "runtime": "podman"}}),
    (V2, "lxc.payload.auditpipe-ct", {"container": {"id": "auditpipe-ct", "runtime": "lxc", "name": "auditpipe-ct"}}),
    (V1, f"docker/{HEX}", {"container": {"id": HEX, "runtime": "docker"}}),
    (V2, "auditpipe-test.service", {"systemd": {"unit": "auditpipe-test.service"}}),
]


def test_containers_and_units_from_real_cgroups(audit_state):  # noqa: F811
    for h in (V2, V1):
        if not os.path.exists(f"{h}/cgroup.procs"):
            pytest.skip(f"{h} is not a mounted cgroup hierarchy")
    top = f"auditpipe-test-{os.getpid()}.slice"
    made: list[str] = []
    children: list[subprocess.Popen] = []
    _st, pl = stage_and_pipeline()
    try:
        with audited(audit_state, "execve") as rx:
            for hier, path, expect in CASES:
                parts = [top, *path.split("/")]
                for i in range(len(parts)):
                    d = "/".join([hier, *parts[:i + 1]])
                    if not os.path.isdir(d):
                        os.mkdir(d)
                        made.append(d)
                child = spawn(["bash", "-c", "read x; sleep 1; exit 0"], stdin=subprocess.PIPE, text=True)
                children.append(child)
                with open(f"{hier}/{'/'.join(parts)}/cgroup.procs", "w") as f:
                    f.write(str(child.pid))
                child.stdin.write("go\n")
                child.stdin.flush()
                docs = pump(rx, pl, lambda d, c=child: any(
                    x["process"]["parent"].get("pid") == c.pid for x in execs(d)))
                doc = next(x for x in execs(docs) if x["process"]["parent"].get("pid") == child.pid)
                got = {k: doc[k] for k in ("container", "orchestrator", "systemd") if k in doc}
                assert got == expect, path
    finally:
        for c in children:
            c.kill()
            c.wait()
        remove_cgroups(reversed(made))
    assert not any(os.path.exists(d) for d in made)


def remove_cgroups(dirs) -> None:
    """rmdir each (innermost first), waiting a little for killed processes to leave."""
    for d in dirs:
        for _ in range(50):
            try:
                os.rmdir(d)
                break
            except OSError:
                time.sleep(0.1)


def test_container_user_names_from_the_containers_own_passwd(tmp_path):
    """A real process with its own mount namespace (its /etc/passwd is another file) in a
    docker-named cgroup: its uid's name is read through /proc/<pid>/root, not the host's."""
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        pytest.skip("needs root and unshare(1) for a mount namespace")
    if not os.path.exists(f"{V2}/cgroup.procs"):
        pytest.skip(f"{V2} is not a mounted cgroup hierarchy")
    passwd = tmp_path / "passwd"
    passwd.write_text("root:x:0:0::/root:/bin/sh\nctuser:x:4242:4242::/app:/bin/sh\n")
    top = f"{V2}/auditpipe-test-{os.getpid()}.slice"
    cg = f"{top}/docker-{HEX}.scope"
    os.makedirs(cg)
    child = subprocess.Popen(["unshare", "-m", "--propagation", "private", "sh", "-c",
                              f"mount --bind {passwd} /etc/passwd && echo ready && exec sleep 30"],
                             stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline().strip() == "ready"
        with open(f"{cg}/cgroup.procs", "w") as f:
            f.write(str(child.pid))
        st, pl = stage_and_pipeline()
        st.user_name = lambda uid: "host-" + uid
        h = f"msg=audit({time.time():.3f}:77)"
        lines = [(f'type=SYSCALL {h}: arch=c000003e syscall=2 success=yes exit=3 a0=0 a1=0 a2=0 a3=0 items=0 '
                 f'ppid={os.getpid()} pid={child.pid} auid=0 uid=4242 gid=4242 euid=4242 suid=4242 fsuid=4242 '
                 f'egid=4242 sgid=4242 fsgid=4242 tty=(none) ses=1 comm="sleep" exe="/usr/bin/sleep" key=(null)'),
                 f"type=EOE {h}: "]
        (doc,) = pl.feed_lines(lines)
        assert doc["container"] == {"id": HEX, "runtime": "docker"}
        assert doc["user"]["id"] == "4242" and doc["user"]["name"] == "ctuser"
        assert doc["process"]["parent"]["user"]["name"] == "host-0"  # pytest runs on the host
        with open("/etc/passwd") as f:
            assert "ctuser" not in f.read()  # the host's file was never changed
    finally:
        child.kill()
        child.wait()
        remove_cgroups([cg, top])
    assert not os.path.exists(top)
