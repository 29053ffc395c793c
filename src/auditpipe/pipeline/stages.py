"""Pipeline stages: work between reassembly and the outputs (process context, filters,
detections, heartbeats). Built from the typed config by the one assembly function and run in
order on the worker thread (contract: INTERFACES.md §2)."""

from __future__ import annotations

from typing import Protocol

from auditpipe.reassembly import Event

__all__ = ["Stage"]


class Stage(Protocol):
    name: str

    def process(self, event: Event, docs: list[dict], now: float) -> list[dict]:
        """Once per reassembled event, with that event's normalized documents. Return the
        documents to pass on: the same list annotated, fewer, or more (alerts: ECS documents with
        ``event.kind == "signal"``). ``now`` is the wall clock injected by the runtime."""
        ...

    def tick(self, now: float) -> list[dict]:
        """About every second: expire state, emit periodic documents."""
        ...

    def close(self, now: float) -> list[dict]:
        """At shutdown: last documents; save state."""
        ...

    def metrics(self) -> dict[str, int | float]:
        """Counters for status/metrics."""
        ...
