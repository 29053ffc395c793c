"""Records → events. A sans-I/O state machine: fed records (and, live, the wall clock), it
returns the events that are complete, in the order their first record arrived.

An event is complete on EOE, on a record type that always ends an event (PROCTITLE, user-space
and daemon types, anomalies), when it is older than `timeout` seconds of audit time behind the
newest record seen (and at least `grace` records have arrived since its own last one, so that a
record written just after a much newer one still finds its event), when more than
`max_in_flight` events are open, when `wall_timeout` seconds of wall clock pass without it
completing (live only), or at `flush()`.

The clock is the caller's: `feed` and `tick` take `now`. What the reassembler keeps about an open
event (complete yet, when it opened, its last record, late) is in its own `_Pending` record; the
`Event` handed out holds only the event.
"""

from __future__ import annotations

from collections import OrderedDict, deque

from auditpipe import tables
from auditpipe.parsing.record import Record
from auditpipe.reassembly.serials import SerialSink, SerialTracker

__all__ = ["Event", "Reassembler", "ends_event", "is_standalone"]

_T = tables.RECORD_TYPE_NUMBERS
_EOE = _T.get("EOE", 1320)
_PROCTITLE = _T.get("PROCTITLE", 1327)
_SYSCALL = _T.get("SYSCALL", 1300)
_PATH = _T.get("PATH", 1302)
_EXECVE = _T.get("EXECVE", 1309)
_LOGIN = _T.get("LOGIN", 1006)
_USER = _T.get("USER", 1005)
_FIRST_EVENT = tables.AUDIT_CONSTANTS.get("AUDIT_FIRST_EVENT", 1300)
_FIRST_DAEMON = tables.AUDIT_CONSTANTS.get("AUDIT_FIRST_DAEMON", 1200)
_LAST_DAEMON = tables.AUDIT_CONSTANTS.get("AUDIT_LAST_DAEMON", 1299)
_FIRST_ANOM = tables.AUDIT_CONSTANTS.get("AUDIT_FIRST_ANOM_MSG", 2100)
_LAST_USER2 = tables.AUDIT_CONSTANTS.get("AUDIT_LAST_USER_MSG2", 2999)


def is_standalone(type_num: int) -> bool:
    """Record types that are an event of their own, as auparse groups them: everything sent from
    user space (1100–1299, 2100–2999, USER) and the kernel's LOGIN. (The kernel writes LOGIN
    inside a syscall, so its SYSCALL/PROCTITLE with the same serial follow; auparse, and so
    ausearch, make them a second event, and so do we.)"""
    return _LOGIN <= type_num < _FIRST_EVENT or type_num == _USER or _FIRST_ANOM <= type_num <= _LAST_USER2


def ends_event(type_num: int) -> bool:
    """Whether a record of this type is always the last of its event: PROCTITLE ends a syscall
    event (auditd does not write EOE to disk), EOE, and the standalone types."""
    return type_num == _PROCTITLE or type_num == _EOE or is_standalone(type_num)


_ENDS = frozenset(n for n in range(1 << 12) if ends_event(n))  # audit types stop below 3000


class Event:
    """The records of one (node, time, serial): what the reassembler hands out."""

    __slots__ = ("node", "time", "sec", "msec", "serial", "ts", "records", "partial")

    def __init__(self, node: str | None, time: str, sec: int, msec: int, serial: int) -> None:
        self.node = node
        self.time = time
        self.sec = sec
        self.msec = msec
        self.serial = serial
        self.ts = sec + msec * 0.001
        self.records: list[Record] = []
        self.partial = False

    @property
    def id(self) -> str:
        return f"{self.time}:{self.serial}"

    def __repr__(self) -> str:
        return f"Event({self.id} node={self.node} {[r.type for r in self.records]}{' partial' if self.partial else ''})"


class _Pending:
    """The reassembler's own record of an event not yet emitted (never handed out)."""

    __slots__ = ("event", "records", "ts", "done", "opened_at", "last_rec", "late")

    def __init__(self, event: Event, opened_at: float | None) -> None:
        self.event = event
        self.records = event.records
        self.ts = event.ts
        self.done = False  # its last record came: nothing more joins it
        self.opened_at = opened_at  # wall clock when its first record came (live)
        self.last_rec = 0  # the reassembler's record count at its last record
        self.late = False  # its records came after its key had ended


def looks_cut_short(event: Event) -> bool:
    """An event closed without its last record whose own records say more were due:
    a SYSCALL announcing more PATH items than arrived, or an EXECVE with missing arguments."""
    items = None
    paths = 0
    for r in event.records:
        t = r.type_num
        if t == _SYSCALL:
            v = r.fields.get("items")
            if isinstance(v, str) and v.isascii() and v.isdigit():
                items = int(v)
        elif t == _PATH:
            paths += 1
    return items is not None and paths < items


class Reassembler:
    """Groups records into events. `feed`, `tick` and `flush` return completed events.

    `_queue` holds every event not yet emitted, in order of its first record; `_open` maps a key
    to the event that still takes records of that key. An event ended by PROCTITLE stays open
    for one more record, which may be its EOE. A record whose key's event has already ended
    starts a new event with that key (as auparse does); unless that event ended with a
    standalone record (LOGIN before its SYSCALL), the new event is marked partial and its
    records counted as late.
    """

    def __init__(self, timeout: float = 2.0, max_in_flight: int = 4096, wall_timeout: float | None = None,
                 recent_ids: int = 8192, grace: int = 0, serials: SerialSink | None = None):
        self.timeout = timeout
        self.grace = grace
        self.max_in_flight = max_in_flight
        self.wall_timeout = wall_timeout
        self._queue: deque[_Pending] = deque()
        self._open: dict = {}
        # recently ended keys → whether a later record is late; ordered, so that the oldest leaves in
        # O(1) (a dict's first key is found by walking past every deleted one: 4 % of a parse, measured)
        self._ended: OrderedDict = OrderedDict()
        self._held: _Pending | None = None  # the event the last record (a PROCTITLE) ended, open for its EOE
        self._recent_ids = recent_ids
        self._newest = 0.0
        self.serials: SerialSink = serials if serials is not None else SerialTracker()
        self.events = 0  # emitted
        self.created = 0  # opened; events leave in the order they were opened
        self.records = 0
        self.partial = 0
        self.late = 0

    @property
    def lost(self) -> int:
        """Kernel serials never seen (exact once flushed; provisional while running)."""
        return self.serials.lost

    @property
    def in_flight(self) -> int:
        return len(self._queue)

    def settled(self) -> bool:
        """Whether every event not yet emitted is complete (``done``): no record fed so far can
        still be joined by a later one. Typically the queue then holds at most the event its
        PROCTITLE just ended (kept for a possible EOE), so this is cheap to ask after each record.

        With ``created`` it makes resume points for a reader that keeps byte positions: the
        position after a record is safe when this holds, and everything before it has left once
        ``events`` reaches the ``created`` of that moment (events leave in creation order)."""
        for ev in self._queue:
            if not ev.done:
                return False
        return True

    def recently_ended(self) -> list[tuple[tuple, bool]]:
        """The keys whose events ended recently (oldest first), each with whether a later record
        of that key would be late: what a reassembler started afresh at this point would not know
        (a parallel parse checks the next part of its input against it)."""
        return list(self._ended.items())

    def feed(self, record, now: float | None = None) -> list:
        self.records += 1
        t = record.type_num
        key = (record.node, record.time, record.serial)
        opened = self._open
        held = self._held
        if held is not None:  # the event ended by the previous PROCTITLE: this record is its EOE or not
            self._held = None
            hev = held.event
            hkey = (hev.node, hev.time, hev.serial)
            if opened.get(hkey) is held:
                del opened[hkey]
            if hkey == key and t == _EOE:
                held.records.append(record)
                return self._drain(now)
        ev = opened.get(key)
        if ev is None:
            ended = self._ended.get(key)
            if ended is not None and t == _EOE:
                return []  # the end marker of an event already ended: it carries nothing more
            ev = _Pending(Event(record.node, record.time, record.sec, record.msec, record.serial), now)
            if ev.ts > self._newest:  # the records of one event share its timestamp
                self._newest = ev.ts
            if ended:
                ev.event.partial = True
                ev.late = True
            elif ended is None and not (_FIRST_DAEMON <= t <= _LAST_DAEMON):
                # auditd's own records carry auditd's counter, not the kernel's: not a gap
                self.serials.see(record.node, record.serial)
            opened[key] = ev
            self._queue.append(ev)
            self.created += 1
        if ev.late:
            self.late += 1
        ev.records.append(record)
        ev.last_rec = self.records
        if t in _ENDS:
            ev.done = True
            self._end(key, ev)
            if t == _PROCTITLE:
                self._held = ev
            else:
                del opened[key]
        head = self._queue[0]
        if head.done or len(self._queue) > self.max_in_flight or (
                head.ts < self._newest - self.timeout and self.records - head.last_rec >= self.grace):
            return self._drain(now)
        return []

    def tick(self, now: float) -> list:
        """Live: close events that have waited `wall_timeout` seconds of wall clock, and events
        held for an EOE that did not come."""
        return self._drain(now, release_held=True)

    def flush(self) -> list:
        """End of input: every event still queued leaves."""
        out: list[Event] = []
        while self._queue:
            self._emit(self._queue.popleft(), out)
        self._open.clear()
        self._held = None
        self.serials.flush()
        return out

    def _end(self, key, ev: _Pending) -> None:
        # a record arriving after a standalone record of the same serial (LOGIN's SYSCALL)
        # starts a new event; after anything else it is late
        ended = self._ended
        ended[key] = not is_standalone(ev.records[-1].type_num)
        if len(ended) > self._recent_ids:
            ended.popitem(last=False)

    def _drain(self, now, release_held: bool = False) -> list:
        out: list[Event] = []
        horizon = self._newest - self.timeout
        wall = self.wall_timeout
        queue = self._queue
        opened = self._open
        while queue:
            ev = queue[0]
            too_many = len(queue) > self.max_in_flight
            if ev.done:
                if ev is self._held:
                    if not (release_held or too_many):
                        break
                    self._held = None
                    key = (ev.event.node, ev.event.time, ev.event.serial)
                    if opened.get(key) is ev:
                        del opened[key]
            else:
                aged = ev.ts < horizon and self.records - ev.last_rec >= self.grace
                stale = wall is not None and now is not None and ev.opened_at is not None and now - ev.opened_at >= wall
                if not (too_many or aged or stale):
                    break
                e = ev.event
                key = (e.node, e.time, e.serial)
                if opened.get(key) is ev:
                    del opened[key]
                self._end(key, ev)
            queue.popleft()
            self._emit(ev, out)
        return out

    def _emit(self, pending: _Pending, out: list) -> None:
        ev = pending.event
        if not pending.done and not ev.partial and looks_cut_short(ev):
            ev.partial = True
        if ev.partial:
            self.partial += 1
        self.events += 1
        out.append(ev)
