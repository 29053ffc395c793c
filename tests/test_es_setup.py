"""`auditpipe es setup`: the generated mappings cover everything the `indexed` shape emits on the
shared corpora, the generator's output is current, and the command installs the ILM policy and
template on the loopback server (real process, real client)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from conftest import shared_path
from es_server import ServerThread
from helpers import events_of_file

from auditpipe.normalize.agent import HostMetadata
from auditpipe.normalize.ecs import make_ecs_normalizer
from auditpipe.normalize.es_indexed import to_indexed
from auditpipe.normalize.idresolve import IdResolver
from auditpipe.sinks.elasticsearch import ElasticsearchOutput
from auditpipe.sinks.es_setup import IlmSettings, build_template, field_mappings

ROOT = Path(__file__).resolve().parents[1]
AUDITPIPE = [sys.executable, "-m", "auditpipe"]
META = HostMetadata(host={"name": "h", "hostname": "h", "architecture": "x86_64", "id": "m",
                          "os": {"type": "linux", "kernel": "6.1", "name": "Debian", "platform": "debian",
                                 "family": "debian", "version": "12"},
                          "ip": ["192.0.2.1"], "mac": ["02-00-00-00-00-01"]},
                    agent={"type": "auditpipe", "version": "0.1.0", "id": "a", "ephemeral_id": "e", "name": "h"})


def leaf_paths(doc, prefix=""):
    for k, v in doc.items():
        if isinstance(v, dict):
            yield from leaf_paths(v, f"{prefix}{k}.")
        else:
            yield prefix + k


def defined(props: dict, path: str) -> bool:
    node = props
    parts = path.split(".")
    for i, p in enumerate(parts):
        m = node.get(p)
        if m is None:
            return False
        if m.get("type") == "flattened":
            return True
        if i == len(parts) - 1:
            return "type" in m
        node = m.get("properties", {})
    return False


def test_every_indexed_field_is_in_the_template():
    props = field_mappings()
    resolver = IdResolver(enabled=False)
    seen: dict[str, str] = {}
    for parts in (("corpus", "enriched.log"), ("corpus", "raw-node.log"),
                  ("conformance", "beats-auditbeat", "sudo.log")):
        normalize = make_ecs_normalizer(resolver, include_raw=True, include_warnings=True, host_metadata=META)
        events, _ = events_of_file(shared_path(*parts))
        for e in events:
            for d in normalize(e):
                for p in leaf_paths(to_indexed(d)):
                    seen.setdefault(p, parts[-1])
    missing = {p: f for p, f in seen.items() if not defined(props, p)}
    assert not missing, missing
    assert len(seen) > 60


def test_generated_mappings_are_current():
    r = subprocess.run([sys.executable, str(ROOT / "scripts/gen_es_mappings.py"), "--elastic",
                        str(shared_path("elastic")), "--check"], check=False, capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr


def test_template_shape():
    t = build_template(ElasticsearchOutput(dataset="auditd_manager.auditd", pipeline="p"), IlmSettings(name="x"))
    assert t["index_patterns"] == ["logs-auditd_manager.auditd-*"] and t["data_stream"] == {}
    assert t["template"]["settings"]["index.lifecycle.name"] == "x"
    assert t["template"]["settings"]["index.default_pipeline"] == "p"
    props = t["template"]["mappings"]["properties"]
    assert props["data_stream"]["properties"]["type"]["type"] == "constant_keyword"
    assert props["auditd"]["properties"]["data"]["type"] == "flattened"
    assert props["event"]["properties"]["sequence"]["type"] == "long"
    assert props["user"]["properties"]["name"]["fields"]["text"]["type"] == "match_only_text"
    with pytest.raises(ValueError, match="rollover_size"):
        IlmSettings(rollover_size="big")
    with pytest.raises(ValueError, match="delete_after"):
        IlmSettings(delete_after_days=0)


def test_dry_run_prints_both_requests():
    r = subprocess.run(AUDITPIPE + ["es", "setup", "--dry-run", "--delete-after", "30"],
                       capture_output=True, text=True, check=True)
    assert r.stdout.startswith("PUT _ilm/policy/auditpipe-auditd\n")
    assert "PUT _index_template/logs-auditd_manager.auditd\n" in r.stdout and '"30d"' in r.stdout


def test_setup_installs_policy_and_template(tmp_path):
    server = ServerThread()
    try:
        cfg = tmp_path / "a.toml"
        cfg.write_text(f'[[outputs]]\ntype = "elasticsearch"\nhosts = ["{server.url}"]\nnamespace = "prod"\n'
                       'username = "elastic"\npassword = "pw"\n')
        r = subprocess.run(AUDITPIPE + ["elasticsearch", "setup", "-c", str(cfg), "--ilm-policy", "p1",
                                        "--rollover-size", "10gb"], check=False, capture_output=True, text=True)
        assert r.returncode == 0, r.stderr
        st = server.state
        assert st.violations == []
        assert st.policies["p1"]["policy"]["phases"]["hot"]["actions"]["rollover"]["max_primary_shard_size"] == "10gb"
        assert st.templates["logs-auditd_manager.auditd"]["template"]["settings"]["index.lifecycle.name"] == "p1"
        assert "installed index template" in r.stdout
    finally:
        server.stop()
    r = subprocess.run(AUDITPIPE + ["es", "setup", "--hosts", server.url], check=False, capture_output=True, text=True)
    assert r.returncode == 1 and "cannot reach" in r.stderr
