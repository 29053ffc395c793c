"""The operations parts `run` (and `serve`) add from the typed config: the rule-drift and
heartbeat stages and the metrics listener. One call each, so the assembly stays short."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

from auditpipe.config import Config
from auditpipe.kernel.drift import DriftMonitor, RuleNetlink
from auditpipe.metrics.config import MetricsConfig
from auditpipe.metrics.heartbeat import HeartbeatStage
from auditpipe.metrics.prom import MetricsServer
from auditpipe.pipeline.stages import Stage

Counters = Callable[[], Mapping[str, int | float]]


def ops_stages(cfg: Config, counters: Counters, host: str | None = None,
               netlink: RuleNetlink | None = None,
               installed: Sequence[bytes] | None = None) -> list[Stage]:
    """Heartbeat (unless ``[heartbeat] interval = 0``) and, when we installed rules through
    ``netlink``, the drift monitor. ``installed`` None or a locked kernel: no drift stage."""
    fmt = cfg.normalize.format
    stages: list[Stage] = []
    if netlink is not None and installed:
        stages.append(DriftMonitor(netlink, installed, cfg.rules.check_interval,
                                   cfg.rules.on_drift, fmt=fmt, host=host))
    if cfg.heartbeat.interval > 0:
        stages.append(HeartbeatStage(cfg.heartbeat, counters, fmt=fmt, host=host))
    return stages


def start_metrics(config: MetricsConfig, counters: Counters) -> MetricsServer | None:
    """The Prometheus listener of ``[metrics] listen`` (started), or None when unset."""
    if not config.listen:
        return None
    server = MetricsServer(config.listen, counters)
    server.start()
    return server
