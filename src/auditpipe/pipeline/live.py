"""`auditpipe run`: the live loop. A reader thread receives, the worker (this module, on the main
thread) parses, reassembles, normalizes and writes; counters go to a status file.

Threads and ownership:

* reader (``sources.kernel``): ``recv`` → :class:`BoundedQueue` of raw ``(type, payload)``
  batches. Nothing else, so a slow output never makes the kernel socket wait on parsing.
* worker (:meth:`LiveRunner.run`): takes every queued batch at once, feeds the pipeline, ticks
  the reassembler's wall clock (events without a terminator leave after ``wall_timeout``),
  writes documents to every output, polls the kernel status and writes the status file every
  ``status.interval`` seconds, and acts on SIGTERM/SIGINT (stop) and SIGHUP (reload).

Shutdown order: our rules are deleted and status fields restored while the reader still runs
(so the kernel's CONFIG_CHANGE records for them are still collected), then the reader stops, the
queue is drained, in-flight events are flushed, outputs closed, ``enabled`` restored and the pid
unregistered.

File source (``pipeline.file_source``): every line comes with the byte position after it. After
a line, that position is a *resume point* when every event still in the reassembler is complete
(``Reassembler.settled()``: no later record will join an event with a record from before it);
events leave in the order they were opened, so a resume point taken when ``created == C`` is
behind everything once ``events >= C`` and those documents were written (an HTTP output's
``write`` returns once its durable queue has them on disk). After each write the newest such
point is committed as the checkpoint: a SIGKILL then resends only what the outputs had
accepted and not yet confirmed, whether or not the log ever goes quiet. A long batch (catching
up) is written and committed in slices of ``WRITE_SLICE`` documents, or one HTTP batch
(``max_events``) when smaller, so that a kill between a write and its commit resends one slice
at most. The per-line work is on this path only; the kernel path and ``auditpipe parse`` do
none of it.

Raw forwarding: an ``[[outputs]] type = "http"`` with ``format = "raw"`` gets the records as read
(file: the lines; kernel: ``Record.raw``) through ``write_raw``; the other outputs get documents.
With raw outputs only, nothing is normalized and a line's position is a resume point as soon as
the line is written.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from collections import deque
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any


from auditpipe.config import Config, ConfigError, load_config, rule_files
from auditpipe.pipeline.backpressure import BoundedQueue
from auditpipe.pipeline.core import Pipeline
from auditpipe.pipeline.outputs import (WRITE_SLICE, build_normalizer_from, close_sink, describe_output, max_events,
                                        no_documents, open_outputs, wants_raw)
from auditpipe.pipeline.status import StatusWriter
from auditpipe.reassembly import Reassembler

__all__ = ["LiveRunner"]

log = logging.getLogger("auditpipe.run")

MAX_LOGGED_REJECTS = 20


def _iso(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).isoformat(timespec="seconds")


# ---------------------------------------------------------------------------------- runner
class LiveRunner:
    """One `auditpipe run`. ``source`` is a started-or-startable kernel source (anything with
    the :class:`~auditpipe.sources.kernel.KernelSource` interface); ``reload_config`` returns
    the new :class:`Config` on SIGHUP (or raises :class:`ConfigError`)."""

    def __init__(self, cfg: Config, source, *, normalize=None, sinks: list | None = None,
                 reload_config: Callable[[], Config] | None = None,
                 compile_rules: Callable[[Config], Any] | None = None) -> None:
        self.cfg = cfg
        self.source = source
        self.normalize = normalize if normalize is not None else build_normalizer_from(cfg)
        r = cfg.reassembly
        self.reassembler = Reassembler(timeout=r.timeout, max_in_flight=r.max_in_flight,
                                       wall_timeout=r.wall_timeout)
        self.rejects = 0
        self.pipeline = Pipeline(self.normalize, self.reassembler, on_reject=self._on_reject)
        self._raw: list[str] = []  # records read, for the raw outputs' next write
        self._sinks: list = sinks if sinks is not None else open_outputs(cfg)
        self._output_specs: list[dict] = cfg.output_specs()
        self._setup_outputs()
        self.reload_config = reload_config
        self.compile_rules = compile_rules
        self.status_writer = StatusWriter(cfg.status.path)
        self.output_errors = 0
        self.internal_errors = 0
        self.reloads = 0
        self.started = time.time()
        self._stop = False
        self._reload = False
        self.exit_code = 0
        self.fatal: str | None = None
        self.kind = getattr(source, "kind", "kernel")
        # file source: the end positions of the last poll, when no line was fed since
        self._positions: dict | None = None
        # file source: resume points (created, name, checkpoint entry, offset), oldest first
        self._safe: deque = deque()
        self._at: tuple | None = None  # (name, checkpoint entry) of the lines being fed
        if self.kind == "file" and getattr(source, "start_at", "") is None:
            source.start_at = cfg.source.start  # where to begin without a checkpoint

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

    def counters(self) -> dict[str, int]:
        src, q, ra, c = self.source, self.source.queue, self.reassembler, self.pipeline.counters
        st = getattr(src, "status", {}) or {}
        return {
            "records_received": src.messages,
            "records_parsed": c.records,
            "events": ra.events,
            "documents": c.documents,
            "kernel_lost": src.kernel_lost,
            "kernel_backlog": st.get("backlog", 0),
            "serial_gaps": ra.lost,
            "userspace_drops": q.dropped if q is not None else 0,
            "enobufs": src.enobufs,
            "rejects": c.rejects,
            "partial_events": ra.partial,
            "late_records": ra.late,
            "in_flight_events": ra.in_flight,
            "queue_depth": len(q) if q is not None else 0,
            "queue_peak": q.peak if q is not None else 0,
            "queue_blocked": q.blocked if q is not None else 0,
            "output_errors": self.output_errors,
            "internal_errors": self.internal_errors,
            "rules_installed": len(getattr(src, "installed", ())),
            "rules_refused": getattr(src, "rules_refused", 0),
            "reloads": self.reloads,
        }

    def status_doc(self, running: bool = True) -> dict:
        src = self.source
        strategy = getattr(src, "strategy", None)
        other = getattr(src, "other_daemon", None)
        outs = []
        for spec, sink in zip(self.output_specs, self.sinks):
            o = {"type": spec["type"], "target": describe_output(spec)}
            stats = getattr(sink, "stats", None)
            if callable(stats):
                try:
                    o["stats"] = stats()
                except Exception:  # noqa: BLE001 - status must not fail on a sink's stats
                    pass
            lines = getattr(sink, "lines", None)
            if isinstance(lines, int):
                o["lines"] = lines
            outs.append(o)
        return {
            "running": running,
            "pid": os.getpid(),
            "started": _iso(self.started),
            "updated": _iso(time.time()),
            "uptime_s": round(time.time() - self.started, 1),
            "config": self.cfg.path,
            "source": self.kind,
            "mode": getattr(src, "mode", None),
            "other_daemon": {"pid": other[0], "comm": other[1]} if other else None,
            "backpressure_strategy": strategy.name if strategy else None,
            "format": self.cfg.normalize.format,
            "outputs": outs,
            "counters": self.counters(),
            "kernel_status": dict(getattr(src, "status", {}) or {}),
        }

    def write_status(self, running: bool = True) -> None:
        self.status_writer.write(self.status_doc(running))

    # -- output ------------------------------------------------------------------------------
    @property
    def sinks(self) -> list:
        return self._sinks

    @sinks.setter
    def sinks(self, sinks: list) -> None:
        self._sinks = sinks
        self._setup_outputs()

    @property
    def output_specs(self) -> list[dict]:
        return self._output_specs

    @output_specs.setter
    def output_specs(self, specs: list[dict]) -> None:
        self._output_specs = specs
        self._setup_outputs()

    def _setup_outputs(self) -> None:
        """Which outputs get documents and which the raw records (``format = "raw"``)."""
        specs = self.output_specs
        raw, docs = [], []
        for i, s in enumerate(self.sinks):
            (raw if wants_raw(specs[i] if i < len(specs) else {}, s) else docs).append(s)
        self._raw_sinks, self._doc_sinks = raw, docs
        self._forward_raw = bool(raw)
        self._raw_only = bool(raw) and not docs
        self._slice = min([WRITE_SLICE] + [max_events(spec) for spec in specs if spec.get("type") == "http"])
        # raw outputs only: events are still assembled (counters, resume points), not normalized
        self.pipeline.normalize = no_documents if self._raw_only else self.normalize

    def _write(self, docs: list) -> bool:
        """Documents to the document outputs, the records read since the last write to the raw
        ones. True when every output accepted its part."""
        ok = True
        sinks = self._doc_sinks
        if docs and sinks:
            if len(sinks) > 1:
                from auditpipe.sinks.encode import dumps_line

                docs = [dumps_line(d) for d in docs]
            for s in sinks:
                ok = self._write_one(s, s.write, docs) and ok
        if self._raw:
            lines, self._raw = self._raw, []
            date = time.time()  # as Fluent Bit's tail input stamps a record: when it was read
            for s in self._raw_sinks:
                ok = self._write_one(s, s.write_raw, lines, date=date) and ok
        return ok

    def _write_one(self, sink, write, items, **kw) -> bool:
        try:
            write(items, **kw)
            return True
        except Exception as e:  # noqa: BLE001 - one failing output must not stop the others
            self.output_errors += 1
            if self.output_errors <= 10:
                log.error("output %s: %s", type(sink).__name__, e)
            return False

    # -- the loop ----------------------------------------------------------------------------
    def run(self, ruleset=None) -> int:
        """Start the source, loop until stopped, shut down in order. Returns the exit code."""
        self.install_signal_handlers()
        try:
            self.source.start(ruleset)
        except BaseException:
            self.source.close()
            for s in self.sinks:
                close_sink(s)
            raise
        log.info("running: %s → %s (%s); status file %s", self.source.mode,
                 ", ".join(describe_output(s) for s in self.output_specs),
                 self.cfg.normalize.format, self.cfg.status.path)
        try:
            self._loop()
        finally:
            self._shutdown()
        return self.exit_code

    def _feed(self, batches: list, now: float) -> list:
        """Raw batches → documents. Kernel batches hold (type, payload) tuples; file batches
        hold (line, offset) tuples and markers (see ``pipeline.file_source``)."""
        docs: list = []
        if self.kind == "kernel":
            if self._forward_raw:
                return self._feed_kernel_raw(batches, now)
            feed = self.pipeline.feed_kernel
            for batch in batches:
                for t, p in batch:
                    try:  # free in CPython 3.11+ unless something raises
                        out = feed(t, p, now)
                    except Exception as e:  # noqa: BLE001 - one bad record must not stop the agent
                        self._internal_error(e, f"netlink type {t}: {p[:200]!r}")
                        continue
                    if out:
                        docs += out
        else:
            docs = self._feed_file(batches, now)
        return docs

    def _feed_file(self, batches: list, now: float) -> list:
        """File batches → documents, noting resume points (module docstring) as lines go in."""
        docs: list = []
        feed = self.pipeline.feed_line
        where = getattr(self.source, "path", "-")
        ra = self.reassembler
        settled = ra.settled
        safe = self._safe
        raw = self._raw if self._forward_raw else None
        raw_only = self._raw_only
        at = self._at
        for batch in batches:
            for line, off in batch:
                if line is None:  # a marker
                    if off[0] == "at":
                        at = off[1:]
                        self._positions = None
                    else:  # "end": every line of the poll is in
                        self._positions = off[1]
                    continue
                if raw is not None:
                    raw.append(line)
                try:
                    out = feed(line, where, now)
                except Exception as e:  # noqa: BLE001
                    self._internal_error(e, line[:200])
                    out = None
                if out:
                    docs += out
                if off is not None and (raw_only or settled()):
                    c = 0 if raw_only else ra.created
                    if safe and safe[-1][0] == c and safe[-1][1] == at[0]:
                        safe[-1] = (c, at[0], at[1], off)  # same events, further on
                    else:
                        safe.append((c, at[0], at[1], off))
                    if len(docs) >= self._slice or len(self._raw) >= self._slice:
                        # a long batch (catching up): write and commit in slices, so that a
                        # kill between a write and its commit resends one slice at most
                        self._write_and_commit(docs)
                        docs = []
                        if raw is not None:
                            raw = self._raw  # the write took the list
        self._at = at
        return docs

    def _feed_kernel_raw(self, batches: list, now: float) -> list:
        """``Pipeline.feed_kernel`` for when raw outputs want ``Record.raw`` as well."""
        from auditpipe.parsing import ParseError, parse_kernel

        pipe = self.pipeline
        c = pipe.counters
        feed = self.reassembler.feed
        normalize = pipe.normalize
        raw = self._raw
        docs: list = []
        for batch in batches:
            for t, p in batch:
                try:
                    rec = parse_kernel(t, p)
                except ParseError as e:
                    c.rejects += 1
                    pipe.on_reject(f"netlink type {t}", p.decode("utf-8", "surrogateescape"), e.reason)
                    continue
                except Exception as e:  # noqa: BLE001
                    self._internal_error(e, f"netlink type {t}: {p[:200]!r}")
                    continue
                c.records += 1
                raw.append(rec.raw)
                try:
                    for ev in feed(rec, now):
                        docs += normalize(ev)
                except Exception as e:  # noqa: BLE001
                    self._internal_error(e, f"netlink type {t}: {p[:200]!r}")
        c.documents += len(docs)
        return docs

    def _internal_error(self, e: Exception, what: str) -> None:
        """A bug met on some input (parser, reassembler, normalizer): counted, logged with the
        input and traceback for the first few, and the stream goes on."""
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

    def _commit_positions(self) -> None:
        """File source, after a write: commit the newest resume point whose events have all
        left — or, when nothing is in flight and no line came after the last poll's end, the
        end positions of that poll."""
        safe = self._safe
        emitted = self.reassembler.events
        newest: dict = {}
        while safe and safe[0][0] <= emitted:
            _, name, entry, off = safe.popleft()
            newest[name] = (entry, off)
        if self._positions is not None and self.reassembler.in_flight == 0:
            positions = self._positions
            self._positions = None
            safe.clear()
        else:
            positions = {name: {**entry, "offset": off} for name, (entry, off) in newest.items()}
        if positions:
            self.source.commit(positions)

    def _write_and_commit(self, docs: list) -> None:
        ok = self._write(docs) if docs or self._raw else True
        if ok and (self._safe or self._positions is not None):
            self._commit_positions()

    def _loop(self) -> None:
        q = self.source.queue
        mono = time.monotonic
        tick_every = min(0.25, self.cfg.reassembly.wall_timeout / 4)
        next_tick = mono() + tick_every
        next_status = mono()
        while not self._stop:
            batches = q.get(0.2)
            now = mono()
            docs = self._feed(batches, now) if batches else []
            if now >= next_tick:
                docs += self._tick(now)
                next_tick = now + tick_every
            self._write_and_commit(docs)
            if now >= next_status:
                self.source.poll_status()
                self.write_status()
                next_status = now + self.cfg.status.interval
            if self._reload:
                self._reload = False
                self._do_reload()
            if not batches and not self.source.reader_alive():
                err = getattr(self.source, "reader_error", None)
                self.fatal = f"the {self.kind} reader stopped: {err}"
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
            problems += src.restore_rules_and_status()
            time.sleep(0.1)  # the CONFIG_CHANGE records of the restore, while the reader runs
            src.stop_reader()
            self._drain()
            self._write_and_commit(self.pipeline.flush())
        except Exception as e:
            problems.append(f"shutdown: {e}")
            log.exception("shutdown")
        finally:
            for s in self.sinks:
                close_sink(s)
            problems += src.close()
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
            normalize = build_normalizer_from(new)
        except Exception as e:  # noqa: BLE001 - ConfigError, RuleErrors: keep running as we are
            log.error("reload failed, configuration unchanged:\n%s", e)
            return
        old = self.cfg
        if new.kernel.mode != old.kernel.mode or new.source.type != old.source.type:
            log.warning("reload: the source and kernel.mode change only on restart")
        if new.kernel.backpressure_strategy != old.kernel.backpressure_strategy \
                or new.kernel.queue_size != old.kernel.queue_size:
            log.warning("reload: backpressure_strategy and queue_size change only on restart")
        new_specs = new.output_specs()
        sinks = self.sinks
        if new_specs != self.output_specs:
            try:
                sinks = open_outputs(new)
            except ConfigError as e:
                log.error("reload: %s; outputs unchanged", e)
                sinks = self.sinks
                new_specs = self.output_specs
        k = new.kernel
        try:
            self.source.keep_rules_on_exit = k.keep_rules_on_exit
            self.source.exclude_self = k.exclude_self
            self.source.reload(ruleset, {"backlog_limit": k.backlog_limit, "rate_limit": k.rate_limit,
                                         "failure": new.failure_value(),
                                         "backlog_wait_time": k.backlog_wait_time})
        except Exception as e:  # noqa: BLE001
            log.error("reload: kernel rules/status: %s", e)
        self.normalize = normalize
        self._setup_outputs()
        r = new.reassembly
        self.reassembler.timeout = r.timeout
        self.reassembler.max_in_flight = r.max_in_flight
        self.reassembler.wall_timeout = r.wall_timeout
        if sinks is not self.sinks:
            for s in self.sinks:
                close_sink(s)
            self.sinks = sinks
            self.output_specs = new_specs
        self.status_writer = StatusWriter(new.status.path)
        self.cfg = new
        self.reloads += 1
        log.info("reloaded: %s rule file(s), format %s, %d output(s)",
                 len(rule_files(new)), new.normalize.format, len(self.sinks))


def make_queue(cfg: Config) -> BoundedQueue:
    return BoundedQueue(cfg.kernel.queue_size)


def reload_from(path: str | None, overrides: Callable[[Config], Config]) -> Callable[[], Config]:
    def load() -> Config:
        return overrides(load_config(path))
    return load
