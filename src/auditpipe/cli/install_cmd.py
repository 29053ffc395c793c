"""`auditpipe install --systemd`: write the systemd unit and the default config.

The unit goes to PREFIX/etc/systemd/system/auditpipe.service, the config to
PREFIX/etc/auditpipe/auditpipe.toml (an existing config is kept unless --force). --dry-run prints
both instead. Then: `systemctl daemon-reload && systemctl enable --now auditpipe`.
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import click

from auditpipe.service.systemd import CONFIG_PATH, UNIT_NAME, ServiceLayout

__all__ = ["install"]


def _default_executable() -> str:
    found = shutil.which("auditpipe")
    return os.path.abspath(found) if found else os.path.join(os.path.dirname(sys.executable),
                                                             "auditpipe")


def _write(path: Path, text: str, mode: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.chmod(tmp, mode)
    os.replace(tmp, path)


@click.command("install")
@click.option("--systemd", "systemd", is_flag=True, required=True,
              help="Install as a systemd service (the only kind so far).")
@click.option("--prefix", default="/", show_default=True, type=click.Path(file_okay=False),
              help="Root under which etc/systemd/system and etc/auditpipe are written.")
@click.option("--beside-auditd", is_flag=True,
              help="Run next to auditd: multicast mode, auditd keeps the rules.")
@click.option("--executable", default=None, help="auditpipe path for ExecStart "
              "(default: the one on PATH, else next to this Python).")
@click.option("--force", is_flag=True, help="Overwrite an existing config file.")
@click.option("--dry-run", is_flag=True, help="Print what would be written; write nothing.")
def install(systemd: bool, prefix: str, beside_auditd: bool, executable: str | None,
            force: bool, dry_run: bool) -> None:
    """Install auditpipe as a service: a sandboxed systemd unit and a default config."""
    layout = ServiceLayout(executable=executable or _default_executable(),
                           beside_auditd=beside_auditd)
    root = Path(prefix)
    unit_path = root / "etc" / "systemd" / "system" / UNIT_NAME
    config_path = root / CONFIG_PATH.lstrip("/")
    if dry_run:
        click.echo(f"# {unit_path}\n{layout.unit()}\n# {config_path}\n{layout.config()}", nl=False)
        return
    _write(unit_path, layout.unit(), 0o644)
    click.echo(f"wrote {unit_path}")
    if config_path.exists() and not force:
        click.echo(f"kept {config_path} (exists; --force overwrites)")
    else:
        _write(config_path, layout.config(), 0o600)
        click.echo(f"wrote {config_path}")
    if prefix == "/":
        click.echo("next: systemctl daemon-reload && systemctl enable --now auditpipe")
