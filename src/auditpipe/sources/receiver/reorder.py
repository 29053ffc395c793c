"""Per-sender reordering of audit records that arrive out of order across requests (sans-I/O).

A shipper such as Fluent Bit posts several chunks at once and retries failed ones later, so the
records of one event can arrive in separate requests, in either order, seconds apart. Records are
held per event key (node, time, serial) with an *order key* that says where each one stood in
the sender's stream: the record's position when the sender says which range of its stream a
request holds (``X-Auditpipe-Range``), else the sender's timestamp (Fluent Bit's ``date``) and
the position within the request, else the order of arrival.

A held event is released, its records sorted by order key and grouped by auparse's rules (one
``Reassembler`` per sender), as soon as it is *provably complete*: it holds a record that ends
an event (``reassembly.ends_event``) and its first record is not the first record of a request
whose predecessor in the stream is unknown — the only place where earlier records of the same
event can sit in another request that has not arrived yet. Otherwise it waits ``window`` seconds
of wall clock from its first record's arrival (sized for a shipper's retries), or until the
buffer holds ``max_records`` (the oldest events leave first, counted as ``forced``).

A shipper that timed out waiting for an answer sends the same request again: a record already
held or recently released with the same place in the stream and the same text is dropped
(counted as ``duplicates``), so a retry adds neither a record twice nor an event twice.

An event only ever touched by *in-order* requests (one keep-alive connection: each request
follows the one before) cannot get records from an earlier request any more, and the rest of
its records come in the next request, so it follows ``auditpipe parse``'s own rules instead: it is closed
``timeout`` seconds of audit time behind the newest in-order record, or after ``in_order_wait``
seconds of wall clock (a live stream's last event has nothing newer behind it).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from auditpipe.reassembly import Event, Reassembler
from auditpipe.reassembly.reassembler import ends_event

__all__ = ["Chunk", "ReorderBuffer"]

#: (stream position, request arrival number, index in the request); with X-Auditpipe-Range:
#: (range start, -1, index in the request)
Order = tuple[float, int, int]


def _place(order: Order) -> Any:
    """What names a record's place in the sender's stream whatever request brought it: its
    range start and index, else the sender's date (a retry of a request repeats both)."""
    return (order[0], order[2]) if order[1] < 0 else order[0]


@dataclass(slots=True)
class Chunk:
    """The records of one request, in body order. ``base``: the stream position of the first
    record (from ``X-Auditpipe-Range``) or None; ``head_known``: what precedes this request in
    the sender's stream has arrived already (or nothing does); ``in_order``: moreover the sender
    sends one request after the other, so nothing of its stream before this request is missing
    and what follows comes next (one keep-alive connection)."""

    records: list[tuple[Any, float | None, int]]  # (parsed record, sender date, index in the request)
    seq: int  # arrival number of the request at this sender
    base: int | None = None
    head_known: bool = False
    in_order: bool = False


@dataclass(slots=True)
class _Held:
    records: list[tuple[Order, Any]] = field(default_factory=list)
    prints: set[int] = field(default_factory=set)  # hashes of (stream place, text) of its records
    first: Order = (float("inf"), 0, 0)
    arrived: float = 0.0
    ended: bool = False
    head_open: bool = False  # the first record opened a request whose predecessor is unknown
    ts: float = 0.0  # audit time of the event
    deadline: float = 0.0  # wall clock: released incomplete at this time


class ReorderBuffer:
    def __init__(self, window: float, max_records: int = 100_000, in_order_wait: float = 2.0,
                 timeout: float = 2.0) -> None:
        self.window = window
        self.max_records = max_records
        self.in_order_wait = in_order_wait
        self.timeout = timeout
        self._newest = 0.0  # audit time of the newest record of an in-order request
        self._held: dict[tuple, _Held] = {}
        self._count = 0
        # groups records as auparse does (LOGIN before its SYSCALL, a late record after the end);
        # every event fed leaves it at the end of ``_release`` (see there), so none waits in here
        self._reasm = Reassembler(timeout=float("inf"), max_in_flight=1 << 30, wall_timeout=None)
        self.forced = 0  # events released by max_records before they were complete
        self.expired = 0  # events released because the window passed
        self.duplicates = 0  # records dropped because the same record arrived before
        # what was released lately, to recognise a retried request: event key → record prints
        self._released: OrderedDict[tuple, set[int]] = OrderedDict()
        self.remember = 8192  # events: a few of Fluent Bit's chunks

    @property
    def held_records(self) -> int:
        return self._count

    @property
    def held_events(self) -> int:
        return len(self._held)

    @property
    def reassembler(self) -> Reassembler:
        return self._reasm

    def add(self, chunk: Chunk, now: float) -> list[Event]:
        """Hold the chunk's records; return the events that are complete now."""
        held = self._held
        touched: dict[tuple, _Held] = {}
        wait = self.in_order_wait if chunk.in_order else self.window
        dropped = self.duplicates
        for rec, date, index in chunk.records:
            if chunk.base is not None:
                order: Order = (float(chunk.base), -1, index)
            else:
                order = (date if date is not None else 0.0, chunk.seq, index)
            key = (rec.node, rec.time, rec.serial)
            fingerprint = hash((_place(order), rec.raw))
            g = held.get(key)
            if (chunk.base is not None or order[0]) and (
                    fingerprint in (g.prints if g is not None else self._released.get(key, ()))):
                self.duplicates += 1
                continue
            if g is None:
                g = held[key] = _Held(arrived=now, ts=rec.sec + rec.msec * 0.001, deadline=now + wait)
            elif not chunk.in_order:
                g.deadline = max(g.deadline, g.arrived + self.window)
            g.records.append((order, rec))
            g.prints.add(fingerprint)
            if order < g.first:
                g.first = order
                g.head_open = index == 0 and not (chunk.head_known or chunk.in_order)
            if ends_event(rec.type_num):
                g.ended = True
            touched[key] = g
        self._count += len(chunk.records) - (self.duplicates - dropped)
        ready = [k for k, g in touched.items() if g.ended and not g.head_open]
        if chunk.in_order and chunk.records:
            newest = max(r.sec + r.msec * 0.001 for r, _, _ in chunk.records)
            self._newest = max(self._newest, newest)
            horizon = self._newest - self.timeout
            ready += [k for k, g in held.items() if g.ts < horizon and g.deadline - g.arrived < self.window
                      and not g.ended]
        out = self._release(ready, now)
        if self._count > self.max_records:
            out += self._release_oldest(now)
        return out

    def dump(self, now: float, wall: float) -> list:
        """The held records as JSON-able data (times as wall clock), to be ``load``-ed by the next
        process: a restarted receiver joins them with what the sender sends after the restart."""
        return [[wall - (now - g.arrived), wall + (g.deadline - now), g.head_open,
                 [[list(o), r.raw] for o, r in g.records]] for g in self._held.values()]

    def load(self, data: list, now: float, wall: float, parse: Any) -> None:
        """Take back what ``dump`` gave (a held event waits no longer than this buffer's window)."""
        for arrived, deadline, head_open, records in data:
            g: _Held | None = None
            for order, raw in records:
                rec = parse(raw)
                if g is None:
                    g = self._held.setdefault((rec.node, rec.time, rec.serial), _Held(
                        arrived=now - (wall - arrived), ts=rec.sec + rec.msec * 0.001,
                        deadline=now + min(deadline - wall, self.window), head_open=head_open))
                o = tuple(order)
                g.records.append((o, rec))
                g.prints.add(hash((_place(o), raw)))
                g.first = min(g.first, o)
                g.ended = g.ended or ends_event(rec.type_num)
                self._count += 1

    def expire(self, now: float) -> list[Event]:
        """Release the events whose window has passed (call about every second)."""
        late = [k for k, g in self._held.items() if now >= g.deadline]
        self.expired += len(late)
        return self._release(late, now)

    def flush(self, now: float) -> list[Event]:
        """Release everything (shutdown, or a sender forgotten after being idle)."""
        return self._release(list(self._held), now)

    def _release_oldest(self, now: float) -> list[Event]:
        victims: list[tuple] = []
        excess = self._count - self.max_records
        for k, g in sorted(self._held.items(), key=lambda kv: kv[1].arrived):
            if excess <= 0:
                break
            victims.append(k)
            excess -= len(g.records)
        self.forced += len(victims)
        return self._release(victims, now)

    def _release(self, keys: Iterable[tuple], now: float) -> list[Event]:
        groups = [self._held.pop(k) for k in keys]
        if not groups:
            return []
        groups.sort(key=lambda g: g.first)
        feed = self._reasm.feed
        out: list[Event] = []
        released = self._released
        for g in groups:
            self._count -= len(g.records)
            rec0 = g.records[0][1]
            released[(rec0.node, rec0.time, rec0.serial)] = g.prints
            if len(released) > self.remember:
                released.popitem(last=False)
            g.records.sort(key=lambda r: r[0])
            for _, rec in g.records:
                out += feed(rec, now)
        # a zero wall timeout for this one tick: everything fed above leaves, complete or not
        self._reasm.wall_timeout = 0.0
        out += self._reasm.tick(now)
        self._reasm.wall_timeout = None
        return out
