"""`auditpipe report`: aureport-like summaries of the lake, as tables or one HTML page."""

from __future__ import annotations

import click

from auditpipe.cli.query_cmd import LAKE_OPTION
from auditpipe.lake.config import parse_duration

__all__ = ["report"]


@click.command()
@LAKE_OPTION
@click.option("--since", default="24h", show_default=True, help="Events of this last period (90d, 24h, 30m) or 'all'.")
@click.option("--host", help="Only this host.")
@click.option("--top", default=10, show_default=True, help="Rows of the top-N tables.")
@click.option("--html", "html_path", type=click.Path(dir_okay=False),
              help="Also write one self-contained HTML page with charts.")
def report(lake, since, host, top, html_path):
    """Logins, authentications, executables, account changes, rule keys, anomalies, files and
    loss per host, from the lake."""
    from rich.console import Console
    from rich.table import Table

    from auditpipe.lake.query import NoLake, QueryError
    from auditpipe.lake.report import build_report, cell

    try:
        seconds = None if since == "all" else parse_duration(since)
    except ValueError as e:
        raise click.BadParameter(str(e), param_hint="--since") from None
    try:
        r = build_report(lake, seconds, host, top=top, charts=bool(html_path))
    except (NoLake, QueryError) as e:
        raise click.ClickException(str(e)) from None
    console = Console()
    console.print(f"[bold]auditpipe report[/bold]: events since {r.since}" + (f" on {host}" if host else ""))
    for section, table in r.sections:
        t = Table(title=section.title.format(top=top), title_justify="left")
        rows = [[cell(v) for v in row.values()] for row in table.to_pylist()]
        if section.name == "summary":  # one row of many columns: read better as name/value pairs
            t.add_column("")
            t.add_column("")
            rows = [[k, v] for k, v in zip(table.column_names, rows[0], strict=True)] if rows else []
        else:
            for name in table.column_names:
                t.add_column(name, overflow="fold")
        for row in rows:
            t.add_row(*row)
        if table.num_rows == 0:
            console.print(f"[bold]{section.title.format(top=top)}[/bold]: none")
        else:
            console.print(t)
    if html_path:
        from auditpipe.lake.html import render_html

        with open(html_path, "w", encoding="utf-8") as f:
            f.write(render_html(r))
        click.echo(f"wrote {html_path}", err=True)
