"""Fixtures for tests that change kernel audit state (``@pytest.mark.kernel``).

Import what you need (``from conftest_kernel import audit_state``). ``audit_state`` skips when
not root, fails when another audit daemon is registered (we never take it over), and restores
what it found: the rule set (exact blobs), enabled, failure, rate_limit, backlog_limit,
backlog_wait_time; it also unregisters us if a test left us registered.

The kernel's audit state is one per host: ``audit_state`` holds an exclusive flock
(:data:`LOCK_PATH`) for the whole test, so kernel tests of concurrent pytest runs (or of other
tools that take the same lock, see :func:`kernel_lock`) do not trample each other.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import time
from pathlib import Path

import pytest

from auditpipe.kernel.netlink import process_name

SHARED = Path(os.environ.get("AUDITPIPE_SHARED",
                             Path(__file__).resolve().parents[1].parent / "shared"))
RULES_DIR = SHARED / "conformance" / "go-libaudit" / "rule" / "testdata"
RESTORED = ("enabled", "failure", "rate_limit", "backlog_limit", "backlog_wait_time")
LOCK_PATH = os.environ.get("AUDITPIPE_KERNEL_LOCK", "/run/lock/auditpipe-kernel-tests.lock")


@contextlib.contextmanager
def kernel_lock(timeout: float = 600.0):
    """Exclusive, host-wide lock around a test that changes kernel audit state."""
    with open(LOCK_PATH, "a+") as f:
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    pytest.fail(f"kernel audit tests: {LOCK_PATH} still held after {timeout:g}s")
                time.sleep(0.2)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def require_root() -> None:
    if os.geteuid() != 0:
        pytest.skip("kernel audit test: needs root (CAP_AUDIT_CONTROL); run as root to include it")


def require_auditctl() -> str:
    path = shutil.which("auditctl")
    if path is None:
        pytest.skip("auditctl (Debian package auditd) is not installed")
    return path


@pytest.fixture
def audit_state():
    """Yield an open AuditNetlink; put the kernel's audit configuration back afterwards."""
    require_root()
    with kernel_lock():
        yield from _audit_state()


def _audit_state():
    from auditpipe.kernel.netlink import AuditNetlink

    nl = AuditNetlink()
    status = nl.get_status()
    if status["pid"] and status["pid"] != os.getpid() and not os.path.exists(f"/proc/{status['pid']}"):
        # a daemon killed with SIGKILL stays registered until the kernel fails to send to it (never,
        # while auditing is off): that is no other daemon. The kernel lets a new daemon replace a
        # dead one; we do, and unregister, so the tests start from "no daemon".
        nl.set_pid(os.getpid())
        nl.unregister()
        status = nl.get_status()
    if status["pid"] and status["pid"] != os.getpid():
        nl.close()
        pytest.fail(f"another audit daemon is registered: {process_name(status['pid'])} "
                    f"(pid {status['pid']}); kernel tests do not take it over - stop it first")
    if status["enabled"] == 2:
        nl.close()
        pytest.skip("audit configuration is locked (enabled=2) until reboot")
    rules = nl.list_rules()
    try:
        yield nl
    finally:
        try:
            if nl.get_status()["pid"] == os.getpid():
                nl.unregister()
        finally:
            nl.delete_all_rules()
            for blob in rules:
                nl.add_rule(blob)
            nl.set_status(**{k: status[k] for k in RESTORED if k in status})
            after = nl.get_status()
            nl.close()
        assert {k: after.get(k) for k in RESTORED} == {k: status.get(k) for k in RESTORED}
