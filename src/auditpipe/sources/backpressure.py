"""The bounded queue between the socket reader thread and the worker, and the backpressure
strategies (named as Elastic's Auditd Manager names them).

The reader puts whole batches (lists of raw ``(type, payload)`` tuples, one ``recv`` burst each)
so that the lock is taken once per burst, not once per record. The capacity counts messages.

* ``block`` — a full queue makes the reader wait; the socket buffer then fills and the kernel's
  own backlog takes the strain (what it does then depends on ``backlog_wait_time``).
* ``drop`` — a full queue drops what does not fit, and counts it (``dropped``).

Strategies → queue policy and kernel settings (:func:`resolve_strategy`):

=========== ============ ==============================================================
strategy    queue        kernel
=========== ============ ==============================================================
kernel      block        ``backlog_wait_time`` = 0: the kernel drops (counts ``lost``)
                         instead of making audited processes wait
userspace   drop         unchanged; ``rate_limit`` 5000 when none is configured
both        drop         ``backlog_wait_time`` = 0
none        block        unchanged (processes may wait up to ``backlog_wait_time``)
auto        kernel when the kernel has ``backlog_wait_time`` (3.14+), else userspace
=========== ============ ==============================================================
"""

from __future__ import annotations

import threading
import time
from collections import deque
from dataclasses import dataclass

__all__ = ["USERSPACE_RATE_LIMIT", "BoundedQueue", "ReaderThread", "Strategy", "resolve_strategy"]

USERSPACE_RATE_LIMIT = 5000
STRATEGIES = ("auto", "kernel", "userspace", "both", "none")


@dataclass(frozen=True)
class Strategy:
    name: str  # the resolved strategy (never "auto")
    queue_policy: str  # "block" | "drop"
    backlog_wait_time: int | None  # what to set, None: leave it
    rate_limit: int | None  # what to set, None: leave it


def resolve_strategy(name: str, kernel_has_wait_time: bool, rate_limit: int | None = None,
                     backlog_wait_time: int | None = None) -> Strategy:
    """The queue policy and kernel settings for a strategy. ``rate_limit`` and
    ``backlog_wait_time`` are the configured values (None: not configured); under ``auto`` an
    explicitly configured ``backlog_wait_time`` other than 0 means userspace."""
    if name not in STRATEGIES:
        raise ValueError(f"unknown backpressure strategy {name!r} (one of {', '.join(STRATEGIES)})")
    if name == "auto":
        name = "kernel" if kernel_has_wait_time and backlog_wait_time in (None, 0) else "userspace"
    if name in ("kernel", "both") and not kernel_has_wait_time:
        raise ValueError(f"the {name!r} backpressure strategy needs a kernel with "
                         "backlog_wait_time (Linux 3.14 or later)")
    bwt = 0 if name in ("kernel", "both") else backlog_wait_time
    rate = rate_limit
    if name == "userspace" and rate is None:
        rate = USERSPACE_RATE_LIMIT
    policy = "drop" if name in ("userspace", "both") else "block"
    return Strategy(name, policy, bwt, rate)


class BoundedQueue:
    """A FIFO of batches holding at most ``capacity`` items in all.

    ``put(batch)`` returns how many items of the batch were dropped (``drop`` policy) — under
    ``block`` it waits for room and drops nothing unless ``closed`` or the ``timeout`` passes.
    A batch larger than the whole capacity is split so it can enter in parts.
    ``get(timeout)`` returns every batch queued (a list of batches), or [] on timeout.
    Counters: ``dropped``, ``put_items``, ``peak`` (highest depth), ``blocked`` (times a put
    had to wait), ``blocked_seconds`` (time puts spent waiting).
    """

    def __init__(self, capacity: int, policy: str = "block") -> None:
        if capacity < 1:
            raise ValueError("capacity must be at least 1")
        if policy not in ("block", "drop"):
            raise ValueError("policy must be 'block' or 'drop'")
        self.capacity = capacity
        self.policy = policy
        self._q: deque[list] = deque()
        self._size = 0
        self._lock = threading.Lock()
        self._not_empty = threading.Condition(self._lock)
        self._not_full = threading.Condition(self._lock)
        self.closed = False
        self.dropped = 0
        self.put_items = 0
        self.peak = 0
        self.blocked = 0
        self.blocked_seconds = 0.0

    def __len__(self) -> int:
        return self._size

    def put(self, batch: list, timeout: float | None = None) -> int:
        if not batch:
            return 0
        n = len(batch)
        with self._lock:
            if self.closed:
                self.dropped += n
                return n
            room = self.capacity - self._size
            if n <= room:
                self._append(batch)
                return 0
            if self.policy == "drop":
                if room > 0:
                    self._append(batch[:room])
                lost = n - max(room, 0)
                self.dropped += lost
                return lost
            # block: enter in parts as room appears
            deadline = None if timeout is None else time.monotonic() + timeout
            start = 0
            waited = False
            t0 = time.monotonic()
            while start < n:
                room = self.capacity - self._size
                if room > 0:
                    part = batch[start:start + room]
                    self._append(part)
                    start += len(part)
                    continue
                if self.closed:
                    break
                if not waited:
                    self.blocked += 1
                    waited = True
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    break
                self._not_full.wait(left)
            if waited:
                self.blocked_seconds += time.monotonic() - t0
            lost = n - start
            self.dropped += lost
            return lost

    def _append(self, batch: list) -> None:
        self._q.append(batch)
        self._size += len(batch)
        self.put_items += len(batch)
        self.peak = max(self.peak, self._size)
        self._not_empty.notify()

    def get(self, timeout: float | None = None) -> list[list]:
        with self._lock:
            if not self._q and not self.closed:
                self._not_empty.wait(timeout)
            if not self._q:
                return []
            out = list(self._q)
            self._q.clear()
            self._size = 0
            self._not_full.notify_all()
            return out

    def close(self) -> None:
        """Wake everyone; further puts are dropped (and counted), gets drain what is left."""
        with self._lock:
            self.closed = True
            self._not_empty.notify_all()
            self._not_full.notify_all()


class ReaderThread:
    """The reader thread's lifecycle, shared by the sources (kernel, file): each sets
    ``self._thread`` (started by its ``start``) and ``self._stop`` (a threading.Event)."""

    _thread: threading.Thread | None = None
    _stop: threading.Event

    def reader_alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def stop_reader(self, timeout: float = 2.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
