"""Pipeline stages (INTERFACES.md §2): the work between reassembly and the outputs.

Minimal contract version made on the ``ops`` branch so its stages (rule drift, heartbeat) can
be checked against the protocol; the ``runtime`` branch owns this module and its fuller version
(routing and run helpers) replaces this one at the merge.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from auditpipe.reassembly import Event


@runtime_checkable
class Stage(Protocol):
    name: str

    def process(self, event: Event, docs: list[dict], now: float) -> list[dict]:
        """Once per reassembled event, with its normalized documents; returns those to pass on."""
        ...

    def tick(self, now: float) -> list[dict]:
        """Called about every second: expire state, emit periodic documents (heartbeats)."""
        ...

    def close(self, now: float) -> list[dict]:
        """At shutdown: last documents; save state."""
        ...

    def metrics(self) -> dict[str, int | float]:
        """Counters for status/metrics."""
        ...
