"""`auditpipe es setup`: what a cluster without Fleet needs before the Elasticsearch output
writes: an ILM policy (rollover by size and age, delete after N days) and an index template
that makes ``logs-<dataset>-*`` a data stream with the Auditd Manager package's mappings.

The field mappings are the generated ``es_mappings.json`` (scripts/gen_es_mappings.py, from the
package's field definitions and ECS); strings that neither defines are mapped as keywords, as
Fleet's logs templates do. Requests go through the official client with the same
``compatible-with=8`` media types as the bulk requests, so 8.x and 9.x clusters both take them.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from importlib import resources
from typing import TYPE_CHECKING, Any

from auditpipe.sinks.elasticsearch import ElasticsearchOutput

if TYPE_CHECKING:
    from elasticsearch import Elasticsearch

__all__ = ["IlmSettings", "apply_setup", "build_ilm_policy", "build_template", "field_mappings"]

_JSON_HEADERS = {
    "accept": "application/vnd.elasticsearch+json; compatible-with=8",
    "content-type": "application/vnd.elasticsearch+json; compatible-with=8",
}


@dataclass(frozen=True, slots=True)
class IlmSettings:
    name: str = "auditpipe-auditd"
    rollover_size: str = "50gb"  # per primary shard
    rollover_age: str = "30d"
    delete_after_days: int = 90

    def __post_init__(self) -> None:
        if self.delete_after_days < 1:
            raise ValueError("delete_after_days must be at least 1")
        for what, v, units in (("rollover_size", self.rollover_size, ("b", "kb", "mb", "gb", "tb", "pb")),
                               ("rollover_age", self.rollover_age, ("d", "h", "m", "s"))):
            num = v.rstrip("abcdefghijklmnopqrstuvwxyz")
            if not num.isdecimal() or v[len(num):] not in units:
                raise ValueError(f"{what}: {v!r} is not like 50gb / 30d ({', '.join(units)})")


def field_mappings() -> dict[str, Any]:
    """The generated ``properties`` tree."""
    text = resources.files("auditpipe.sinks").joinpath("es_mappings.json").read_text()
    return json.loads(text)["properties"]


def build_ilm_policy(ilm: IlmSettings) -> dict[str, Any]:
    return {"policy": {
        "phases": {
            "hot": {"min_age": "0ms", "actions": {"rollover": {
                "max_primary_shard_size": ilm.rollover_size, "max_age": ilm.rollover_age}}},
            "delete": {"min_age": f"{ilm.delete_after_days}d", "actions": {"delete": {}}},
        },
        "_meta": {"managed_by": "auditpipe"},
    }}


def build_template(cfg: ElasticsearchOutput, ilm: IlmSettings) -> dict[str, Any]:
    """The composable index template for ``logs-<dataset>-*``."""
    settings: dict[str, Any] = {"index.lifecycle.name": ilm.name, "index.mapping.total_fields.limit": 2000}
    if cfg.pipeline:
        settings["index.default_pipeline"] = cfg.pipeline
    return {
        "index_patterns": [f"logs-{cfg.dataset}-*"],
        "data_stream": {},
        "priority": 200,
        "template": {
            "settings": settings,
            "mappings": {
                "dynamic_templates": [{"strings_as_keyword": {
                    "match_mapping_type": "string", "mapping": {"type": "keyword", "ignore_above": 1024}}}],
                "date_detection": False,
                "properties": field_mappings(),
            },
        },
        "_meta": {"managed_by": "auditpipe", "description": "Auditd Manager's data stream, written by auditpipe"},
    }


def template_name(cfg: ElasticsearchOutput) -> str:
    return f"logs-{cfg.dataset}"


def apply_setup(client: Elasticsearch, cfg: ElasticsearchOutput, ilm: IlmSettings) -> list[str]:
    """Install (or update) the ILM policy, then the template; → what was done, for the user."""
    done = []
    client.perform_request("PUT", f"/_ilm/policy/{ilm.name}", headers=_JSON_HEADERS,
                           body=build_ilm_policy(ilm))
    done.append(f"ILM policy {ilm.name}")
    client.perform_request("PUT", f"/_index_template/{template_name(cfg)}", headers=_JSON_HEADERS,
                           body=build_template(cfg, ilm))
    done.append(f"index template {template_name(cfg)} (data streams logs-{cfg.dataset}-*)")
    return done
