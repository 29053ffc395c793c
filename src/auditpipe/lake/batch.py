"""A batch of ECS documents into Arrow columns in one pass of Arrow's JSON reader (C++), instead
of decoding and walking every document in Python: most of the lake writer's cost.

It reads only the paths the columns need (everything else is skipped) and derives the rest
(event id, host, date, folder) with Arrow compute. Anything it does not expect — a value of
another JSON type than the column's, a document without ``@timestamp``, a Panther row, bytes
that are not JSON — makes it return None, and the writer takes the document-by-document path,
which is the reference (a test checks both give the same files) and says what is wrong.
"""

from __future__ import annotations

import io
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.json as pj

from auditpipe.lake.columns import ECS_COLUMNS, STR, TIMESTAMP, doc_hash, json_schema

__all__ = ["EcsBatchReader"]

_EXTRA = {("@timestamp",): TIMESTAMP, ("event", "id"): STR, ("event", "kind"): STR,
          ("auditd", "sequence"): pa.int64(), ("host", "name"): STR}


def _field(t: pa.Table, path: tuple[str, ...]) -> Any:
    arr = t.column(path[0]).combine_chunks()
    for k in path[1:]:
        arr = pc.struct_field(arr, k)
    return arr


class EcsBatchReader:
    def __init__(self, schema: pa.Schema, default_host: str) -> None:
        self.schema = schema
        self.default_host = default_host
        self.parse = pj.ParseOptions(explicit_schema=json_schema(ECS_COLUMNS, _EXTRA),
                                     unexpected_field_behavior="ignore")

    def tables(self, payloads: list[bytes]) -> dict[tuple[str, str, str], tuple[pa.Table, int]] | None:
        """{(folder, date, host): (rows, payload bytes)}, or None: take the reference path."""
        if not payloads:
            return {}
        data = b"\n".join(payloads)
        block = max(1 << 20, 2 * max(map(len, payloads)))  # blocks are parsed in parallel; none may split a document
        try:
            t = pj.read_json(io.BytesIO(data), read_options=pj.ReadOptions(block_size=block),
                             parse_options=self.parse)
            if t.num_rows != len(payloads):
                return None
            return self._split(t, payloads)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError):
            return None

    def _split(self, t: pa.Table, payloads: list[bytes]) -> dict[tuple[str, str, str], tuple[pa.Table, int]] | None:
        ts = _field(t, ("@timestamp",))
        if ts.null_count:
            return None
        us = pc.cast(ts, pa.int64())
        if pc.min(us).as_py() < 0:
            return None
        table = pa.Table.from_arrays(self._columns(t, ts, us, payloads), schema=self.schema)
        kind = _field(t, ("event", "kind"))
        folder = pc.if_else(pc.fill_null(pc.equal(kind, "signal"), False), "alerts", "ecs")
        date = pc.cast(pc.cast(ts, pa.date32()), pa.string())
        key = pc.binary_join_element_wise(folder, date, table.column("host"), "\x00")
        sizes = pa.array([len(p) for p in payloads], pa.int64())
        out = {}
        for k in pc.unique(key).to_pylist():
            mask = pc.equal(key, k)
            f, d, h = k.split("\x00")
            out[(f, d, h)] = (table.filter(mask), pc.sum(pc.filter(sizes, mask)).as_py())
        return out

    def _columns(self, t: pa.Table, ts: Any, us: Any, payloads: list[bytes]) -> list[Any]:
        ms = pc.subtract(pc.divide(us, 1000), pc.multiply(pc.divide(us, 1_000_000), 1000))
        stamp = pc.binary_join_element_wise(pc.cast(pc.divide(us, 1_000_000), STR),
                                            pc.utf8_lpad(pc.cast(ms, STR), 3, "0"), ".")
        eid = pc.binary_join_element_wise(stamp, pc.cast(_field(t, ("auditd", "sequence")), STR), ":")
        eid = pc.coalesce(eid, _field(t, ("event", "id")))
        host = _field(t, ("host", "name"))
        host = pc.if_else(pc.fill_null(pc.equal(host, ""), True), self.default_host, host)
        host = pc.utf8_slice_codeunits(pc.replace_substring_regex(host, r"[^A-Za-z0-9._-]", "_"), 0, 200)
        cols = [ts.cast(TIMESTAMP), eid, host, pa.array([doc_hash(p) for p in payloads], pa.int64())]
        for c in ECS_COLUMNS:
            arr = _field(t, c.path)
            cols.append(c.vec(arr) if c.vec is not None else arr.cast(c.type))
        cols.append(pa.array(payloads, pa.binary()).cast(pa.string()))
        return cols
