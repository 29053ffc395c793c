"""`auditpipe es setup` (also `auditpipe elasticsearch setup`): install the ILM policy and the
index template a cluster without Fleet needs for the Elasticsearch output (sinks/es_setup.py)."""

from __future__ import annotations

import json

import click

__all__ = ["es"]


@click.group()
def es() -> None:
    """Elasticsearch: prepare a cluster for the elasticsearch output."""


@es.command()
@click.option("-c", "--config", "config_path", type=click.Path(dir_okay=False),
              help="auditpipe.toml whose elasticsearch output (hosts, credentials, TLS, dataset) to use.")
@click.option("--output", "output_no", type=int, default=1, show_default=True,
              help="Which elasticsearch output of the configuration, counting from 1.")
@click.option("--hosts", multiple=True, help="Cluster URL (repeatable); overrides the configuration's.")
@click.option("--ilm-policy", default="auditpipe-auditd", show_default=True, help="ILM policy name.")
@click.option("--rollover-size", default="50gb", show_default=True, help="Roll over at this primary shard size.")
@click.option("--rollover-age", default="30d", show_default=True, help="Roll over at this age.")
@click.option("--delete-after", "delete_after", type=int, default=90, show_default=True,
              help="Delete backing indices this many days after rollover.")
@click.option("--dry-run", is_flag=True, help="Print the requests (Kibana Dev Tools form) instead of sending them.")
def setup(config_path, output_no, hosts, ilm_policy, rollover_size, rollover_age, delete_after, dry_run) -> None:
    """Install the ILM policy and the index template for logs-<dataset>-* data streams."""
    import msgspec

    from auditpipe.sinks.es_setup import (
        IlmSettings,
        build_ilm_policy,
        build_template,
        template_name,
    )

    cfg = _output_config(config_path, output_no)
    if hosts:
        cfg = msgspec.structs.replace(cfg, hosts=list(hosts))
    try:
        ilm = IlmSettings(ilm_policy, rollover_size, rollover_age, delete_after)
    except ValueError as e:
        raise click.BadParameter(str(e)) from None
    if dry_run:
        click.echo(f"PUT _ilm/policy/{ilm.name}\n{json.dumps(build_ilm_policy(ilm), indent=2)}\n")
        click.echo(f"PUT _index_template/{template_name(cfg)}\n{json.dumps(build_template(cfg, ilm), indent=2)}")
        return
    _apply(cfg, ilm)


def _output_config(config_path, output_no):
    from auditpipe.config import ConfigError, load_config
    from auditpipe.sinks.elasticsearch import ElasticsearchOutput

    if config_path is None:
        return ElasticsearchOutput()
    try:
        cfg = load_config(config_path)
    except ConfigError as e:
        raise click.ClickException(str(e)) from None
    outs = [o for o in cfg.outputs if isinstance(o, ElasticsearchOutput)]
    if not 1 <= output_no <= len(outs):
        raise click.ClickException(f"{config_path}: has {len(outs)} elasticsearch output(s), no #{output_no}")
    return outs[output_no - 1]


def _apply(cfg, ilm) -> None:
    from elastic_transport import TransportError
    from elasticsearch import ApiError

    from auditpipe.sinks.elasticsearch import build_client
    from auditpipe.sinks.es_setup import apply_setup

    client = build_client(cfg)
    try:
        for what in apply_setup(client, cfg, ilm):
            click.echo(f"installed {what} on {cfg.hosts[0]}")
    except ApiError as e:
        raise click.ClickException(f"{cfg.hosts[0]} refused: {e}") from None
    except TransportError as e:
        raise click.ClickException(f"cannot reach {cfg.hosts[0]}: {e}") from None
    finally:
        client.close()
