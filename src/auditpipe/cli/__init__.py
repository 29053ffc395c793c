"""The `auditpipe` command line. Each subcommand lives in its own module of this package."""

import atexit
import gc
import importlib

import click

from auditpipe import __version__

#: command name → (module of this package, attribute). A module is imported when its command
#: runs (or for `--help`), so `auditpipe parse` does not pay for the imports of `rules`,
#: `install` or `serve` (about half of parse's start-up, measured).
COMMANDS = {
    "parse": ("parse_cmd", "parse"), "serve": ("serve_cmd", "serve"), "rules": ("rules_cmd", "rules"),
    "run": ("run_cmd", "run"), "status": ("status_cmd", "status"), "install": ("install_cmd", "install"),
    "query": ("query_cmd", "query"), "lake": ("lake_cmd", "lake"), "report": ("report_cmd", "report"),
    "detect": ("detect_cmd", "detect"), "es": ("es_cmd", "es"), "elasticsearch": ("es_cmd", "es"),
}


class LazyGroup(click.Group):
    """A group whose subcommands are imported on first use (click's documented lazy-loading hook)."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*super().list_commands(ctx), *COMMANDS})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name in COMMANDS:
            module, attr = COMMANDS[cmd_name]
            command: click.Command = getattr(importlib.import_module(f"auditpipe.cli.{module}"), attr)
            return command
        return super().get_command(ctx, cmd_name)


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
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
    # At exit the interpreter collects once more over everything still alive (a live run's
    # process table, parse's tables): tens of milliseconds for nothing, since the process ends.
    # Frozen objects are left out (files and outputs are closed by then; atexit runs this last).
    atexit.unregister(gc.freeze)  # once, however often main runs in one process (tests)
    atexit.register(gc.freeze)
