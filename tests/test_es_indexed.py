"""The `indexed` shape equals what the Auditd Manager integration's ingest pipeline makes of our
`pipeline`-shaped documents: the package's own pipeline definition, run by a small evaluator
(tests/ingest_eval.py), over every document of the shared corpora."""

from __future__ import annotations

import pytest
import yaml
from conftest import shared_path
from helpers import events_of_file
from ingest_eval import condition, run_pipeline

from auditpipe.normalize.agent import HostMetadata
from auditpipe.normalize.ecs import make_ecs_normalizer
from auditpipe.normalize.es_indexed import to_indexed
from auditpipe.normalize.idresolve import IdResolver
from auditpipe.normalize.jsonl import dumps_line, loads

META = HostMetadata(host={"name": "web-01", "hostname": "web-01", "architecture": "x86_64",
                          "os": {"type": "linux", "kernel": "6.1.0"}, "ip": ["192.0.2.1"], "id": "m1"},
                    agent={"type": "auditpipe", "version": "0.1.0", "id": "a", "ephemeral_id": "e", "name": "web-01"})

CORPORA = [("corpus", "enriched.log"), ("corpus", "raw-node.log")] + [
    ("conformance", "beats-auditbeat", n) for n in ("auditlogin.log", "chown.log", "passwd.log", "setuid.log", "sudo.log")]


@pytest.fixture(scope="module")
def pipeline():
    return yaml.safe_load(shared_path("elastic", "auditd_manager", "ingest_pipeline", "default.yml").read_text())


def corpus_docs(parts, **kw):
    resolver = IdResolver(passwd_file=None, group_file=None, enabled=False)
    normalize = make_ecs_normalizer(resolver, host_metadata=META, **kw)
    events, _ = events_of_file(shared_path(*parts))
    return [dumps_line(d) for e in events for d in normalize(e)]


@pytest.mark.parametrize("parts", CORPORA, ids=lambda p: p[-1])
@pytest.mark.parametrize("options", [{}, {"include_raw": True, "include_warnings": True},
                                     {"include_raw": True, "extra_tags": ["preserve_original_event"]}],
                         ids=["plain", "raw+warnings", "preserve_original"])
def test_indexed_equals_the_integration_pipeline(pipeline, parts, options):
    lines = corpus_docs(parts, **options)
    assert lines
    for line in lines:
        want = run_pipeline(pipeline, loads(line))
        assert want["event"].get("kind") != "pipeline_error", want.get("error")
        got = to_indexed(loads(line))
        assert got == want, line[:300]


def test_the_pipeline_does_what_the_shape_claims(pipeline):
    """The evaluator is exercised on what matters: a doc where every step has work to do."""
    doc = {"@timestamp": "t", "event": {"original": ["a", "b"], "outcome": "fail"}, "error": {"message": ["w1"]},
           "auditd": {"sequence": 5, "data": {"id": "9", "a-b": {"c-d": "1"}, "argc": "3", "items": "0x10",
                                              "empty": "", "socket": {"port": "80"}},
                      "paths": [{"x-y": "1", "e": ""}]},
           "user": {"audit": {"id": "1"}, "saved": {"id": "2"}}, "destination": {"path": "/run/x"},
           "process": {"pid": "12"}, "tags": []}
    for out in (run_pipeline(pipeline, loads(dumps_line(doc))), to_indexed(loads(dumps_line(doc)))):
        assert out == {
            "@timestamp": "t", "ecs": {"version": "8.11.0"},
            "event": {"original": "a\nb", "outcome": "failure", "sequence": 5, "id": "9"},
            "error": {"message": "w1"},
            "auditd": {"warnings": ["w1"], "data": {"a_b": {"c_d": "1"}, "argc": 3, "items": 16,
                                                    "socket": {"port": 80}},
                       "paths": [{"x-y": "1"}], "user": {"audit": {"id": "1"}, "saved": {"id": "2"}}},
            "destination": {"address": "/run/x"}, "process": {"pid": 12}}


def test_unconvertible_value_is_a_documented_difference(pipeline):
    doc = {"@timestamp": "t", "event": {"outcome": "success"}, "auditd": {"data": {"argc": "x", "a-b": "1"}}}
    es = run_pipeline(pipeline, loads(dumps_line(doc)))
    assert es["event"]["kind"] == "pipeline_error" and es["auditd"]["data"]["argc"] == "x"
    ours = to_indexed(loads(dumps_line(doc)))
    assert ours["event"]["kind"] == "pipeline_error" and ours["auditd"]["data"] == {"argc": "x", "a_b": "1"}
    assert ours["error"]["message"] == ["field [auditd.data.argc] cannot be converted to a long"]


def test_condition_translator():
    d = {"tags": ["preserve_original_event"], "auditd": {"warnings": ["x"]}}
    assert not condition("ctx?.tags == null || !(ctx.tags.contains('preserve_original_event'))", d)
    assert condition("ctx?.tags == null || !(ctx.tags.contains('preserve_original_event'))", {})
    assert condition("ctx?.auditd?.warnings != null &&\n ctx.auditd.warnings instanceof List &&\n"
                     " ctx.auditd.warnings.size() > 0", d)
    with pytest.raises(NotImplementedError):
        condition("ctx.x.foo(1)", d)
