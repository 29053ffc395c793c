"""Disk full under the durable queue, for real: a 5 MB tmpfs, a receiver that is down then up.

A refused append raises OutputUnavailable and leaves no torn frame; acknowledging still works
on the full disk (the ACK slots are preallocated), which frees space; every accepted event is
delivered exactly once. An ack that cannot be written pauses sending instead of re-sending.
"""

import errno

import pytest

from auditpipe.sinks.errors import OutputUnavailable
from auditpipe.sinks.http import HttpConfig, HttpShipper
from auditpipe.sinks.queue import DiskQueue, scan
from auditpipe.sinks.shipper import QueueSink
from helpers import wait_for
from loopback_http import LoopbackReceiver


def doc(i: int) -> dict:
    return {"id": i, "pad": "z" * 300}


def fill_until_refused(sink: QueueSink, start: int, most: int | None = None) -> tuple[int, OutputUnavailable | None]:
    """Write batches of 100, then single documents, until the disk refuses even one (or
    ``most`` documents went in: with the shipper draining the queue beside the writer, a fast
    enough shipper keeps the disk from ever filling again)."""
    i = start
    err = None
    for step in (100, 1):
        while most is None or i - start < most:
            try:
                sink.write([doc(j) for j in range(i, i + step)])
            except OutputUnavailable as e:
                err = e
                break
            i += step
    return i, err


def test_disk_full_refuses_cleanly_then_delivers_everything_once(tmpfs, caplog):
    rx = LoopbackReceiver()
    rx.start()
    rx.stop()  # the port now refuses connections: the receiver is down
    filler = tmpfs / "other-files"
    filler.write_bytes(b"f" * (1 << 20))  # something else on the same disk
    q = DiskQueue(tmpfs / "q", segment_bytes=512 << 10, max_bytes=64 << 20)
    cfg = HttpConfig(url=rx.url, tls=False, max_wait=0.05, backoff_initial=0.02, backoff_max=0.1)
    sh = HttpShipper(q, cfg)
    sink = QueueSink(q)
    accepted, err = fill_until_refused(sink, 0)
    assert err is not None and err.cause.startswith("ENOSPC on ") and str(tmpfs / "q") in err.cause
    assert accepted > 4000 and q.accepted == accepted
    for _ in range(3):  # still full: refused again, counted, logged once
        with pytest.raises(OutputUnavailable):
            sink.write([doc(accepted)])
    assert q.write_errors == 5
    assert caplog.text.count("cannot append") == 2  # once per spell (one spell per step)
    for seg in sorted(p for p in (tmpfs / "q").iterdir() if p.name.startswith("seg-")):
        data = seg.read_bytes()
        sc = scan(data)
        assert sc.end == len(data) and not sc.holes  # no torn frame left behind
    assert sum(len(scan(p.read_bytes()).records) for p in (tmpfs / "q").iterdir()
               if p.name.startswith("seg-")) == accepted

    filler.unlink()  # space comes back while the receiver is still down
    accepted, _ = fill_until_refused(sink, accepted)
    assert "appends accepted again" in caplog.text and q.accepted == accepted
    assert q.pending == accepted  # nothing was sent: the receiver is down

    rx.start()  # the receiver is back; the disk is full again
    sh.start()
    try:
        assert wait_for(lambda: q.pending == 0), q.pending
        more, _ = fill_until_refused(sink, accepted, most=5000)  # acks freed the space: writes go on
        assert more > accepted
        assert wait_for(lambda: q.pending == 0), q.pending
    finally:
        sh.stop()
        q.close()
    ids = [d["id"] for d in rx.docs()]
    assert ids == list(range(more))  # every accepted event once, in order
    assert sh.ack_errors == 0


class FailingAckQueue(DiskQueue):
    """The ACK write fails with ENOSPC ``fail`` times (the one fault a tmpfs cannot give us
    any more, since ACK slots are preallocated)."""

    fail = 0

    def _persist_ack(self, seq):
        if self.fail:
            self.fail -= 1
            raise OSError(errno.ENOSPC, "No space left on device")
        super()._persist_ack(seq)


def test_unwritable_ack_pauses_sending_instead_of_resending(tmp_path, caplog):
    with LoopbackReceiver() as rx:
        q = FailingAckQueue(tmp_path / "q")
        q.fail = 5
        sh = HttpShipper(q, HttpConfig(url=rx.url, tls=False, max_wait=0, max_events=50,
                                       backoff_initial=0.05, backoff_max=0.2))
        QueueSink(q).write([doc(i) for i in range(200)])
        sh.start()
        try:
            assert wait_for(lambda: q.pending == 0, 20)
        finally:
            sh.stop()
            q.close()
    # the first batch went out once; while its ack failed nothing else was sent
    assert [d["id"] for d in rx.docs()] == list(range(200))
    assert len(rx.requests) == 4
    assert sh.ack_errors == 5 and caplog.text.count("sending paused") == 1
    assert "sending resumes" in caplog.text


def test_full_disk_with_everything_acknowledged_frees_the_tail_and_writes(tmpfs):
    """The soak found it: the tail segment holds only acknowledged records and fills the disk;
    a segment is freed only once it is not the tail, so without a roll every append failed for
    ever while the queue was empty. The append now starts a new segment, the old one goes."""
    q = DiskQueue(tmpfs / "q", segment_bytes=64 << 20, max_bytes=256 << 20)
    sink = QueueSink(q)
    accepted, _ = fill_until_refused(sink, 0)
    q.ack(q.last_seq)  # everything delivered: nothing pending, the disk still full
    assert q.pending == 0
    sink.write([doc(j) for j in range(accepted, accepted + 100)])  # no OutputUnavailable
    assert q.pending == 100
    names = sorted(p.name for p in (tmpfs / "q").iterdir() if p.name.startswith("seg-"))
    assert names == [f"seg-{accepted:020d}.q"]  # the acknowledged segment is gone
    got = q.get_batch(1000)
    assert [orjson_id(p) for _, p in got] == list(range(accepted, accepted + 100))
    q.close()


def test_drop_oldest_with_an_acknowledged_tail_rolls_and_keeps_going(tmp_path):
    q = DiskQueue(tmp_path / "q", segment_bytes=4 << 10, max_bytes=64 << 10, full_policy="drop_oldest")
    sink = QueueSink(q)
    sink.write([doc(j) for j in range(5)])
    q.ack(q.last_seq)
    for k in range(50):  # far more than fits: old segments are dropped, never an IndexError
        sink.write([doc(j) for j in range(5 + 10 * k, 15 + 10 * k)])
    assert q.bytes_used <= 64 << 10
    q.close()


def orjson_id(payload: bytes) -> int:
    import orjson

    return orjson.loads(payload)["id"]
