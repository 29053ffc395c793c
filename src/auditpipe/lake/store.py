"""Where a lake lives and how its files are named: a local directory, or any filesystem pyarrow
knows by URI (``s3://bucket/prefix``, ``gs://…``, ``hdfs://…``). Only local paths are tested here.

Layout (docs/lake.md): ``<root>/<folder>/date=YYYY-MM-DD/host=<name>/part-<…>.parquet``.
A file is written as ``.part-<…>.parquet.tmp`` in its partition and renamed when complete, so
a reader (DuckDB's and Spark's globs skip dot-files) never sees a partial file.
"""

from __future__ import annotations

import os
import re
import socket
import time
from dataclasses import dataclass
from typing import IO

import pyarrow.fs as pafs

__all__ = ["PartFile", "Store", "final_name", "safe_host", "stale_temp", "temp_name", "writer_id"]

_TMP = re.compile(r"^\.part-(?P<stamp>\d{8}T\d{6})-(?P<host>[^.]+?)-(?P<pid>\d+)-(?P<rnd>[0-9a-f]+)-(?P<n>\d+)"
                  r"\.parquet\.tmp$")
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]")


def safe_host(name: str) -> str:
    """A host name as a partition value: characters other than letters, digits, ``.``, ``_``,
    ``-`` become ``_`` (the file's ``host`` column holds the same value; the document the original)."""
    return _UNSAFE.sub("_", name)[:200] or "_"


def writer_id() -> str:
    """``<this host>-<pid>-<random>``: which process wrote a temporary file (to tell a crashed
    writer's leftovers from a running writer's files)."""
    return f"{safe_host(socket.gethostname()).replace('.', '_')}-{os.getpid()}-{os.urandom(3).hex()}"


def temp_name(wid: str, n: int, now: float) -> str:
    return f".part-{time.strftime('%Y%m%dT%H%M%S', time.gmtime(now))}-{wid}-{n}.parquet.tmp"


def final_name(temp: str) -> str:
    return temp[1:-len(".tmp")]


@dataclass(frozen=True, slots=True)
class PartFile:
    path: str
    size: int
    mtime: float


class Store:
    """The lake's root on its filesystem."""

    def __init__(self, root: str) -> None:
        if "://" in root:
            self.fs, self.root = pafs.FileSystem.from_uri(root)
        else:
            self.fs, self.root = pafs.LocalFileSystem(), os.path.abspath(root)
        self.local = isinstance(self.fs, pafs.LocalFileSystem)

    def path(self, *parts: str) -> str:
        return "/".join((self.root.rstrip("/"), *parts))

    def open_write(self, path: str) -> IO[bytes]:
        if self.local:
            os.makedirs(os.path.dirname(path), exist_ok=True)
            return open(path, "wb")
        self.fs.create_dir(path.rsplit("/", 1)[0], recursive=True)
        return self.fs.open_output_stream(path)

    def publish(self, f: IO[bytes], temp: str, final: str) -> None:
        """Make a finished temporary file durable and visible under its final name."""
        if self.local:
            f.flush()
            os.fsync(f.fileno())
            f.close()
            os.replace(temp, final)
            fd = os.open(os.path.dirname(final), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        else:
            f.close()
            self.fs.move(temp, final)

    def remove(self, path: str) -> None:
        try:
            self.fs.delete_file(path)
        except FileNotFoundError:
            pass

    def remove_dir(self, path: str) -> None:
        try:
            self.fs.delete_dir(path)
        except FileNotFoundError:
            pass

    def files(self, under: str) -> list[PartFile]:
        """Every file below ``under`` (recursive), sorted by path; none when it does not exist."""
        try:
            infos = self.fs.get_file_info(pafs.FileSelector(under, recursive=True, allow_not_found=True))
        except FileNotFoundError:
            return []
        out = [PartFile(i.path, i.size or 0, i.mtime.timestamp() if i.mtime else 0.0)
               for i in infos if i.type == pafs.FileType.File]
        return sorted(out, key=lambda p: p.path)

    def dirs(self, under: str) -> list[str]:
        try:
            infos = self.fs.get_file_info(pafs.FileSelector(under, recursive=False, allow_not_found=True))
        except FileNotFoundError:
            return []
        return sorted(i.path for i in infos if i.type == pafs.FileType.Directory)

    def exists(self, path: str) -> bool:
        return self.fs.get_file_info(path).type != pafs.FileType.NotFound


def stale_temp(name: str, mtime: float, now: float, older_than: float) -> bool:
    """Is this leftover temporary file abandoned? Ours from a process that is gone, or anyone's
    untouched for ``older_than`` seconds (a live writer completes its files long before)."""
    m = _TMP.match(name)
    if m is None:
        return False
    if now - mtime > older_than:
        return True
    me = safe_host(socket.gethostname()).replace(".", "_")
    if m["host"] != me:
        return False
    try:
        os.kill(int(m["pid"]), 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False  # its writer is running
