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
def tmpfs_factory(tmp_path):
    """``make(size, name)``: a real tmpfs of ``size`` (e.g. "2m") under tmp_path, for disk-full
    tests; every one is unmounted in teardown."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs (disk-full test) needs root")
    mounted: list = []

    def make(size: str = "5m", name: str = "mnt"):
        mnt = tmp_path / name
        mnt.mkdir()
        subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs", str(mnt)], check=True)
        mounted.append(mnt)
        return mnt

    try:
        yield make
    finally:
        for mnt in mounted:
            subprocess.run(["umount", "-l", str(mnt)], check=False)


@pytest.fixture
def tmpfs(tmpfs_factory):
    """A real 5 MB tmpfs (disk-full tests), unmounted in teardown."""
    return tmpfs_factory("5m")
