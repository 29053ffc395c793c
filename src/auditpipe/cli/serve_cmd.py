"""`auditpipe serve`: receive audit records over HTTP(S), reassemble them per sender, normalize
them and hand them to the outputs.

With ``--config FILE`` it reads the same TOML as ``run`` (``[normalize]``, ``[reassembly]``,
``[[outputs]]`` of every type, ``[detect]``, ``[filter]``, ``[metrics]``) plus ``[serve]``
(:class:`~auditpipe.sources.receiver.config.ServeConfig`); the options override the file.
Without it, ``--output FILE`` is the one output (coalesced by default, as before).
"""

from __future__ import annotations

import ipaddress
import logging
import sys
from typing import Any

import click

from auditpipe.normalize import FORMATS
from auditpipe.sinks.auth import AUTH_SCHEMES

__all__ = ["serve", "split_listen", "workers_can_own"]


def split_listen(listen: str) -> tuple[str, int]:
    """``HOST:PORT`` / ``[::1]:PORT`` → (host, port)."""
    host, sep, port = listen.rpartition(":")
    if not sep or not port.isdecimal():
        raise click.BadParameter(f"expected HOST:PORT, got {listen!r}", param_hint="--listen")
    return host.strip("[]") or "0.0.0.0", int(port)


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


#: options that override a ``[serve]`` key of the same name
SERVE_KEYS = ("listen", "tls_cert", "tls_key", "tls_client_ca", "auth", "auth_header", "auth_secret", "max_body",
              "reorder_window", "event_wait", "state", "header_timeout", "body_timeout", "max_connections",
              "max_connections_per_address", "workers")


def load_serve_config(config_path: str | None, opts: dict[str, Any]) -> Any:
    """The typed Config of a serve: the file's (or, without one, coalesced documents and no
    outputs yet), with the options on top. Raises ConfigError or click.UsageError."""
    from auditpipe.config import Config, ConfigError, FileOutput, NormalizeConfig, StdoutOutput, load_config

    cfg = load_config(config_path) if config_path else Config(normalize=NormalizeConfig(format="coalesced"))
    for key in SERVE_KEYS:
        if opts.get(key) is not None:
            setattr(cfg.serve, key, opts[key])
    if opts.get("fmt"):
        cfg.normalize.format = opts["fmt"]
    if opts.get("metrics_listen"):
        cfg.metrics.listen = opts["metrics_listen"]
    output = opts.get("output")
    if output:
        cfg.outputs = [StdoutOutput() if output == "-" else FileOutput(
            path=output, max_bytes=opts["rotate"], generations=opts["generations"], fsync=opts["fsync"])]
    elif not config_path:
        raise click.UsageError("Missing option '--output' (or --config FILE with [[outputs]])")
    s = cfg.serve
    if not s.listen:
        raise click.UsageError("Missing option '--listen' (or [serve] listen)")
    if s.auth is None:
        raise click.UsageError("Missing option '--auth' (or [serve] auth); 'none' must be given explicitly")
    if s.auth != "none" and not s.auth_secret:
        raise click.UsageError(f"--auth {s.auth} needs --auth-secret (or AUDITPIPE_AUTH_SECRET, [serve] auth_secret)")
    for key, msg in s.problems():
        raise ConfigError(msg, cfg.path, where=f"[serve] {key}")
    return cfg


def _receiver_config(cfg: Any) -> Any:
    from auditpipe.sources.http_receiver import ReceiverConfig, parse_size, raise_fd_limit
    from auditpipe.sources.receiver.limits import LimitsConfig

    s = cfg.serve
    fd_limit = raise_fd_limit()
    if s.max_connections > fd_limit - 64:
        raise click.UsageError(f"--max-connections {s.max_connections} does not fit the open-file limit "
                               f"({fd_limit}); raise it (ulimit -n) or lower --max-connections")
    limits = LimitsConfig(header_timeout=s.header_timeout, body_timeout=s.body_timeout,
                          max_connections=s.max_connections, max_per_address=s.max_connections_per_address)
    try:
        return ReceiverConfig(auth=s.auth, secret=s.auth_secret, auth_header=s.auth_header,
                              max_body=parse_size(s.max_body), reorder_window=s.reorder_window,
                              event_wait=s.event_wait, event_timeout=cfg.reassembly.timeout, limits=limits,
                              state=s.state)
    except ValueError as e:
        raise click.UsageError(str(e)) from None


def _size(text: str) -> int:
    from auditpipe.sources.http_receiver import parse_size

    return 0 if str(text).strip() == "0" else parse_size(text)


@click.command()
@click.option("-c", "--config", "config_path", type=click.Path(dir_okay=False),
              help="TOML configuration (as `run`'s, plus [serve]); the options below override it.")
@click.option("--listen", help="HOST:PORT to listen on (e.g. 127.0.0.1:8088, [::1]:8088).")
@click.option("--tls-cert", type=click.Path(exists=True, dir_okay=False), help="Server certificate (PEM).")
@click.option("--tls-key", type=click.Path(exists=True, dir_okay=False), help="Server key (PEM).")
@click.option("--tls-client-ca", type=click.Path(exists=True, dir_okay=False),
              help="Require client certificates signed by this CA (mutual TLS).")
@click.option("--auth", type=click.Choice(AUTH_SCHEMES),
              help="Authentication (required here or in [serve]); 'none' must be given explicitly.")
@click.option("--auth-header", help="Header carrying the secret or HMAC (default X-Auditpipe-Secret / "
                                    "X-Auditpipe-Signature; Authorization for bearer and basic).")
@click.option("--auth-secret", envvar="AUDITPIPE_AUTH_SECRET", show_envvar=True,
              help="Shared secret, HMAC key, bearer token, or user:password for basic.")
@click.option("--output", type=click.Path(dir_okay=False, allow_dash=True),
              help="JSON-lines output file ('-' for stdout); replaces [[outputs]].")
@click.option("--format", "fmt", type=click.Choice(FORMATS),
              help="Document format (default: [normalize] format, or coalesced without --config).")
@click.option("--max-body", help="Largest request body, on the wire and once decompressed (default 8MB: "
                                 "Fluent Bit posts chunks of up to ~2.2 MB and drops a chunk refused with 413).")
@click.option("--rotate-size", default="100MB", show_default=True, help="--output: rotate at this size (0: never).")
@click.option("--generations", type=int, default=5, show_default=True, help="--output: rotated files to keep.")
@click.option("--fsync", type=click.Choice(["never", "batch", "interval"]), default="interval", show_default=True,
              help="--output: when to fsync.")
@click.option("--reorder-window", type=click.FloatRange(min=0),
              help="Seconds (wall clock) an incomplete event waits for records of the same sender that "
                   "arrive late or out of order (a shipper's retries). Default 30.")
@click.option("--event-wait", type=click.FloatRange(min=0),
              help="Seconds an incomplete event of an in-order sender (one keep-alive connection, or "
                   "consecutive X-Auditpipe-Range) waits for its remaining records. Default 2.")
@click.option("--state", type=click.Path(dir_okay=False),
              help="File where, at shutdown, the held records of senders that name themselves "
                   "(X-Auditpipe-Sender) are kept for the next start, so a restart splits no event.")
@click.option("--header-timeout", type=click.FloatRange(min=0.1),
              help="Seconds a connection has to send complete request headers. Default 10.")
@click.option("--body-timeout", type=click.FloatRange(min=0.1),
              help="Seconds a request has to send its whole body. Default 60.")
@click.option("--max-connections", type=click.IntRange(min=1),
              help="Open connections at most (the oldest idle ones give way to new ones). Default 1024.")
@click.option("--max-connections-per-address", type=click.IntRange(min=1),
              help="Open connections from one address at most. Default 256.")
@click.option("--workers", type=click.IntRange(min=0),
              help="Processes that parse, reassemble and normalize; each sender's records go to one of "
                   "them (by X-Auditpipe-Sender, else connection, else address). 0: one per core. Default 1 "
                   "(everything in one process).")
@click.option("--metrics-listen", help="HOST:PORT for Prometheus metrics (also [metrics] listen).")
def serve(config_path, rotate_size, generations, fsync, **opts):
    """Receive audit records over HTTP (Fluent Bit json_lines, raw text, JSON arrays, or events from
    another auditpipe), reassemble them per sender, normalize them and write them to the outputs."""
    from auditpipe.config import ConfigError

    try:
        opts.update(rotate=_size(rotate_size), generations=generations, fsync=fsync)
        if opts["listen"]:
            split_listen(opts["listen"])
        cfg = load_serve_config(config_path, opts)
        rcfg = _receiver_config(cfg)
    except ValueError as e:
        if isinstance(e, ConfigError):
            click.echo(f"Error: {e}", err=True)
            sys.exit(2)
        raise click.UsageError(str(e)) from None
    logging.basicConfig(stream=sys.stderr, format="auditpipe serve: %(levelname)s: %(message)s",
                        level=getattr(logging, cfg.log_level.upper(), logging.INFO))
    try:
        sys.exit(_run(cfg, rcfg))
    except ConfigError as e:
        click.echo(f"Error: {e}", err=True)
        sys.exit(2)


def _parsing_receiver(cfg: Any, rcfg: Any) -> Any:
    """``make(outputs)`` → the receiver that parses: one pipeline per sender, built as `run` and
    `parse` build theirs; the normalizer and the stages (detection rules compiled once) are shared
    by its senders, which all run on its one worker thread. Built here, before any worker is
    forked, so a bad [normalize]/[detect] fails at once and every worker starts with them ready."""
    from auditpipe.pipeline.assembly import build_pipeline, build_stages, normalizer_for
    from auditpipe.sources.http_receiver import Receiver

    normalize = normalizer_for(cfg)
    stages = build_stages(cfg, "serve")
    for_host = _host_normalizers(cfg)

    def pipeline_factory(on_reject):
        return build_pipeline(cfg, on_reject, normalize=normalize, role="serve", stages=stages)

    return lambda outputs: Receiver(rcfg, pipeline_factory, outputs, normalizer_for_host=for_host)


def _worker_count(cfg: Any) -> int:
    import os

    return cfg.serve.workers or len(os.sched_getaffinity(0))


def workers_can_own(cfg: Any) -> bool:
    """Whether each worker may open the outputs and write its own documents: files only (N
    processes append whole buffers under a lock). A network output's durable queue, the lake's
    files and stdout have one owner: the front writes what the workers send back."""
    from auditpipe.config import FileOutput

    return bool(cfg.outputs) and all(isinstance(o, FileOutput) and o.path != "-" for o in cfg.outputs)


def _run(cfg: Any, rcfg: Any) -> int:
    from auditpipe.pipeline.outputs import open_outputs
    from auditpipe.sources.http_receiver import Receiver, make_ssl_context
    from auditpipe.sources.http_receiver import serve as run
    from auditpipe.sources.receiver.workers import WorkerOutputs, WorkerPool

    s = cfg.serve
    host, port = split_listen(s.listen)
    if not s.tls_cert and not _is_loopback(host):
        click.echo(f"auditpipe serve: warning: plain HTTP on {host}; use --tls-cert/--tls-key", err=True)
    if s.auth == "none" and not _is_loopback(host):
        click.echo("auditpipe serve: warning: --auth none on a non-loopback address", err=True)
    ssl_context = make_ssl_context(s.tls_cert, s.tls_key, s.tls_client_ca) if s.tls_cert else None
    make_receiver = _parsing_receiver(cfg, rcfg)
    pool = None
    own = False
    if _worker_count(cfg) > 1:
        # forked before the outputs (and their threads) exist; each worker writes its documents
        # to files it opens itself, or (other outputs) hands them back to this process
        own = workers_can_own(cfg)
        if own:
            open_outputs(cfg, shared=True).close()  # a bad path fails here, once, before the fork
        pool = WorkerPool(_worker_count(cfg), make_receiver,
                          (lambda: open_outputs(cfg, shared=True)) if own else None)
        pool.start()
        click.echo(f"auditpipe serve: {pool.n} worker processes (pids {', '.join(map(str, pool.pids))}), "
                   f"{'each writing its own documents' if own else 'documents written here'}", err=True)
    outputs: Any = WorkerOutputs(pool) if pool is not None and own else open_outputs(cfg)
    receiver = make_receiver(outputs) if pool is None else Receiver(rcfg, None, outputs, pool=pool)
    metrics = None
    try:
        metrics = _start_metrics(cfg, receiver)

        def ready(bound: int) -> None:
            scheme = "https" if ssl_context else "http"
            click.echo(f"auditpipe serve: listening on {scheme}://{s.listen.rpartition(':')[0]}:{bound}", err=True)
            sys.stderr.flush()

        run(receiver, host, port, ssl_context, ready=ready)
    finally:
        if metrics is not None:
            metrics.close()
        outputs.close()
    if receiver.fatal:
        click.echo(f"auditpipe serve: error: {receiver.fatal}", err=True)
        return 1
    return 0


def _host_normalizers(cfg: Any) -> Any:
    """With host metadata (an Elasticsearch output, ``host_metadata``): a normalizer per sender
    host, so the events of a named sender that carry no ``node=`` get its host in ``host.name``
    and in their document ids (two hosts' events with the same id must not collide), not the
    receiver's. None otherwise (the shared normalizer serves every sender)."""
    import dataclasses

    from auditpipe.pipeline.assembly import build_normalizer
    from auditpipe.pipeline.hostinfo import ecs_agent_options

    options = ecs_agent_options(cfg)
    meta = options.get("host_metadata")
    if meta is None:
        return None
    made: dict[str, Any] = {}

    def for_host(host: str) -> Any:
        if host not in made:
            sender_meta = dataclasses.replace(meta, host={"name": host, "hostname": host})
            made[host] = build_normalizer(cfg.normalize, cfg.path,
                                          ecs_options={**options, "host_metadata": sender_meta})
        return made[host]

    return for_host


def _start_metrics(cfg: Any, receiver: Any) -> Any:
    if not cfg.metrics.listen:
        return None
    from auditpipe.metrics.prom import MetricsServer

    server = MetricsServer(cfg.metrics.listen, receiver.counters, collectors=[receiver.registry])
    host, port = server.start()
    click.echo(f"auditpipe serve: metrics on http://{host}:{port}/metrics", err=True)
    return server
