"""Heartbeat: every ``[heartbeat] interval`` seconds an ``auditpipe`` event down the outputs.

A destination can then alert on a host that went silent (no heartbeat) or on loss it would
otherwise never see (the deltas of kernel lost, serial gaps, partial events, rejects, dead
letters… since the previous heartbeat). A pipeline stage (`pipeline.stages.Stage`); the counters come
through an injected callable, so it holds no reference to the runtime.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from auditpipe.normalize.selfevents import Format, self_event

from .config import HeartbeatConfig

ACTION = "heartbeat"


class HeartbeatStage:
    """Emits a heartbeat document when ``interval`` has passed (checked on ``tick``), and a
    last one at ``close``."""

    name = "heartbeat"

    def __init__(self, config: HeartbeatConfig, counters: Callable[[], Mapping[str, int | float]],
                 fmt: Format = "ecs", host: str | None = None) -> None:
        self.interval = config.interval
        self._counters = counters
        self._fmt: Format = fmt
        self._host = host
        self._started: float | None = None
        self._next = 0.0
        self._last: dict[str, int | float] = {}
        self._sent = 0

    def process(self, event: Any, docs: list[dict], now: float) -> list[dict]:
        return docs

    def tick(self, now: float) -> list[dict]:
        if self.interval <= 0:
            return []
        if self._started is None:
            self._started, self._next = now, now + self.interval
            self._last = self._snapshot()
            return []
        if now < self._next:
            return []
        while self._next <= now:  # after a stall: one heartbeat, the schedule kept
            self._next += self.interval
        return [self._beat(now, final=False)]

    def close(self, now: float) -> list[dict]:
        if self.interval <= 0 or self._started is None:
            return []
        return [self._beat(now, final=True)]

    def metrics(self) -> dict[str, int | float]:
        return {"sent": self._sent}

    def _snapshot(self) -> dict[str, int | float]:
        return {k: v for k, v in self._counters().items()
                if isinstance(v, int | float) and not isinstance(v, bool)}

    def _beat(self, now: float, final: bool) -> dict:
        counters = self._snapshot()
        deltas = {k: v - self._last.get(k, 0) for k, v in counters.items()}
        self._last = counters
        self._sent += 1
        started = self._started if self._started is not None else now
        payload = {"heartbeat": {"interval": self.interval, "uptime": round(now - started, 3),
                                 "final": final, "sequence": self._sent,
                                 "counters": counters, "deltas": deltas}}
        lost = sum(deltas.get(k, 0) for k in ("kernel_lost", "serial_gaps", "dead_lettered"))
        msg = (f"auditpipe heartbeat: {deltas.get('events', 0)} events, {lost} lost since the "
               "last one" + (" (stopping)" if final else ""))
        return self_event(self._fmt, now, ACTION, "metric", payload, msg, self._host)
