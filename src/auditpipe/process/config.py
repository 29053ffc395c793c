"""``[process]`` and ``[filter]``: the typed configuration of the process-context and filter
stages (msgspec/stdlib only, so config.py can import it without pulling in the stages).

See docs/config.md for what each option does.
"""

from __future__ import annotations

import re
from typing import Literal

import msgspec

__all__ = ["FilterConfig", "FilterRule", "ProcessConfig", "config_problems"]


class _S(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    pass


class ProcessConfig(_S):
    #: keep the process table and add parent/ancestors/leaders/container to every event; unset:
    #: on when the source is this host's kernel, off for a followed file (records of another
    #: time or host, which this host's /proc cannot describe)
    enabled: bool | None = None
    #: ancestors listed in process.ancestors (nearest first)
    ancestors: int = 4
    #: seconds an exited process stays in the table after its last event (its children may
    #: still be reported with it as their parent)
    grace: float = 60.0
    #: most entries kept; beyond that the longest-idle exited (then idle) entries go first
    max_entries: int = 200_000
    #: where the table is saved at exit and every save_interval seconds; "" = not saved;
    #: unset: the `[state] dir`
    state_dir: str | None = None
    save_interval: float = 60.0
    #: most entries written to the state file (the most recently seen)
    max_saved: int = 100_000
    #: seed the table from /proc at start and read /proc/<pid> for new processes (live only)
    read_proc: bool = True
    #: regex on the executable → label, e.g. {"^/usr/sbin/sshd$" = "sshd"}
    label_exe: dict[str, str] = msgspec.field(default_factory=dict)
    #: regex on the arguments joined by spaces → label, e.g. {"^python3 -m http\\.server" = "web"}
    label_argv: dict[str, str] = msgspec.field(default_factory=dict)
    #: labels are inherited by descendants (a label's child processes carry it too)
    propagate_labels: bool = True


class FilterRule(_S):
    #: named in metrics: filter.dropped.<name>
    name: str
    #: drop the matching events, keep them (stop looking at later rules), or keep only the
    #: first ``first`` matching events of each process
    action: Literal["drop", "keep", "keep_first"] = "drop"
    #: every condition given must match (at least one must be given)
    label: str | None = None
    key: str | None = None
    #: regex on the process's executable
    executable: str | None = None
    #: regex searched in each raw record line of the event
    raw: str | None = None
    #: for action = "keep_first"
    first: int = 1


class FilterConfig(_S):
    rules: list[FilterRule] = msgspec.field(default_factory=list)


def config_problems(proc: ProcessConfig, flt: FilterConfig) -> list[tuple[str, str]]:
    """What the types cannot say, as (``$.`` path, message) pairs for config.py to locate."""
    out: list[tuple[str, str]] = []
    for name in ("ancestors", "max_entries", "max_saved"):
        if getattr(proc, name) < 0:
            out.append((f"process.{name}", "must not be negative"))
    for name in ("grace", "save_interval"):
        if getattr(proc, name) <= 0:
            out.append((f"process.{name}", "must be more than 0 seconds"))
    for table in ("label_exe", "label_argv"):
        for rx in getattr(proc, table):
            if (msg := _regex_problem(rx)) is not None:
                out.append((f"process.{table}", f"{rx!r}: {msg}"))
    names: set[str] = set()
    for i, r in enumerate(flt.rules):
        where = f"filter.rules[{i}]"
        if r.name in names:
            out.append((f"{where}.name", f"{r.name!r} is used by an earlier rule"))
        names.add(r.name)
        if r.label is None and r.key is None and r.executable is None and r.raw is None:
            out.append((where, "give at least one of label, key, executable, raw"))
        for field in ("executable", "raw"):
            rx = getattr(r, field)
            if rx is not None and (msg := _regex_problem(rx)) is not None:
                out.append((f"{where}.{field}", msg))
        if r.first < 1:
            out.append((f"{where}.first", "must be at least 1"))
    return out


def _regex_problem(rx: str) -> str | None:
    try:
        re.compile(rx)
    except re.error as e:
        return f"not a valid regular expression: {e}"
    return None
