"""Config sections ``[metrics]`` and ``[heartbeat]`` (msgspec only: config.py imports this)."""

from __future__ import annotations

from typing import Annotated

import msgspec


class MetricsConfig(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    #: "HOST:PORT" (or "[::1]:PORT") to serve Prometheus metrics on; unset: no listener
    listen: str | None = None


class HeartbeatConfig(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    #: seconds between auditpipe heartbeat events down the outputs; 0 turns them off
    interval: Annotated[float, msgspec.Meta(ge=0)] = 60.0


def split_listen(listen: str) -> tuple[str, int]:
    """"127.0.0.1:9464" / "[::1]:9464" / ":9464" -> (host, port); ValueError says what is wrong."""
    host, sep, port = listen.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"expected HOST:PORT with a port from 0 to 65535, got {listen!r}")
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    return host or "127.0.0.1", int(port)
