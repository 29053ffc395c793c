"""The one shipper: drains the durable queue into any transport (HTTP, Elasticsearch, lake).

A batch closes on count, on bytes or after ``max_wait`` seconds. ``transport.send`` says what
became of it (:mod:`auditpipe.sinks.transport`): delivered, some positions to retry, some
refused for good, or the whole batch failed transiently or permanently. Transient failures are
retried with exponential backoff and jitter — for ever by default, because the queue is
durable and the destination will come back — except a server that keeps failing on the batch
(5xx), which is retried ``max_retries_5xx`` times and then dead-lettered. Refused payloads go to
the dead-letter file (JSON lines: time, output, reason, the payloads) so nothing accepted
disappears without a trace.

Acknowledgement follows ``transport.committed()``: a batch leaves the queue only once the
destination says it is durable (immediately for HTTP, after the Parquet file is renamed for the
lake). When the acknowledgement itself cannot be written (disk full under the queue), the
shipper stops sending and retries the ack write with backoff: sending on would deliver the
same records again after every restart, and a failing disk is not made better by more work.
"""

from __future__ import annotations

import json
import logging
import random
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import orjson

from auditpipe.sinks.encode import dumps_line
from auditpipe.sinks.file import FileSink
from auditpipe.sinks.queue import DiskQueue
from auditpipe.sinks.transport import (
    Outcome,
    PermanentError,
    ServerError,
    TransientError,
    Transport,
)

__all__ = ["Batching", "QueueShipper", "QueueSink", "QueuedOutput", "RetryPolicy", "raw_bodies", "raw_record"]

log = logging.getLogger(__name__)

#: raw lines are queued in runs of at most this many bytes (well under a batch's max_bytes)
RAW_RECORD_BYTES = 128 << 10


@dataclass(frozen=True, slots=True)
class Batching:
    """When a batch closes: ``max_events`` records, ``max_bytes`` payload bytes (plus one byte
    per record for framing), or ``max_wait`` seconds after its first record."""

    max_events: int = 500
    max_bytes: int = 1_000_000 - 4096
    max_wait: float = 1.0


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """Backoff doubles from ``backoff_initial`` up to ``backoff_max`` ("equal jitter": half
    fixed, half random). ``max_retries`` bounds every kind of retry of one batch (None: for
    ever); ``max_retries_5xx`` bounds retries after a :class:`ServerError` (None: for ever)."""

    backoff_initial: float = 0.5
    backoff_max: float = 30.0
    max_retries: int | None = None
    max_retries_5xx: int | None = 10

    def backoff(self, attempt: int, rng: Callable[[], float]) -> float:
        base = min(self.backoff_max, self.backoff_initial * (2 ** attempt))
        return base / 2 + base / 2 * rng()


def raw_record(line: str, date: float | None = None) -> bytes:
    """One raw audit line as Fluent Bit's tail input ships it (``date`` first), no newline."""
    return dumps_line({"date": time.time() if date is None else date, "log": line.rstrip("\n")})[:-1]


def _json_str(s: str) -> bytes:
    try:
        return orjson.dumps(s)
    except TypeError:  # lone surrogates (non-UTF-8 bytes): see sinks.encode
        return json.dumps(s).encode("ascii")


def raw_bodies(lines: Iterable[str], date: float, limit: int) -> tuple[list[bytes], int]:
    """Raw lines → body fragments of at most ``limit`` bytes (cut at line ends), each a run of
    ``{"date": …, "log": "…"}`` JSON lines, and the number of lines. Raw forwarding should cost
    little more than framing lines: one JSON string encoding per line, the rest is joins."""
    lines = [ln.rstrip("\n") for ln in lines if ln and not ln.isspace()]
    try:
        parts = [orjson.dumps(ln) for ln in lines]
    except TypeError:
        parts = [_json_str(ln) for ln in lines]
    if not parts:
        return [], 0
    head = b'{"date":' + orjson.dumps(date) + b',"log":'
    body = head + (b"}\n" + head).join(parts) + b"}"
    return split_lines(body, limit), len(parts)


def split_lines(body: bytes, limit: int) -> list[bytes]:
    """Cut a newline-separated body into pieces of at most ``limit`` bytes at line ends (a
    single longer line stays whole)."""
    out = []
    start = 0
    while len(body) - start > limit:
        cut = body.rfind(b"\n", start, start + limit + 1)
        if cut < 0:
            cut = body.find(b"\n", start + limit)
            if cut < 0:
                break
        out.append(body[start:cut])
        start = cut + 1
    out.append(body[start:])
    return out


class QueueSink:
    """Pipeline-side writer: puts documents (or raw lines) into the durable queue.

    ``write`` accepts all items or raises ``OutputUnavailable`` having accepted none (the
    queue truncates a partial append back). A document is one queue record; raw lines are
    queued as runs of JSON lines of at most ``raw_record_bytes`` (a queue record holds several
    lines: the per-record cost of the queue is then paid once per run, not once per line).
    """

    def __init__(self, queue: DiskQueue, raw_record_bytes: int = RAW_RECORD_BYTES) -> None:
        self.queue = queue
        self.raw_record_bytes = raw_record_bytes
        self.accepted = 0  # documents or raw lines

    def write(self, items: Iterable[Any]) -> int:
        lines = [dumps_line(o)[:-1] for o in items]
        if lines:
            self.queue.put_many(lines)
            self.accepted += len(lines)
        return len(lines)

    def write_raw(self, lines: Iterable[str], date: float | None = None) -> int:
        recs, n = raw_bodies(lines, time.time() if date is None else date, self.raw_record_bytes)
        if recs:
            self.queue.put_many(recs)
            self.accepted += n
        return n

    def flush(self) -> None:
        pass

    def close(self) -> None:
        pass


class QueueShipper:
    """A thread that takes batches from ``queue``, hands them to ``transport`` and acknowledges
    what the transport reports committed.

    ``step()`` does one batch (tests drive it directly); ``start()`` runs it in a thread until
    ``stop()``.
    """

    def __init__(self, queue: DiskQueue, transport: Transport, batching: Batching | None = None,
                 dead_letter: str | None = None, retry: RetryPolicy | None = None, *,
                 rng: Callable[[], float] = random.random) -> None:
        self.queue = queue
        self.transport = transport
        self.batching = batching or Batching()
        self.dead_letter = dead_letter
        self.retry = retry or RetryPolicy()
        self.rng = rng
        self.stop_event = threading.Event()
        self.sent_events = 0
        self.sent_batches = 0
        self.retries = 0
        self._failing_since: float | None = None  # a spell of failed sends: logged once
        self._failing_retries = 0
        self.dead_events = 0
        self.dead_batches = 0
        self.ack_errors = 0
        self.last_error: str | None = None
        self._calls = 0  # send() calls that returned an Outcome
        self._inflight: deque[tuple[int, int]] = deque()  # (calls needed, last seq) per batch
        self._ack_due: int | None = None
        self._ack_attempt = 0
        self._resolved = queue.acked_seq - 1  # last record delivered or dead-lettered
        self._dead: FileSink | None = None
        self._thread: threading.Thread | None = None

    # ---- batching --------------------------------------------------------------------------
    def next_batch(self, poll: float = 0.2) -> list[tuple[int, bytes]]:
        """Up to ``max_events`` records within ``max_bytes``, waiting ``max_wait`` to fill."""
        b = self.batching
        budget = b.max_bytes - b.max_events  # newlines
        batch = self.queue.get_batch(b.max_events, budget, timeout=poll)
        if not batch:
            return batch
        used = sum(len(p) for _, p in batch)
        deadline = time.monotonic() + b.max_wait
        while len(batch) < b.max_events and used < budget and not self.stop_event.is_set():
            left = deadline - time.monotonic()
            if left <= 0:
                break
            more = self.queue.get_batch(b.max_events - len(batch), budget - used,
                                        timeout=min(left, poll), at_least_one=False)
            if not more:
                if self.queue.has_unread():  # the next record does not fit: the batch is full
                    break
                continue
            batch += more
            used += sum(len(p) for _, p in more)
        return batch

    def backoff(self, attempt: int) -> float:
        return self.retry.backoff(attempt, self.rng)

    # ---- sending ---------------------------------------------------------------------------
    def deliver(self, batch: list[tuple[int, bytes]]) -> bool:
        """Send one batch until every record is delivered or dead-lettered (True), or ``stop``
        came during a backoff (False: the batch stays in the queue)."""
        payloads = [p for _, p in batch]
        pending = list(range(len(payloads)))
        attempt = server_failures = 0
        at = getattr(self.transport, "at", None)  # a Positioned transport
        if at is not None:
            at(batch[0][0], batch[-1][0] + 1)
        while True:
            try:
                out = self.transport.send([payloads[i] for i in pending])
            except PermanentError as e:
                self.last_error = str(e)
                self._dead_letter([payloads[i] for i in pending], str(e))
                break
            except TransientError as e:
                self.last_error, delay = e.reason, e.retry_after
                server_failures += isinstance(e, ServerError)
            else:
                self._calls += 1
                self.sent_batches += 1
                pending = self._settle(out, pending, payloads)
                if not pending:
                    break
                self.last_error = f"{len(pending)} records to retry"
                delay = out.retry_after
            if self._exhausted(attempt, server_failures):
                self._dead_letter([payloads[i] for i in pending], f"retries exhausted: {self.last_error}")
                break
            wait = self.backoff(attempt)
            if delay is not None:
                wait = min(max(wait, delay), self.retry.backoff_max)
            attempt += 1
            self.retries += 1
            self._note_failure(attempt, wait)
            if self.stop_event.wait(wait):
                self.queue.rewind()  # not acknowledged: sent again on the next start
                return False
        self._inflight.append((self._calls, batch[-1][0]))
        self._resolved = batch[-1][0]
        self._note_recovery()
        return True

    def _note_failure(self, attempt: int, wait: float) -> None:
        """One warning per spell of failures (a receiver down for an hour is one line, not
        thousands); every retry is counted in ``retries`` and logged at debug level."""
        self._failing_retries += 1
        if self._failing_since is None:
            self._failing_since = time.monotonic()
            log.warning("%s: %s; retrying with backoff (logged again when it delivers)",
                        self.transport.name, self.last_error)
        else:
            log.debug("%s: %s, retry %d in %.1fs", self.transport.name, self.last_error, attempt, wait)

    def _note_recovery(self) -> None:
        if self._failing_since is not None:
            log.warning("%s: delivering again after %d retries in %.1f s", self.transport.name,
                        self._failing_retries, time.monotonic() - self._failing_since)
            self._failing_since = None
            self._failing_retries = 0

    def _settle(self, out: Outcome, pending: list[int], payloads: list[bytes]) -> list[int]:
        """Count what one send delivered, dead-letter what it refused; the positions to retry."""
        for pos, reason in out.refused:
            self._dead_letter([payloads[pending[pos]]], reason)
        gone = set(out.retry) | {pos for pos, _ in out.refused}
        self.sent_events += sum(_lines(payloads[i]) for pos, i in enumerate(pending) if pos not in gone)
        return [pending[i] for i in out.retry]

    def _exhausted(self, attempt: int, server_failures: int) -> bool:
        r = self.retry
        return ((r.max_retries is not None and attempt >= r.max_retries)
                or (r.max_retries_5xx is not None and server_failures > r.max_retries_5xx))

    def _dead_letter(self, payloads: list[bytes], reason: str) -> None:
        payloads = [ln for p in payloads for ln in p.split(b"\n")]  # raw runs → their lines
        self.dead_events += len(payloads)
        self.dead_batches += 1
        if not self.dead_letter:
            log.error("%s: %d records refused (%s) and no dead-letter file", self.transport.name,
                      len(payloads), reason[:200])
            return
        if self._dead is None:
            self._dead = FileSink(self.dead_letter, fsync="batch", max_bytes=0)
        self._dead.write([{
            "time": time.time(), "output": self.transport.name, "reason": reason[:65536],
            "events": len(payloads), "body": [p.decode("utf-8", "surrogateescape") for p in payloads],
        }])

    # ---- acknowledgement -------------------------------------------------------------------
    def flush_acks(self) -> bool:
        """Acknowledge the batches the transport has committed; False while the ack write fails."""
        done = self.transport.committed()
        while self._inflight and self._inflight[0][0] <= done:
            self._ack_due = self._inflight.popleft()[1]
        if self._ack_due is None:
            return True
        try:
            self.queue.ack(self._ack_due)
        except OSError as e:
            self.ack_errors += 1
            self.last_error = f"cannot write the queue's ack: {e}"
            if self._ack_attempt == 0:
                log.error("%s: %s; sending paused until it can be written", self.transport.name, self.last_error)
            self._ack_attempt += 1
            return False
        if self._ack_attempt:
            log.warning("%s: queue ack written again after %d failures; sending resumes",
                        self.transport.name, self._ack_attempt)
            self._ack_attempt = 0
        self._ack_due = None
        return True

    def step(self, poll: float = 0.2) -> int:
        """Send one batch if there is one; returns the number of records it held."""
        if not self.flush_acks():
            self.stop_event.wait(self.backoff(self._ack_attempt - 1))
            return 0
        batch = self.next_batch(poll)
        if not batch:
            return 0
        self.deliver(batch)
        self.flush_acks()
        return len(batch)

    # ---- thread ----------------------------------------------------------------------------
    def run(self) -> None:
        while not self.stop_event.is_set():
            try:
                self.step()
            except Exception:  # keep shipping; the queue keeps the data
                log.exception("%s: unexpected error", self.transport.name)
                self.queue.rewind()
                self._inflight.clear()
                self.stop_event.wait(1.0)

    def start(self) -> threading.Thread:
        self._thread = threading.Thread(target=self.run, name=f"auditpipe-ship {self.transport.name}", daemon=True)
        self._thread.start()
        return self._thread

    def idle(self) -> bool:
        """Everything in the queue was handed to the transport (and settled)."""
        return not self.queue.has_unread() and self._resolved >= self.queue.last_seq

    def drain(self, timeout: float) -> bool:
        """Wait until every queued record was delivered (or ``timeout``)."""
        end = time.monotonic() + timeout
        while not (self.queue.pending == 0 or self.idle()) and time.monotonic() < end:
            time.sleep(0.02)
        return self.queue.pending == 0 or self.idle()

    def stop(self, timeout: float = 5.0) -> None:
        """Stop the thread, close the transport (a lake commits its open file) and acknowledge
        what that committed."""
        self.stop_event.set()
        if self._thread is not None:
            self._thread.join(timeout)
        try:
            self.transport.close()
            self.flush_acks()
        finally:
            if self._dead is not None:
                self._dead.close()

    def stats(self) -> dict[str, Any]:
        q = self.queue
        return {"queued": q.pending, "accepted": q.accepted, "dropped": q.dropped, "torn": q.torn,
                "sent_events": self.sent_events, "sent_batches": self.sent_batches,
                "retries": self.retries, "dead_letter_events": self.dead_events,
                "last_error": self.last_error, "skipped_frames": q.skipped_frames,
                "skipped_bytes": q.skipped_bytes, "write_errors": q.write_errors + self.ack_errors}


def _lines(payload: bytes) -> int:
    """Documents in one queue record: a JSON document holds no raw newline; a raw run is
    several JSON lines."""
    return payload.count(b"\n") + 1


class QueuedOutput:
    """A network or lake output as the pipeline sees it: ``write`` puts documents into the
    durable queue (accepted = on disk), a :class:`QueueShipper` thread delivers them behind it,
    ``close`` gives it ``drain_timeout`` seconds to empty the queue (what is left is sent on the
    next start)."""

    def __init__(self, queue: DiskQueue, transport: Transport, batching: Batching | None = None,
                 dead_letter: str | None = None, retry: RetryPolicy | None = None, *,
                 drain_timeout: float = 5.0, start: bool = True) -> None:
        self.queue = queue
        self.shipper = QueueShipper(queue, transport, batching, dead_letter, retry)
        self.writer = QueueSink(queue, min(RAW_RECORD_BYTES, self.shipper.batching.max_bytes // 4))
        self.drain_timeout = drain_timeout
        if start:
            self.shipper.start()

    def write(self, items: Iterable[Any]) -> int:
        return self.writer.write(items)

    def write_raw(self, lines: Iterable[str], date: float | None = None) -> int:
        return self.writer.write_raw(lines, date)

    def flush(self) -> None:
        pass  # accepted means on disk already

    def stats(self) -> dict[str, Any]:
        return {**self.shipper.stats(), "accepted": self.writer.accepted}

    def close(self, drain_timeout: float | None = None) -> None:
        try:
            self.shipper.drain(self.drain_timeout if drain_timeout is None else drain_timeout)
            self.shipper.stop()
        finally:
            self.queue.close()
