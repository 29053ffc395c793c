"""Immutable mode (``-e 2``): the kernel refuses every rule or status change until reboot.

A locked kernel is a state to report, not an error to repeat for every rule: callers check
:func:`kernel_locked` once, keep the rules as they are, and write the change they wanted as the
rules for the next boot (:func:`write_pending`), which is then reported as pending.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterable, Mapping
from pathlib import Path

#: ``audit_status.enabled`` of a locked kernel
ENABLED_LOCKED = 2
#: where rules for the next boot go by default (augenrules reads this folder at boot)
DEFAULT_PENDING_PATH = "/etc/audit/rules.d/99-auditpipe-pending.rules"

LOCKED_MESSAGE = ("the audit configuration is locked (enabled=2, immutable mode): the kernel "
                  "refuses rule and status changes until reboot")


def kernel_locked(status: Mapping[str, int]) -> bool:
    """True when ``status`` (``AuditNetlink.get_status()``) shows immutable mode."""
    return status.get("enabled") == ENABLED_LOCKED


def write_pending(lines: Iterable[str], path: str | os.PathLike[str] = DEFAULT_PENDING_PATH,
                  source: str = "") -> Path:
    """Write rule lines (auditctl syntax) atomically as the rules for the next boot; returns
    the file. The header says why the file exists, so an operator finds the pending change."""
    dest = Path(path)
    dest.parent.mkdir(parents=True, exist_ok=True)
    head = ["## Written by auditpipe: the kernel was locked (immutable mode, -e 2) when these",
            "## rules were to be loaded; they take effect at the next boot."]
    if source:
        head.append(f"## From: {source}")
    body = "\n".join([*head, *lines]) + "\n"
    fd, tmp = tempfile.mkstemp(prefix=".pending-", dir=dest.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8", errors="surrogateescape") as f:
            f.write(body)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o640)
        os.replace(tmp, dest)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return dest
