"""SQL over the lake: views ``events`` (ECS), ``records`` (panther rows) and ``alerts``, on DuckDB
(embedded, the default) or Apache Spark (``auditpipe[spark]``, local mode or a cluster).

Both engines read the same files with Hive partitioning (``date`` DATE, ``host`` VARCHAR: a
filter on them skips whole folders) and deduplicate what a writer sent twice after a crash (the
same document again, so the same event id and document hash): one row per (date, host,
event_id, doc_hash). ``dedup=False`` shows the files as they are.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Any

import pyarrow as pa

from auditpipe.lake.columns import schema_of
from auditpipe.lake.store import Store

__all__ = ["DuckEngine", "NoLake", "QueryError", "SparkEngine", "View", "VIEWS", "lake_views"]


@dataclass(frozen=True, slots=True)
class View:
    name: str
    folder: str


VIEWS = (View("events", "ecs"), View("records", "panther"), View("alerts", "alerts"))
#: a row sent twice has the same values of these
DEDUP_KEY = ("date", "host", "event_id", "doc_hash")


class QueryError(Exception):
    """The engine refused the query (syntax, unknown column, type): its message, no traceback."""


class NoLake(Exception):
    """There is nothing to query at this path."""


def lake_views(root: str) -> dict[str, bool]:
    """Which views have at least one completed file under ``root``."""
    store = Store(root)
    have = {}
    for v in VIEWS:
        have[v.name] = any(f.path.endswith(".parquet") and "/." not in f.path[len(store.root):]
                           for f in store.files(store.path(v.folder)))
    if not any(have.values()):
        raise NoLake(
            f"no lake at {root}: write one with `auditpipe parse audit.log --format ecs --lake {root}` "
            f"(and --format panther for `records`), or add [[outputs]] type = \"lake\" to `auditpipe run` "
            f"(it writes {root if root == './auditpipe-data' else './auditpipe-data'} by default)")
    return have


def _glob(root: str, folder: str) -> str:
    return f"{root.rstrip('/')}/{folder}/**/*.parquet"


class DuckEngine:
    """DuckDB over the lake's views."""

    def __init__(self, root: str, *, dedup: bool = True, threads: int | None = None) -> None:
        import duckdb

        self.duckdb = duckdb
        self.con = duckdb.connect(config={"threads": threads or os.cpu_count() or 1})
        have = lake_views(root)
        for v in VIEWS:
            self.con.execute(f"CREATE VIEW {v.name} AS {self._view_sql(root, v, have[v.name], dedup)}")

    def _view_sql(self, root: str, v: View, present: bool, dedup: bool) -> str:
        if not present:  # an empty view with the right columns, so any query over it still runs
            empty = schema_of(v.folder).empty_table().append_column("date", pa.array([], pa.date32()))
            self.con.register(f"_empty_{v.name}", empty)
            return f"SELECT * FROM _empty_{v.name}"
        path = _glob(root, v.folder).replace("'", "''")
        src = (f"read_parquet('{path}', hive_partitioning = true, "
               f"hive_types = {{'date': DATE, 'host': VARCHAR}}, union_by_name = true)")
        if not dedup:
            return f"SELECT * FROM {src}"
        return (f"SELECT * FROM {src} QUALIFY "
                f"row_number() OVER (PARTITION BY {', '.join(DEDUP_KEY)} ORDER BY timestamp) = 1")

    def arrow(self, sql: str) -> pa.Table:
        try:
            rel = self.con.sql(sql)
            if rel is None:
                return pa.table({})
            return rel.to_arrow_table() if hasattr(rel, "to_arrow_table") else rel.arrow()
        except self.duckdb.Error as e:
            raise QueryError(str(e)) from None

    def close(self) -> None:
        self.con.close()


class SparkEngine:
    """The same views on Apache Spark (PySpark). ``master``: ``local[N]`` or a cluster URL."""

    def __init__(self, root: str, *, master: str = "local[2]", dedup: bool = True,
                 conf: dict[str, str] | None = None) -> None:
        try:
            from pyspark.sql import SparkSession
        except ImportError:
            raise QueryError("--engine spark needs PySpark: pip install 'auditpipe[spark]' (and Java 17+)") from None
        have = lake_views(root)
        b = SparkSession.builder.master(master).appName("auditpipe query")
        if master.startswith("local"):  # local mode: the driver listens on loopback only
            os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
            b = b.config("spark.driver.host", "127.0.0.1").config("spark.driver.bindAddress", "127.0.0.1")
        log4j = os.path.join(os.path.dirname(__file__), "spark-log4j2.properties")
        b = (b
             .config("spark.driver.extraJavaOptions", f"-Dlog4j.configurationFile=file:{log4j}")
             .config("spark.sql.session.timeZone", "UTC")
             .config("spark.sql.sources.partitionColumnTypeInference.enabled", "false")
             .config("spark.ui.enabled", "false")
             .config("spark.ui.showConsoleProgress", "false")
             .config("spark.sql.shuffle.partitions", "4"))
        for k, val in (conf or {}).items():
            b = b.config(k, val)
        self.spark = b.getOrCreate()
        self.spark.sparkContext.setLogLevel("OFF")
        logging.getLogger("SQLQueryContextLogger").setLevel(logging.CRITICAL)  # the error is ours to say
        for v in VIEWS:
            self._register(root, v, have[v.name], dedup)

    def _register(self, root: str, v: View, present: bool, dedup: bool) -> None:
        from pyspark.sql import Window
        from pyspark.sql import functions as F

        spark = self.spark
        if present:
            base = f"{root.rstrip('/')}/{v.folder}"
            df = spark.read.option("basePath", base).parquet(base).withColumn("date", F.col("date").cast("date"))
        else:
            df = spark.createDataFrame([], _spark_schema(schema_of(v.folder)))
            df = df.withColumn("date", F.lit(None).cast("date"))
        if dedup and present:
            w = Window.partitionBy(*DEDUP_KEY).orderBy("timestamp")
            df = df.withColumn("_rn", F.row_number().over(w)).filter(F.col("_rn") == 1).drop("_rn")
        df.createOrReplaceTempView(v.name)

    def arrow(self, sql: str) -> pa.Table:
        from pyspark.errors import PySparkException

        try:
            df = self.spark.sql(sql)
            return df.toArrow() if hasattr(df, "toArrow") else pa.Table.from_pandas(df.toPandas())
        except PySparkException as e:
            raise QueryError(_first_line(str(e))) from None

    def close(self) -> None:
        self.spark.stop()


def _first_line(msg: str) -> str:
    """Spark's messages carry the query plan and the JVM stack after the first line."""
    return msg.strip().split("\n", 1)[0]


def _spark_schema(schema: pa.Schema) -> Any:
    from pyspark.sql.types import ArrayType, LongType, StringType, StructField, StructType, TimestampType

    def typ(t: pa.DataType) -> Any:
        if pa.types.is_list(t):
            return ArrayType(typ(t.value_type))
        if pa.types.is_timestamp(t):
            return TimestampType()
        if pa.types.is_integer(t):
            return LongType()
        return StringType()

    return StructType([StructField(f.name, typ(f.type)) for f in schema])
