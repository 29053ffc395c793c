"""The outputs of a run: routing documents to each, and holding what an output has not accepted.

Every sink's ``write(items)`` accepts all items or raises (``OutputUnavailable`` when it cannot
now: a full disk, a full queue). :class:`Outputs` keeps, per output, what it has not accepted yet
(*pending*) and tries again with backoff; while anything is pending the runtime is *held*: it reads
no further from the source (a file waits; the kernel's queue applies its backpressure strategy)
and commits no checkpoint (:mod:`auditpipe.pipeline.checkpoint`). The condition is logged once
with its cause when it starts and once when it clears, and shown in the status file.

Routing: an output takes ``documents = "events"`` (default), ``"alerts"`` (``event.kind ==
"signal"``, made by stages) or ``"both"``. An HTTP output with ``format = "raw"`` takes the
records as read instead of documents.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from auditpipe.config import Config, ConfigError, ElasticsearchOutput, FileOutput, HttpOutput, LakeOutput, OutputConfig
from auditpipe.pipeline.stages import route
from auditpipe.sinks.encode import dumps_line

__all__ = ["WRITE_SLICE", "Output", "Outputs", "close_sink", "describe_output", "open_outputs"]

log = logging.getLogger("auditpipe.run")

#: file source: at most this many documents (or raw records) reach the outputs between two
#: checkpoint commits — what a SIGKILL between a write and its commit may resend. An HTTP
#: output with a smaller ``max_events`` (one batch) lowers it.
WRITE_SLICE = 500
BACKOFF_FIRST = 0.1
BACKOFF_MAX = 5.0


def describe_output(cfg: OutputConfig) -> str:
    if isinstance(cfg, FileOutput):
        return cfg.path
    if isinstance(cfg, HttpOutput):
        return cfg.url
    if isinstance(cfg, LakeOutput):
        return cfg.path
    if isinstance(cfg, ElasticsearchOutput):
        return ", ".join(cfg.hosts)
    return "stdout"


def _iso(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).isoformat(timespec="seconds")


@dataclass(eq=False)
class Output:
    """One output: its sink, its typed config, and what it has not accepted yet."""

    sink: Any
    cfg: OutputConfig
    pending: list = field(default_factory=list)
    pending_date: float | None = None  # raw: when the pending records were read
    failures: int = 0  # failed write attempts since it last accepted one
    next_try: float = 0.0
    held_since: float | None = None  # wall clock
    cause: str | None = None

    @property
    def raw(self) -> bool:
        """Forwards the records as read (``format = "raw"``) instead of documents."""
        return isinstance(self.cfg, HttpOutput) and self.cfg.format == "raw" and hasattr(self.sink, "write_raw")

    @property
    def documents(self) -> str:
        return self.cfg.documents

    def attempt(self, slice_size: int = WRITE_SLICE) -> str | None:
        """Write what is pending, ``slice_size`` items a write, so that what is pending always
        fits a small disk piece by piece. None when all was accepted, else the cause (the part
        not yet accepted stays pending)."""
        while self.pending:
            items = self.pending[:slice_size]
            try:
                if self.raw:
                    self.sink.write_raw(items, date=self.pending_date)
                else:
                    self.sink.write(items)
            except Exception as e:  # noqa: BLE001 - OutputUnavailable, or a failure we cannot tell apart
                return str(getattr(e, "cause", None) or f"{type(e).__name__}: {e}")
            del self.pending[:len(items)]
        self.pending_date = None
        return None


class Outputs:
    """Every output of one run (see the module docstring)."""

    def __init__(self, outputs: Sequence[Output], clock: Callable[[], float] = time.monotonic,
                 wall: Callable[[], float] = time.time) -> None:
        self.outputs = list(outputs)
        self.clock = clock
        self.wall = wall
        self.holds = 0  # times an output stopped accepting
        self.write_failures = 0  # failed write attempts
        self.held_seconds = 0.0
        docs = [o for o in self.outputs if not o.raw]
        self.wants_raw = any(o.raw for o in self.outputs)
        self.raw_only = self.wants_raw and not docs
        self._serialize = len(docs) > 1  # serialize once, hand the same lines to each
        self._routing = any(o.documents != "events" for o in docs)
        http = [o.cfg.max_events for o in self.outputs if isinstance(o.cfg, HttpOutput)]
        self.slice = min([WRITE_SLICE, *http])

    @property
    def sinks(self) -> list:
        return [o.sink for o in self.outputs]

    @property
    def held(self) -> bool:
        """Something is pending: read nothing more from the source, commit no checkpoint."""
        return any(o.pending for o in self.outputs)

    def held_since(self) -> float | None:
        times = [o.held_since for o in self.outputs if o.held_since is not None]
        return min(times) if times else None

    def held_cause(self) -> str | None:
        causes = [f"{describe_output(o.cfg)}: {o.cause}" for o in self.outputs if o.held_since is not None]
        return "; ".join(causes) or None

    def write(self, docs: list, raw: list[str] | None = None, date: float | None = None) -> bool:
        """Hand ``docs`` (and the records read, to raw outputs) to every output, after what each
        still has pending. True when every output has accepted everything."""
        if docs or raw:
            self._offer(docs, raw or [], date)
        return self.retry(force=True)

    def _offer(self, docs: list, raw: list[str], date: float | None) -> None:
        by_class: dict[str, list] = {}
        for o in self.outputs:
            if o.raw:
                if raw:
                    o.pending += raw
                    if o.pending_date is None:
                        o.pending_date = date
                continue
            part = by_class.get(o.documents)
            if part is None:
                part = route(docs, o.documents) if self._routing else docs
                if self._serialize:
                    part = [dumps_line(d) for d in part]
                by_class[o.documents] = part
            if part:
                o.pending += part

    def retry(self, force: bool = False) -> bool:
        """Write what is pending to each output whose backoff has passed (all of them with
        ``force``: new documents just came). True when nothing is pending any more."""
        now = self.clock()
        for o in self.outputs:
            if o.pending and (force and not o.failures or now >= o.next_try):
                self._try(o, now)
        return not self.held

    def _try(self, o: Output, now: float) -> None:
        cause = o.attempt(self.slice)
        if cause is None:
            if o.held_since is not None:
                took = self.wall() - o.held_since
                self.held_seconds += took
                log.warning("output %s accepts writes again after %.1f s; what was held is written",
                            describe_output(o.cfg), took)
            o.failures, o.held_since, o.cause = 0, None, None
            return
        self.write_failures += 1
        o.failures += 1
        o.next_try = now + min(BACKOFF_MAX, BACKOFF_FIRST * 2 ** (o.failures - 1))
        if o.held_since is None:
            self.holds += 1
            o.held_since = self.wall()
            o.cause = cause
            log.error("output %s cannot accept writes (%s): holding %d document(s) and the source "
                      "until it can; retrying with backoff", describe_output(o.cfg), cause, len(o.pending))

    def pending_documents(self) -> int:
        """Documents (or raw records) the output furthest behind has not accepted yet."""
        return max((len(o.pending) for o in self.outputs), default=0)

    def flush(self) -> None:
        """Ask every sink to make what it accepted durable (``serve`` at shutdown)."""
        for o in self.outputs:
            o.sink.flush()

    def next_retry_in(self) -> float:
        """Seconds until the next retry is due (0 when nothing is pending)."""
        due = [o.next_try for o in self.outputs if o.pending]
        return max(0.0, min(due) - self.clock()) if due else 0.0

    def status(self) -> list[dict[str, Any]]:
        out = []
        for o in self.outputs:
            d: dict[str, Any] = {"type": o.cfg.__struct_config__.tag, "target": describe_output(o.cfg),
                                 "documents": o.documents, "pending": len(o.pending)}
            if o.held_since is not None:
                d["held_since"], d["held_cause"] = _iso(o.held_since), o.cause
            stats = getattr(o.sink, "stats", None)
            if callable(stats):
                try:
                    d["stats"] = stats()
                except Exception:  # noqa: BLE001 - status must not fail on a sink's stats
                    pass
            lines = getattr(o.sink, "lines", None)
            if isinstance(lines, int):
                d["lines"] = lines
            out.append(d)
        return out

    def close(self) -> None:
        for o in self.outputs:
            if o.pending:
                log.error("output %s: %d document(s) could not be written before exit (%s); the "
                          "checkpoint was not moved past them", describe_output(o.cfg), len(o.pending), o.cause)
            close_sink(o.sink)


def open_outputs(cfg: Config, shared: bool = False) -> Outputs:
    """Open every ``[[outputs]]`` sink; on failure close those already open and raise.
    ``shared``: files that other processes append to as well (``serve --workers N``)."""
    from auditpipe.sinks.factory import open_output

    outs: list[Output] = []
    try:
        for i, o in enumerate(cfg.outputs):
            try:
                outs.append(Output(open_output(o, shared), o))
            except (OSError, ValueError, TypeError) as e:
                raise ConfigError(f"cannot open output: {e}", cfg.path,
                                  where=f"[[outputs]] #{i + 1} ({describe_output(o)})") from None
    except BaseException:
        for out in outs:
            close_sink(out.sink)
        raise
    return Outputs(outs)


def close_sink(s: Any) -> None:
    try:
        s.close()
    except Exception as e:  # noqa: BLE001 - closing must go on for the other sinks
        log.error("closing output: %s", e)
