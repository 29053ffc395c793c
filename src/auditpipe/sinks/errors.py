"""What a sink raises when it could not accept a write.

Every sink's ``write(items)`` either accepts all items or raises :class:`OutputUnavailable`
having accepted none of them: a partial write is truncated back first. The runtime keeps the
documents, holds its source and calls ``write`` again later.
"""

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
