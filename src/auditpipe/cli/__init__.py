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
    from auditpipe.cli import parse_cmd

    main.add_command(parse_cmd.parse)
    from auditpipe.cli import serve_cmd; main.add_command(serve_cmd.serve)  # noqa: E702
    from auditpipe.cli import rules_cmd; main.add_command(rules_cmd.rules)  # noqa: E702
    from auditpipe.cli import run_cmd; main.add_command(run_cmd.run)  # noqa: E702
    from auditpipe.cli import status_cmd; main.add_command(status_cmd.status)  # noqa: E702
    from auditpipe.cli import install_cmd; main.add_command(install_cmd.install)  # noqa: E702
    from auditpipe.cli import es_cmd; es_cmd.register(main)  # noqa: E702
    from auditpipe.cli import query_cmd; main.add_command(query_cmd.query)  # noqa: E702
    from auditpipe.cli import lake_cmd; main.add_command(lake_cmd.lake)  # noqa: E702
    from auditpipe.cli import report_cmd; main.add_command(report_cmd.report)  # noqa: E702
    from auditpipe.cli import detect_cmd; main.add_command(detect_cmd.detect)  # noqa: E702


_register()
