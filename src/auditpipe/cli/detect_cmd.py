"""`auditpipe detect`: check, test and run detection rules; hunt over the lake."""

from __future__ import annotations

import sys
import time

import click

from auditpipe.normalize import FORMATS

__all__ = ["detect"]

_RULES = click.argument("rules", nargs=1, type=click.Path(exists=True))


@click.group()
def detect() -> None:
    """Sigma and Python detection rules: on files, on the stream ([detect] rules) and over the lake."""


@detect.command()
@_RULES
@click.option("--verbose", "-v", is_flag=True, help="Also list every rule that runs.")
def check(rules, verbose):
    """Load RULES (a file or folder) and report every rule that cannot run, with the reason."""
    from auditpipe.detect.engine import load_rules

    rs = load_rules([rules])
    if verbose:
        for r in rs.sigma:
            click.echo(f"ok    sigma  {r.category:<18} {r.id}  {r.title}")
        for p in rs.python:
            click.echo(f"ok    python {'':<18} {p.id}  {p.title}")
    for pr in rs.problems:
        click.echo(f"skip  {pr.path}: {pr.title}: {pr.reason}")
    by_cat: dict[str, int] = {}
    for r in rs.sigma:
        by_cat[r.category] = by_cat.get(r.category, 0) + 1
    cats = ", ".join(f"{n} {c}" for c, n in sorted(by_cat.items()))
    click.echo(f"{len(rs.sigma)} Sigma rules run ({cats}), {len(rs.python)} Python rules run, "
               f"{len(rs.problems)} not run")
    sys.exit(1 if not (rs.sigma or rs.python) else 0)


@detect.command()
@_RULES
def test(rules):
    """Run the embedded test cases of the Python rules in RULES (Panther `Tests`)."""
    from auditpipe.detect.engine import load_rules
    from auditpipe.detect.pyrules import run_tests

    rs = load_rules([rules])
    failed = 0
    results = run_tests(rs.python)
    for t in results:
        failed += not t.passed
        click.echo(f"{'PASS' if t.passed else 'FAIL'}  {t.rule}: {t.name}{'  ' + t.detail if t.detail else ''}")
    for pr in rs.problems:
        if pr.path.endswith(".py"):
            failed += 1
            click.echo(f"ERROR {pr.path}: {pr.reason}")
    click.echo(f"{len(results)} tests, {failed} failed")
    sys.exit(1 if failed else 0)


@detect.command()
@_RULES
@click.argument("paths", nargs=-1, required=True, type=click.Path(exists=True, dir_okay=False, allow_dash=True))
@click.option("--format", "fmt", type=click.Choice(FORMATS), default="ecs", show_default=True,
              help="Format of the events (with --events) and of the event embedded in each alert.")
@click.option("-o", "--output", type=click.Path(dir_okay=False, allow_dash=True), default="-",
              help="Write JSON lines here (default stdout).")
@click.option("--events", is_flag=True, help="Write the events too, not only the alerts.")
@click.option("--dedup-minutes", type=float, default=60.0, show_default=True)
@click.option("--passwd", type=click.Path(exists=True, dir_okay=False), help="Resolve uids from this passwd file.")
@click.option("--group", type=click.Path(exists=True, dir_okay=False), help="Resolve gids from this group file.")
def run(rules, paths, fmt, output, events, dedup_minutes, passwd, group):
    """Offline: audit.log FILEs → alerts, through the same pipeline and detection stage as `run`."""
    from auditpipe.cli.common import build_normalizer, run_files
    from auditpipe.detect.config import DetectConfig
    from auditpipe.detect.engine import DetectStage
    from auditpipe.normalize.idresolve import IdResolver

    resolver = IdResolver(passwd_file=passwd, group_file=group)
    base = build_normalizer(fmt, passwd=passwd, group=group)
    stage = DetectStage(DetectConfig(rules=[rules], dedup_minutes=dedup_minutes), fmt, resolver=resolver)

    def normalize(event):
        docs = base(event)
        out = stage.process(event, docs, time.time())
        return out if events else out[len(docs):]

    stats = run_files(list(paths), normalize, output=output)
    m = stage.metrics()
    click.echo(f"auditpipe detect: {stats['events']} events, {m['detect.alerts']} alerts, "
               f"{m['detect.suppressed']} suppressed, {m['detect.rule_errors']} rule errors, "
               f"{m['detect.rules_sigma'] + m['detect.rules_python']} rules ({m['detect.rules_not_run']} not run)",
               err=True)


@detect.command()
@_RULES
@click.option("--lake", "lake", required=True, type=click.Path(exists=True, file_okay=False),
              help="The lake's root folder (DIR/ecs/date=…/host=…/part-….parquet).")
@click.option("--since", default="30d", show_default=True, help="How far back: 30d, 12h, 90m (or 'all').")
@click.option("--json", "as_json", is_flag=True, help="Print each match as a JSON line.")
def hunt(rules, lake, since, as_json):
    """Run the Sigma rules in RULES as SQL (DuckDB) over the lake and print the matches."""
    import orjson

    from auditpipe.detect.engine import load_rules
    from auditpipe.detect.hunt import hunt as run_hunt
    from auditpipe.detect.hunt import parse_since

    rs = load_rules([rules])
    matches, problems = run_hunt(rs.sigma, lake, parse_since(since, time.time()))
    for m in matches:
        if as_json:
            click.echo(orjson.dumps(m).decode())
        else:
            click.echo(f"{m['timestamp']}  {m['host']}  {m['event_id']}  {m['rule_id']}  {m['rule']}")
    for p in problems:
        click.echo(f"not hunted: {p}", err=True)
    click.echo(f"{len(matches)} matches from {len(rs.sigma)} rules", err=True)
