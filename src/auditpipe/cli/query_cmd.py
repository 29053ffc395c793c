"""`auditpipe query`: SQL over the lake (views events, records, alerts) on DuckDB or Spark."""

from __future__ import annotations

import sys
from typing import Any

import click

from auditpipe.lake.config import DEFAULT_LAKE_DIR

__all__ = ["query", "rich_table", "write_result"]

LAKE_OPTION = click.option("--lake", default=DEFAULT_LAKE_DIR, show_default=True, envvar="AUDITPIPE_LAKE",
                           help="The lake's directory (or a pyarrow filesystem URI).")


@click.command()
@click.argument("sql")
@LAKE_OPTION
@click.option("--format", "fmt", type=click.Choice(["table", "csv", "json", "parquet"]), default=None,
              help="Output: a table on a terminal (default there), csv (default when piped), JSON lines, Parquet.")
@click.option("-o", "--output", type=click.Path(dir_okay=False, allow_dash=True), default="-",
              help="Write the result here (default stdout).")
@click.option("--engine", type=click.Choice(["duckdb", "spark"]), default="duckdb", show_default=True)
@click.option("--master", default="local[2]", show_default=True, help="spark: local[N] or a cluster URL.")
@click.option("--no-dedup", is_flag=True, help="Show rows a writer sent twice after a crash (no deduplication).")
def query(sql, lake, fmt, output, engine, master, no_dedup):
    """Run SQL over the lake: views `events` (ECS), `records` (Panther rows), `alerts`.

    \b
    auditpipe query "SELECT action, count(*) n FROM events GROUP BY action ORDER BY n DESC"
    auditpipe query --format csv "SELECT * FROM records WHERE type = 'USER_LOGIN'"
    """
    table = run_query(sql, lake, engine=engine, master=master, dedup=not no_dedup)
    if fmt is None:
        fmt = "table" if output == "-" and sys.stdout.isatty() else "csv"
    write_result(table, fmt, output)


def run_query(sql: str, lake: str, *, engine: str = "duckdb", master: str = "local[2]", dedup: bool = True) -> Any:
    from auditpipe.lake.query import DuckEngine, NoLake, QueryError, SparkEngine

    try:
        eng = SparkEngine(lake, master=master, dedup=dedup) if engine == "spark" else DuckEngine(lake, dedup=dedup)
    except (NoLake, QueryError) as e:
        raise click.ClickException(str(e)) from None
    try:
        return eng.arrow(sql)
    except QueryError as e:
        raise click.ClickException(f"{engine}: {e}") from None
    finally:
        eng.close()


def rich_table(table: Any, title: str | None = None) -> Any:
    from rich.table import Table

    t = Table(title=title, title_justify="left", show_lines=False)
    for name in table.column_names:
        t.add_column(name, overflow="fold")
    for row in table.to_pylist():
        t.add_row(*("" if v is None else str(v) for v in row.values()))
    return t


def write_result(table: Any, fmt: str, output: str) -> None:
    if fmt == "table":
        from rich.console import Console

        if output == "-":
            Console().print(rich_table(table))
        else:
            with open(output, "w", encoding="utf-8") as f:
                Console(file=f, width=200).print(rich_table(table))
        click.echo(f"({table.num_rows} rows)", err=True)
        return
    if fmt == "parquet" and output == "-" and sys.stdout.isatty():
        raise click.UsageError("--format parquet writes binary: give -o FILE or redirect stdout")
    out = sys.stdout.buffer if output == "-" else open(output, "wb")
    try:
        _WRITERS[fmt](table, out)
        out.flush()
    finally:
        if out is not sys.stdout.buffer:
            out.close()


def _csv(table: Any, out: Any) -> None:
    import pyarrow as pa
    import pyarrow.csv as pacsv

    # lists (category, tags, args) as JSON text: CSV has no list type
    cols = [_json_text(c) if pa.types.is_list(c.type) or pa.types.is_struct(c.type) else c for c in table.columns]
    pacsv.write_csv(pa.Table.from_arrays(cols, names=table.column_names), out)


def _json_text(col: Any) -> Any:
    import orjson
    import pyarrow as pa

    return pa.array([None if v is None else orjson.dumps(v).decode() for v in col.to_pylist()], pa.string())


def _json(table: Any, out: Any) -> None:
    import orjson

    for row in table.to_pylist():
        out.write(orjson.dumps(row, default=str, option=orjson.OPT_APPEND_NEWLINE | orjson.OPT_NON_STR_KEYS))


def _parquet(table: Any, out: Any) -> None:
    import pyarrow.parquet as pq

    pq.write_table(table, out, compression="zstd")


_WRITERS = {"csv": _csv, "json": _json, "parquet": _parquet}
