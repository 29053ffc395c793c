"""`auditpipe rules`: check, load, list and diff kernel audit rules written in auditctl syntax.

Files are compiled completely before the kernel is touched, so a typo never leaves a half-loaded
rule set behind; the kernel's own refusals are reported with the file and line of the rule.
"""

from __future__ import annotations

import difflib
import errno
import sys

import click

from auditpipe.kernel.immutable import DEFAULT_PENDING_PATH, LOCKED_MESSAGE, kernel_locked, write_pending
from auditpipe.kernel.rules import RuleData, RuleItem, expected_listing, format_rule, parse_rules
from auditpipe.kernel.rules.lint import lint
from auditpipe.tables import MACHINES, K

__all__ = ["rules"]

_FILES = click.argument("files", nargs=-1, required=True,
                        type=click.Path(exists=True, dir_okay=False, allow_dash=True))


def _read(files: tuple[str, ...]) -> list[tuple[str, str]]:
    """(name, text) of each rules file; "-" is stdin."""
    texts = []
    for path in files:
        if path == "-":
            texts.append(("<stdin>", sys.stdin.read()))
        else:
            with open(path, encoding="utf-8", errors="surrogateescape") as f:
                texts.append((path, f.read()))
    return texts


def _compile(files: tuple[str, ...], texts: list[tuple[str, str]] | None = None
             ) -> tuple[list[RuleItem], int]:
    """Compile every file; print every problem (and warning) as file:line: message."""
    items: list[RuleItem] = []
    nerr = 0
    for name, text in texts if texts is not None else _read(files):
        got, errors = parse_rules(text, name)
        for e in errors:
            click.echo(str(e), err=True)
        for it in got:
            for w in it.warnings:
                click.echo(f"{it.file}:{it.line}: warning: {w}", err=True)
        items.extend(got)
        nerr += len(errors)
    return items, nerr


def _control(nl, it: RuleItem) -> None:
    c = it.control
    if c == "delete_all":
        if it.value is None:
            nl.delete_all_rules()
        else:
            key = str(it.value).encode()
            for blob in nl.list_rules():
                r = RuleData.from_bytes(blob)
                if any(f.field == K.FILTERKEY and key in (f.text or b"") for f in r.fields):
                    nl.delete_rule(blob)
    elif c in ("enabled", "failure", "rate_limit", "backlog_limit", "backlog_wait_time"):
        nl.set_status(**{c: int(it.value)})
    elif c == "loginuid_immutable":
        nl.set_loginuid_immutable()
    elif c == "reset_lost":
        nl.set_status(lost=0)
    elif c == "reset_backlog_wait_time_actual":
        nl.set_status(backlog_wait_time_actual=0)
    # ignore_errors / continue_on_error: loading always continues unless --strict


def _netlink():
    from auditpipe.kernel.netlink import AuditNetlink, AuditNetlinkError

    try:
        return AuditNetlink()
    except AuditNetlinkError as e:
        raise click.ClickException(str(e)) from None


def _fail(e: Exception, code: int = 1) -> None:
    click.echo(f"Error: {e}", err=True)
    sys.exit(code)


@click.group("rules")
def rules() -> None:
    """Check, load, list and diff kernel audit rules (auditctl rules-file syntax)."""


@rules.command("check")
@_FILES
@click.option("--arch", "arches", multiple=True, metavar="ARCH",
              type=click.Choice(sorted(set(MACHINES.values())), case_sensitive=False),
              help="Also check for this arch (repeatable); arches the files name with "
                   "-F arch= are always checked.")
def check(files: tuple[str, ...], arches: tuple[str, ...]) -> None:
    """Validate rules files without touching the kernel; every problem is printed as
    FILE:LINE: MESSAGE on stderr. Also lints the rule set: syscalls missing on an arch,
    duplicate and shadowed rules, -S all without a filter, lines after -e 2 (errors and
    warnings). Exit 1 on any error."""
    texts = _read(files)
    items, nerr = _compile(files, texts)
    findings = lint(texts, [a.lower() for a in arches])
    for f in findings:
        click.echo(str(f), err=True)
    nerr += sum(1 for f in findings if f.severity == "error")
    nrules = sum(1 for it in items if it.op != "control")
    if nerr:
        click.echo(f"{nerr} error(s) in {len(files)} file(s)", err=True)
        sys.exit(1)
    nwarn = len(findings)
    click.echo(f"{len(files)} file(s) OK: {nrules} rule(s), "
               f"{len(items) - nrules} control line(s)"
               + (f", {nwarn} warning(s)" if nwarn else ""))


@rules.command("load")
@_FILES
@click.option("-c", "--continue", "keep_going", is_flag=True,
              help="Load every valid line even when others are invalid (as auditctl -c); the "
                   "invalid ones are reported and the exit status is 1.")
@click.option("--strict", is_flag=True, help="Stop at the first line the kernel refuses.")
@click.option("--pending-path", default=DEFAULT_PENDING_PATH, show_default=True,
              type=click.Path(dir_okay=False),
              help="On a locked kernel (immutable mode) the rules are written here for the "
                   "next boot instead.")
def load(files: tuple[str, ...], keep_going: bool, strict: bool, pending_path: str) -> None:
    """Replace the kernel's rules with those in FILES: delete all loaded rules, then apply the
    lines in order (control lines such as -b/-f/-e/--backlog_wait_time, and rules). By default
    nothing is loaded when any line is invalid. A rule the kernel refuses is reported with its
    FILE:LINE and the kernel's error."""
    from auditpipe.kernel.netlink import AuditNetlinkError

    items, nerr = _compile(files)
    if nerr and not keep_going:
        click.echo(f"{nerr} error(s): nothing loaded (-c loads the valid lines)", err=True)
        sys.exit(1)
    with _netlink() as nl:
        try:
            locked = kernel_locked(nl.get_status())
        except AuditNetlinkError as e:
            _fail(e)
        if locked:
            _write_pending(items, files, pending_path)
            sys.exit(1)
        added, refused = _apply(nl, items, strict)
    click.echo(f"loaded {added} rule(s)" + (f", {refused} line(s) refused" if refused else "")
               + (f", {nerr} invalid line(s) skipped" if nerr else ""))
    if refused or nerr:
        sys.exit(1)


def _write_pending(items: list[RuleItem], files: tuple[str, ...], path: str) -> None:
    """Locked kernel: say so once and keep the wanted rules for the next boot."""
    click.echo(f"Error: {LOCKED_MESSAGE}; nothing loaded.", err=True)
    try:
        dest = write_pending([it.text for it in items], path, ", ".join(files))
    except OSError as e:
        click.echo(f"could not write the rules for the next boot to {path}: {e}", err=True)
        return
    click.echo(f"pending: {len(items)} line(s) written to {dest} for the next boot", err=True)


def _apply(nl, items: list[RuleItem], strict: bool) -> tuple[int, int]:
    """Delete all rules, apply items in order; report refusals with file:line."""
    from auditpipe.kernel.netlink import AuditNetlinkError

    try:
        nl.delete_all_rules()
    except AuditNetlinkError as e:
        _fail(e)
    added = refused = 0
    for it in items:
        try:
            if it.op == "control":
                _control(nl, it)
            elif it.op == "add":
                nl.add_rule(it.data)
                added += 1
            else:
                nl.delete_rule(it.data)
        except AuditNetlinkError as e:
            refused += 1
            click.echo(f"{it.file}:{it.line}: {e}", err=True)
            if strict or e.errno == errno.EPERM:  # no privilege or locked: all will fail
                click.echo(f"stopped after {added} rule(s)", err=True)
                sys.exit(1)
    return added, refused


@rules.command("list")
def list_() -> None:
    """Print the loaded rules the way `auditctl -l` does."""
    from auditpipe.kernel.netlink import AuditNetlinkError

    with _netlink() as nl:
        try:
            blobs = nl.list_rules()
        except AuditNetlinkError as e:
            _fail(e)
    for blob in blobs:
        click.echo(format_rule(blob))
    if not blobs:
        click.echo("No rules")


@rules.command("diff")
@_FILES
def diff(files: tuple[str, ...]) -> None:
    """Show how the loaded rules differ from FILES, as a unified diff of `auditctl -l` lines
    (--- loaded, +++ desired). Exit 0 when equal, 1 when different, 2 on errors."""
    from auditpipe.kernel.netlink import AuditNetlinkError

    items, nerr = _compile(files)
    if nerr:
        click.echo(f"{nerr} error(s) in the rules files", err=True)
        sys.exit(2)
    try:
        with _netlink() as nl:
            loaded = [format_rule(b) for b in nl.list_rules()]
    except (AuditNetlinkError, click.ClickException) as e:
        _fail(e, 2)
    desired = expected_listing(items)
    if loaded == desired:
        click.echo(f"loaded rules match ({len(desired)} rule(s))", err=True)
        return
    color = sys.stdout.isatty()
    for line in difflib.unified_diff(loaded, desired, "loaded (kernel)",
                                     "desired (" + ", ".join(files) + ")", lineterm=""):
        fg = ("green" if line.startswith("+") else "red" if line.startswith("-") else
              "cyan" if line.startswith("@@") else None)
        click.echo(click.style(line, fg=fg) if color and fg else line)
    sys.exit(1)
