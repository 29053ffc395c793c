"""The ``[detect]`` section: only msgspec/stdlib here so config.py can import
it without pulling the engine (pySigma) into every command."""

from __future__ import annotations

import msgspec

__all__ = ["DetectConfig"]


class DetectConfig(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    #: Sigma rule files/folders (.yml) and Python rule files/folders (.py); empty: no detection
    rules: list[str] = msgspec.field(default_factory=list)
    #: one alert per (rule, dedup key) per this many minutes; later hits are counted as suppressed
    dedup_minutes: float = 60.0
    #: host.name of alerts when the event carries no node= (default: this machine's name)
    host: str | None = None
    #: fail at start-up when a Sigma rule cannot run (else it is reported and left out)
    strict: bool = False
