"""Documents auditpipe writes about itself (heartbeats, rule drift), in each output format.

They travel down the same outputs as the audit events, so a destination can alert on a silent
host, on loss, or on rules that changed under the collector. One builder per format keeps the
shapes consistent: ECS (``event.module: auditpipe``, the payload under ``auditpipe``), Panther
(a row with ``p_log_type: Linux.Auditd`` and ``type: AUDITPIPE_<ACTION>``) and coalesced (an
event whose one record is of that type).
"""

from __future__ import annotations

import time
from typing import Any, Literal

Format = Literal["ecs", "panther", "coalesced"]


def iso_utc(now: float) -> str:
    """Wall-clock seconds -> ISO 8601 UTC with milliseconds."""
    ms = int(round(now * 1000)) % 1000
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(int(now))) + f".{ms:03d}Z"


def self_event(fmt: Format, now: float, action: str, kind: str, payload: dict[str, Any],
               message: str, host: str | None = None) -> dict[str, Any]:
    """One document about auditpipe itself. ``kind`` is the ECS event.kind ("metric" for
    heartbeats, "event" for changes); ``payload`` goes under ``auditpipe`` (ECS), into the
    row (Panther) or the record's fields (coalesced)."""
    rtype = "AUDITPIPE_" + action.upper().replace("-", "_")
    if fmt == "panther":
        stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(int(now)))
        row = {"type": rtype, "timestamp": round(now, 3), "message": message,
               "p_log_type": "Linux.Auditd",
               "p_event_time": f"{stamp}.{int(round(now * 1000)) % 1000:03d}", **payload}
        if host:
            row["node"] = host
        return row
    if fmt == "coalesced":
        doc: dict[str, Any] = {"timestamp": iso_utc(now), "records": [
            {"type": rtype, "fields": {"message": message, **payload}}]}
        if host:
            doc["node"] = host
        return doc
    ecs: dict[str, Any] = {"@timestamp": iso_utc(now), "message": message,
           "event": {"kind": kind, "module": "auditpipe", "dataset": f"auditpipe.{kind}",
                     "action": action},
           "auditpipe": payload}
    if host:
        ecs["host"] = {"name": host}
    return ecs
