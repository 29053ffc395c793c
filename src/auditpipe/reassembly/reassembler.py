"""Records → events. A sans-I/O state machine: fed records (and, live, the wall clock), it
returns the events that are complete, in the order their first record arrived.

An event is complete on EOE, on a record type that always ends an event (PROCTITLE, user-space
and daemon types, anomalies), when it is older than `timeout` seconds of audit time behind the
newest record seen (and at least `grace` records have arrived since its own last one, so that a
record written just after a much newer one still finds its event), when more than `max_in_flight` events are open, when `wall_timeout`
seconds of wall clock pass without it completing (live only), or at `flush()`.
"""

from __future__ import annotations

from auditpipe import tables
from auditpipe.reassembly.serials import SerialTracker

__all__ = ["Event", "Reassembler", "ends_event"]

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


def ends_event(type_num: int) -> bool:
    """Whether a record of this type is always the last of its event.

    Kernel syscall events end with PROCTITLE (auditd does not write EOE to disk). Records sent
    from user space (1100–1299, 2100–2999) and the kernel's standalone types between LOGIN and
    the first event type are events of one record. LOGIN itself is followed by its SYSCALL.
    """
    return (
        type_num == _PROCTITLE
        or type_num == _EOE
        or _LOGIN < type_num < _FIRST_EVENT
        or type_num == _USER
        or _FIRST_ANOM <= type_num <= _LAST_USER2
    )


class Event:
    """The records of one (node, time, serial)."""

    __slots__ = ("node", "time", "sec", "msec", "serial", "records", "partial", "done", "opened_at", "last_rec")

    def __init__(self, node, time, sec, msec, serial, opened_at=None):
        self.node = node
        self.time = time
        self.sec = sec
        self.msec = msec
        self.serial = serial
        self.records = []
        self.partial = False
        self.done = False
        self.opened_at = opened_at
        self.last_rec = 0

    @property
    def id(self) -> str:
        return f"{self.time}:{self.serial}"

    def __repr__(self) -> str:
        return f"Event({self.id} node={self.node} {[r.type for r in self.records]}{' partial' if self.partial else ''})"


def looks_cut_short(event: Event) -> bool:
    """An event closed without its last record whose own records say more were due:
    a SYSCALL announcing more PATH items than arrived, or an EXECVE with missing arguments."""
    items = None
    paths = 0
    for r in event.records:
        t = r.type_num
        if t == _SYSCALL:
            v = r.fields.get("items")
            if isinstance(v, str) and v.isdigit():
                items = int(v)
        elif t == _PATH:
            paths += 1
    return items is not None and paths < items


class Reassembler:
    """Groups records into events. `feed`, `tick` and `flush` return completed events."""

    def __init__(self, timeout: float = 2.0, max_in_flight: int = 4096, wall_timeout: float | None = None,
                 recent_ids: int = 8192, grace: int = 16):
        self.timeout = timeout
        self.grace = grace
        self.max_in_flight = max_in_flight
        self.wall_timeout = wall_timeout
        self._open: dict = {}  # key → Event, insertion (first record) order
        self._closed: dict = {}  # recently emitted keys, to recognise late records
        self._recent_ids = recent_ids
        self._newest = 0.0
        self.serials = SerialTracker()
        self.events = 0
        self.records = 0
        self.partial = 0
        self.late = 0

    @property
    def lost(self) -> int:
        """Kernel serials never seen (exact once flushed; provisional while running)."""
        return self.serials.lost

    @property
    def in_flight(self) -> int:
        return len(self._open)

    def feed(self, record, now: float | None = None) -> list:
        self.records += 1
        key = (record.node, record.time, record.serial)
        ev = self._open.get(key)
        if ev is None:
            ev = Event(record.node, record.time, record.sec, record.msec, record.serial, now)
            if key in self._closed:
                # its event already left: emit this record as an event of its own, marked
                self.late += 1
                ev.partial = True
                ev.done = True
                key = (key, self.late)
            elif not (_FIRST_DAEMON <= record.type_num <= _LAST_DAEMON):
                # auditd's own records carry auditd's counter, not the kernel's: not a gap
                self.serials.see(record.node, record.serial)
            self._open[key] = ev
        ev.records.append(record)
        ev.last_rec = self.records
        if ends_event(record.type_num):
            ev.done = True
        ts = record.sec + record.msec / 1000.0
        if ts > self._newest:
            self._newest = ts
        head = next(iter(self._open.values()))
        if head.done or len(self._open) > self.max_in_flight or (
                head.sec + head.msec / 1000.0 < self._newest - self.timeout and self.records - head.last_rec >= self.grace):
            return self._drain(now)
        return []

    def tick(self, now: float) -> list:
        """Live: close events that have waited `wall_timeout` seconds of wall clock."""
        return self._drain(now)

    def flush(self) -> list:
        """End of input: every open event leaves."""
        out = []
        for key, ev in self._open.items():
            self._emit(key, ev, out, forced=not ev.done)
        self._open.clear()
        self.serials.flush()
        return out

    def _drain(self, now) -> list:
        out = []
        horizon = self._newest - self.timeout
        wall = self.wall_timeout
        opened = self._open
        while opened:
            key = next(iter(opened))
            ev = opened[key]
            if not ev.done:
                too_many = len(opened) > self.max_in_flight
                aged = ev.sec + ev.msec / 1000.0 < horizon and self.records - ev.last_rec >= self.grace
                stale = wall is not None and now is not None and ev.opened_at is not None and now - ev.opened_at >= wall
                if not (too_many or aged or stale):
                    break
            del opened[key]
            self._emit(key, ev, out, forced=not ev.done)
        return out

    def _emit(self, key, ev: Event, out: list, forced: bool) -> None:
        if forced and not ev.partial and looks_cut_short(ev):
            ev.partial = True
        if ev.partial:
            self.partial += 1
        self.events += 1
        if type(key[0]) is not tuple:  # late fragments are not remembered
            closed = self._closed
            closed[key] = None
            if len(closed) > self._recent_ids:
                del closed[next(iter(closed))]
        out.append(ev)
