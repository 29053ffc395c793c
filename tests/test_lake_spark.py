"""The same lake on Spark: five queries give the same answers on DuckDB and on PySpark local[2]."""

from __future__ import annotations

import datetime as dt
import decimal

import pytest

from auditpipe.lake.query import DuckEngine, SparkEngine
from conftest import CORPUS
from lake_helpers import build_lake

QUERIES = {
    "counts by action": "SELECT action, count(*) AS n FROM events GROUP BY action ORDER BY n DESC, action",
    "failed logins by address": (
        "SELECT source_ip, count(*) AS failed FROM events WHERE message_type = 'user_login' "
        "AND outcome = 'failure' GROUP BY source_ip ORDER BY failed DESC, source_ip"),
    "top executables": (
        "SELECT process_executable, count(*) AS runs, min(timestamp) AS first_seen FROM events "
        "WHERE action = 'executed' GROUP BY process_executable ORDER BY runs DESC, process_executable LIMIT 10"),
    "events joined to their records": (
        "SELECT e.action, r.type, count(*) AS n FROM events e JOIN records r "
        "ON e.event_id = r.event_id AND e.host = r.host "
        "GROUP BY e.action, r.type ORDER BY n DESC, e.action, r.type"),
    "per-minute window": (
        "SELECT date_trunc('minute', timestamp) AS minute, host, count(*) AS n, "
        "count(DISTINCT process_executable) AS executables FROM events "
        "WHERE date = DATE '2026-11-21' GROUP BY 1, 2 ORDER BY 1, 2"),
}


def _plain(v):
    """One representation for both engines' values (timezone-aware times in UTC, integers)."""
    if isinstance(v, dt.datetime):
        if v.tzinfo is None:
            v = v.replace(tzinfo=dt.UTC)
        return v.astimezone(dt.UTC).isoformat()
    if isinstance(v, decimal.Decimal):
        return int(v)
    return v


def _rows(table):
    return [tuple(_plain(v) for v in row.values()) for row in table.to_pylist()]


@pytest.mark.slow
def test_duckdb_and_spark_answer_the_same(tmp_path_factory):
    root = tmp_path_factory.mktemp("lake")
    build_lake(root, [CORPUS / "enriched.log", CORPUS / "raw-node.log"])
    duck = DuckEngine(str(root))
    spark = SparkEngine(str(root), master="local[2]")
    try:
        for name, sql in QUERIES.items():
            want = _rows(duck.arrow(sql))
            got = _rows(spark.arrow(sql))
            assert want, f"{name}: no rows: the comparison would prove nothing"
            assert got == want, name
    finally:
        spark.close()
        duck.close()
