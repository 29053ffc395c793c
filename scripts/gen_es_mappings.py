#!/usr/bin/env python3
"""Regenerate ``src/auditpipe/sinks/es_mappings.json``: the field mappings of the index template
``auditpipe es setup`` installs for clusters without Fleet.

Nothing in it is typed by hand. It is read from (``--elastic DIR``, default ``../shared/elastic``):

* the Auditd Manager package's field definitions, ``auditd_manager/fields/fields.yml`` (its own
  ``auditd.*`` fields, with their types) and ``fields/ecs.yml`` (the ECS fields it names);
* ECS's ``ecs/ecs_flat.yml`` for the type, ``ignore_above`` and multi-fields of every ECS field:
  those the package names, and the ECS field sets that Elastic Agent and our ECS normalizer fill
  (``FIELD_SETS`` below: agent, host, data_stream, event, ...), without the reused nestings
  (``process.entry_leader.*`` ...) other than the ones named in ``REUSED``.

Rules the generator applies: a field declared ``flattened`` covers everything below it (the
package declares ``auditd.data`` and ``auditd.paths`` flattened after some of their children,
which a flattened field indexes anyway); ECS ``nested`` fields are left out (nothing we send is
nested), as are ``object`` fields that have children of their own.

Usage::

    .venv/bin/python scripts/gen_es_mappings.py            # writes the module's JSON
    .venv/bin/python scripts/gen_es_mappings.py --check    # exit 1 if the committed one differs
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "src" / "auditpipe" / "sinks" / "es_mappings.json"
DEFAULT_ELASTIC = ROOT.parent / "shared" / "elastic"

#: ECS field sets whose (non-reused) fields are mapped: what Elastic Agent adds and what the
#: ECS normalizer writes
FIELD_SETS = ("agent", "data_stream", "destination", "ecs", "error", "event", "file", "group", "host",
              "network", "process", "related", "service", "source", "user")
#: base fields (no field set prefix)
BASE = ("@timestamp", "labels", "message", "tags")
#: reused ECS nestings that are mapped too (the rest: process.entry_leader.* ... are left out)
REUSED = ("host.os.", "user.effective.", "user.target.", "user.changes.", "user.group.",
          "process.parent.pid", "process.parent.name", "process.parent.executable",
          "process.parent.args", "process.parent.command_line", "process.parent.title")


def package_fields(elastic: Path) -> tuple[dict[str, dict], list[str]]:
    """(name → mapping) of the package's own fields, and the ECS names it refers to."""
    own: dict[str, dict] = {}
    for item in _flatten(yaml.safe_load((elastic / "auditd_manager/fields/fields.yml").read_text())):
        own[item["name"]] = {"type": item["type"]}
    ecs_names = [i["name"] for i in yaml.safe_load((elastic / "auditd_manager/fields/ecs.yml").read_text())
                 if i.get("external") == "ecs"]
    return own, ecs_names


def _flatten(items: list, prefix: str = "") -> list[dict]:
    out = []
    for it in items:
        name = prefix + it["name"]
        if "fields" in it:
            out.extend(_flatten(it["fields"], name + "."))
        else:
            out.append({**it, "name": name})
    return out


def ecs_mapping(field: dict) -> dict:
    m: dict = {"type": field["type"]}
    if field["type"] == "keyword" and "ignore_above" in field:
        m["ignore_above"] = field["ignore_above"]
    if field.get("scaling_factor"):
        m["scaling_factor"] = field["scaling_factor"]
    multi = field.get("multi_fields") or []
    if multi:
        m["fields"] = {f["name"]: {"type": f["type"]} for f in multi}
    return m


def wanted_ecs(flat: dict, named: list[str]) -> dict[str, dict]:
    out = {}
    for name, f in flat.items():
        top = name.split(".", 1)[0]
        chosen = name in named or name in BASE
        if not chosen and top in FIELD_SETS:
            chosen = "original_fieldset" not in f or any(
                name.startswith(r) if r.endswith(".") else name == r for r in REUSED)
        if chosen and f["type"] != "nested":
            out[name] = ecs_mapping(f)
    return out


def build(elastic: Path) -> dict:
    flat = yaml.safe_load((elastic / "ecs/ecs_flat.yml").read_text())
    own, named = package_fields(elastic)
    missing = [n for n in named if n not in flat]
    if missing:
        raise SystemExit(f"ecs.yml names fields ECS does not have: {missing}")
    fields = wanted_ecs(flat, named)
    fields.update(own)  # the package's own definition wins
    return {"_meta": {"generated_by": "scripts/gen_es_mappings.py",
                      "sources": ["auditd_manager/fields/fields.yml", "auditd_manager/fields/ecs.yml",
                                  "ecs/ecs_flat.yml"]},
            "properties": to_properties(fields)}


def to_properties(fields: dict[str, dict]) -> dict:
    """Flat names → the nested ``properties`` tree of an Elasticsearch mapping."""
    flattened = {n for n, m in fields.items() if m["type"] == "flattened"}
    parents = {n.rsplit(".", i)[0] for n in fields for i in range(1, n.count(".") + 1)}
    root: dict = {}
    for name in sorted(fields):
        if any(name.startswith(f + ".") for f in flattened):
            continue  # indexed by the flattened field above it
        m = fields[name]
        if m["type"] == "object" and name in parents:
            continue  # an object with mapped children is implied by them
        node = root
        parts = name.split(".")
        for p in parts[:-1]:
            node = node.setdefault(p, {}).setdefault("properties", {})
        node[parts[-1]] = dict(m)
    return root


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--elastic", type=Path, default=DEFAULT_ELASTIC)
    ap.add_argument("--check", action="store_true")
    ap.add_argument("-o", "--output", type=Path, default=OUT)
    a = ap.parse_args(argv)
    text = json.dumps(build(a.elastic), indent=1, sort_keys=True) + "\n"
    if a.check:
        same = a.output.exists() and a.output.read_text() == text
        print("up to date" if same else f"{a.output} differs: rerun {Path(__file__).name}")
        return 0 if same else 1
    a.output.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
