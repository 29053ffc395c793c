"""The Parquet lake: a writer (a Transport behind the durable queue), compaction and expiry,
and the DuckDB/Spark query engines and reports over it. See docs/lake.md.

Kept import-free: config.py imports ``auditpipe.lake.config`` without pulling in pyarrow."""
