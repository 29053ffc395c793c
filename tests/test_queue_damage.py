"""Damaged queue files, done for real on the files: flipped bytes, zeroed pages, truncation,
damaged ACK slots. Only the damaged frames may be lost; every other record comes out, in order."""

import os

from auditpipe.sinks.queue import HDR_SIZE, DiskQueue, scan

N = 10_000


def payload(i: int) -> bytes:
    return b'{"event":%06d,"pad":"%s"}' % (i, b"x" * (40 + i % 90))


def fill(qdir, n=N, **kw):
    with DiskQueue(qdir, segment_bytes=256 << 10, **kw) as q:
        for i in range(0, n, 100):
            q.put_many([payload(j) for j in range(i, min(n, i + 100))])


def segments(qdir):
    return [qdir / n for n in sorted(os.listdir(qdir)) if n.startswith("seg-")]


def drain_numbers(q):
    got = []
    while True:
        b = q.get_batch(1000)
        if not b:
            return got
        got += [int(p[9:15]) for _, p in b]
        q.ack(b[-1][0])


def hit_frames(path, start, end):
    """Event numbers of the frames of ``path`` that overlap bytes [start, end)."""
    data = path.read_bytes()
    return {int(data[o + HDR_SIZE + 9:o + HDR_SIZE + 15]) for o, n in scan(data).records
            if o < end and o + HDR_SIZE + n > start}


def damage(path, start, new: bytes):
    with open(path, "r+b") as f:
        f.seek(start)
        f.write(new)


def test_flipped_bytes_lose_only_the_damaged_frame(tmp_path, caplog):
    qdir = tmp_path / "q"
    fill(qdir)
    seg = segments(qdir)[1]
    mid = seg.stat().st_size // 2
    lost = hit_frames(seg, mid, mid + 16)
    flipped = bytes(b ^ 0xFF for b in seg.read_bytes()[mid:mid + 16])
    damage(seg, mid, flipped)
    with DiskQueue(qdir, segment_bytes=256 << 10) as q:
        assert (q.skipped_frames, q.torn) == (len(lost), 0)
        assert 16 <= q.skipped_bytes <= 2 * (HDR_SIZE + 200)
        got = drain_numbers(q)
    assert 1 <= len(lost) <= 2
    assert got == [i for i in range(N) if i not in lost]
    assert "damaged bytes at offset" in caplog.text
    aside = [n for n in os.listdir(qdir) if n.startswith("damaged-")]
    assert len(aside) == 1 and flipped in (qdir / aside[0]).read_bytes()
    with DiskQueue(qdir) as q:  # the repair is durable: nothing more is skipped or resent
        assert q.skipped_frames == 0 and q.pending == 0


def test_damage_before_the_ack_point_does_not_move_it(tmp_path):
    """Records before the damage and after the ack cursor are neither lost nor resent, even
    though the damaged segment now holds fewer frames (its sequence numbers shift)."""
    qdir = tmp_path / "q"
    fill(qdir)
    seg = segments(qdir)[1]
    data = seg.read_bytes()
    recs = scan(data).records
    first = int(data[recs[0][0] + HDR_SIZE + 9:recs[0][0] + HDR_SIZE + 15])
    acked_upto = first + len(recs) * 3 // 4  # an ack inside the segment, after the damage
    with DiskQueue(qdir, segment_bytes=256 << 10) as q:
        while True:
            b = q.get_batch(50)
            q.ack(b[-1][0])
            if int(b[-1][1][9:15]) >= acked_upto:
                break
        acked_upto = int(b[-1][1][9:15])
    mid = len(data) // 3
    lost = hit_frames(seg, mid, mid + 16)
    damage(seg, mid, b"\0" * 16)
    with DiskQueue(qdir) as q:
        assert q.skipped_frames == len(lost) >= 1
        assert drain_numbers(q) == list(range(acked_upto + 1, N))


def test_zero_filled_page_as_after_power_loss(tmp_path):
    qdir = tmp_path / "q"
    fill(qdir)
    seg = segments(qdir)[2]
    damage(seg, 8192, b"\0" * 4096)
    with DiskQueue(qdir, segment_bytes=256 << 10) as q:
        got = drain_numbers(q)
        skipped = q.skipped_frames
    missing = sorted(set(range(N)) - set(got))
    assert got == [i for i in range(N) if i not in set(missing)]
    # a page of ~30 frames is gone, plus the frames straddling its edges; nothing else
    assert 25 <= len(missing) <= 40 and missing == list(range(missing[0], missing[-1] + 1))
    assert skipped == len(missing)


def test_truncated_segment_keeps_the_following_segments(tmp_path):
    qdir = tmp_path / "q"
    fill(qdir)
    segs = segments(qdir)
    data = segs[1].read_bytes()
    cut = len(data) // 2 + 5  # mid-frame
    kept = {int(data[o + HDR_SIZE + 9:o + HDR_SIZE + 15]) for o, n in scan(data[:cut]).records}
    gone = {int(data[o + HDR_SIZE + 9:o + HDR_SIZE + 15]) for o, n in scan(data).records} - kept
    os.truncate(segs[1], cut)
    with DiskQueue(qdir, segment_bytes=256 << 10) as q:
        assert q.torn == 1 and q.skipped_frames == len(gone)
        got = drain_numbers(q)
    assert got == [i for i in range(N) if i not in gone] and len(gone) > 100


def ack_slots(qdir):
    """Ack 1000 then 1500 records (slot 0, then slot 1), both inside the first segment so it
    is still on disk."""
    with DiskQueue(qdir, segment_bytes=256 << 10) as q:
        q.ack(q.get_batch(1000)[-1][0])
        q.ack(q.get_batch(500)[-1][0])
        assert q.acked_seq == 1500 and len(segments(qdir)) > 2
    return qdir / "ACK"


def test_damaged_newest_ack_slot_falls_back_to_the_other(tmp_path):
    qdir = tmp_path / "q"
    fill(qdir)
    ack = ack_slots(qdir)
    damage(ack, 24 + 3, b"\xff\xfe")  # the newest slot (the second write went to slot 1)
    with DiskQueue(qdir) as q:
        got = drain_numbers(q)
    assert got == list(range(1000, N))  # the older cursor: resent, never lost


def test_both_ack_slots_damaged_resends_everything(tmp_path, caplog):
    qdir = tmp_path / "q"
    fill(qdir)
    ack = ack_slots(qdir)
    damage(ack, 2, b"\xff")
    damage(ack, 24 + 2, b"\xff")
    with DiskQueue(qdir) as q:
        got = drain_numbers(q)
    assert "both ACK slots are damaged" in caplog.text
    assert got == list(range(N))


def test_segments_of_the_previous_frame_format_are_converted(tmp_path):
    import struct
    import zlib

    def v1(p):
        lb = struct.pack("<I", len(p))
        return lb + struct.pack("<I", zlib.crc32(p, zlib.crc32(lb))) + p

    qdir = tmp_path / "q"
    qdir.mkdir()
    (qdir / f"seg-{0:020d}.q").write_bytes(b"".join(v1(payload(i)) for i in range(50)))
    with DiskQueue(qdir) as q:
        assert q.skipped_frames == 0 and q.pending == 50
        q.put(payload(50))
        assert drain_numbers(q) == list(range(51))
