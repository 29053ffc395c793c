"""Pieces shared by the commands: building a normalizer from options, running files through
the pipeline with a progress bar, and reporting rejects."""

from __future__ import annotations

import itertools
import os
import sys
import zlib
from collections.abc import Iterable
from typing import Literal, cast

import click

from auditpipe.config import Config, NormalizeConfig, ReassemblyConfig
from auditpipe.normalize.jsonl import dumps_line
from auditpipe.pipeline import assembly
from auditpipe.sources.files import MAX_LINE, DamagedInput, iter_line_chunks, open_audit_file

__all__ = ["build_normalizer", "run_files", "RejectWriter"]

MAX_REPORTED_REJECTS = 20
Format = Literal["ecs", "panther", "coalesced"]


def build_normalizer(fmt: str, resolve_ids: bool = True, passwd=None, group=None, include_raw: bool = False,
                     extra_tags=()):
    """The normalizer for command-line options (the same assembly as a ``[normalize]`` table)."""
    n = NormalizeConfig(format=cast(Format, fmt), resolve_ids=resolve_ids, passwd_file=passwd, group_file=group,
                        include_raw=include_raw, tags=list(extra_tags))
    return assembly.build_normalizer(n)


class RejectWriter:
    """Counts, reports (file:line and reason, the first few on stderr) and sets aside bad lines."""

    def __init__(self, path: str | None):
        self.file = open(path, "w", encoding="utf-8", errors="surrogateescape") if path else None
        self.count = 0

    def __call__(self, where: str, line: str, reason: str) -> None:
        self.count += 1
        if self.count <= MAX_REPORTED_REJECTS:
            click.echo(f"{where}: rejected: {reason}", err=True)
        elif self.count == MAX_REPORTED_REJECTS + 1:
            click.echo("… further rejects are counted, not shown", err=True)
        if self.file is not None:
            self.file.write(line + "\n")

    def close(self) -> None:
        if self.file is not None:
            self.file.close()


def _open_output(output: str):
    if output == "-":
        return sys.stdout.buffer, False
    return open(output, "wb"), True


def run_files(paths, normalize, output="-", rejects=None, timeout=2.0, max_in_flight=4096, progress=False,
              lake=None, max_line=None, jobs: int = 1, make_normalize=None) -> dict:
    """Parse `paths` in order (one stream: a rotated set continues across files) and write JSON lines
    (or hand them to ``lake``, a Transport, one batch per chunk). With ``jobs`` > 1 and
    ``make_normalize`` (None when the normalizer carries state across the whole input), pieces are
    parsed by that many forked processes (each inherits ``normalize``), the output the same byte
    for byte (see pipeline/parallel.py)."""
    reject = RejectWriter(rejects)
    cfg = Config(reassembly=ReassemblyConfig(timeout=timeout, max_in_flight=max_in_flight))
    pipeline = assembly.build_pipeline(cfg, reject, normalize=normalize, role="parse")
    parallel = jobs > 1 and make_normalize is not None and lake is None and not pipeline.stages and max_in_flight > 1
    out, close_out = _open_output("-" if lake is not None else output)
    feed = _LakeFeed(lake) if lake is not None else None
    # a line at a time into the buffered output: orjson's results are freed one by one (a chunk's
    # worth of them held at once doubled the peak memory of panther's row per record)
    write = out.writelines if feed is None else feed.write
    bar = _Progress(paths) if progress else None
    read_errors = [0]
    chunks = _chunks(paths, bar, max_line, read_errors)
    try:
        if parallel:
            stats = _run_parallel(paths, jobs, pipeline, out, bar, max_line, read_errors, timeout, max_in_flight)
        else:
            stats = _run_serial(chunks, pipeline, write)
        if feed is not None:
            feed.flush()
        out.flush()
    finally:
        if bar:
            bar.close()
        if close_out:
            out.close()
        reject.close()
    return {**stats, "read_errors": read_errors[0]}


def _chunks(paths, bar, max_line, read_errors: list[int]):
    """(where, first line number, lines) of every file in turn; a read error is reported and
    counted, and the next file follows."""
    for path in paths:
        stream = open_audit_file(path)
        raw = getattr(stream, "fileobj", None) or stream
        where = "<stdin>" if path == "-" else path
        lineno = 1
        try:
            on_progress = bar.updater(path, raw) if bar else None
            for lines in iter_line_chunks(stream, on_progress=on_progress, max_line=max_line):
                yield where, lineno, lines
                lineno += len(lines)
        except (OSError, EOFError, zlib.error) as e:
            # a truncated or corrupt .gz, an I/O error: keep what was read, go on to the next file
            read_errors[0] += 1
            click.echo(f"{where}: read error after line {lineno - 1}: {e}", err=True)
        finally:
            if stream is not sys.stdin.buffer:
                stream.close()


def _run_serial(chunks, pipeline, write) -> dict:
    for where, lineno, lines in chunks:
        docs = pipeline.feed_lines(lines, where, lineno)
        if docs:
            write(map(dumps_line, docs))
    docs = pipeline.flush()
    if docs:
        write(map(dumps_line, docs))
    return pipeline.stats()


def _run_parallel(paths, jobs, pipeline, out, bar, max_line, read_errors, timeout, max_in_flight) -> dict:
    """Pieces of the input to worker processes (regular files as byte ranges the workers read,
    stdin and .gz as text read here); an input of a single piece is parsed here."""
    from auditpipe.pipeline.parallel import MIN_SEGMENT, ParallelParse, file_pieces, is_plain_file, text_pieces

    plain = [path for path in paths if is_plain_file(path)]
    if len(plain) == len(paths):  # no more workers than the pieces can keep busy
        jobs = min(jobs, max(2, sum(map(os.path.getsize, plain)) // MIN_SEGMENT))

    def pieces():
        for path in paths:
            if path in plain:
                yield from file_pieces(path, path, jobs)
            else:
                yield from text_pieces(_chunks([path], bar, max_line, read_errors))

    stream = pieces()
    head = list(itertools.islice(stream, 2))
    if len(head) < 2:
        return _run_serial(_head_chunks(head, bar, max_line, read_errors), pipeline, out.writelines)

    def damaged(where: str, path: str, lines: int) -> None:
        """A file whose overlong lines were skipped: the serial reader's account of it."""
        try:
            with open(path, "rb") as f:
                for _ in iter_line_chunks(f, max_line=max_line):
                    pass
        except DamagedInput as e:
            read_errors[0] += 1
            click.echo(f"{where}: read error after line {lines}: {e}", err=True)

    par = ParallelParse(pipeline.normalize, jobs, out, pipeline.on_reject, timeout=timeout,
                        max_in_flight=max_in_flight, max_line=max_line or MAX_LINE, on_damaged=damaged,
                        on_piece=bar.piece if bar else None)
    try:
        return par.run(itertools.chain(head, stream))
    except RuntimeError as e:  # a worker failed (a file cut short while parsed, say): what, not a traceback
        raise click.ClickException(str(e)) from e


def _head_chunks(head, bar, max_line, read_errors):
    """The one piece of a small input as chunks of lines (a file's piece is all of that file)."""
    for piece in head:
        if piece.text is not None:
            yield piece.where, piece.lineno, piece.text.split("\n")
        else:
            yield from _chunks([piece.path], bar, max_line, read_errors)


class _LakeFeed:
    """JSON lines → the lake transport in batches of ``size`` documents (a send has a fixed cost)."""

    def __init__(self, lake, size: int = 5000):
        self.lake, self.size = lake, size
        self.pending: list[bytes] = []

    def write(self, lines: Iterable[bytes]) -> None:
        self.pending.extend(line[:-1] for line in lines)
        if len(self.pending) >= self.size:
            self.flush()

    def flush(self) -> None:
        if self.pending:
            out = self.lake.send(self.pending)
            self.pending = []
            for _i, why in out.refused:
                click.echo(f"lake: refused a document: {why}", err=True)


class _Progress:
    """A rich progress bar over the bytes of the input files (compressed bytes for .gz)."""

    def __init__(self, paths):
        from rich.console import Console
        from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn

        self.total = sum(os.path.getsize(p) for p in paths if p != "-" and os.path.exists(p))
        self.progress = Progress(TextColumn("[bold]parse"), BarColumn(), DownloadColumn(), TimeRemainingColumn(),
                                 console=Console(stderr=True), transient=True, redirect_stdout=False)
        self.task = self.progress.add_task("parse", total=self.total or None)
        self.done = 0
        self.base = 0  # bytes before the file being written (parse --jobs)
        self.progress.start()

    def updater(self, path, raw):
        base = self.done

        def update(_n):
            try:
                pos = raw.tell()
            except (OSError, ValueError):
                return
            self.progress.update(self.task, completed=base + pos)

        try:
            self.done += os.path.getsize(path)
        except OSError:
            pass
        return update

    def piece(self, piece) -> None:
        """A byte range of a file (parse --jobs) written out."""
        if piece.text is None:
            if piece.start == 0:
                self.base = self.done
                self.done += os.path.getsize(piece.path)
            self.progress.update(self.task, completed=self.base + piece.end)

    def close(self):
        self.progress.stop()
