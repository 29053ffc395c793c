"""What a sink raises when it could not accept a write (INTERFACES.md §4)."""

from __future__ import annotations

__all__ = ["OutputUnavailable"]


class OutputUnavailable(Exception):
    """write() accepted NOTHING of this call (disk full under the durable queue or the file
    output, queue full after block_timeout, ...). ``cause`` says why (e.g. "ENOSPC on
    /var/lib/auditpipe/queue"). The caller keeps the documents and calls write() again later;
    a partial write is always truncated back by the sink before raising."""

    def __init__(self, cause: str) -> None:
        super().__init__(cause)
        self.cause = cause
