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

import orjson

from auditpipe.config import Config, ConfigError, load_config, rule_files
from auditpipe.pipeline.backpressure import BoundedQueue
from auditpipe.pipeline.core import Pipeline
from auditpipe.reassembly import Reassembler

__all__ = ["LiveRunner", "StatusWriter", "build_normalizer_from", "open_outputs", "read_status_file"]

log = logging.getLogger("auditpipe.run")

MAX_LOGGED_REJECTS = 20


def _iso(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).isoformat(timespec="seconds")


# ------------------------------------------------------------------------------ building
def build_normalizer_from(cfg: Config):
    """The normalizer the ``[normalize]`` table asks for."""
    from auditpipe.cli.common import build_normalizer

    n = cfg.normalize
    try:
        return build_normalizer(n.format, resolve_ids=n.resolve_ids, passwd=n.passwd_file,
                                group=n.group_file, include_raw=n.include_raw, extra_tags=n.tags)
    except ImportError as e:
        raise ConfigError(f"the {n.format!r} output format is not available in this build ({e}); "
                          "choose another with --format or [normalize] format",
                          cfg.path, where="[normalize] format") from None


def open_outputs(cfg: Config) -> list:
    """Open every ``[[outputs]]`` sink; on failure close those already open and raise."""
    from auditpipe.sinks import open_sink

    sinks = []
    try:
        for i, spec in enumerate(cfg.output_specs()):
            try:
                sinks.append(open_sink(spec))
            except (OSError, ValueError, TypeError) as e:
                raise ConfigError(f"cannot open output: {e}", cfg.path,
                                  where=f"[[outputs]] #{i + 1} ({spec.get('path') or spec.get('url') or spec['type']})") from None
    except BaseException:
        for s in sinks:
            _close_sink(s)
        raise
    return sinks


def _close_sink(s) -> None:
    try:
        s.close()
    except Exception as e:  # noqa: BLE001 - closing must go on for the other sinks
        log.error("closing output: %s", e)


def _describe_output(spec: dict) -> str:
    return spec.get("path") or spec.get("url") or spec["type"]


# ---------------------------------------------------------------------------- status file
class StatusWriter:
    """Writes the agent's status as one JSON object, atomically (temp file + rename)."""

    def __init__(self, path: str | None) -> None:
        self.path = path
        self._warned = False

    def write(self, doc: dict) -> bool:
        if not self.path:
            return False
        tmp = f"{self.path}.tmp.{os.getpid()}"
        try:
            d = os.path.dirname(self.path)
            if d:
                os.makedirs(d, mode=0o755, exist_ok=True)
            with open(tmp, "wb") as f:
                f.write(orjson.dumps(doc, option=orjson.OPT_INDENT_2 | orjson.OPT_APPEND_NEWLINE))
            os.chmod(tmp, 0o644)
            os.replace(tmp, self.path)
            return True
        except OSError as e:
            if not self._warned:
                log.warning("cannot write the status file %s: %s", self.path, e)
                self._warned = True
            try:
                os.unlink(tmp)
            except OSError:
                pass
            return False


def read_status_file(path: str) -> dict | None:
    try:
        with open(path, "rb") as f:
            return orjson.loads(f.read())
    except (OSError, orjson.JSONDecodeError):
        return None


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
        self.sinks = sinks if sinks is not None else open_outputs(cfg)
        self.output_specs = cfg.output_specs()
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
        self._positions: dict | None = None  # file source: positions to commit

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
            o = {"type": spec["type"], "target": _describe_output(spec)}
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
    def _write(self, docs: list) -> None:
        sinks = self.sinks
        if len(sinks) > 1:
            from auditpipe.sinks.encode import dumps_line

            docs = [dumps_line(d) for d in docs]
        for s in sinks:
            try:
                s.write(docs)
            except Exception as e:  # noqa: BLE001 - one failing output must not stop the others
                self.output_errors += 1
                if self.output_errors <= 10:
                    log.error("output %s: %s", type(s).__name__, e)

    # -- the loop ----------------------------------------------------------------------------
    def run(self, ruleset=None) -> int:
        """Start the source, loop until stopped, shut down in order. Returns the exit code."""
        self.install_signal_handlers()
        try:
            self.source.start(ruleset)
        except BaseException:
            self.source.close()
            for s in self.sinks:
                _close_sink(s)
            raise
        log.info("running: %s → %s (%s); status file %s", self.source.mode,
                 ", ".join(_describe_output(s) for s in self.output_specs),
                 self.cfg.normalize.format, self.cfg.status.path)
        try:
            self._loop()
        finally:
            self._shutdown()
        return self.exit_code

    def _feed(self, batches: list, now: float) -> list:
        """Raw batches → documents. Kernel batches hold (type, payload) tuples; file batches
        hold lines and end with a (None, positions) checkpoint marker."""
        docs: list = []
        if self.kind == "kernel":
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
            feed = self.pipeline.feed_line
            where = getattr(self.source, "path", "-")
            for batch in batches:
                for item in batch:
                    if isinstance(item, str):
                        try:
                            out = feed(item, where, now)
                        except Exception as e:  # noqa: BLE001
                            self._internal_error(e, item[:200])
                            continue
                        if out:
                            docs += out
                    else:
                        self._positions = item[1]
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

    def _maybe_commit(self) -> None:
        """File source: commit read positions once nothing read before them is in flight."""
        if self._positions is not None and self.reassembler.in_flight == 0:
            self.source.commit(self._positions)
            self._positions = None

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
            if docs:
                self._write(docs)
            if self._positions is not None:
                self._maybe_commit()
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
            docs = self._feed(batches, time.monotonic())
            if docs:
                self._write(docs)

    def _shutdown(self) -> None:
        src = self.source
        problems: list[str] = []
        try:
            problems += src.restore_rules_and_status()
            time.sleep(0.1)  # the CONFIG_CHANGE records of the restore, while the reader runs
            src.stop_reader()
            self._drain()
            docs = self.pipeline.flush()
            if docs:
                self._write(docs)
            self._maybe_commit()
        except Exception as e:
            problems.append(f"shutdown: {e}")
            log.exception("shutdown")
        finally:
            for s in self.sinks:
                _close_sink(s)
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
        self.pipeline.normalize = normalize
        self.normalize = normalize
        r = new.reassembly
        self.reassembler.timeout = r.timeout
        self.reassembler.max_in_flight = r.max_in_flight
        self.reassembler.wall_timeout = r.wall_timeout
        if sinks is not self.sinks:
            for s in self.sinks:
                _close_sink(s)
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
