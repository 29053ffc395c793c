"""Build a lake from the shared corpora (both formats, both corpora: two hosts) for the lake tests."""

from __future__ import annotations

from pathlib import Path

from auditpipe.cli.common import build_normalizer, run_files
from auditpipe.lake.config import LakeOutput
from auditpipe.lake.writer import LakeWriter


def build_lake(root: Path, corpora: list[Path], default_host: str = "corpus-host") -> dict[str, dict]:
    """Write each corpus as ECS and Panther rows; returns the parse stats per (format, corpus)."""
    stats = {}
    for fmt in ("ecs", "panther"):
        for corpus in corpora:
            w = LakeWriter(LakeOutput(path=str(root), default_host=default_host))
            try:
                stats[(fmt, corpus.name)] = run_files([str(corpus)], build_normalizer(fmt, resolve_ids=False), lake=w)
            finally:
                w.close()
    return stats
