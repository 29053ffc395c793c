"""The contract between the generic queue shipper and a destination.

The durable queue (``sinks.queue.DiskQueue``) sits in front of every network or lake output;
``sinks.shipper.QueueShipper`` drains it into a *transport*, which only knows how to hand one
batch of serialized documents to its destination and say what became of each. Batching,
retries, backoff, dead-lettering and acknowledgement live once, in the shipper.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

__all__ = ["Outcome", "PermanentError", "Positioned", "ServerError", "TransientError", "Transport"]


class TransientError(Exception):
    """Nothing of the batch got through and it may later (connection refused, timeout, a 5xx or
    429 for the whole request). The shipper retries the whole batch with backoff + jitter
    (``retry_after`` seconds if given), bounded by the output's retry settings."""

    def __init__(self, reason: str, retry_after: float | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.retry_after = retry_after


class ServerError(TransientError):
    """The destination answered but failed on the batch (HTTP 5xx). Retried like any transient
    error, but at most ``RetryPolicy.max_retries_5xx`` times: a body that makes the server fail
    every time (a parser bug, a poison record) must not block the queue for ever."""


class PermanentError(Exception):
    """The destination refused the whole batch for good (4xx other than 408/429): dead-letter."""


@dataclass(slots=True)
class Outcome:
    """Result of one ``send``. Positions are indexes into the ``payloads`` list given to send.
    Every position not named in ``retry`` or ``refused`` was delivered."""

    retry: list[int] = field(default_factory=list)  # transient per item (429/5xx items)
    refused: list[tuple[int, str]] = field(default_factory=list)  # permanent per item + reason
    retry_after: float | None = None


class Transport(Protocol):
    """A destination. ``send`` is called from the shipper thread only."""

    name: str  # for logs/metrics, e.g. "http https://host/x"

    def send(self, payloads: list[bytes]) -> Outcome:
        """Deliver one batch: each payload one serialized JSON document, no newline. Raises
        :class:`TransientError` or :class:`PermanentError` when the whole batch failed."""
        ...

    def committed(self) -> int:
        """How many batches handed to ``send`` (counted from 1 since start, the calls that
        returned an ``Outcome``) are durable at the destination. The shipper acknowledges queue
        records only up to there."""
        ...

    def close(self) -> None: ...


class Positioned(Protocol):
    """A transport that tells its destination where a batch stands in the queue (the HTTP
    output's ``X-Auditpipe-Range``): the shipper calls ``at`` before sending each batch, with
    the queue sequence numbers it spans (``end`` exclusive). Retries of the batch keep them."""

    def at(self, first: int, end: int) -> None: ...
