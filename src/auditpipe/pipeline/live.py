"""`auditpipe run`: the live loop. A reader thread receives, the worker (this module, on the main
thread) parses, reassembles, normalizes, runs the stages and writes; counters go to a status file.

Threads and ownership:

* reader (the source's, see :mod:`auditpipe.sources.base`): receives and puts typed batches in a
  :class:`~auditpipe.sources.backpressure.BoundedQueue`. Nothing else, so a slow output never
  makes the kernel socket wait on parsing.
* worker (:meth:`LiveRunner.run`): takes every queued batch at once, feeds the pipeline, ticks the
  reassembler's wall clock (events without a terminator leave after ``wall_timeout``) and the
  stages, writes documents to the outputs (:class:`~auditpipe.pipeline.outputs.Outputs`), commits
  the file checkpoint (:class:`~auditpipe.pipeline.checkpoint.FileCheckpoint`), polls the source
  and writes the status file every ``status.interval`` seconds, and acts on SIGTERM/SIGINT (stop)
  and SIGHUP (reload).

Held: when an output does not accept a write, its documents stay pending and the worker takes
nothing more from the source until they are written (retried with backoff): a file source then
stops reading once its small queue is full, and the kernel queue applies the configured
backpressure strategy (``block``: the socket and the kernel backlog fill; ``drop``: counted as
``userspace_drops``). The checkpoint never passes a pending document.

Shutdown order: the source releases what it changed (kernel: our rules deleted and status put back)
while the reader still runs (so the kernel's CONFIG_CHANGE records for that are still collected),
then the reader stops, the queue is drained, in-flight events are flushed, outputs closed, and the
source closed (kernel: ``enabled`` restored, pid unregistered, the state journal removed).

Raw forwarding: an ``[[outputs]] type = "http"`` with ``format = "raw"`` gets the records as read
(file: the lines; kernel: ``Record.raw``); the other outputs get documents. With raw outputs only,
nothing is normalized and a line's position is a resume point as soon as the line is written.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from auditpipe.config import Config, ConfigError, load_config, rule_files
from auditpipe.kernel.drift import DriftMonitor
from auditpipe.metrics.prom import MetricsServer
from auditpipe.pipeline.assembly import build_pipeline, normalizer_for
from auditpipe.pipeline.checkpoint import FileCheckpoint
from auditpipe.pipeline.ops import ops_stages, start_metrics
from auditpipe.pipeline.outputs import Outputs, describe_output, open_outputs
from auditpipe.pipeline.status import StatusWriter
from auditpipe.sources.base import FileChunk, PollEnd, Source

__all__ = ["LiveRunner", "reload_from"]

log = logging.getLogger("auditpipe.run")

MAX_LOGGED_REJECTS = 20
#: seconds a stop waits for held outputs (then what is pending is reported; a file source's
#: checkpoint is behind it, so a restart reads it again)
STOP_RETRY = 3.0


def _iso(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).isoformat(timespec="seconds")


def no_documents(event: Any) -> list:
    return []


def output_counters(outs: Outputs) -> dict[str, int | float]:
    """Each queued output's durable queue and shipper counters, keyed ``<metric>.<type>-<n>``
    (the names of ``metrics.prom.METRICS``)."""
    out: dict[str, int | float] = {}
    for i, o in enumerate(outs.outputs):
        queue = getattr(o.sink, "queue", None)
        if queue is None or not hasattr(queue, "oldest_age"):
            continue
        part = f"{o.cfg.__struct_config__.tag}-{i}"
        stats = o.sink.stats()
        out[f"queue_depth.{part}"] = queue.pending
        out[f"queue_bytes.{part}"] = queue.bytes_used
        out[f"queue_oldest_age_seconds.{part}"] = round(queue.oldest_age(), 1)
        out[f"retries.{part}"] = stats.get("retries", 0)
        out[f"dead_lettered.{part}"] = stats.get("dead_letter_events", 0)
        out[f"skipped_frames.{part}"] = stats.get("skipped_frames", 0)
    return out


# ---------------------------------------------------------------------------------- runner
class LiveRunner:
    """One `auditpipe run` over a :class:`~auditpipe.sources.base.Source`. ``reload_config``
    returns the new :class:`Config` on SIGHUP (or raises :class:`ConfigError`)."""

    def __init__(self, cfg: Config, source: Source, *, normalize: Callable | None = None,
                 outputs: Outputs | None = None,
                 reload_config: Callable[[], Config] | None = None,
                 compile_rules: Callable[[Config], Any] | None = None,
                 drop_privileges: bool = False) -> None:
        self.cfg = cfg
        self.drop_privileges = drop_privileges  # the process's, after start-up (`run` only)
        self.metrics_server: MetricsServer | None = None
        self._ruleset: Any = None
        self.source = source
        self.rejects = 0
        self.pipeline = build_pipeline(cfg, self._on_reject, normalize=normalize)
        self.reassembler = self.pipeline.reassembler
        self.normalize = self.pipeline.normalize
        self.outputs = outputs if outputs is not None else open_outputs(cfg)
        self._raw: list[str] = []  # records read, for the raw outputs' next write
        self.checkpoint = (FileCheckpoint(self.reassembler, lambda positions: self.source.commit(positions))
                           if source.item_type is FileChunk else None)
        self._feed = self._feed_file if source.item_type is FileChunk else self._feed_kernel
        self._setup_outputs()
        self.reload_config = reload_config
        self.compile_rules = compile_rules
        self.status_writer = StatusWriter(cfg.status.path)
        self.internal_errors = 0
        self.reloads = 0
        self.started = time.time()
        self._stop = False
        self._reload = False
        self.exit_code = 0
        self.fatal: str | None = None

    # -- signals -----------------------------------------------------------------------------
    def request_stop(self, *_: object) -> None:
        self._stop = True

    def request_reload(self, *_: object) -> None:
        self._reload = True

    def install_signal_handlers(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return
        signal.signal(signal.SIGTERM, self.request_stop)
        signal.signal(signal.SIGINT, self.request_stop)
        signal.signal(signal.SIGHUP, self.request_reload)

    # -- counters ----------------------------------------------------------------------------
    def _on_reject(self, where: str, line: str, reason: str) -> None:
        self.rejects += 1
        if self.rejects <= MAX_LOGGED_REJECTS:
            log.warning("%s: rejected: %s: %r", where, reason, line[:200])
        elif self.rejects == MAX_LOGGED_REJECTS + 1:
            log.warning("further rejects are counted in the status file, not logged")

    def counters(self) -> dict[str, Any]:
        """The status file's counters; the keys of ``metrics.prom.METRICS`` among them, so the
        Prometheus listener and the heartbeat read the same dict (per output: ``key.<output>``)."""
        ra, c, outs = self.reassembler, self.pipeline.counters, self.outputs
        out: dict[str, Any] = {
            "records_received": 0, "records_parsed": c.records, "records": c.records, "events": ra.events,
            "documents": c.documents, "kernel_lost": 0, "kernel_backlog": 0, "serial_gaps": ra.lost,
            "userspace_drops": 0, "enobufs": 0, "kernel_truncated": 0, "rejects": c.rejects,
            "partial_events": ra.partial,
            "late_records": ra.late, "in_flight_events": ra.in_flight, "source_queue_depth": 0,
            "source_queue_peak": 0, "source_queue_blocked": 0, "output_errors": outs.write_failures,
            "output_holds": outs.holds, "output_held_seconds": round(outs.held_seconds, 1),
            "source_held_seconds": round(outs.held_seconds, 1),
            "pending_documents": sum(len(o.pending) for o in outs.outputs),
            "internal_errors": self.internal_errors, "rules_installed": 0, "rules_refused": 0,
            "reloads": self.reloads,
        }
        out.update(self.source.counters())
        stages = self.pipeline.stage_metrics()
        out.update(stages)
        out["rules_drift"] = stages.get("rules-drift.drifts", 0)
        out["heartbeats"] = stages.get("heartbeat.sent", 0)
        out.update(output_counters(outs))
        return out

    def status_doc(self, running: bool = True) -> dict[str, Any]:
        held = self.outputs.held_since()
        return {
            "running": running,
            "pid": os.getpid(),
            "started": _iso(self.started),
            "updated": _iso(time.time()),
            "uptime_s": round(time.time() - self.started, 1),
            "config": self.cfg.path,
            "source": self.source.kind,
            "mode": None, "other_daemon": None, "backpressure_strategy": None, "kernel_status": {},
            **self.source.describe(),
            "format": self.cfg.normalize.format,
            "held_since": _iso(held) if held is not None else None,
            "held_cause": self.outputs.held_cause(),
            "outputs": self.outputs.status(),
            "counters": self.counters(),
        }

    def write_status(self, running: bool = True) -> None:
        self.status_writer.write(self.status_doc(running))

    # -- output ------------------------------------------------------------------------------
    @property
    def sinks(self) -> list:
        return self.outputs.sinks

    def _setup_outputs(self) -> None:
        """Raw outputs only: events are still assembled (counters, resume points), not normalized."""
        outs = self.outputs
        self._forward_raw = outs.wants_raw
        self._slice = outs.slice
        self.pipeline.normalize = no_documents if outs.raw_only else self.normalize
        if self.checkpoint is not None:
            self.checkpoint.raw_only = outs.raw_only

    def _write_and_commit(self, docs: list) -> bool:
        """Documents to the outputs (and the records read since the last write, to the raw
        ones); then, when nothing is pending anywhere, the newest safe checkpoint."""
        raw: list[str] = []
        if self._raw:
            raw, self._raw = self._raw, []
        # raw: as Fluent Bit's tail input stamps a record, when it was read
        ok = self.outputs.write(docs, raw, time.time() if raw else None)
        if ok and self.checkpoint is not None and self.checkpoint.has_points:
            self.checkpoint.accepted()
        return ok

    def _settle_outputs(self, timeout: float) -> None:
        """At stop: give held outputs a last while to accept what is pending."""
        deadline = time.monotonic() + timeout
        while self.outputs.held and time.monotonic() < deadline:
            self._retry_held()

    def _wait_while_held(self) -> None:
        """Held in the middle of a long batch: retry (and keep the status file fresh) until the
        outputs accept again or we are stopped, so what is pending stays one slice."""
        next_status = time.monotonic() + self.cfg.status.interval
        while self.outputs.held and not self._stop:
            self._retry_held()
            if time.monotonic() >= next_status:
                self.write_status()
                next_status = time.monotonic() + self.cfg.status.interval

    def _retry_held(self) -> None:
        """Held: wait for the next retry (a short sleep at most), retry, commit once clear."""
        time.sleep(min(0.2, self.outputs.next_retry_in()))
        if self.outputs.retry() and self.checkpoint is not None and self.checkpoint.has_points:
            self.checkpoint.accepted()

    # -- the loop ----------------------------------------------------------------------------
    def run(self, ruleset: Any = None) -> int:
        """Start the source, loop until stopped, shut down in order. Returns the exit code."""
        self.install_signal_handlers()
        self._ruleset = ruleset
        try:
            self.source.start(ruleset)
            self._start_ops()
        except BaseException:
            self._close_metrics()
            self.source.close()
            self.outputs.close()
            raise
        if self.drop_privileges:
            drop_capabilities()
        log.info("running: %s → %s (%s); status file %s", self.source.kind,
                 ", ".join(describe_output(o) for o in self.cfg.outputs),
                 self.cfg.normalize.format, self.cfg.status.path)
        try:
            self._loop()
        finally:
            self._shutdown()
        return self.exit_code

    def _start_ops(self) -> None:
        """Once the source runs: the drift monitor (over the rules the kernel source installed)
        and heartbeat stages, and the ``[metrics] listen`` endpoint."""
        netlink, installed = self._watched_rules()
        self.pipeline.add_stages(ops_stages(self.cfg, self.counters, netlink=netlink, installed=installed))
        self.metrics_server = start_metrics(self.cfg.metrics, self.counters)
        if self.metrics_server is not None:
            log.info("metrics on http://%s:%d/metrics", self.metrics_server.host, self.metrics_server.port)

    def _watched_rules(self) -> tuple[Any, list[bytes] | None]:
        """The control socket and the rules the drift monitor compares with the kernel's list:
        none for a file source, a locked kernel, or no rule files (the kernel's list is not ours)."""
        control = getattr(self.source, "control", None)
        if control is None or control.locked or control.ctl is None or self._ruleset is None:
            return None, None
        return control.ctl, control.watched_rules()

    def _close_metrics(self) -> None:
        if self.metrics_server is not None:
            self.metrics_server.close()
            self.metrics_server = None

    def _feed_kernel(self, batches: list, now: float) -> list:
        """Kernel batches of (type, payload) → documents."""
        docs: list = []
        feed = self.pipeline.feed_kernel_batch
        raw = self._raw if self._forward_raw else None
        for batch in batches:
            docs += feed(batch, now, raw, self._kernel_error)
        return docs

    def _kernel_error(self, e: Exception, type_num: int, payload: bytes) -> None:
        self._internal_error(e, f"netlink type {type_num}: {payload[:200]!r}")

    def _feed_file(self, batches: list, now: float) -> list:
        """File batches (FileChunk, PollEnd) → documents, noting resume points as lines go in."""
        docs: list = []
        feed = self.pipeline.feed_line
        cp = self.checkpoint
        assert cp is not None
        raw = self._raw if self._forward_raw else None
        for batch in batches:
            for item in batch:
                if isinstance(item, PollEnd):
                    cp.poll_end(item.positions)
                    continue
                cp.reading(item.name, item.entry)
                where = item.name
                for line, off in zip(item.lines, item.offsets, strict=True):
                    if raw is not None:
                        raw.append(line)
                    try:
                        out = feed(line, where, now)
                    except Exception as e:  # noqa: BLE001
                        self._internal_error(e, line[:200])
                        out = None
                    if out:
                        docs += out
                    cp.line_done(off)
                    if len(docs) >= self._slice or len(self._raw) >= self._slice:
                        # a long batch (catching up): write and commit in slices, so that a
                        # kill between a write and its commit resends one slice at most
                        if not self._write_and_commit(docs):
                            self._wait_while_held()  # no further line of this batch meanwhile
                        docs = []
                        if raw is not None:
                            raw = self._raw  # the write took the list
        return docs

    def _internal_error(self, e: Exception, what: str) -> None:
        """A bug met on some input (parser, reassembler, normalizer, stage): counted, logged with
        the input and traceback for the first few, and the stream goes on."""
        self.internal_errors += 1
        if self.internal_errors <= 5:
            log.error("internal error on %s: %s", what, e, exc_info=e)
        elif self.internal_errors == 6:
            log.error("further internal errors are counted in the status file, not logged")

    def _tick(self, now: float) -> list:
        try:
            return self.pipeline.tick(now)
        except Exception as e:  # noqa: BLE001
            self._internal_error(e, "tick")
            return []

    def _loop(self) -> None:
        q = self.source.queue
        mono = time.monotonic
        tick_every = min(0.25, self.cfg.reassembly.wall_timeout / 4)
        next_tick = mono() + tick_every
        next_status = mono()
        while not self._stop:
            batches: list = []
            if self.outputs.held:
                self._retry_held()  # take nothing more from the source meanwhile
            else:
                batches = q.get(0.2)
                now = mono()
                docs = self._feed(batches, now) if batches else []
                if now >= next_tick:
                    docs += self._tick(now)
                    next_tick = now + tick_every
                self._write_and_commit(docs)
            now = mono()
            if now >= next_status:
                self.source.poll()
                self.write_status()
                next_status = now + self.cfg.status.interval
            if self._reload:
                self._reload = False
                self._do_reload()
            if not batches and not self.outputs.held and not self.source.reader_alive():
                self.fatal = f"the {self.source.kind} reader stopped: {self.source.reader_error}"
                log.error("%s", self.fatal)
                self.exit_code = 1
                break

    def _drain(self) -> None:
        q = self.source.queue
        while True:
            batches = q.get(0)
            if not batches:
                break
            self._write_and_commit(self._feed(batches, time.monotonic()))

    def _shutdown(self) -> None:
        src = self.source
        problems: list[str] = []
        try:
            problems += src.release()
            time.sleep(0.1)  # the CONFIG_CHANGE records of the restore, while the reader runs
            src.stop_reader()
            self._drain()
            self._write_and_commit(self.pipeline.flush())
            self._settle_outputs(self.cfg.status.interval + STOP_RETRY)
        except Exception as e:
            problems.append(f"shutdown: {e}")
            log.exception("shutdown")
        finally:
            self.outputs.close()
            problems += src.close()
            self._close_metrics()
            self.write_status(running=False)
        c = self.counters()
        log.info("stopped: %d records, %d events, %d documents; kernel lost %d, serial gaps %d, "
                 "userspace drops %d, ENOBUFS %d, rejects %d", c["records_received"], c["events"],
                 c["documents"], c["kernel_lost"], c["serial_gaps"], c["userspace_drops"],
                 c["enobufs"], c["rejects"])
        if problems:
            self.exit_code = 1

    # -- reload ------------------------------------------------------------------------------
    def _do_reload(self) -> None:
        """SIGHUP: load the configuration again; apply rules, kernel settings, format,
        reassembly bounds, outputs and status settings. A broken file changes nothing."""
        if self.reload_config is None:
            log.warning("SIGHUP: nothing to reload from")
            return
        log.info("SIGHUP: reloading the configuration")
        try:
            new = self.reload_config()
            ruleset = self.compile_rules(new) if self.compile_rules else None
            normalize = normalizer_for(new)
        except Exception as e:  # noqa: BLE001 - ConfigError, RuleErrors: keep running as we are
            log.error("reload failed, configuration unchanged:\n%s", e)
            return
        old = self.cfg
        if new.kernel.mode != old.kernel.mode or new.source != old.source:
            log.warning("reload: the source and kernel.mode change only on restart")
        if new.kernel.backpressure_strategy != old.kernel.backpressure_strategy \
                or new.kernel.queue_size != old.kernel.queue_size:
            log.warning("reload: backpressure_strategy and queue_size change only on restart")
        outputs = self.outputs
        if new.outputs != old.outputs and not self.outputs.held:
            try:
                outputs = open_outputs(new)
            except ConfigError as e:
                log.error("reload: %s; outputs unchanged", e)
        elif new.outputs != old.outputs:
            log.warning("reload: an output is held; outputs change once it accepts writes again")
            new.outputs = old.outputs
        try:
            self.source.reconfigure(new, ruleset)
        except Exception as e:  # noqa: BLE001
            log.error("reload: kernel rules/status: %s", e)
        self._ruleset = ruleset
        self._rewatch(new)
        self.normalize = normalize
        r = new.reassembly
        self.reassembler.timeout = r.timeout
        self.reassembler.max_in_flight = r.max_in_flight
        self.reassembler.wall_timeout = r.wall_timeout
        if outputs is not self.outputs:
            self.outputs.close()
            self.outputs = outputs
        self._setup_outputs()
        self.status_writer = StatusWriter(new.status.path)
        self.cfg = new
        self.reloads += 1
        log.info("reloaded: %s rule file(s), format %s, %d output(s)",
                 len(rule_files(new)), new.normalize.format, len(self.outputs.outputs))


    def _rewatch(self, cfg: Config) -> None:
        """After a reload: the drift monitor watches the rules now installed, with the new
        ``[rules]`` settings."""
        netlink, installed = self._watched_rules()
        for st in self.pipeline.stages:
            if isinstance(st, DriftMonitor):
                st.watch(installed or [], cfg.rules.check_interval, cfg.rules.on_drift)


def drop_capabilities() -> None:
    """After start-up (socket bound, rules installed, files open): keep only the capabilities
    `run` still uses. Only as root; refused: a warning, and we go on as we are."""
    from auditpipe.service.privileges import RUN_KEEPS, drop_privileges

    if os.geteuid() != 0:
        return
    try:
        drop_privileges(RUN_KEEPS)
    except OSError as e:
        log.warning("could not drop capabilities: %s", e)
        return
    log.info("capabilities dropped to %s", ", ".join(RUN_KEEPS))


def reload_from(path: str | None, overrides: Callable[[Config], Config]) -> Callable[[], Config]:
    def load() -> Config:
        return overrides(load_config(path))
    return load
