"""The ``[serve]`` section: what ``auditpipe serve`` listens on and how it bounds its senders.

msgspec only (``config.py`` imports it without the receiver's aiohttp). The command-line options
of ``serve`` have the same names with dashes and override the file, as ``run``'s do.
"""

from __future__ import annotations

from typing import Literal

import msgspec

__all__ = ["AUTH_SCHEMES", "ServeConfig", "parse_size"]

AUTH_SCHEMES = ("none", "shared-secret", "hmac", "bearer", "basic")


def parse_size(text: str | int) -> int:
    """``"1MB"`` → 1048576 (K/M/G are binary, as in nginx' client_max_body_size)."""
    if isinstance(text, int):
        return text
    t = text.strip().upper().removesuffix("B").removesuffix("I")
    mult = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}.get(t[-1:], 1)
    num = t[:-1] if t[-1:] in "KMG" and t else t
    value = int(float(num) * mult)
    if value <= 0:
        raise ValueError(f"size must be positive: {text!r}")
    return value


class ServeConfig(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    #: "HOST:PORT" (or "[::1]:PORT") to receive on; required here or as --listen
    listen: str | None = None
    #: server certificate and key (PEM); unset: plain HTTP
    tls_cert: str | None = None
    tls_key: str | None = None
    #: require client certificates signed by this CA (mutual TLS)
    tls_client_ca: str | None = None
    #: required here or as --auth ("none" must be asked for)
    auth: Literal["none", "shared-secret", "hmac", "bearer", "basic"] | None = None
    #: header carrying the secret or signature (default per scheme, see docs/serve.md)
    auth_header: str | None = None
    #: shared secret, HMAC key, bearer token or user:password (or AUDITPIPE_AUTH_SECRET)
    auth_secret: str | None = None
    #: largest body, on the wire and decompressed ("8MB", or bytes)
    max_body: int | str = "8MB"
    #: seconds (wall clock) an incomplete event waits for out-of-order records of its sender
    reorder_window: float = 30.0
    #: seconds an incomplete event of an in-order sender waits for its remaining records
    event_wait: float = 2.0
    #: file keeping named senders' held records across a restart
    state: str | None = None
    header_timeout: float = 10.0
    body_timeout: float = 60.0
    max_connections: int = 1024
    max_connections_per_address: int = 256
    #: processes that parse, reassemble and normalize (each sender's records in one of them);
    #: 1: all in the receiving process, as before; 0: one per core
    workers: int = 1

    def problems(self) -> list[tuple[str, str]]:
        """(key, what is wrong) for values the types let through but that cannot work."""
        out = []
        if self.tls_key and not self.tls_cert:
            out.append(("tls_key", "needs tls_cert"))
        if min(self.reorder_window, self.event_wait) < 0:
            out.append(("reorder_window", "reorder_window and event_wait must not be negative"))
        if min(self.header_timeout, self.body_timeout) < 0.1:
            out.append(("header_timeout", "header_timeout and body_timeout must be at least 0.1 s"))
        if min(self.max_connections, self.max_connections_per_address) < 1:
            out.append(("max_connections", "max_connections and max_connections_per_address must be at least 1"))
        if self.workers < 0:
            out.append(("workers", "workers must be 0 (one per core) or more"))
        try:
            parse_size(self.max_body)
        except ValueError as e:
            out.append(("max_body", f"{e} (bytes, or a size like \"8MB\")"))
        return out
