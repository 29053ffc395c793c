"""Rule drift: the kernel's rule list no longer holds the rules we installed.

Rules vanish under a running collector (``auditctl -D`` by hand, a package's augenrules run,
another tool). :class:`DriftMonitor` compares the kernel's list with what we installed every
``interval`` seconds and at once after a CONFIG_CHANGE record about rules; when the difference
changes it emits a document (ECS ``event.action: audit-rules-drifted`` with the diff in auditctl
text: ours missing, others' extra) and, with ``on_drift="reinstall"``, puts our rules back in
their order. A standing difference (another daemon's rules beside ours in multicast mode) is
reported once, not at every check. It is a pipeline stage (the
``Stage`` protocol of :mod:`auditpipe.pipeline.stages`): ``process`` watches events for
CONFIG_CHANGE, ``tick`` runs the checks.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from auditpipe.normalize.selfevents import Format, self_event

from .netlink import AuditNetlinkError
from .rules import RuleData, format_rule

log = logging.getLogger("auditpipe.drift")

#: CONFIG_CHANGE ``op=`` values the kernel logs when the rule list changes
RULE_OPS = frozenset({"add_rule", "remove_rule", "updated_rules"})
ACTION = "audit-rules-drifted"


class RuleNetlink(Protocol):
    def list_rules(self) -> list[bytes]: ...
    def add_rule(self, data: bytes) -> None: ...
    def delete_rule(self, data: bytes) -> None: ...


def _canon(blob: bytes) -> bytes:
    """A rule as the kernel compares it: without the -A (prepend) flag it does not list."""
    r = RuleData.from_bytes(blob)
    return RuleData(r.list, r.action, list(r.mask), list(r.fields)).to_bytes()


@dataclass(frozen=True)
class RuleDiff:
    """Rules we installed that the kernel lacks, and rules it has that we did not install."""

    missing: list[bytes] = field(default_factory=list)
    extra: list[bytes] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.missing or self.extra)

    def rendered(self, machine: str | None = None) -> dict[str, list[str]]:
        return {"missing": [format_rule(b, machine) for b in self.missing],
                "extra": [format_rule(b, machine) for b in self.extra]}


def _not_in(blobs: Sequence[bytes], other: Sequence[bytes]) -> list[bytes]:
    """The blobs of ``blobs`` (in order, counted with repeats) that ``other`` does not hold."""
    left = Counter(_canon(b) for b in other)
    out = []
    for b in blobs:
        c = _canon(b)
        if left[c] > 0:
            left[c] -= 1
        else:
            out.append(b)
    return out


def rule_diff(installed: Sequence[bytes], current: Sequence[bytes]) -> RuleDiff:
    """Multiset difference of two rule lists (blobs), each side in its own order."""
    return RuleDiff(_not_in(installed, current), _not_in(current, installed))


def is_rule_change(record: Any) -> bool:
    """A CONFIG_CHANGE record that says the rule list changed."""
    return (getattr(record, "type", None) == "CONFIG_CHANGE"
            and (record.fields or {}).get("op") in RULE_OPS)


class DriftMonitor:
    """Checks the kernel's rules against ``installed`` (blobs, in load order)."""

    name = "rules-drift"

    def __init__(self, netlink: RuleNetlink, installed: Sequence[bytes], interval: float = 10.0,
                 on_drift: Literal["alert", "reinstall"] = "alert",
                 clock: Callable[[], float] | None = None, fmt: Format = "ecs",
                 host: str | None = None, machine: str | None = None) -> None:
        self._nl = netlink
        self._installed = list(installed)
        self.interval = interval
        self.on_drift = on_drift
        self._clock = clock or time.time
        self._fmt: Format = fmt
        self._host, self._machine = host, machine
        self._next = 0.0           # first check at the first tick; interval 0: only on notice
        self._last_seen: dict[str, list[str]] = {"missing": [], "extra": []}
        self.counters = {"checks": 0, "drifts": 0, "reinstalls": 0, "reinstall_errors": 0,
                         "check_errors": 0}

    def watch(self, installed: Sequence[bytes], interval: float,
              on_drift: Literal["alert", "reinstall"]) -> None:
        """New rules to watch (after a reload); the next check is due at once."""
        self._installed = list(installed)
        self.interval, self.on_drift = interval, on_drift
        self._last_seen = {"missing": [], "extra": []}
        self._next = 0.0

    def notice_config_change(self, record: Any) -> None:
        """Hook for every record seen: a CONFIG_CHANGE about rules makes the next check due."""
        if is_rule_change(record):
            self._next = 0.0

    def check(self, now: float | None = None) -> list[dict[str, Any]]:
        """Run the check when due; the drift document(s) to send down the outputs."""
        now = self._clock() if now is None else now
        if now < self._next:
            return []
        self._next = now + self.interval if self.interval > 0 else float("inf")
        self.counters["checks"] += 1
        try:
            diff = rule_diff(self._installed, self._nl.list_rules())
        except AuditNetlinkError as e:
            self.counters["check_errors"] += 1
            log.warning("rule drift check failed: %s", e)
            return []
        seen = diff.rendered(self._machine)
        if seen == self._last_seen:  # a standing difference is reported once, not every check
            return []
        self._last_seen = seen
        if not diff:
            return []
        self.counters["drifts"] += 1
        payload: dict[str, Any] = {"rules": {**seen,
                                             "installed": len(self._installed),
                                             "on_drift": self.on_drift}}
        outcome = "unknown"
        if self.on_drift == "reinstall" and diff.missing:
            error = self._reinstall(diff)
            payload["rules"]["reinstalled"] = error is None
            outcome = "success" if error is None else "failure"
            if error is None:
                self._last_seen = {"missing": [], "extra": seen["extra"]}
            if error:
                payload["rules"]["error"] = error
        msg = (f"audit rules drifted: {len(diff.missing)} of ours missing, {len(diff.extra)} "
               f"not ours" + ("; reinstalled" if outcome == "success" else ""))
        log.warning(msg)
        doc = self_event(self._fmt, now, ACTION, "event", payload, msg, self._host)
        if self._fmt == "ecs":
            doc["event"].update(category=["configuration"], type=["change"], outcome=outcome)
        return [doc]

    def _reinstall(self, diff: RuleDiff) -> str | None:
        """Put our rules back in their order: from the first missing one on, delete ours that
        are still there and add all again (the kernel appends)."""
        missing = {_canon(b) for b in diff.missing}
        first = next(i for i, b in enumerate(self._installed) if _canon(b) in missing)
        tail = self._installed[first:]
        try:
            present = Counter(_canon(b) for b in self._nl.list_rules())
            for b in tail:
                if present[_canon(b)] > 0:
                    present[_canon(b)] -= 1
                    self._nl.delete_rule(b)
            for b in tail:
                self._nl.add_rule(b)
        except AuditNetlinkError as e:
            self.counters["reinstall_errors"] += 1
            return str(e)
        self.counters["reinstalls"] += 1
        return None

    # -- the Stage protocol ----------------------------------------------------------------
    def process(self, event: Any, docs: list[dict], now: float) -> list[dict]:
        for record in event.records:
            self.notice_config_change(record)
        return docs

    def tick(self, now: float) -> list[dict]:
        return self.check(now)

    def close(self, now: float) -> list[dict]:
        return []

    def metrics(self) -> dict[str, int | float]:
        return dict(self.counters)
