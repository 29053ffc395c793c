"""`auditpipe status`: the kernel's audit status, and the running agent's counters (from the
status file `auditpipe run` writes every few seconds)."""

from __future__ import annotations

import json
import os
import sys
from datetime import UTC, datetime

import click

from auditpipe.kernel.netlink import process_name

__all__ = ["status"]

_ENABLED = {0: "0 (off)", 1: "1 (on)", 2: "2 (on, locked until reboot)"}
_FAILURE = {0: "0 (silent)", 1: "1 (printk)", 2: "2 (panic)"}

#: counter → what it means, in the order shown
COUNTERS = [
    ("records_received", "records received from the kernel"),
    ("records_parsed", "records parsed"),
    ("events", "events assembled"),
    ("documents", "documents written"),
    ("kernel_lost", "records the kernel lost since start"),
    ("kernel_backlog", "kernel backlog (last poll)"),
    ("serial_gaps", "serial numbers never seen"),
    ("userspace_drops", "records dropped by the full queue"),
    ("enobufs", "socket overruns (ENOBUFS)"),
    ("kernel_truncated", "kernel messages cut to the receive slot"),
    ("rejects", "records that did not parse"),
    ("partial_events", "events written incomplete"),
    ("late_records", "records after their event left"),
    ("in_flight_events", "events waiting for their last record"),
    ("source_queue_depth", "queue depth"),
    ("source_queue_peak", "queue peak"),
    ("output_errors", "output writes that failed (retried)"),
    ("output_holds", "times an output stopped accepting writes"),
    ("output_held_seconds", "seconds outputs were held"),
    ("pending_documents", "documents waiting for an output"),
    ("internal_errors", "records that met a bug (logged)"),
    ("rules_installed", "rules installed"),
    ("rules_refused", "rules the kernel refused"),
    ("rules_drift", "times the kernel's rules differed from ours"),
    ("heartbeats", "heartbeat events sent"),
    ("backpressure_seconds", "seconds the kernel reader waited on a full queue"),
    ("reloads", "reloads (SIGHUP)"),
]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _kernel_status() -> tuple[dict | None, int | None, str | None]:
    from auditpipe.kernel.netlink import AuditNetlink, AuditNetlinkError

    try:
        with AuditNetlink() as nl:
            st = nl.get_status()
            try:
                nrules = len(nl.list_rules())
            except AuditNetlinkError:
                nrules = None
        return st, nrules, None
    except (AuditNetlinkError, OSError) as e:
        return None, None, str(e)


def _agent(path: str) -> tuple[dict | None, str | None]:
    from auditpipe.pipeline.status import read_status_file

    if not os.path.exists(path):
        return None, f"no status file at {path} (is `auditpipe run` running? see --status-file)"
    doc = read_status_file(path)
    if doc is None:
        return None, f"cannot read the status file {path}"
    pid = doc.get("pid")
    doc["alive"] = isinstance(pid, int) and pid > 0 and _alive(pid)
    return doc, None


def _age(iso: str | None) -> str:
    if not iso:
        return "?"
    try:
        t = datetime.fromisoformat(iso)
    except ValueError:
        return iso
    s = (datetime.now(UTC) - t).total_seconds()
    return f"{iso} ({s:.0f}s ago)"


@click.command()
@click.option("--status-file", type=click.Path(dir_okay=False),
              help="The agent's status file (default: [status] path of --config, else "
                   "/run/auditpipe/status.json).")
@click.option("-c", "--config", "config_path", type=click.Path(dir_okay=False),
              help="Take the status file path from this configuration.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of tables.")
def status(status_file, config_path, as_json):
    """Show the kernel's audit status and the running agent's counters."""
    from auditpipe.config import ConfigError, load_config

    if status_file is None:
        try:
            status_file = load_config(config_path).status.path
        except ConfigError as e:
            click.echo(f"Error: {e}", err=True)
            sys.exit(2)
    kst, nrules, kerr = _kernel_status()
    agent, aerr = _agent(status_file)
    if as_json:
        click.echo(json.dumps({"kernel": kst, "kernel_rules": nrules, "kernel_error": kerr,
                               "agent": agent, "agent_error": aerr}, indent=2))
        sys.exit(0 if (kst or agent) else 1)

    from rich.console import Console
    from rich.table import Table

    con = Console()
    if kst is not None:
        t = Table(title="kernel audit status", show_header=True, header_style="bold")
        t.add_column("field")
        t.add_column("value", justify="right")
        for k, v in kst.items():
            if k == "enabled":
                v = _ENABLED.get(v, v)
            elif k == "failure":
                v = _FAILURE.get(v, v)
            elif k == "pid" and v:
                v = f"{v} ({process_name(v)})"
            elif k == "feature_bitmap":
                v = hex(v)
            t.add_row(k, str(v))
        if nrules is not None:
            t.add_row("rules loaded", str(nrules))
        con.print(t)
    else:
        con.print(f"[yellow]kernel status unavailable:[/] {kerr}")
    if agent is not None:
        running = agent.get("running") and agent.get("alive")
        state = ("[green]running[/]" if running else
                 "[yellow]stopped[/]" if not agent.get("running") else "[red]not running (stale status file)[/]")
        t = Table(title=f"auditpipe agent (pid {agent.get('pid')}): {state}", show_header=True,
                  header_style="bold")
        t.add_column("counter")
        t.add_column("value", justify="right")
        t.add_column("meaning", style="dim")
        counters = agent.get("counters", {})
        for k, meaning in COUNTERS:
            if k in counters:
                v = counters[k]
                style = "red" if k in ("kernel_lost", "userspace_drops", "enobufs", "output_errors") and v else None
                t.add_row(k, f"[{style}]{v}[/]" if style else str(v), meaning)
        con.print(t)
        outs = ", ".join(f"{o.get('type')} {o.get('target')}" for o in agent.get("outputs", []))
        other = agent.get("other_daemon")
        con.print(f"mode {agent.get('mode')}" + (f" (beside {other['comm']} pid {other['pid']})" if other else "")
                  + f", backpressure {agent.get('backpressure_strategy')}, format {agent.get('format')}")
        con.print(f"outputs: {outs}")
        if agent.get("held_since"):
            con.print(f"[red]held since {agent['held_since']}[/]: {agent.get('held_cause')} "
                      "(nothing more is read from the source until the output accepts writes)")
        if agent.get("locked"):
            pending = agent.get("rules_pending")
            con.print("[yellow]the kernel is locked (immutable mode): rules and status left as they are"
                      + (f"; the configured rules are pending in {pending} (next boot)[/]" if pending else "[/]"))
        con.print(f"started {agent.get('started')}; updated {_age(agent.get('updated'))}")
        con.print(f"status file: {status_file}")
    else:
        con.print(f"[yellow]agent:[/] {aerr}")
    sys.exit(0 if (kst or agent) else 1)
