"""`auditpipe run`: collect live audit events from the kernel and write them as JSON lines.

Configuration comes from ``--config FILE`` (TOML, see docs/config.md), else
``/etc/auditpipe/auditpipe.toml`` when it exists, else built-in defaults; the shorthand flags
override the file. Everything is validated before the kernel is touched.
"""

from __future__ import annotations

import logging
import sys

import click

from auditpipe.normalize import FORMATS

__all__ = ["apply_overrides", "run"]

log = logging.getLogger("auditpipe.run")


def apply_overrides(cfg, rules=(), fmt=None, output=None, mode=None, status_file=None):
    """The shorthand flags on top of a loaded configuration (also applied again on SIGHUP)."""
    from auditpipe.config import FileOutput, StdoutOutput, default_outputs

    if rules:
        cfg.rules.files = list(rules)
    if fmt:
        if fmt == "coalesced" and cfg.outputs == default_outputs(cfg.normalize.format):
            cfg.outputs = default_outputs(fmt)  # the default lake takes no coalesced documents
        cfg.normalize.format = fmt
    if output:
        cfg.outputs = [StdoutOutput() if output == "-" else FileOutput(path=output)]
    if mode:
        cfg.kernel.mode = mode
    if status_file:
        cfg.status.path = status_file
    return cfg


def _setup_logging(level: str) -> None:
    """Run's level; the format (text, or ``auditpipe --log-format json``) from the command line."""
    from auditpipe.cli.logfmt import configure_logging

    configure_logging(level)


def _compile(cfg):
    from auditpipe.config import rule_files
    from auditpipe.sources.kernel import compile_rule_files

    if cfg.source.type == "file":
        return None  # following a file: no rules are installed
    files = rule_files(cfg)
    if not files:
        return None
    return compile_rule_files(files)


@click.command()
@click.option("-c", "--config", "config_path", type=click.Path(dir_okay=False),
              help="TOML configuration file (default /etc/auditpipe/auditpipe.toml if present).")
@click.option("--rules", multiple=True, type=click.Path(dir_okay=False),
              help="Rule file (auditctl syntax); repeat for more. Replaces [rules] files.")
@click.option("--format", "fmt", type=click.Choice(FORMATS), help="Output format (default ecs).")
@click.option("-o", "--output", type=click.Path(dir_okay=False, allow_dash=True),
              help="Write JSON lines to this file ('-' for stdout). Replaces [[outputs]].")
@click.option("--mode", type=click.Choice(["auto", "unicast", "multicast"]),
              help="unicast: be the audit daemon; multicast: read-only copy beside another; "
                   "auto (default): unicast unless another daemon is registered.")
@click.option("--status-file", type=click.Path(dir_okay=False), help="Where to write the agent's counters.")
@click.option("--check", is_flag=True, help="Validate the configuration and rule files, print a summary, exit.")
@click.option("-v", "--verbose", is_flag=True, help="Debug logging.")
def run(config_path, rules, fmt, output, mode, status_file, check, verbose):
    """Collect live audit events from the kernel into JSON lines (ECS by default).

    Needs root (CAP_AUDIT_CONTROL; CAP_AUDIT_READ for multicast). On SIGTERM/SIGINT it flushes
    the events in flight, closes the outputs, deletes the rules it installed, puts the audit
    status back as it was and exits 0. SIGHUP reloads the configuration and rules.
    """
    from auditpipe.config import ConfigError, load_config
    from auditpipe.kernel.rules import RuleErrors

    def load():
        return apply_overrides(load_config(config_path), rules, fmt, output, mode, status_file)

    try:
        cfg = load()
    except ConfigError as e:
        click.echo(f"Error: {e}", err=True)
        sys.exit(2)
    _setup_logging("debug" if verbose else cfg.log_level)
    import faulthandler
    import signal

    faulthandler.register(signal.SIGUSR1, all_threads=True)  # `kill -USR1 PID`: stacks to stderr
    try:
        ruleset = _compile(cfg)
    except RuleErrors as e:
        for err in e.errors:
            click.echo(f"Error: {err}", err=True)
        click.echo(f"{len(e.errors)} error(s) in the rule files: nothing was changed", err=True)
        sys.exit(2)
    from auditpipe.pipeline.assembly import build_source, normalizer_for

    try:
        normalize = normalizer_for(cfg)
    except ConfigError as e:
        click.echo(f"Error: {e}", err=True)
        sys.exit(2)
    if check:
        _print_check(cfg, ruleset)
        return
    if cfg.source.type != "file":
        from auditpipe.sources.kernel import missing_capabilities, privilege_message

        missing = missing_capabilities(cfg.kernel.mode)
        if missing:
            click.echo(f"Error: {privilege_message(missing)}", err=True)
            sys.exit(1)

    from auditpipe.pipeline.live import LiveRunner
    from auditpipe.pipeline.outputs import open_outputs
    from auditpipe.sources.kernel import KernelSourceError

    try:
        outputs = open_outputs(cfg)
    except ConfigError as e:
        click.echo(f"Error: {e}", err=True)
        sys.exit(2)
    runner = LiveRunner(cfg, build_source(cfg), normalize=normalize, outputs=outputs, reload_config=load,
                        compile_rules=_compile, drop_privileges=True)
    try:
        code = runner.run(None if cfg.source.type == "file" else ruleset)
    except KernelSourceError as e:
        click.echo(f"Error: {e}", err=True)
        sys.exit(1)
    sys.exit(code)


def _print_check(cfg, ruleset) -> None:
    from auditpipe.config import rule_files

    k = cfg.kernel
    click.echo(f"configuration: {cfg.path or '(built-in defaults)'}")
    click.echo(f"source: {cfg.source.type}; mode {k.mode}; backpressure {k.backpressure_strategy}")
    files = rule_files(cfg)
    if ruleset is None:
        click.echo("rules: none configured (the kernel's rule list is left alone)")
    else:
        n = sum(1 for it in ruleset.items if it.op == "add")
        click.echo(f"rules: {n} rule(s) from {len(files)} file(s): {', '.join(files)}")
        if ruleset.status:
            click.echo("rule files set: " + ", ".join(f"{a}={b}" for a, b in ruleset.status.items()))
    click.echo(f"format: {cfg.normalize.format}")
    from auditpipe.pipeline.outputs import describe_output

    for o in cfg.outputs:
        click.echo(f"output: {type(o).__struct_config__.tag} {describe_output(o)} (documents: {o.documents})")
    click.echo(f"status file: {cfg.status.path}")
    click.echo("OK")
