"""Logging for the CLI: plain text, or one JSON object per line (``--log-format json``) that
journald and log shippers take as is."""

from __future__ import annotations

import logging
import sys

import click
import orjson

TEXT_FORMAT = "auditpipe: %(levelname)s: %(message)s"


class JsonFormatter(logging.Formatter):
    """ECS-style fields: @timestamp, log.level, log.logger, message, error.* for exceptions."""

    def format(self, record: logging.LogRecord) -> str:
        doc: dict = {"@timestamp": self.formatTime(record), "log.level": record.levelname.lower(),
                     "log.logger": record.name, "message": record.getMessage(),
                     "process.pid": record.process}
        if record.exc_info:
            doc["error.type"] = record.exc_info[0].__name__ if record.exc_info[0] else None
            doc["error.stack_trace"] = self.formatException(record.exc_info)
        return orjson.dumps(doc, default=str).decode()

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:  # noqa: N802
        from auditpipe.normalize.selfevents import iso_utc

        return iso_utc(record.created)


def make_formatter(log_format: str) -> logging.Formatter:
    return JsonFormatter() if log_format == "json" else logging.Formatter(TEXT_FORMAT)


def configure_logging(level: str, log_format: str | None = None) -> None:
    """Root logging on stderr at ``level``; ``log_format`` None: the one chosen on the command
    line (``auditpipe --log-format``), else text. Commands call this with their level."""
    if log_format is None:
        ctx = click.get_current_context(silent=True)
        obj = ctx.find_root().obj if ctx is not None else None
        log_format = (obj or {}).get("log_format", "text")
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(make_formatter(log_format))
    logging.basicConfig(handlers=[handler], level=getattr(logging, level.upper(), logging.INFO),
                        force=True)
