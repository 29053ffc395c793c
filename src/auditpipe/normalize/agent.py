"""What Elastic Agent adds to every Auditd Manager document, as a normalizer option
(``[normalize] host_metadata = true``; the Elasticsearch output turns it on): the data stream,
``event.dataset``, ``host.*``, ``agent.*`` and the integration's default tag; and each event's
stable ``_id``.

Sans-I/O: :class:`HostMetadata` is a value read once by ``pipeline.hostinfo.read_host_metadata``
(or built by a test) and injected into the normalizer.
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

__all__ = ["DEFAULT_DATASET", "DEFAULT_TAGS", "HostMetadata", "document_id"]

DEFAULT_DATASET = "auditd_manager.auditd"
#: the integration's `tags` default (its manifest)
DEFAULT_TAGS = ("auditd_manager-auditd",)


@dataclass(frozen=True, slots=True)
class HostMetadata:
    """The collecting host and agent. ``host`` holds ECS host.* (name, hostname, architecture,
    os.*, ip, mac, id), ``agent`` ECS agent.* (type, version, id, ephemeral_id, name)."""

    host: dict[str, Any]
    agent: dict[str, Any]
    dataset: str = DEFAULT_DATASET
    namespace: str = "default"
    tags: tuple[str, ...] = DEFAULT_TAGS
    _name: str = field(init=False, default="")

    def __post_init__(self) -> None:
        object.__setattr__(self, "_name", str(self.host.get("name", "")))

    def host_fields(self, node: str | None) -> dict[str, Any]:
        """host.* for an event: ours when it happened here; only its name when it came from
        another node (``node=``), whose host facts we do not know."""
        if node is not None and node != self._name:
            return {"name": node}
        h = self.host
        out = dict(h)
        if "os" in h:
            out["os"] = dict(h["os"])
        for k in ("ip", "mac"):
            if k in h:
                out[k] = list(h[k])
        return out

    def agent_fields(self) -> dict[str, Any]:
        return dict(self.agent)

    def data_stream(self) -> dict[str, str]:
        return {"type": "logs", "dataset": self.dataset, "namespace": self.namespace}

    def id_host(self, node: str | None) -> str:
        """What names the host in a document id: the node, else host.id, else host.name."""
        if node is not None:
            return node
        return str(self.host.get("id") or self._name)


def document_id(host: str, sec: int, msec: int, serial: int, record_types: Iterable[str]) -> str:
    """A stable id for one event: the same event read again (after a crash, from the queue or
    the file) gets the same id, so Elasticsearch answers 409 instead of indexing it twice; two
    events that share a serial (a late part of an event written on its own) get two ids.
    20 characters, base64url of a 120-bit BLAKE2b digest."""
    key = f"{host}\x00{sec}.{msec:03d}:{serial}\x00{','.join(record_types)}".encode("utf-8", "surrogateescape")
    return base64.urlsafe_b64encode(hashlib.blake2b(key, digest_size=15).digest()).decode("ascii")
