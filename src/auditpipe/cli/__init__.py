"""The `auditpipe` command line. Each subcommand lives in its own module of this package."""

import gc

import click

from auditpipe import __version__


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="auditpipe")
@click.option("--log-format", type=click.Choice(["text", "json"]), default="text",
              show_default=True, help="Log lines on stderr as text or JSON (journald, shippers).")
@click.pass_context
def main(ctx: click.Context, log_format: str) -> None:
    """Linux audit pipeline: parse, collect, normalize and ship audit events."""
    from auditpipe.cli.logfmt import configure_logging

    ctx.obj = {**(ctx.obj or {}), "log_format": log_format}
    configure_logging("warning", log_format)  # commands that log more set their own level
    # The hot path allocates millions of small acyclic dicts and lists; the default collector
    # thresholds make CPython rescan them over and over (about 7% of parse time, measured).
    gc.freeze()
    gc.set_threshold(100_000, 50, 100)


def _register() -> None:
    # Imported here so that `auditpipe --help` stays cheap and each command owns its module.
    from auditpipe.cli import (
        detect_cmd,
        es_cmd,
        install_cmd,
        lake_cmd,
        parse_cmd,
        query_cmd,
        report_cmd,
        rules_cmd,
        run_cmd,
        serve_cmd,
        status_cmd,
    )

    for command in (parse_cmd.parse, serve_cmd.serve, rules_cmd.rules, run_cmd.run, status_cmd.status,
                    install_cmd.install, query_cmd.query, lake_cmd.lake, report_cmd.report, detect_cmd.detect):
        main.add_command(command)
    es_cmd.register(main)


_register()
