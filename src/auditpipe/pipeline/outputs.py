"""The outputs of `auditpipe run`: the normalizer and sinks its configuration asks for."""

from __future__ import annotations

import logging

from auditpipe.config import Config, ConfigError

__all__ = ["WRITE_SLICE", "build_normalizer_from", "close_sink", "describe_output", "max_events", "no_documents",
           "open_outputs", "wants_raw"]

log = logging.getLogger("auditpipe.run")

#: file source: at most this many documents (or raw records) reach the outputs between two
#: checkpoint commits — what a SIGKILL between a write and its commit may resend. An HTTP
#: output with a smaller ``max_events`` (one batch) lowers it.
WRITE_SLICE = 500


def build_normalizer_from(cfg: Config):
    """The normalizer the ``[normalize]`` table asks for."""
    from auditpipe.cli.common import build_normalizer
    from auditpipe.pipeline.hostinfo import ecs_agent_options

    n = cfg.normalize
    try:
        return build_normalizer(n.format, resolve_ids=n.resolve_ids, passwd=n.passwd_file,
                                group=n.group_file, include_raw=n.include_raw, extra_tags=n.tags,
                                **ecs_agent_options(cfg))
    except ImportError as e:
        raise ConfigError(f"the {n.format!r} output format is not available in this build ({e}); "
                          "choose another with --format or [normalize] format",
                          cfg.path, where="[normalize] format") from None


def open_outputs(cfg: Config) -> list:
    """Open every ``[[outputs]]`` sink; on failure close those already open and raise."""
    from auditpipe.sinks import open_sink

    sinks = []
    try:
        for i, spec in enumerate(cfg.output_specs()):
            try:
                sinks.append(open_sink(spec))
            except (OSError, ValueError, TypeError) as e:
                raise ConfigError(f"cannot open output: {e}", cfg.path,
                                  where=f"[[outputs]] #{i + 1} ({spec.get('path') or spec.get('url') or spec['type']})") from None
    except BaseException:
        for s in sinks:
            close_sink(s)
        raise
    return sinks


def close_sink(s) -> None:
    try:
        s.close()
    except Exception as e:  # noqa: BLE001 - closing must go on for the other sinks
        log.error("closing output: %s", e)


def describe_output(spec: dict) -> str:
    return spec.get("path") or spec.get("url") or spec["type"]


def wants_raw(spec: dict, sink) -> bool:
    """An HTTP output configured to forward the records themselves (``format = "raw"``)."""
    return spec.get("type") == "http" and spec.get("format") == "raw" and hasattr(sink, "write_raw")


def no_documents(event) -> list:
    return []


def max_events(spec: dict) -> int:
    try:
        return max(1, int(spec.get("max_events", WRITE_SLICE)))
    except (TypeError, ValueError):
        return WRITE_SLICE
