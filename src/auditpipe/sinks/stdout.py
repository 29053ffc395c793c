"""JSON lines to standard output, one flush per batch so a pipe reader sees whole batches."""

from __future__ import annotations

import sys
from collections.abc import Iterable
from typing import Any, BinaryIO

from auditpipe.sinks.encode import dumps_line

__all__ = ["StdoutSink"]


class StdoutSink:
    """Write documents or serialized lines to a binary stream (``sys.stdout.buffer`` by default).

    A closed pipe (``| head``) sets ``closed`` and further writes are dropped instead of
    raising on every batch; the caller can stop its source when it sees ``closed``.
    """

    def __init__(self, stream: BinaryIO | None = None) -> None:
        self.stream = stream if stream is not None else sys.stdout.buffer
        self.lines = 0
        self.closed = False

    def write(self, items: Iterable[Any]) -> int:
        if self.closed:
            return 0
        data = b"".join(dumps_line(o) for o in items)
        if not data:
            return 0
        try:
            self.stream.write(data)
            self.stream.flush()
        except BrokenPipeError:
            self.closed = True
            return 0
        n = data.count(b"\n")
        self.lines += n
        return n

    def flush(self) -> None:
        if not self.closed:
            try:
                self.stream.flush()
            except BrokenPipeError:
                self.closed = True

    def close(self) -> None:
        self.flush()
