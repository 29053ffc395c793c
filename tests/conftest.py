"""Shared fixtures: where the shared corpora live, and helpers to run the core over a file."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

SHARED = Path(os.environ.get("AUDITPIPE_SHARED", Path(__file__).resolve().parents[1].parent / "shared"))
CORPUS = SHARED / "corpus"
CONFORMANCE = SHARED / "conformance"


def shared_path(*parts) -> Path:
    p = SHARED.joinpath(*parts)
    if not p.exists():
        pytest.skip(f"shared material missing: {p}")
    return p


@pytest.fixture(scope="session")
def shared():
    if not SHARED.exists():
        pytest.skip(f"../shared not found at {SHARED}")
    return SHARED
