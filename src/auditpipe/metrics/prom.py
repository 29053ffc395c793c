"""Prometheus metrics from the pipeline's counters ("the audit of the audit").

The runtime already keeps its counters in a dict (status file, ``auditpipe status``); this
module serves that dict on ``[metrics] listen`` through prometheus-client with a registry of
its own per instance (no process-wide default registry), reading the counters at scrape time
through an injected callable, so nothing is copied on the hot path.

Counter names are the keys of :data:`METRICS`; a key ``name.part`` (``queue_depth.http-1``)
is metric ``name`` with label ``part``. Keys not in the table are exported as gauges
``auditpipe_<key>`` so a new counter is never silently dropped.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Literal
from wsgiref.simple_server import WSGIServer

from prometheus_client import start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector, CollectorRegistry

from .config import split_listen

Counters = Callable[[], Mapping[str, int | float]]
Kind = Literal["counter", "gauge"]

#: counter key -> (kind, help). Counters only grow (Prometheus adds ``_total``).
METRICS: dict[str, tuple[Kind, str]] = {
    "kernel_lost": ("counter", "Records the kernel dropped (audit_status.lost)"),
    "kernel_backlog": ("gauge", "Records waiting in the kernel's queue (audit_status.backlog)"),
    "records": ("counter", "Audit records read"),
    "events": ("counter", "Events emitted after reassembly"),
    "kernel_truncated": ("counter", "Kernel messages longer than a receive slot, cut"),
    "serial_gaps": ("counter", "Event serial numbers never seen (lost between kernel and us)"),
    "partial_events": ("counter", "Events emitted without their end (timed out or evicted)"),
    "late_records": ("counter", "Records that arrived after their event was emitted"),
    "rejects": ("counter", "Lines or messages that could not be parsed (set aside)"),
    "source_held_seconds": ("counter", "Time the source was held because outputs refused writes"),
    "backpressure_seconds": ("counter", "Time the kernel was made to wait (backpressure)"),
    "queue_depth": ("gauge", "Documents in the durable queue, not yet delivered"),
    "queue_bytes": ("gauge", "Bytes in the durable queue"),
    "queue_oldest_age_seconds": ("gauge", "Age of the oldest undelivered document"),
    "retries": ("counter", "Batches re-sent after a transient error"),
    "dead_lettered": ("counter", "Documents refused for good and written to the dead letter file"),
    "skipped_frames": ("counter", "Damaged queue frames skipped"),
    "output_errors": ("counter", "Writes an output could not accept"),
    "rules_drift": ("counter", "Times the kernel's rule list differed from ours"),
    "heartbeats": ("counter", "Heartbeat events emitted"),
}
_BAD = re.compile(r"[^a-zA-Z0-9_]")


def metric_name(key: str) -> str:
    return "auditpipe_" + _BAD.sub("_", key)


class CountersCollector(Collector):
    """Turns one counters snapshot into metric families at each scrape."""

    def __init__(self, counters: Counters) -> None:
        self._counters = counters

    def collect(self) -> Iterator[Metric]:
        families: dict[str, CounterMetricFamily | GaugeMetricFamily] = {}
        for key, value in sorted(self._counters().items()):
            if isinstance(value, bool) or not isinstance(value, int | float):
                continue
            base, _, part = key.partition(".")
            if base not in METRICS:
                base, part = key, ""
            kind, help_text = METRICS.get(base, ("gauge", f"auditpipe counter {key}"))
            fam = families.get(base)
            if fam is None:
                cls = CounterMetricFamily if kind == "counter" else GaugeMetricFamily
                fam = families[base] = cls(metric_name(base), help_text,
                                           labels=["part"] if part else None)
            if part:
                fam.add_metric([part], value)
            elif fam.samples:  # a plain key after labelled ones: keep the family consistent
                fam.add_metric([""], value)
            else:
                fam.add_metric([], value)
        yield from families.values()


class MetricsServer:
    """A Prometheus endpoint (``GET /metrics``) on ``listen``, on a daemon thread."""

    def __init__(self, listen: str, counters: Counters, collectors: Iterable[Collector] = ()) -> None:
        """``collectors``: more metric sources served beside the counters (``serve``'s receiver
        registry with its labelled request and connection counters)."""
        self.host, self.port = split_listen(listen)
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(CountersCollector(counters))
        for c in collectors:
            self.registry.register(c)
        self._server: WSGIServer | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> tuple[str, int]:
        """Bind and serve; returns the bound (host, port) (port 0 picks a free one)."""
        server, self._thread = start_http_server(self.port, self.host, self.registry)
        self._server = server
        self.port = server.server_address[1]
        return self.host, self.port

    def close(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def __enter__(self) -> MetricsServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
