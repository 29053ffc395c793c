"""The bounded queue between the netlink reader and the worker, and the backpressure strategies."""

from __future__ import annotations

import threading
import time

import pytest

from auditpipe.sources.backpressure import USERSPACE_RATE_LIMIT, BoundedQueue, resolve_strategy


def items(n, start=0):
    return [(1300, str(i).encode()) for i in range(start, start + n)]


def flat(batches):
    return [x for b in batches for x in b]


def test_fifo_batches_and_counters():
    q = BoundedQueue(10)
    assert q.put(items(3)) == 0
    assert q.put(items(4, 3)) == 0
    assert len(q) == 7 and q.peak == 7
    got = q.get(0)
    assert flat(got) == items(7) and len(got) == 2
    assert len(q) == 0 and q.get(0) == []
    assert q.put_items == 7 and q.dropped == 0


def test_drop_policy_keeps_what_fits_and_counts_the_rest():
    q = BoundedQueue(5, "drop")
    assert q.put(items(3)) == 0
    assert q.put(items(4, 3)) == 2  # 2 fit, 2 dropped
    assert q.dropped == 2 and len(q) == 5
    assert q.put(items(1, 9)) == 1  # full: all dropped
    assert flat(q.get(0)) == items(5)
    assert q.dropped == 3 and q.peak == 5
    assert q.put(items(2)) == 0  # room again


def test_block_policy_waits_for_room_and_loses_nothing():
    q = BoundedQueue(4, "block")
    total = 50
    got: list = []

    def consumer():
        while len(got) < total:
            for b in q.get(0.5):
                got.extend(b)
            time.sleep(0.002)

    t = threading.Thread(target=consumer)
    t.start()
    for i in range(0, total, 5):
        assert q.put(items(5, i)) == 0  # a batch bigger than the capacity enters in parts
    t.join(10)
    assert got == items(total)
    assert q.dropped == 0 and q.blocked > 0 and q.peak <= 4


def test_block_policy_timeout_counts_what_did_not_enter():
    q = BoundedQueue(2, "block")
    assert q.put(items(5), timeout=0.05) == 3
    assert q.dropped == 3 and len(q) == 2


def test_close_wakes_a_blocked_put_and_later_puts_are_dropped():
    q = BoundedQueue(1, "block")
    q.put(items(1))
    res = {}
    t = threading.Thread(target=lambda: res.setdefault("lost", q.put(items(3))))
    t.start()
    time.sleep(0.05)
    q.close()
    t.join(2)
    assert res["lost"] == 3
    assert q.put(items(2)) == 2
    assert flat(q.get(0)) == items(1)  # what was queued is still drained
    assert q.get(0) == []  # closed and empty: no wait


def test_get_waits_for_a_put():
    q = BoundedQueue(10)
    threading.Timer(0.05, lambda: q.put(items(1))).start()
    t0 = time.monotonic()
    assert flat(q.get(2)) == items(1)
    assert time.monotonic() - t0 < 1.5


def test_bad_arguments():
    with pytest.raises(ValueError):
        BoundedQueue(0)
    with pytest.raises(ValueError):
        BoundedQueue(1, "spill")


@pytest.mark.parametrize("name, has_bwt, rate, bwt, expect", [
    ("auto", True, None, None, ("kernel", "block", 0, None)),
    ("auto", False, None, None, ("userspace", "drop", None, USERSPACE_RATE_LIMIT)),
    ("auto", True, None, 500, ("userspace", "drop", 500, USERSPACE_RATE_LIMIT)),
    ("kernel", True, 100, None, ("kernel", "block", 0, 100)),
    ("userspace", True, None, None, ("userspace", "drop", None, USERSPACE_RATE_LIMIT)),
    ("userspace", True, 0, None, ("userspace", "drop", None, 0)),
    ("both", True, None, None, ("both", "drop", 0, None)),
    ("none", True, None, 15000, ("none", "block", 15000, None)),
    ("none", True, None, None, ("none", "block", None, None)),
])
def test_strategies(name, has_bwt, rate, bwt, expect):
    s = resolve_strategy(name, has_bwt, rate, bwt)
    assert (s.name, s.queue_policy, s.backlog_wait_time, s.rate_limit) == expect


def test_kernel_strategy_needs_backlog_wait_time():
    with pytest.raises(ValueError, match="3.14"):
        resolve_strategy("kernel", False)
    with pytest.raises(ValueError, match="unknown"):
        resolve_strategy("sometimes", True)
