"""Profile `auditpipe run` under a live load: cProfile in the worker and in the netlink reader.

    python benchmarks/profile_live.py OUT_PREFIX run --config FILE ...

Runs the CLI in this process with the worker loop (`LiveRunner._loop`) and the reader thread
(`KernelSource._read_loop`) each under its own cProfile (cProfile sees one thread at a time),
and writes ``OUT_PREFIX.worker.prof`` and ``OUT_PREFIX.reader.prof`` when they end. Pass it as
the collector command to ../shared/bench/live_overhead.py (the benchmark stops it with SIGTERM,
which `run` handles, so both profiles are written). Read them with ``python -m pstats``.
With ``PROFILE_LIVE=cpu``, no profiler: each thread's CPU seconds go to ``OUT_PREFIX.{worker,reader}.cpu``.
"""

from __future__ import annotations

import cProfile
import functools
import os
import resource
import sys
from collections.abc import Callable
from typing import Any


def profiled(method: Callable[..., Any], path: str) -> Callable[..., Any]:
    @functools.wraps(method)
    def wrapper(*args: Any, **kw: Any) -> Any:
        prof = cProfile.Profile()
        try:
            return prof.runcall(method, *args, **kw)
        finally:
            prof.dump_stats(path)
    return wrapper


def timed(method: Callable[..., Any], path: str) -> Callable[..., Any]:
    """No profiler: the thread's user and system CPU seconds while ``method`` ran."""
    @functools.wraps(method)
    def wrapper(*args: Any, **kw: Any) -> Any:
        r0 = resource.getrusage(resource.RUSAGE_THREAD)
        try:
            return method(*args, **kw)
        finally:
            r1 = resource.getrusage(resource.RUSAGE_THREAD)
            with open(path, "w") as f:
                f.write(f"user {r1.ru_utime - r0.ru_utime:.3f} system {r1.ru_stime - r0.ru_stime:.3f}\n")
    return wrapper


def main() -> None:
    prefix, argv = sys.argv[1], sys.argv[2:]
    from auditpipe.cli import main as cli
    from auditpipe.pipeline.live import LiveRunner
    from auditpipe.sources.kernel import KernelSource

    wrap, ext = (timed, "cpu") if os.environ.get("PROFILE_LIVE") == "cpu" else (profiled, "prof")
    LiveRunner._loop = wrap(LiveRunner._loop, f"{prefix}.worker.{ext}")  # type: ignore[method-assign]
    KernelSource._read_loop = wrap(KernelSource._read_loop, f"{prefix}.reader.{ext}")  # type: ignore[method-assign]
    sys.argv = ["auditpipe", *argv]
    cli()


if __name__ == "__main__":
    main()
