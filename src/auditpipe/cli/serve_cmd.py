"""`auditpipe serve`: receive audit records over HTTP(S) and write normalized JSON lines."""

from __future__ import annotations

import ipaddress
import logging
import sys

import click

from auditpipe.normalize import FORMATS
from auditpipe.sinks.auth import AUTH_SCHEMES

__all__ = ["serve", "split_listen"]


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


@click.command()
@click.option("--listen", required=True, help="HOST:PORT to listen on (e.g. 127.0.0.1:8088, [::1]:8088).")
@click.option("--tls-cert", type=click.Path(exists=True, dir_okay=False), help="Server certificate (PEM).")
@click.option("--tls-key", type=click.Path(exists=True, dir_okay=False), help="Server key (PEM).")
@click.option("--tls-client-ca", type=click.Path(exists=True, dir_okay=False),
              help="Require client certificates signed by this CA (mutual TLS).")
@click.option("--auth", type=click.Choice(AUTH_SCHEMES), required=True,
              help="Authentication; 'none' must be given explicitly.")
@click.option("--auth-header", help="Header carrying the secret or HMAC (default X-Auditpipe-Secret / "
                                    "X-Auditpipe-Signature; Authorization for bearer and basic).")
@click.option("--auth-secret", envvar="AUDITPIPE_AUTH_SECRET", show_envvar=True,
              help="Shared secret, HMAC key, bearer token, or user:password for basic.")
@click.option("--output", required=True, type=click.Path(dir_okay=False, allow_dash=True),
              help="JSON-lines output file ('-' for stdout).")
@click.option("--format", "fmt", type=click.Choice(FORMATS), default="coalesced", show_default=True)
@click.option("--max-body", default="8MB", show_default=True,
              help="Largest request body, on the wire and once decompressed (Fluent Bit posts chunks of "
                   "up to ~2.2 MB and drops a chunk refused with 413).")
@click.option("--rotate-size", default="100MB", show_default=True, help="Rotate the output at this size (0: never).")
@click.option("--generations", type=int, default=5, show_default=True, help="Rotated files to keep.")
@click.option("--fsync", type=click.Choice(["never", "batch", "interval"]), default="interval", show_default=True)
@click.option("--reorder-window", type=click.FloatRange(min=0), default=30.0, show_default=True,
              help="Seconds (wall clock) an incomplete event waits for records of the same sender that "
                   "arrive late or out of order (a shipper's retries).")
@click.option("--event-wait", type=click.FloatRange(min=0), default=2.0, show_default=True,
              help="Seconds an incomplete event of an in-order sender (one keep-alive connection, or "
                   "consecutive X-Auditpipe-Range) waits for its remaining records.")
@click.option("--state", type=click.Path(dir_okay=False),
              help="File where, at shutdown, the held records of senders that name themselves "
                   "(X-Auditpipe-Sender) are kept for the next start, so a restart splits no event.")
@click.option("--header-timeout", type=click.FloatRange(min=0.1), default=10.0, show_default=True,
              help="Seconds a connection has to send complete request headers.")
@click.option("--body-timeout", type=click.FloatRange(min=0.1), default=60.0, show_default=True,
              help="Seconds a request has to send its whole body.")
@click.option("--max-connections", type=click.IntRange(min=1), default=1024, show_default=True,
              help="Open connections at most (the oldest idle ones give way to new ones).")
@click.option("--max-connections-per-address", type=click.IntRange(min=1), default=256, show_default=True,
              help="Open connections from one address at most.")
def serve(listen, tls_cert, tls_key, tls_client_ca, auth, auth_header, auth_secret, output, fmt, max_body,
          rotate_size, generations, fsync, reorder_window, event_wait, state, header_timeout, body_timeout,
          max_connections, max_connections_per_address):
    """Receive audit records over HTTP (Fluent Bit json_lines, raw text, JSON arrays, or events from
    another auditpipe), reassemble them per sender, normalize and write them to a file."""
    from auditpipe.config import Config, NormalizeConfig, ReassemblyConfig
    from auditpipe.pipeline.assembly import build_normalizer, build_pipeline
    from auditpipe.sinks.file import FileSink
    from auditpipe.sinks.stdout import StdoutSink
    from auditpipe.sources.http_receiver import Receiver, ReceiverConfig, make_ssl_context, parse_size, raise_fd_limit
    from auditpipe.sources.http_receiver import serve as run
    from auditpipe.sources.receiver.limits import LimitsConfig

    host, port = split_listen(listen)
    if auth != "none" and not auth_secret:
        raise click.UsageError(f"--auth {auth} needs --auth-secret (or AUDITPIPE_AUTH_SECRET)")
    if tls_key and not tls_cert:
        raise click.UsageError("--tls-key needs --tls-cert")
    fd_limit = raise_fd_limit()
    if max_connections > fd_limit - 64:
        raise click.UsageError(f"--max-connections {max_connections} does not fit the open-file limit "
                               f"({fd_limit}); raise it (ulimit -n) or lower --max-connections")
    limits = LimitsConfig(header_timeout=header_timeout, body_timeout=body_timeout,
                          max_connections=max_connections, max_per_address=max_connections_per_address)
    try:
        cfg = ReceiverConfig(auth=auth, secret=auth_secret, auth_header=auth_header, max_body=parse_size(max_body),
                             reorder_window=reorder_window, event_wait=event_wait, limits=limits, state=state)
        rotate = 0 if str(rotate_size).strip() == "0" else parse_size(rotate_size)
    except ValueError as e:
        raise click.UsageError(str(e)) from None
    logging.basicConfig(stream=sys.stderr, format="auditpipe serve: %(levelname)s: %(message)s", level=logging.INFO)
    if not tls_cert and not _is_loopback(host):
        click.echo(f"auditpipe serve: warning: plain HTTP on {host}; use --tls-cert/--tls-key", err=True)
    if auth == "none" and not _is_loopback(host):
        click.echo("auditpipe serve: warning: --auth none on a non-loopback address", err=True)

    # one pipeline per sender, built as `run` and `parse` build theirs, from typed settings
    pipe_cfg = Config(normalize=NormalizeConfig(format=fmt),
                      reassembly=ReassemblyConfig(timeout=cfg.event_timeout, wall_timeout=cfg.wall_timeout))
    normalize = build_normalizer(pipe_cfg.normalize)

    def pipeline_factory(on_reject):
        return build_pipeline(pipe_cfg, on_reject, normalize=normalize, role="serve")

    sink = StdoutSink() if output == "-" else FileSink(output, max_bytes=rotate, generations=generations, fsync=fsync)
    ssl_context = make_ssl_context(tls_cert, tls_key, tls_client_ca) if tls_cert else None
    receiver = Receiver(cfg, pipeline_factory, sink)

    def ready(bound: int) -> None:
        scheme = "https" if ssl_context else "http"
        click.echo(f"auditpipe serve: listening on {scheme}://{listen.rpartition(':')[0]}:{bound}", err=True)
        sys.stderr.flush()

    try:
        run(receiver, host, port, ssl_context, ready=ready)
    finally:
        sink.close()
