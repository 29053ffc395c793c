"""``--format panther``: one row per audit record, in Panther's ``Linux.Auditd`` schema.

Sans-I/O: the clock (``now``) and the row-id source (``row_id``) are injected; the CLI passes real
ones, tests pass fixed ones.

Row layout, for one record of an event::

    type                   record type name ("SYSCALL", "UNKNOWN[1334]")
    <schema field>...      every body key the schema names, as the (decoded) string it is;
                           for user-space records the keys inside msg='…' that the schema names
                           (acct, exe, hostname, addr, terminal, res, id, …) are columns too
    timestamp              unix seconds with the milliseconds, a number (1615114232.375)
    eventId                "SEC.MSEC:SERIAL", shared by the records of one event
    extra_message_fields   everything else, lossless: msg='…' keys the schema does not name,
                           body keys it does not name, the ENRICHED part (UID, SADDR, …) and node
    p_log_type, p_event_time, p_parse_time, p_row_id
    p_any_ip_addresses, p_any_domain_names, p_any_actor_ids   (only when not empty)
"""

from __future__ import annotations

import ipaddress
import time
from collections.abc import Callable
from datetime import UTC, datetime
from functools import lru_cache
from typing import Any

from .panther_schema import LOG_TYPE, STRING_FIELDS

__all__ = ["format_panther_time", "make_panther_normalizer"]

#: Values that mean "no value" in audit records: never indicators.
_UNSET = frozenset({"", "?", "(none)", "(null)", "unset", "none", "null"})
#: uid values meaning "not set" (the kernel's (uid_t)-1, as written unsigned and signed).
_UNSET_IDS = frozenset({"4294967295", "-1"})


def format_panther_time(sec: int, msec: int = 0) -> str:
    """Panther's timestamp format for ``p_`` fields: ``YYYY-MM-DD HH:MM:SS.fff``, UTC."""
    return f"{time.strftime('%Y-%m-%d %H:%M:%S', time.gmtime(sec))}.{msec:03d}"


class _SecondText:
    """``format_panther_time`` with the text of the last second kept (one per normalizer and
    field): consecutive events, and the clock read per event, mostly share their second."""

    __slots__ = ("sec", "text")

    def __init__(self) -> None:
        self.sec: int | None = None
        self.text = ""

    def __call__(self, sec: int, msec: int) -> str:
        if sec != self.sec:
            self.text = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(sec))
            self.sec = sec
        return f"{self.text}.{msec:03d}"


def _parse_time_str(value: Any, text: Callable[[int, int], str] = format_panther_time) -> str:
    """The injected clock may answer unix seconds (int/float) or a datetime."""
    if isinstance(value, datetime):
        if value.tzinfo is None:
            value = value.replace(tzinfo=UTC)
        value = value.astimezone(UTC)
        return f"{value.strftime('%Y-%m-%d %H:%M:%S')}.{value.microsecond // 1000:03d}"
    if isinstance(value, str):  # already formatted by the caller
        return value
    ms = round(float(value) * 1000)
    return text(ms // 1000, ms % 1000)


_NOT_IP = 0
_IP = 1
_IP_UNSPECIFIED = 2


@lru_cache(maxsize=4096)
def _ip_kind(value: str) -> int:
    """Whether ``value`` is an IPv4/IPv6 address, and a usable one (not 0.0.0.0 / ::)."""
    try:
        ip = ipaddress.ip_address(value)
    except ValueError:
        return _NOT_IP
    return _IP_UNSPECIFIED if ip.is_unspecified else _IP


def make_panther_normalizer(
    now: Callable[[], Any],
    row_id: Callable[[], str],
    *,
    decode_sockaddr: Callable[[str], dict] | None = None,
) -> Callable[[Any], list[dict]]:
    """Build the ``Event -> list[dict]`` normalizer for Panther's ``Linux.Auditd``.

    ``now()`` gives the parse time (unix seconds, or a datetime); it is read once per event.
    ``row_id()`` gives a unique ``p_row_id`` per row. ``decode_sockaddr`` defaults to
    ``auditpipe.parsing.decode_sockaddr`` (used to find the IP address in ``saddr``).
    """
    if decode_sockaddr is None:
        from auditpipe.parsing import decode_sockaddr as default_decoder  # resolved once, here

        decode_sockaddr = default_decoder
    decode: Callable[[str], dict] = decode_sockaddr

    columns = STRING_FIELDS  # body keys that become columns
    unset = _UNSET
    unset_ids = _UNSET_IDS
    ip_kind = _ip_kind
    IP = _IP
    NOT_IP = _NOT_IP
    log_type = LOG_TYPE
    dict_type = dict
    str_type = str

    event_time = _SecondText()
    parse_time = _SecondText()

    def sockaddr_ip(hexstr: str) -> str | None:
        try:
            decoded = decode(hexstr)
        except Exception:  # noqa: BLE001 (a malformed saddr stays in the row as hex; no indicator)
            return None
        if not decoded:
            return None
        addr = decoded.get("addr")
        if addr.__class__ is not str_type or addr in unset or ip_kind(addr) != IP:
            return None
        return addr

    def normalize(event: Any) -> list[dict]:
        sec = event.sec
        msec = event.msec
        when = f"{sec}.{msec:03d}"
        ts = float(when)
        eid = f"{when}:{event.serial}"
        p_event_time = event_time(sec, msec)
        p_parse_time = _parse_time_str(now(), parse_time)

        std = {
            "timestamp": ts,
            "eventId": eid,
            "p_log_type": log_type,
            "p_event_time": p_event_time,
            "p_parse_time": p_parse_time,
        }
        rows: list[dict] = []
        append = rows.append
        for rec in event.records:
            fields: dict = rec.fields
            row: dict[str, Any] = {"type": rec.type}
            extra: dict | None
            if fields.keys() <= columns:
                # SYSCALL, CWD, PROCTITLE, SOCKADDR …: every key is a column of its own
                row.update(fields)
                extra = None
            else:
                extra = {}
                msg: Any = None
                for k, v in fields.items():
                    if k in columns:
                        row[k] = v
                    elif k == "msg" and v.__class__ is dict_type:
                        msg = v
                    else:
                        extra[k] = v
                if msg:
                    for k, v in msg.items():
                        if k in columns and k not in row:
                            row[k] = v
                        elif k not in extra:
                            extra[k] = v
            enriched: dict | None = rec.enriched
            if enriched:
                if extra:
                    for k, v in enriched.items():
                        if k not in extra:
                            extra[k] = v
                else:
                    extra = enriched.copy()
            node = rec.node
            if node is not None:
                if extra is None:
                    extra = {"node": node}
                elif "node" not in extra:
                    extra["node"] = node

            row.update(std)
            row["p_row_id"] = row_id()
            if extra:
                row["extra_message_fields"] = extra

            # indicators, from the schema's indicator columns
            if "addr" in row or "hostname" in row or "ip" in row or "saddr" in row:
                ips: list[str] | None = None
                for name in ("addr", "ip", "hostname"):
                    v = row.get(name)
                    if v is None or v in unset:
                        continue
                    kind = ip_kind(v)
                    if kind == IP:
                        if ips is None:
                            ips = [v]
                        elif v not in ips:
                            ips.append(v)
                    elif kind == NOT_IP and name == "hostname":
                        # Panther's hostname indicator: an IP address counts as an IP, anything
                        # else is a domain name
                        row["p_any_domain_names"] = [v]
                v = row.get("saddr")
                if v is not None:
                    ip = sockaddr_ip(v)
                    if ip is not None:
                        if ips is None:
                            ips = [ip]
                        elif ip not in ips:
                            ips.append(ip)
                if ips is not None:
                    row["p_any_ip_addresses"] = ips
            v = row.get("uid")
            if v is not None and v not in unset and v not in unset_ids:
                row["p_any_actor_ids"] = [v]
            append(row)
        return rows

    return normalize
