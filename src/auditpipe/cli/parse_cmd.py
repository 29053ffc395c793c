"""`auditpipe parse`: audit.log files → JSON lines of events."""

from __future__ import annotations

import functools
import os
import sys
import time

import click

from auditpipe.normalize import FORMATS
from auditpipe.sources.files import MAX_LINE

__all__ = ["parse"]


@click.command()
@click.argument("paths", nargs=-1, type=click.Path(exists=True, dir_okay=False, allow_dash=True))
@click.option("--format", "fmt", type=click.Choice(FORMATS), default="coalesced", show_default=True,
              help="Output document format.")
@click.option("-o", "--output", type=click.Path(dir_okay=False, allow_dash=True), default="-",
              help="Write JSON lines here (default stdout).")
@click.option("--rejects", type=click.Path(dir_okay=False), help="Write each rejected line here, verbatim.")
@click.option("--strict", is_flag=True, help="Exit non-zero if any line was rejected.")
@click.option("--timeout", type=float, default=2.0, show_default=True,
              help="Close an event when it is this many seconds (audit time) older than the newest record.")
@click.option("--max-in-flight", type=int, default=4096, show_default=True, help="Bound on open events.")
@click.option("--resolve-ids/--no-resolve-ids", default=True, show_default=True,
              help="ecs: resolve uid/gid to names.")
@click.option("--passwd", type=click.Path(exists=True, dir_okay=False), help="ecs: resolve uids from this passwd file.")
@click.option("--group", type=click.Path(exists=True, dir_okay=False), help="ecs: resolve gids from this group file.")
@click.option("--include-raw", is_flag=True,
              help="Keep each record's line as read (ecs: event.original; coalesced: records[].raw).")
@click.option("--lake", type=click.Path(file_okay=False),
              help="Write the events into this Parquet lake (ecs or panther; see docs/lake.md) instead of JSON lines.")
@click.option("--progress/--no-progress", default=None, help="Progress bar (default: when stderr is a terminal).")
@click.option("--process-context", is_flag=True,
              help="ecs/coalesced: parents, ancestors and leaders from the input itself (docs/process.md).")
@click.option("--jobs", "-j", type=click.IntRange(min=1), default=None,
              help="Worker processes (default: the number of cores); the output is the same as with 1.")
@click.option("--max-line-bytes", type=click.IntRange(min=8970), default=MAX_LINE, show_default=True,
              help="Skip (and report) input lines longer than this; memory stays bounded by it.")
def parse(paths, fmt, output, rejects, strict, timeout, max_in_flight, resolve_ids, passwd, group, include_raw,
          progress, process_context, lake, max_line_bytes, jobs):
    """Parse audit.log files (plain or .gz, in the order given; `-` or none for stdin) into events."""
    from auditpipe.cli.common import build_normalizer, run_files

    make_normalize = functools.partial(build_normalizer, fmt, resolve_ids=resolve_ids, passwd=passwd, group=group,
                                       include_raw=include_raw)
    normalize = make_normalize()
    if jobs is None:
        jobs = len(os.sched_getaffinity(0))
    if process_context:  # the process table follows the whole input in order: one process
        make_normalize = None
        from auditpipe.process.stage import from_records_only
        normalize = from_records_only(normalize, fmt)
    paths = list(paths) or ["-"]
    if progress is None:
        progress = sys.stderr.isatty() and "-" not in paths
    started = time.perf_counter()
    if lake and fmt == "coalesced":
        raise click.UsageError("--lake stores ecs or panther documents: add --format ecs (or panther)")
    writer = _lake_writer(lake) if lake else None
    try:
        stats = run_files(paths, normalize, output=output, rejects=rejects, timeout=timeout,
                          max_in_flight=max_in_flight, progress=progress, lake=writer,
                          max_line=max_line_bytes, jobs=jobs, make_normalize=make_normalize)
    finally:
        if writer is not None:
            writer.close()
    elapsed = time.perf_counter() - started
    rate = stats["records"] / elapsed if elapsed > 0 else 0.0
    click.echo(
        f"auditpipe parse: {stats['records']} records, {stats['events']} events, "
        f"{stats['partial_events']} partial, {stats['rejects']} rejects, "
        f"{stats['lost_serials']} lost serials, {stats['late_records']} late records; "
        f"{elapsed:.2f}s, {rate:,.0f} records/s",
        err=True,
    )
    if stats["read_errors"]:
        sys.exit(1)  # a damaged file (gzip damage, overlong lines, I/O error): what could be read was written
    if strict and stats["rejects"]:
        sys.exit(1)


def _lake_writer(path: str):
    from auditpipe.lake.config import LakeOutput
    from auditpipe.lake.writer import LakeWriter

    return LakeWriter(LakeOutput(path=path))
