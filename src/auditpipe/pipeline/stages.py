"""Pipeline stages: the work between reassembly and the outputs (process context, filters,
detections, heartbeats). The contract of INTERFACES.md §2; stages run in order on the worker
thread and do no I/O in ``process()`` except through objects injected at construction.
"""

from __future__ import annotations

from typing import Protocol

from auditpipe.reassembly import Event

__all__ = ["Stage"]


class Stage(Protocol):
    name: str

    def process(self, event: Event, docs: list[dict], now: float) -> list[dict]:
        """Once per reassembled event, with that event's normalized documents (already in the
        configured format: ECS docs, Panther rows or coalesced docs; ``fmt`` is given to the
        stage's constructor). Return the documents to pass on: the same list annotated in place,
        fewer (a filter drops them), or more (alerts: ECS docs with ``event.kind == "signal"``).
        ``now`` is the wall clock (time.time()) injected by the runtime."""
        ...

    def tick(self, now: float) -> list[dict]:
        """Called about every second: expire state, emit periodic documents (heartbeats)."""
        ...

    def close(self, now: float) -> list[dict]:
        """At shutdown: last documents; save state."""
        ...

    def metrics(self) -> dict[str, int | float]:
        """Counters for status/metrics (e.g. {"dropped_by_filter.noisy": 12})."""
        ...
