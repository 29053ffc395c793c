"""Shared fixtures: where the shared corpora live, and helpers to run the core over a file."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

SHARED = Path(os.environ.get("AUDITPIPE_SHARED", Path(__file__).resolve().parents[1].parent / "shared"))
CORPUS = SHARED / "corpus"
CONFORMANCE = SHARED / "conformance"


def pytest_configure(config: pytest.Config) -> None:
    """The shared material is part of the test set-up: without it the suite cannot say
    anything about conformance, so it stops with a usage error instead of skipping."""
    if not SHARED.is_dir():
        raise pytest.UsageError(f"../shared not found at {SHARED}: the tests read the shared corpora "
                                "there in place (or set AUDITPIPE_SHARED to where they are)")


def shared_path(*parts) -> Path:
    p = SHARED.joinpath(*parts)
    if not p.exists():
        pytest.fail(f"shared material missing: {p}")
    return p


@pytest.fixture(scope="session")
def shared():
    return SHARED


@pytest.fixture
def tmpfs(tmp_path):
    """A real 5 MB tmpfs (disk-full tests), unmounted in teardown."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=5m,mode=0700", "tmpfs", str(mnt)], check=True)
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)
