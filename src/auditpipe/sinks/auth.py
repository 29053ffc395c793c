"""HTTP authentication shared by the shipper (``sinks.http``) and the receiver (``auditpipe serve``).

Schemes: ``shared-secret`` (the secret itself in a header), ``hmac`` (hex HMAC-SHA256 of the
request body *as sent*, i.e. after gzip, so the receiver authenticates before it inflates
anything), ``bearer`` (``Authorization: Bearer <secret>``), ``basic`` (secret is
``user:password``). Every comparison goes through ``hmac.compare_digest``.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from collections.abc import Mapping

__all__ = ["AUTH_SCHEMES", "DEFAULT_HEADER", "sign", "client_headers", "check", "header_for"]

AUTH_SCHEMES = ("none", "shared-secret", "hmac", "bearer", "basic")
DEFAULT_HEADER = {
    "shared-secret": "X-Auditpipe-Secret",
    "hmac": "X-Auditpipe-Signature",
    "bearer": "Authorization",
    "basic": "Authorization",
}


def header_for(auth: str, header: str | None) -> str:
    return header or DEFAULT_HEADER.get(auth, "")


def sign(secret: str | bytes, body: bytes) -> str:
    key = secret.encode() if isinstance(secret, str) else secret
    return hmac.new(key, body, hashlib.sha256).hexdigest()


def _validate(auth: str, secret: str | None) -> None:
    if auth not in AUTH_SCHEMES:
        raise ValueError(f"auth must be one of {AUTH_SCHEMES}, not {auth!r}")
    if auth != "none" and not secret:
        raise ValueError(f"auth {auth!r} needs a secret")
    if auth == "basic" and ":" not in (secret or ""):
        raise ValueError("basic auth secret must be 'user:password'")


def client_headers(auth: str, secret: str | None, body: bytes, header: str | None = None) -> dict[str, str]:
    """Headers a client adds to a request whose body (as sent) is ``body``."""
    _validate(auth, secret)
    if auth == "none":
        return {}
    name = header_for(auth, header)
    assert secret is not None
    if auth == "shared-secret":
        return {name: secret}
    if auth == "hmac":
        return {name: sign(secret, body)}
    if auth == "bearer":
        return {name: f"Bearer {secret}"}
    return {name: "Basic " + base64.b64encode(secret.encode()).decode("ascii")}


def _eq(a: str, b: str) -> bool:
    return hmac.compare_digest(a.encode("utf-8", "surrogateescape"), b.encode("utf-8", "surrogateescape"))


def check(auth: str, secret: str | None, headers: Mapping[str, str], body: bytes | None = None,
          header: str | None = None) -> bool:
    """True when ``headers`` (and ``body`` for hmac) carry valid credentials.

    For ``hmac`` pass the body exactly as received (still compressed).
    """
    _validate(auth, secret)
    if auth == "none":
        return True
    assert secret is not None
    got = headers.get(header_for(auth, header))
    if got is None:
        return False
    if auth == "shared-secret":
        return _eq(got, secret)
    if auth == "hmac":
        if body is None:
            return False
        return _eq(got.strip().lower(), sign(secret, body))
    if auth == "bearer":
        scheme, _, token = got.partition(" ")
        return scheme.lower() == "bearer" and _eq(token.strip(), secret)
    scheme, _, b64 = got.partition(" ")
    try:
        decoded = base64.b64decode(b64.strip(), validate=True).decode("utf-8")
    except (ValueError, UnicodeDecodeError):
        return False
    return scheme.lower() == "basic" and _eq(decoded, secret)
