"""Keeping a lake in shape while writers run: compaction of small files, expiry of old partitions.

Both only ever touch *completed* files (``part-*.parquet``); a writer only creates new files
and renames its own temporary ones, so neither gets in a writer's way. Compaction publishes the
merged file before it deletes the inputs: for a moment a reader may see rows twice, which the
query views' deduplication hides; it never sees them missing.
"""

from __future__ import annotations

import fcntl
import logging
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import pyarrow.parquet as pq

from auditpipe.lake.columns import FORMATS
from auditpipe.lake.store import PartFile, Store, final_name, temp_name, writer_id

__all__ = ["CompactResult", "compact", "expire", "partitions"]

log = logging.getLogger("auditpipe.lake")


@dataclass(slots=True)
class CompactResult:
    partitions: int = 0
    files_in: int = 0
    files_out: int = 0
    bytes_in: int = 0
    bytes_out: int = 0
    skipped: list[str] = field(default_factory=list)


def partitions(store: Store) -> Iterator[tuple[str, str, str, str]]:
    """(folder, date, host, path) of every partition directory."""
    for folder in FORMATS:
        for ddir in store.dirs(store.path(folder)):
            date = ddir.rsplit("/", 1)[-1]
            if not date.startswith("date="):
                continue
            for hdir in store.dirs(ddir):
                host = hdir.rsplit("/", 1)[-1]
                if host.startswith("host="):
                    yield folder, date[5:], host[5:], hdir


def _completed(store: Store, pdir: str) -> list[PartFile]:
    return [f for f in store.files(pdir)
            if f.path.rsplit("/", 1)[-1].startswith("part-") and f.path.endswith(".parquet")]


def _groups(files: list[PartFile], target: int) -> list[list[PartFile]]:
    """Small files packed (in name order, i.e. time order) into groups of at most ``target``
    bytes; a group of one is left as it is."""
    groups: list[list[PartFile]] = []
    cur: list[PartFile] = []
    size = 0
    for f in files:
        if f.size >= target // 2:
            continue  # already large
        if cur and size + f.size > target:
            groups.append(cur)
            cur, size = [], 0
        cur.append(f)
        size += f.size
    groups.append(cur)
    return [g for g in groups if len(g) > 1]


@contextmanager
def _lock(store: Store) -> Iterator[None]:
    """One compaction at a time per lake (local lakes: an flock on <lake>/.compact.lock)."""
    if not store.local:
        yield
        return
    os.makedirs(store.root, exist_ok=True)
    fd = os.open(os.path.join(store.root, ".compact.lock"), os.O_RDWR | os.O_CREAT, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise RuntimeError(f"another compaction of {store.root} is running") from None
        yield
    finally:
        os.close(fd)


def compact(root: str, target_bytes: int = 128 << 20, compression: str = "zstd") -> CompactResult:
    """Merge each partition's small completed files into files of up to ``target_bytes``."""
    store = Store(root)
    res = CompactResult()
    wid = writer_id()
    with _lock(store):
        for n, (_folder, _date, _host, pdir) in enumerate(partitions(store)):
            groups = _groups(_completed(store, pdir), target_bytes)
            if groups:
                res.partitions += 1
            for i, group in enumerate(groups):
                _merge(store, pdir, group, temp_name(wid, n * 1000 + i, time.time()), compression, res)
    return res


def _merge(store: Store, pdir: str, group: list[PartFile], tmp_name: str, compression: str,
           res: CompactResult) -> None:
    temp = f"{pdir}/{tmp_name}"
    final = f"{pdir}/{final_name(tmp_name)}"
    out = store.open_write(temp)
    try:
        schema = pq.read_schema(group[0].path, filesystem=store.fs)
        with pq.ParquetWriter(out, schema, compression=compression) as w:
            for f in group:
                w.write_table(pq.read_table(f.path, filesystem=store.fs, schema=schema))
        store.publish(out, temp, final)
    except (OSError, ValueError) as e:  # an input vanished (expired meanwhile) or differs: leave all as is
        out.close()
        store.remove(temp)
        res.skipped.append(f"{pdir}: {e}")
        log.warning("lake compact: %s: left as is: %s", pdir, e)
        return
    for f in group:
        store.remove(f.path)
    res.files_in += len(group)
    res.files_out += 1
    res.bytes_in += sum(f.size for f in group)
    res.bytes_out += store.fs.get_file_info(final).size or 0


def expire(root: str, older_than: float, now: float | None = None) -> list[str]:
    """Delete the completed files of every partition whose date is more than ``older_than``
    seconds before today (UTC), and the folders left empty. Returns the partitions removed."""
    store = Store(root)
    now = time.time() if now is None else now
    cutoff = time.strftime("%Y-%m-%d", time.gmtime(now - older_than))
    removed = []
    for _folder, date, _host, pdir in list(partitions(store)):
        if date >= cutoff:
            continue
        for f in _completed(store, pdir):
            store.remove(f.path)
        removed.append(pdir)
        if store.local:
            _rmdir_empty(pdir)
            _rmdir_empty(pdir.rsplit("/", 1)[0])
    return removed


def _rmdir_empty(path: str) -> None:
    try:
        os.rmdir(path)
    except OSError:
        pass  # not empty: a writer's temporary file of a late event, or other hosts
