"""The `auditpipe` command line. Each subcommand lives in its own module of this package."""

import gc

import click

from auditpipe import __version__


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="auditpipe")
def main() -> None:
    """Linux audit pipeline: parse, collect, normalize and ship audit events."""
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
    from auditpipe.cli import detect_cmd; main.add_command(detect_cmd.detect)  # noqa: E702


_register()
