"""Alerts: ECS signal documents, dedup windows, and a chat-webhook payload.

An alert is an ECS document with ``event.kind: signal``, ``rule.*``, ``threat.*`` from the rule's
ATT&CK tags, the severity (``event.severity`` as a 0–100 risk score, ``kibana.alert.severity`` as
the level word), the host, and the triggering event: its id in ``signal.event_ids`` and the
document itself under ``signal.events``.
"""

from __future__ import annotations

import hashlib
import re
import time
from dataclasses import dataclass, field
from typing import Any, ClassVar

__all__ = ["SEVERITY_SCORES", "Deduper", "RuleInfo", "build_alert", "threat_of", "webhook_payload"]

#: Sigma level → risk score (the scale Elastic's detection rules use)
SEVERITY_SCORES = {"informational": 1, "low": 21, "medium": 47, "high": 73, "critical": 99}
_TECHNIQUE = re.compile(r"t\d{4}(\.\d{3})?", re.IGNORECASE)
_OTHER_ATTACK_IDS = re.compile(r"[gs]\d{4}", re.IGNORECASE)


@dataclass(slots=True, eq=False)
class RuleInfo:
    """What every rule (Sigma or Python) carries and an alert shows."""

    id: str
    title: str
    description: str
    references: list[str]
    level: str  # informational, low, medium, high, critical
    tags: list[str]  # Sigma style: attack.t1027.001, attack.defense-evasion
    author: str | None

    ruleset: ClassVar[str] = ""


def threat_of(tags: list[str]) -> dict | None:
    """ECS ``threat`` from Sigma-style tags (``attack.t1027.001``, ``attack.defense-evasion``)."""
    techniques: list[str] = []
    subs: list[str] = []
    tactics: list[str] = []
    for tag in tags:
        ns, _, name = tag.partition(".")
        if ns.lower() != "attack":
            continue
        if _TECHNIQUE.fullmatch(name):
            tid = name.upper()
            if "." in tid:
                subs.append(tid)
                tid = tid.split(".")[0]
            if tid not in techniques:
                techniques.append(tid)
        elif not _OTHER_ATTACK_IDS.fullmatch(name):
            tactics.append(name.replace("_", "-"))
    if not (techniques or tactics):
        return None
    out: dict[str, Any] = {"framework": "MITRE ATT&CK"}
    if tactics:
        out["tactic"] = {"name": tactics}
    if techniques:
        tech: dict[str, Any] = {"id": techniques,
                                "reference": [f"https://attack.mitre.org/techniques/{t}/" for t in techniques]}
        if subs:
            tech["subtechnique"] = {"id": subs, "reference": [
                f"https://attack.mitre.org/techniques/{s.replace('.', '/')}/" for s in subs]}
        out["technique"] = tech
    return out


def _iso(t: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t)) + f".{int(t * 1000) % 1000:03d}Z"


def build_alert(rule: RuleInfo, event_id: str, event_doc: dict | None, host: str | None, now: float,
                title: str | None = None, level: str | None = None, context: dict | None = None,
                dedup_key: str = "") -> dict:
    """One alert document for ``rule`` firing on the event ``event_id`` (``event_doc``)."""
    level = (level or rule.level or "medium").lower()
    alert_id = hashlib.sha1(f"{rule.id}|{event_id}|{host}".encode()).hexdigest()[:20]
    doc: dict[str, Any] = {
        "@timestamp": _iso(now),
        "message": title or rule.title,
        "event": {"kind": "signal", "module": "auditpipe", "dataset": "auditpipe.alerts", "id": alert_id,
                  "created": _iso(now), "severity": SEVERITY_SCORES.get(level, 47)},
        "rule": {"id": rule.id, "name": rule.title, "description": rule.description,
                 "reference": rule.references[0] if rule.references else None, "ruleset": rule.ruleset,
                 "author": rule.author, "tags": rule.tags},
        "kibana": {"alert": {"severity": level, "risk_score": SEVERITY_SCORES.get(level, 47),
                             "reason": title or rule.title}},
        "signal": {"event_ids": [event_id], "events": [event_doc] if event_doc is not None else [],
                   "dedup_key": dedup_key},
    }
    if host:
        doc["host"] = {"name": host}
    threat = threat_of(rule.tags)
    if threat is not None:
        doc["threat"] = threat
    if context:
        doc["signal"]["context"] = context
    return doc


@dataclass
class Deduper:
    """One alert per (rule, dedup key) per ``window`` seconds of the clock it is given (the
    stage passes audit time, so a replayed log dedups as the live stream did); later hits in the
    window are counted as suppressed."""

    window: float = 3600.0
    _open: dict[tuple[str, str], float] = field(default_factory=dict)
    suppressed: dict[str, int] = field(default_factory=dict)

    def admit(self, rule_id: str, key: str, t: float, window: float | None = None) -> bool:
        """Whether this hit opens a window (alert); ``window`` overrides the default (a rule's
        own dedup period)."""
        k = (rule_id, key)
        start = self._open.get(k)
        if start is not None and t - start < (self.window if window is None else window):
            self.suppressed[rule_id] = self.suppressed.get(rule_id, 0) + 1
            return False
        self._open[k] = t
        return True

    def expire(self, t: float) -> None:
        """Forget windows that ended before ``t`` (bounded memory on a long run)."""
        w = self.window
        stale = [k for k, start in self._open.items() if t - start >= w]
        for k in stale:
            del self._open[k]

    @property
    def open_windows(self) -> int:
        return len(self._open)


def webhook_payload(alert: dict) -> dict:
    """A Slack/Teams-style incoming-webhook body for one alert: ``text`` plus ``fields`` (title/
    value pairs), which Slack attachments and Teams' MessageCard facts both render. The HTTP
    output can post this instead of the alert itself."""
    rule = alert.get("rule", {})
    sev = alert.get("kibana", {}).get("alert", {}).get("severity", "")
    host = alert.get("host", {}).get("name", "")
    ids = alert.get("signal", {}).get("event_ids", [])
    text = f"[{sev.upper()}] {alert.get('message', rule.get('name', ''))} on {host or 'unknown host'}"
    techniques = alert.get("threat", {}).get("technique", {}).get("id", [])
    fields = [
        {"title": "Rule", "value": f"{rule.get('name', '')} ({rule.get('id', '')})", "short": False},
        {"title": "Severity", "value": sev, "short": True},
        {"title": "Host", "value": host, "short": True},
        {"title": "Events", "value": ", ".join(ids), "short": True},
    ]
    if techniques:
        fields.append({"title": "ATT&CK", "value": ", ".join(techniques), "short": True})
    if rule.get("reference"):
        fields.append({"title": "Reference", "value": rule["reference"], "short": False})
    return {"text": text, "fields": fields,
            "attachments": [{"fallback": text, "title": rule.get("name", ""), "text": rule.get("description", ""),
                             "fields": fields}]}
