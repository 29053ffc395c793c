"""``auditpipe report``: the summaries aureport gives, over the lake's ``events`` view.

Each :class:`Section` is one SQL query over ``ev`` (the events of the chosen window and host);
the CLI prints them as tables, :func:`render_html` makes one self-contained page of them with
inline SVG charts (no script or style from anywhere else).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import pyarrow as pa

from auditpipe.lake.query import DuckEngine

__all__ = ["CHARTS", "SECTIONS", "Report", "Section", "build_report", "cell"]

_LOGIN_USER = "coalesce(effective_user_name, user_name, user_id)"
#: aureport -m: account and group changes
_ACCOUNT_TYPES = ("add_user", "del_user", "add_group", "del_group", "user_chauthtok", "grp_chauthtok",
                  "user_mgmt", "grp_mgmt", "acct_lock", "acct_unlock", "usys_config", "chuser_id", "chgrp_id")
_HEARTBEAT = "kind = 'metric' AND action = 'heartbeat'"


@dataclass(frozen=True, slots=True)
class Section:
    name: str
    title: str
    sql: str


SECTIONS: tuple[Section, ...] = (
    Section("summary", "Summary", """
        SELECT count(*) AS events, count(DISTINCT host) AS hosts, min(timestamp) AS first, max(timestamp) AS last,
               count(*) FILTER (WHERE message_type = 'user_login') AS logins,
               count(*) FILTER (WHERE message_type = 'user_login' AND outcome = 'failure') AS failed_logins,
               count(*) FILTER (WHERE message_type = 'user_auth') AS authentications,
               count(*) FILTER (WHERE action = 'executed') AS executions,
               count(*) FILTER (WHERE message_type LIKE 'anom%') AS anomalies
        FROM ev"""),
    Section("logins", "Logins by user and source address", f"""
        SELECT {_LOGIN_USER} AS user, source_ip, count(*) FILTER (WHERE outcome = 'success') AS succeeded,
               count(*) FILTER (WHERE outcome = 'failure') AS failed, max(timestamp) AS last
        FROM ev WHERE message_type = 'user_login' GROUP BY ALL ORDER BY failed DESC, succeeded DESC, user"""),
    Section("failed_by_address", "Failed logins by source address", f"""
        SELECT source_ip, count(*) AS failed, count(DISTINCT {_LOGIN_USER}) AS users, min(timestamp) AS first,
               max(timestamp) AS last
        FROM ev WHERE message_type = 'user_login' AND outcome = 'failure'
        GROUP BY ALL ORDER BY failed DESC, source_ip"""),
    Section("failed_by_user", "Failed logins by user", f"""
        SELECT {_LOGIN_USER} AS user, count(*) AS failed, count(DISTINCT source_ip) AS addresses, max(timestamp) AS last
        FROM ev WHERE message_type = 'user_login' AND outcome = 'failure' GROUP BY ALL ORDER BY failed DESC, user"""),
    Section("authentications", "Authentications", f"""
        SELECT {_LOGIN_USER} AS user, summary_how AS how, outcome, count(*) AS n, max(timestamp) AS last
        FROM ev WHERE message_type = 'user_auth' GROUP BY ALL ORDER BY n DESC, user"""),
    Section("executables", "Executables run (top {top})", """
        SELECT process_executable AS executable, count(*) AS runs, count(DISTINCT user_name) AS users,
               min(timestamp) AS first_seen, max(timestamp) AS last_seen
        FROM ev WHERE action = 'executed' AND process_executable IS NOT NULL
        GROUP BY ALL ORDER BY runs DESC, executable LIMIT {top}"""),
    Section("accounts", "Account and group changes", f"""
        SELECT timestamp, host, action, coalesce(audit_user_name, audit_user_id, user_name) AS by_user,
               summary_object_primary AS target, outcome
        FROM ev WHERE message_type IN {_ACCOUNT_TYPES!r} ORDER BY timestamp"""),
    Section("keys", "Rule-key hits", """
        SELECT key, count(*) AS events, min(timestamp) AS first, max(timestamp) AS last
        FROM (SELECT unnest(tags) AS key, timestamp FROM ev) GROUP BY ALL ORDER BY events DESC, key"""),
    Section("anomalies", "Anomalies", """
        SELECT timestamp, host, message_type, action, process_executable AS executable, user_name AS user
        FROM ev WHERE message_type LIKE 'anom%' ORDER BY timestamp"""),
    Section("files_by_key", "Files touched, by rule key (top {top})", """
        SELECT key, file_path, count(*) AS events, max(timestamp) AS last
        FROM (SELECT unnest(tags) AS key, file_path, timestamp FROM ev WHERE file_path IS NOT NULL)
        GROUP BY ALL ORDER BY events DESC, key, file_path LIMIT {top}"""),
    Section("loss", "Kernel lost, serial gaps and heartbeats per host", f"""
        WITH hb AS (
            SELECT host, count(*) AS heartbeats, max(timestamp) AS last_heartbeat,
                   CAST(sum(TRY_CAST(document->>'$.auditpipe.heartbeat.deltas.kernel_lost' AS BIGINT)) AS BIGINT)
                       AS kernel_lost,
                   CAST(sum(TRY_CAST(document->>'$.auditpipe.heartbeat.deltas.serial_gaps' AS BIGINT)) AS BIGINT)
                       AS serial_gaps
            FROM ev WHERE {_HEARTBEAT} GROUP BY host),
        e AS (SELECT host, count(*) AS events, max(timestamp) AS last_event FROM ev
              WHERE NOT ({_HEARTBEAT}) GROUP BY host)
        SELECT coalesce(e.host, hb.host) AS host, coalesce(events, 0) AS events, last_event,
               coalesce(heartbeats, 0) AS heartbeats, last_heartbeat,
               coalesce(kernel_lost, 0) AS kernel_lost, coalesce(serial_gaps, 0) AS serial_gaps
        FROM e FULL JOIN hb ON e.host = hb.host ORDER BY kernel_lost + serial_gaps DESC, host"""),
)

#: the charts of the HTML page: name → SQL (over ev) giving (label, series, value) rows
CHARTS: dict[str, tuple[str, str]] = {
    "events_over_time": ("Events over time, per category", """
        SELECT time_bucket(INTERVAL '{bucket}', timestamp) AS t, c AS series, count(*) AS n
        FROM (SELECT timestamp, unnest(coalesce(category, ['none'])) AS c FROM ev WHERE NOT ({hb}))
        GROUP BY ALL ORDER BY t, series"""),
    "failed_logins_over_time": ("Failed logins over time", """
        SELECT time_bucket(INTERVAL '{bucket}', timestamp) AS t, 'failed logins' AS series, count(*) AS n
        FROM ev WHERE message_type = 'user_login' AND outcome = 'failure' GROUP BY ALL ORDER BY t"""),
    "top_executables": ("Top executables", """
        SELECT process_executable AS t, 'runs' AS series, count(*) AS n FROM ev
        WHERE action = 'executed' AND process_executable IS NOT NULL GROUP BY ALL ORDER BY n DESC, t LIMIT 10"""),
    "loss_per_host": ("Loss per host (kernel lost + serial gaps, from heartbeats)", """
        SELECT host AS t, s.series,
               CAST(sum(TRY_CAST(document->>('$.auditpipe.heartbeat.deltas.' || s.series) AS BIGINT)) AS BIGINT) AS n
        FROM ev, (VALUES ('kernel_lost'), ('serial_gaps')) s(series)
        WHERE {hb} GROUP BY ALL ORDER BY t, s.series"""),
}

#: bucket widths for the time charts: the smallest giving at most about 60 bars
_BUCKETS = ((1, "1 second"), (10, "10 seconds"), (60, "1 minute"), (300, "5 minutes"), (900, "15 minutes"),
            (3600, "1 hour"), (6 * 3600, "6 hours"), (86400, "1 day"), (7 * 86400, "7 days"))


@dataclass(slots=True)
class Report:
    since: str
    host: str | None
    generated: float
    sections: list[tuple[Section, pa.Table]]
    charts: dict[str, pa.Table]


def build_report(lake: str, since_seconds: float | None, host: str | None, *, top: int = 10,
                 now: float | None = None, charts: bool = False) -> Report:
    """Run every section (and, for the page, every chart) over the chosen events."""
    now = time.time() if now is None else now
    eng = DuckEngine(lake)
    try:
        _window(eng, since_seconds, host, now)
        sections = [(s, eng.arrow(s.sql.format(top=top))) for s in SECTIONS]
        out = {}
        if charts:
            bucket = _bucket(eng)
            for name, (_title, sql) in CHARTS.items():
                out[name] = eng.arrow(sql.format(bucket=bucket, hb=_HEARTBEAT))
    finally:
        eng.close()
    since = "all" if since_seconds is None else time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(now - since_seconds))
    return Report(since, host, now, sections, out)


def _window(eng: DuckEngine, since_seconds: float | None, host: str | None, now: float) -> None:
    """``ev``: the events from ``since`` on (on ``host``): the date filter prunes partitions."""
    where = ["TRUE"]
    params: list[Any] = []
    if since_seconds is not None:
        start = now - since_seconds
        where.append("date >= CAST(to_timestamp(?) AS DATE) AND timestamp >= to_timestamp(?)")
        params += [start, start]
    if host:
        where.append("host = ?")
        params.append(host)
    eng.con.execute(f"CREATE TEMP TABLE ev AS SELECT * FROM events WHERE {' AND '.join(where)}", params)


def _bucket(eng: DuckEngine) -> str:
    ((span,),) = eng.con.execute("SELECT coalesce(epoch(max(timestamp)) - epoch(min(timestamp)), 0) FROM ev").fetchall()
    for seconds, name in _BUCKETS:
        if span / seconds <= 60:
            return name
    return _BUCKETS[-1][1]


def cell(v: Any) -> str:
    """A value as a report shows it: times to the second, UTC; nothing for NULL."""
    if v is None:
        return ""
    if hasattr(v, "strftime") and hasattr(v, "hour"):
        return v.strftime("%Y-%m-%d %H:%M:%S")
    if isinstance(v, list):
        return ", ".join(map(str, v))
    return str(v)
