"""Pipeline stages: the work between reassembly and the outputs (process context, filters,
detections, heartbeats).

A stage sees each reassembled event once, with that event's normalized documents, and returns the
documents to pass on. Stages are built from the typed config by the assembly
(:mod:`auditpipe.pipeline.assembly`) and run in order on the worker thread; no I/O in
``process()`` except through objects injected at construction (a /proc reader, a clock).

Documents with ``event.kind == "signal"`` are *alerts*. Each output takes
``documents = "events" | "alerts" | "both"`` (default ``"events"``); :func:`route` splits a list
of documents accordingly.
"""

from __future__ import annotations

from typing import Literal, Protocol, runtime_checkable

from auditpipe.reassembly import Event

__all__ = ["DOCUMENT_CLASSES", "Documents", "Stage", "is_alert", "route", "run_stages", "tick_stages",
           "close_stages", "stage_metrics"]

Documents = Literal["events", "alerts", "both"]
DOCUMENT_CLASSES: tuple[str, ...] = ("events", "alerts", "both")


@runtime_checkable
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


def is_alert(doc: object) -> bool:
    """An alert is an ECS document with ``event.kind == "signal"`` (documents of other shapes —
    serialized lines, Panther rows, coalesced documents — are events)."""
    if not isinstance(doc, dict):
        return False
    ev = doc.get("event")
    return isinstance(ev, dict) and ev.get("kind") == "signal"


def route(docs: list, documents: str) -> list:
    """The documents an output configured with ``documents`` takes."""
    if documents == "both" or not docs:
        return docs
    want_alerts = documents == "alerts"
    return [d for d in docs if is_alert(d) is want_alerts]


def run_stages(stages: tuple[Stage, ...], event: Event, docs: list[dict], now: float) -> list[dict]:
    for st in stages:
        docs = st.process(event, docs, now)
    return docs


def tick_stages(stages: tuple[Stage, ...], now: float) -> list[dict]:
    out: list[dict] = []
    for st in stages:
        out += st.tick(now)
    return out


def close_stages(stages: tuple[Stage, ...], now: float) -> list[dict]:
    """Each stage's last documents, in stage order; a later stage does not see an earlier
    stage's closing documents (they are final)."""
    out: list[dict] = []
    for st in stages:
        out += st.close(now)
    return out


def stage_metrics(stages: tuple[Stage, ...]) -> dict[str, int | float]:
    """Every stage's counters, keyed ``<stage name>.<counter>``."""
    out: dict[str, int | float] = {}
    for st in stages:
        for k, v in st.metrics().items():
            out[f"{st.name}.{k}"] = v
    return out
