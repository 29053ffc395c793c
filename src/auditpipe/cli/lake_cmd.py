"""`auditpipe lake compact|expire`: keep a Parquet lake in shape (safe while writers run)."""

from __future__ import annotations

import click

from auditpipe.lake.config import DEFAULT_LAKE_DIR, parse_duration

__all__ = ["lake"]


@click.group()
def lake():
    """Maintain the Parquet lake (see docs/lake.md)."""


@lake.command()
@click.argument("directory", default=DEFAULT_LAKE_DIR)
@click.option("--target-size", default="128MB", show_default=True, help="Merged files up to this size.")
def compact(directory, target_size):
    """Merge each partition's small files into large ones, atomically."""
    from auditpipe.lake.maintain import compact as run

    try:
        res = run(directory, _size(target_size))
    except RuntimeError as e:
        raise click.ClickException(str(e)) from None
    click.echo(f"lake compact: {res.partitions} partitions, {res.files_in} files → {res.files_out} "
               f"({res.bytes_in:,} → {res.bytes_out:,} bytes)"
               + (f"; {len(res.skipped)} groups left as they were" if res.skipped else ""))


@lake.command()
@click.argument("directory", default=DEFAULT_LAKE_DIR)
@click.option("--older-than", required=True, help="Delete partitions whose date is older than this (90d, 12w, 36h).")
def expire(directory, older_than):
    """Delete whole date partitions older than --older-than."""
    from auditpipe.lake.maintain import expire as run

    try:
        seconds = parse_duration(older_than)
    except ValueError as e:
        raise click.BadParameter(str(e), param_hint="--older-than") from None
    removed = run(directory, seconds)
    click.echo(f"lake expire: {len(removed)} partitions removed")


def _size(text: str) -> int:
    t = text.strip().upper().removesuffix("B")
    mult = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}.get(t[-1:], 1)
    try:
        return int(float(t[:-1] if mult > 1 else t) * mult)
    except ValueError:
        raise click.BadParameter(f"{text!r} is not a size like 128MB", param_hint="--target-size") from None
