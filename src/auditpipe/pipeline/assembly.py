"""The one assembly: typed config → normalizer → reassembler → Pipeline → stages (→ outputs, →
source for `run`). ``run``, ``parse`` and ``serve`` all build their pipeline here, so a setting
means the same thing in each."""

from __future__ import annotations

import itertools
import os
import time
from collections.abc import Callable, Sequence
from typing import Any, Literal

from auditpipe.config import Config, ConfigError, NormalizeConfig, ReassemblyConfig
from auditpipe.normalize import make_normalizer
from auditpipe.pipeline.core import Normalizer, Pipeline, RejectHandler
from auditpipe.pipeline.stages import Stage
from auditpipe.reassembly import Reassembler

__all__ = ["STAGE_BUILDERS", "build_normalizer", "build_pipeline", "build_reassembler", "build_source",
           "build_stages", "normalizer_for", "unique_row_ids"]

#: Which command a pipeline is built for: ``run`` (this host, live), ``serve`` (events of many
#: hosts), ``parse`` (records of another time).
Role = Literal["run", "serve", "parse"]
StageBuilder = Callable[[Config], "Stage | None"]


def _process_stage(cfg: Config) -> Stage | None:
    from auditpipe.process.stage import build_process_stage

    return build_process_stage(cfg)


def _filter_stage(cfg: Config) -> Stage | None:
    from auditpipe.process.filter import build_filter_stage

    return build_filter_stage(cfg)


def _detect_stage(cfg: Config) -> Stage | None:
    if not cfg.detect.rules:
        return None
    from auditpipe.detect.engine import DetectStage
    from auditpipe.normalize.idresolve import IdResolver

    n = cfg.normalize
    resolver = IdResolver(passwd_file=n.passwd_file, group_file=n.group_file, enabled=n.resolve_ids)
    # rules on the parent process run where the process table gives the parent (ECS documents)
    with_parents = n.format == "ecs" and _process_stage_on(cfg)
    context = frozenset({"process.parent.executable", "process.parent.command_line"}) if with_parents else frozenset()
    return DetectStage(cfg.detect, n.format, resolver=resolver, context=context)


def _process_stage_on(cfg: Config) -> bool:
    enabled = cfg.process.enabled
    return enabled is True or (enabled is None and cfg.source.type == "kernel")


#: Stage builders, in pipeline order, with the roles they run in: each takes the typed Config
#: and returns a Stage, or None when its section does not ask for it. A feature adds its
#: builder here (one line). The process table reads this host's /proc: ``run`` only.
STAGE_BUILDERS: tuple[tuple[StageBuilder, tuple[Role, ...]], ...] = (
    (_process_stage, ("run",)),
    (_filter_stage, ("run", "serve", "parse")),
    (_detect_stage, ("run", "serve", "parse")),
)


def unique_row_ids() -> Callable[[], str]:
    """p_row_id values: a random per-process prefix and a counter (unique without a uuid per row).
    A process forked after it was made (``serve --workers``) draws a prefix of its own."""
    import secrets  # here: it imports hmac and hashlib, which no other format needs at start-up

    prefix = secrets.token_hex(8)
    counter = itertools.count(1)

    def redraw() -> None:
        nonlocal prefix
        prefix = secrets.token_hex(8)

    os.register_at_fork(after_in_child=redraw)
    return lambda: f"{prefix}{next(counter):x}"


def build_normalizer(n: NormalizeConfig, path: str | None = None, *,
                     ecs_options: dict[str, Any] | None = None) -> Normalizer:
    """The normalizer ``[normalize]`` asks for; its id resolver and clock are injected here.
    ``ecs_options``: host/agent metadata and document ids (:func:`normalizer_for`)."""
    try:
        if n.format == "ecs":
            from auditpipe.normalize.idresolve import IdResolver

            resolver = IdResolver(passwd_file=n.passwd_file, group_file=n.group_file, enabled=n.resolve_ids)
            return make_normalizer("ecs", resolver=resolver, include_raw=n.include_raw,
                                   extra_tags=None if n.tags is None else tuple(n.tags), clock=time.monotonic,
                                   **(ecs_options or {}))
        if n.format == "panther":
            return make_normalizer("panther", now=time.time, row_id=unique_row_ids())
        return make_normalizer(n.format, include_raw=n.include_raw)
    except ImportError as e:
        raise ConfigError(f"the {n.format!r} output format is not available in this build ({e}); "
                          "choose another with --format or [normalize] format",
                          path, where="[normalize] format") from None


def normalizer_for(cfg: Config) -> Normalizer:
    """The normalizer of a whole configuration: ``[normalize]`` plus the host metadata and
    document ids its outputs need (an Elasticsearch output, ``host_metadata``)."""
    from auditpipe.pipeline.hostinfo import ecs_agent_options

    return build_normalizer(cfg.normalize, cfg.path, ecs_options=ecs_agent_options(cfg))


def build_reassembler(r: ReassemblyConfig) -> Reassembler:
    return Reassembler(timeout=r.timeout, max_in_flight=r.max_in_flight, wall_timeout=r.wall_timeout)


def build_stages(cfg: Config, role: Role = "run") -> list[Stage]:
    stages = [st for st in (b(cfg) for b, roles in STAGE_BUILDERS if role in roles) if st is not None]
    for st in stages:  # a stage that reads another's state (the filter, for Panther rows) finds it here
        link = getattr(st, "link", None)
        if link is not None:
            link(stages)
    return stages


def build_pipeline(cfg: Config, on_reject: RejectHandler | None = None, *,
                   normalize: Normalizer | None = None, role: Role = "run",
                   stages: Sequence[Stage] | None = None) -> Pipeline:
    """normalizer → reassembler → Pipeline → stages, from the typed config. ``stages``: built
    once by the caller and shared (``serve``'s pipelines, one per sender, on one thread)."""
    return Pipeline(normalize if normalize is not None else normalizer_for(cfg),
                    build_reassembler(cfg.reassembly), on_reject=on_reject,
                    stages=build_stages(cfg, role) if stages is None else stages)


def build_source(cfg: Config) -> Any:
    """The live source ``[source]`` asks for (a :class:`~auditpipe.sources.base.Source`)."""
    if cfg.source.type == "file":
        from auditpipe.sources.file_source import FileTailSource

        return FileTailSource(cfg.source.path, cfg.source.checkpoint, start=cfg.source.start)
    from auditpipe.sources.kernel import KernelSource

    return KernelSource.from_config(cfg)
