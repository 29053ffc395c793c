"""The contract between the generic queue shipper and a destination (INTERFACES.md §1).

Minimal version on the `es` branch so the Elasticsearch transport can be written and tested
against it; the `queue` branch owns this module and its version replaces this one.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

__all__ = ["Outcome", "PermanentError", "TransientError", "Transport"]


class TransientError(Exception):
    """Nothing of the batch got through and it may later: the shipper retries the whole batch."""

    def __init__(self, reason: str, retry_after: float | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.retry_after = retry_after


class PermanentError(Exception):
    """The destination refused the whole batch for good (4xx other than 408/429): dead-letter."""


@dataclass(slots=True)
class Outcome:
    """Result of one ``send``; positions index the payloads given to it. Every position not
    named in ``retry`` or ``refused`` was delivered."""

    retry: list[int] = field(default_factory=list)
    refused: list[tuple[int, str]] = field(default_factory=list)
    retry_after: float | None = None


class Transport(Protocol):
    name: str

    def send(self, payloads: list[bytes]) -> Outcome: ...

    def committed(self) -> int: ...

    def close(self) -> None: ...
