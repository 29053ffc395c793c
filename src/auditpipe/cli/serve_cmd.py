"""`auditpipe serve`: receive audit records over HTTP(S) and write normalized JSON lines."""

from __future__ import annotations

import ipaddress
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
@click.option("--max-body", default="1MB", show_default=True,
              help="Largest request body, on the wire and once decompressed.")
@click.option("--rotate-size", default="100MB", show_default=True, help="Rotate the output at this size (0: never).")
@click.option("--generations", type=int, default=5, show_default=True, help="Rotated files to keep.")
@click.option("--fsync", type=click.Choice(["never", "batch", "interval"]), default="interval", show_default=True)
@click.option("--event-wait", type=float, default=2.0, show_default=True,
              help="Seconds an incomplete event waits for its remaining records.")
def serve(listen, tls_cert, tls_key, tls_client_ca, auth, auth_header, auth_secret, output, fmt, max_body,
          rotate_size, generations, fsync, event_wait):
    """Receive audit records over HTTP (Fluent Bit json_lines, raw text, JSON arrays, or events from
    another auditpipe), reassemble them per sender, normalize and write them to a file."""
    from auditpipe.config import Config, NormalizeConfig, ReassemblyConfig
    from auditpipe.pipeline.assembly import build_normalizer, build_pipeline
    from auditpipe.sinks.file import FileSink
    from auditpipe.sinks.stdout import StdoutSink
    from auditpipe.sources.http_receiver import Receiver, ReceiverConfig, make_ssl_context, parse_size
    from auditpipe.sources.http_receiver import serve as run

    host, port = split_listen(listen)
    if auth != "none" and not auth_secret:
        raise click.UsageError(f"--auth {auth} needs --auth-secret (or AUDITPIPE_AUTH_SECRET)")
    if tls_key and not tls_cert:
        raise click.UsageError("--tls-key needs --tls-cert")
    try:
        cfg = ReceiverConfig(auth=auth, secret=auth_secret, auth_header=auth_header,
                             max_body=parse_size(max_body), wall_timeout=event_wait)
        rotate = 0 if str(rotate_size).strip() == "0" else parse_size(rotate_size)
    except ValueError as e:
        raise click.UsageError(str(e)) from None
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
