"""The process table through a real `auditpipe run` subprocess, across a restart of `run`.

A shell started under the test's login uid forks a bash and exits (the bash is reparented); `run`
is stopped (SIGTERM: the table is saved at exit; SIGKILL: only the periodic save is left) and
started again; then the bash execs /bin/true. The event must name the bash, and the exited shell
above it, with the entity ids the first `run` gave them: /proc alone would say the bash's parent
is pid 1 (or a subreaper) and could not know the shell at all.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time

import pytest

from conftest_kernel import audit_state  # noqa: F401
from test_run_kernel import Agent

pytestmark = pytest.mark.kernel

AUID = 7_100_000 + os.getpid() % 1_000_000
SH = os.path.realpath("/bin/sh")
BASH = os.path.realpath("/bin/bash")
TRUE = os.path.realpath("/bin/true")


CALLS = "execve,clone,clone3,fork,vfork,exit_group"  # the fork too: the shell may exit before
# its child's execve, which then reports ppid 1


def agent_for(tmp_path, key: str, save_interval: float) -> Agent:
    agent = Agent(tmp_path, f"-a always,exit -F arch=b64 -S {CALLS} -F auid={AUID} -k {key}\n")
    agent.config.write_text(agent.config.read_text()
                            + f"[process]\nenabled = true\nsave_interval = {save_interval}\n")
    return agent


def exec_of(agent: Agent, exe: str, timeout: float = 5.0, pid: int | None = None) -> dict:
    def pred(d: dict) -> bool:
        p = d.get("process", {})
        return (d.get("auditd", {}).get("data", {}).get("syscall") == "execve"
                and p.get("executable") == exe and (pid is None or p.get("pid") == pid))
    doc = agent.find(pred, timeout)
    assert doc is not None, f"no exec of {exe} in the output within {timeout}s:\n{agent.stderr()}"
    return doc["process"]


def saved_pids(agent: Agent) -> set[int]:
    try:
        data = json.loads((agent.state_dir / "process-table.json").read_text())
    except (OSError, ValueError):
        return set()
    return {entry[0] for entry in data["entries"]}  # an entry is a row; its first column the pid


@pytest.mark.parametrize("stop", [signal.SIGTERM, signal.SIGKILL], ids=["sigterm", "sigkill"])
def test_restarted_run_keeps_the_parent_started_before(audit_state, tmp_path, stop):  # noqa: F811
    key = f"approc-{os.getpid()}-{stop.name.lower()}"
    fifo = tmp_path / "go"
    os.mkfifo(fifo)
    # SIGTERM: only the save at exit (the periodic one is far off); SIGKILL: only the periodic one
    save_interval = 0.2 if stop == signal.SIGKILL else 600.0
    first = agent_for(tmp_path, key, save_interval).start()
    bash_proc = None
    try:
        sh = subprocess.Popen(
            ["sh", "-c", f'echo {AUID} > /proc/self/loginuid && exec "$@"', "sh", "sh", "-c",
             f'bash -c "read x < {fifo}; {TRUE}; exit 0" & exit 0'])
        sh.wait(10)
        bash = exec_of(first, BASH)
        bash_proc = bash["pid"]
        shdoc = exec_of(first, SH, pid=sh.pid)
        assert bash["parent"]["pid"] == sh.pid and bash["parent"]["entity_id"] == shdoc["entity_id"]
        if stop == signal.SIGKILL:  # only the periodic save can carry the bash across
            deadline = time.monotonic() + 5
            while bash_proc not in saved_pids(first):
                assert time.monotonic() < deadline, "the table was saved periodically"
                time.sleep(0.05)
            first.signal(signal.SIGKILL)
            first.proc.wait(10)
        else:
            assert first.stop() == 0, first.stderr()
        first.out.rename(tmp_path / "first.jsonl")
        second = agent_for(tmp_path, key, save_interval).start()
        try:
            with open(fifo, "w") as f:
                f.write("go\n")
            true = exec_of(second, TRUE)
        finally:
            assert second.stop() == 0, second.stderr()
    finally:
        if first.proc.poll() is None:
            first.stop()
        if bash_proc is not None:
            try:
                os.kill(bash_proc, signal.SIGKILL)  # only if the fifo was never opened
            except ProcessLookupError:
                pass
    assert true["parent"]["pid"] == bash["pid"], true
    assert true["parent"]["entity_id"] == bash["entity_id"], "the bash keeps its entity id"
    assert true["parent"]["executable"] == BASH
    assert true["ancestors"][1]["pid"] == sh.pid, "the exited shell above it is still known"
    assert true["ancestors"][1]["entity_id"] == shdoc["entity_id"]
    assert true["ancestors"][1]["executable"] == SH
