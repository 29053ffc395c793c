"""The lake output's configuration (``[[outputs]] type = "lake"``): msgspec only, so config.py can
import it without pulling in pyarrow."""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec

__all__ = ["DEFAULT_LAKE_DIR", "LakeOutput", "parse_duration"]

DEFAULT_LAKE_DIR = "./auditpipe-data"


_Positive = Annotated[int, msgspec.Meta(gt=0)]
_Seconds = Annotated[float, msgspec.Meta(gt=0)]


class LakeOutput(msgspec.Struct, forbid_unknown_fields=True, kw_only=True, tag="lake", tag_field="type"):
    """Parquet files under ``path/<format>/date=YYYY-MM-DD/host=<name>/`` (see docs/lake.md)."""

    #: the lake's root directory (or a pyarrow filesystem URI such as s3://bucket/prefix)
    path: str = DEFAULT_LAKE_DIR
    #: a file is completed (renamed into place) when it holds about this many bytes ...
    max_file_bytes: _Positive = 128 << 20
    #: ... or when it has been open this many seconds, whichever comes first
    max_file_age: _Seconds = 300.0
    #: rows buffered per partition before they are written as one Parquet row group
    row_group_rows: _Positive = 65536
    #: Parquet compression codec (zstd, snappy, gzip, lz4, none)
    compression: Literal["zstd", "snappy", "gzip", "lz4", "brotli", "none"] = "zstd"
    #: host partition for documents that name no host (events read without node=); "" = this machine
    default_host: str = ""
    #: durable queue in front of the writer (run/serve): a SIGKILL loses nothing not yet in a file
    queue_dir: str | None = None
    queue_max_bytes: _Positive = 1 << 30
    #: which documents this output takes; alerts (event.kind = "signal") go under path/alerts/
    documents: Literal["events", "alerts", "both"] = "events"


_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_duration(text: str) -> float:
    """``90d``, ``24h``, ``30m``, ``45s``, ``2w`` (or plain seconds) → seconds."""
    t = text.strip().lower()
    unit = _UNITS.get(t[-1:]) if t else None
    num = t[:-1] if unit else t
    try:
        value = float(num) * (unit or 1)
    except ValueError:
        raise ValueError(f"{text!r} is not a duration like 90d, 24h, 30m or 45s") from None
    if value <= 0:
        raise ValueError(f"{text!r}: a duration must be more than 0")
    return value
