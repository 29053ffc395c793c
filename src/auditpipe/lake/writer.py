"""The lake writer: a Transport (``sinks/transport.py``) that turns batches of JSON documents into
Parquet files, one open file per partition (folder, date, host).

A file is written under a temporary name and renamed when complete: when it reaches
``max_file_bytes`` or has been open ``max_file_age`` seconds, and at ``close()``. ``committed()``
counts the batches all of whose rows are in renamed files, so the durable queue in front keeps
every document that is not yet in a finished file: a SIGKILL loses nothing, and what is sent
again carries the same event id (``auditpipe query`` deduplicates on it). The shipper polls
``committed()`` while idle, which is when files past their age are completed.
"""

from __future__ import annotations

import logging
import socket
import time
from collections.abc import Callable
from datetime import datetime
from typing import IO, Any

import orjson
import pyarrow as pa
import pyarrow.parquet as pq

from auditpipe.lake.batch import EcsBatchReader
from auditpipe.lake.columns import _EPOCH, _US, FORMATS, doc_hash, schema_of
from auditpipe.lake.config import LakeOutput
from auditpipe.lake.store import Store, final_name, safe_host, stale_temp, temp_name, writer_id
from auditpipe.sinks.transport import Outcome

__all__ = ["LakeWriter", "clean_leftovers"]

log = logging.getLogger("auditpipe.lake")

_DAY_US = 86_400_000_000
#: Parquet (zstd) holds audit JSON in about a sixth of its text: the estimate for buffered rows
_BUFFER_RATIO = 6
_MAX_BUFFER_BYTES = 64 << 20


class _Open:
    """One partition's file being written: Arrow tables buffered until a row group is due."""

    __slots__ = ("folder", "date", "host", "temp", "final", "file", "writer", "tables", "rows", "buffered",
                 "first_batch", "opened")

    def __init__(self, folder: str, date: str, host: str, temp: str, first_batch: int, opened: float) -> None:
        self.folder, self.date, self.host = folder, date, host
        self.temp, self.final = temp, temp.rsplit("/", 1)[0] + "/" + final_name(temp.rsplit("/", 1)[1])
        self.file: IO[bytes] | None = None
        self.writer: pq.ParquetWriter | None = None
        self.tables: list[pa.Table] = []
        self.rows = 0
        self.buffered = 0
        self.first_batch = first_batch
        self.opened = opened

    def size(self) -> int:
        on_disk = self.file.tell() if self.file is not None else 0
        return on_disk + self.buffered // _BUFFER_RATIO


#: (folder, date, host) → (rows of that partition, their payload bytes)
_Parts = dict[tuple[str, str, str], tuple[pa.Table, int]]


def _ecs_key(doc: dict) -> tuple[int, str | None, Any]:
    """(event time in µs, event id, host name) of an ECS document."""
    ts = doc["@timestamp"]
    us = (datetime.fromisoformat(ts) - _EPOCH) // _US
    seq = (doc.get("auditd") or {}).get("sequence")
    eid = f"{us // 1_000_000}.{us // 1000 % 1000:03d}:{seq}" if isinstance(seq, int) else None
    if eid is None:
        eid = (doc.get("event") or {}).get("id")
    return us, eid, (doc.get("host") or {}).get("name")


def _panther_key(doc: dict) -> tuple[int, str | None, Any]:
    ts = doc["timestamp"]
    us = round(float(ts) * 1000) * 1000
    return us, doc.get("eventId"), (doc.get("extra_message_fields") or {}).get("node") or doc.get("node")


def classify(doc: dict) -> str | None:
    """The lake folder of a document: ecs, alerts (ECS with event.kind = signal) or panther."""
    if "@timestamp" in doc:
        ev = doc.get("event")
        return "alerts" if isinstance(ev, dict) and ev.get("kind") == "signal" else "ecs"
    if "p_log_type" in doc or "eventId" in doc:
        return "panther"
    return None


class LakeWriter:
    """Transport writing documents into the lake (see module doc)."""

    def __init__(self, cfg: LakeOutput, *, clock: Callable[[], float] = time.time,
                 monotonic: Callable[[], float] = time.monotonic, fast: bool = True) -> None:
        self.cfg = cfg
        self.name = f"lake {cfg.path}"
        self.store = Store(cfg.path)
        self.clock, self.monotonic = clock, monotonic
        self.wid = writer_id()
        self.default_host = safe_host(cfg.default_host or socket.gethostname())
        self.compression = None if cfg.compression == "none" else cfg.compression
        self._schemas = {f: schema_of(f) for f in FORMATS}
        self._fast: EcsBatchReader | None = EcsBatchReader(self._schemas["ecs"], self.default_host) if fast else None
        self._open: dict[tuple[str, str, str], _Open] = {}
        self._dates: dict[int, str] = {}
        self._sent = 0
        self._files = 0
        self.rows_written = 0
        self.files_written = 0
        self.refused = 0
        self.slow_batches = 0  # batches the Arrow JSON reader could not take (see batch.py)
        self.leftovers_removed = clean_leftovers(self.store, max(3600.0, 4 * cfg.max_file_age), clock())

    # ---- Transport -------------------------------------------------------------------------
    def send(self, payloads: list[bytes]) -> Outcome:
        """Buffer one batch into its partitions' open files; refuse what is not an event."""
        batch = self._sent + 1
        parts = self._fast.tables(payloads) if self._fast is not None else None
        refused: list[tuple[int, str]] = []
        if parts is None:
            self.slow_batches += 1
            parts, refused = self._slow_tables(payloads)
        try:
            for (folder, date, host), (table, nbytes) in parts.items():
                o = self._open.get((folder, date, host))
                if o is None:
                    o = self._open[(folder, date, host)] = self._new_file(folder, date, host, batch)
                o.tables.append(table)
                o.rows += table.num_rows
                o.buffered += nbytes
            self._write_due()
        except OSError:
            self._abandon()  # the shipper rewinds the queue: all that was in these files comes again
            raise
        self._sent = batch
        self.refused += len(refused)
        return Outcome(refused=refused)

    def committed(self) -> int:
        """Batches whose every row is in a completed file. Completes files past their age first."""
        self.tick()
        if not self._open:
            return self._sent
        return min(o.first_batch for o in self._open.values()) - 1

    def close(self) -> None:
        """Complete every open file."""
        for key in list(self._open):
            self._finish(key)

    # ---- rolling ---------------------------------------------------------------------------
    def tick(self) -> None:
        now = self.monotonic()
        for key, o in list(self._open.items()):
            if now - o.opened >= self.cfg.max_file_age:
                self._finish(key)

    def stats(self) -> dict[str, int]:
        return {"lake_files_written": self.files_written, "lake_rows_written": self.rows_written,
                "lake_open_files": len(self._open), "lake_refused": self.refused,
                "lake_leftovers_removed": self.leftovers_removed, "lake_slow_batches": self.slow_batches}

    def _slow_tables(self, payloads: list[bytes]) -> tuple[_Parts, list[tuple[int, str]]]:
        """Document by document (the reference path, and the one that says what is wrong)."""
        groups: dict[tuple[str, str, str], list[tuple[dict, bytes, int, str | None]]] = {}
        refused = []
        for i, p in enumerate(payloads):
            got = self._decode(p)
            if isinstance(got, str):
                refused.append((i, got))
                continue
            key, doc, us, eid = got
            groups.setdefault(key, []).append((doc, p, us, eid))
        parts = {key: (self._table(key[0], key[2], rows), sum(len(r[1]) for r in rows)) for key, rows in groups.items()}
        return parts, refused

    def _decode(self, payload: bytes) -> str | tuple[tuple[str, str, str], dict, int, str | None]:
        try:
            doc = orjson.loads(payload)
        except orjson.JSONDecodeError as e:
            return f"not JSON: {e}"
        if not isinstance(doc, dict):
            return "not a JSON object"
        folder = classify(doc)
        if folder is None:
            return "neither an ECS document nor a Panther row (the lake stores those two formats)"
        try:
            us, eid, host = (_panther_key if folder == "panther" else _ecs_key)(doc)
        except (KeyError, TypeError, ValueError, OverflowError) as e:
            return f"no usable event time: {e!r}"
        host = safe_host(host) if isinstance(host, str) and host else self.default_host
        return (folder, self._date(us), host), doc, us, eid

    def _date(self, us: int) -> str:
        day = us // _DAY_US
        d = self._dates.get(day)
        if d is None:
            if len(self._dates) > 1024:
                self._dates.clear()
            d = self._dates[day] = time.strftime("%Y-%m-%d", time.gmtime(day * 86400))
        return d

    def _new_file(self, folder: str, date: str, host: str, batch: int) -> _Open:
        self._files += 1
        name = temp_name(self.wid, self._files, self.clock())
        temp = self.store.path(folder, f"date={date}", f"host={host}", name)
        return _Open(folder, date, host, temp, batch, self.monotonic())

    def _write_due(self) -> None:
        for key, o in list(self._open.items()):
            if o.rows >= self.cfg.row_group_rows or o.buffered >= _MAX_BUFFER_BYTES:
                self._write_rows(o)
            if o.size() >= self.cfg.max_file_bytes:
                self._finish(key)

    def _write_rows(self, o: _Open) -> None:
        if not o.rows:
            return
        if o.writer is None:
            o.file = self.store.open_write(o.temp)
            o.writer = pq.ParquetWriter(o.file, self._schemas[o.folder], compression=self.compression)
        table = pa.concat_tables(o.tables)
        o.writer.write_table(table, row_group_size=max(table.num_rows, 1))
        self.rows_written += table.num_rows
        o.tables, o.rows, o.buffered = [], 0, 0

    def _table(self, folder: str, host: str, rows: list[tuple[dict, bytes, int, str | None]]) -> pa.Table:
        schema = self._schemas[folder]
        docs = [r[0] for r in rows]
        arrays = [
            pa.array([r[2] for r in rows], schema.field("timestamp").type),
            pa.array([r[3] for r in rows], pa.string()),
            pa.array([host] * len(rows), pa.string()),
            pa.array([doc_hash(r[1]) for r in rows], pa.int64()),
        ]
        for c in FORMATS[folder]:
            get = c.get
            arrays.append(pa.array([get(d) for d in docs], c.type))
        arrays.append(pa.array([r[1] for r in rows], pa.binary()).cast(pa.string()))
        return pa.Table.from_arrays(arrays, schema=schema)

    def _finish(self, key: tuple[str, str, str]) -> None:
        o = self._open[key]
        try:
            self._write_rows(o)
            if o.writer is not None and o.file is not None:
                o.writer.close()
                self.store.publish(o.file, o.temp, o.final)
                self.files_written += 1
        except OSError:
            self._abandon()
            raise
        del self._open[key]

    def _abandon(self) -> None:
        """After a write error: drop every open file (their batches are not committed)."""
        for o in self._open.values():
            try:
                if o.writer is not None:
                    o.writer.close()
                if o.file is not None:
                    o.file.close()
            except OSError:
                pass
            self.store.remove(o.temp)
        self._open.clear()


def clean_leftovers(store: Store, older_than: float, now: float) -> int:
    """Remove the temporary files crashed writers left (their documents are still in the queue,
    which sends them again); a running writer's files are left alone."""
    removed = 0
    for f in store.files(store.root):
        name = f.path.rsplit("/", 1)[-1]
        if name.startswith(".part-") and stale_temp(name, f.mtime, now, older_than):
            store.remove(f.path)
            removed += 1
    if removed:
        log.warning("lake %s: removed %d unfinished file(s) left by a writer that stopped", store.root, removed)
    return removed
