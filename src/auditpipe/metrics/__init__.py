"""Integrity accounting: Prometheus metrics from the pipeline's counters, and heartbeat events.

:class:`auditpipe.metrics.prom.MetricsServer` serves ``[metrics] listen``;
:class:`auditpipe.metrics.heartbeat.HeartbeatStage` is a pipeline stage emitting ``auditpipe``
heartbeat events; :mod:`auditpipe.metrics.config` holds both config sections (imported by
config.py, so this package imports nothing heavy on its own).
"""
