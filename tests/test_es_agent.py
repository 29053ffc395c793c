"""What Elastic Agent adds (host/agent metadata as an ECS normalizer option) and the stable
document ids the Elasticsearch output deduplicates by."""

from __future__ import annotations

import orjson
from helpers import events_of_lines

from auditpipe.config import load_config
from auditpipe.normalize.agent import HostMetadata, document_id
from auditpipe.normalize.ecs import make_ecs_normalizer
from auditpipe.pipeline.hostinfo import ecs_agent_options, read_host_metadata

LINES = [
    ('type=SYSCALL msg=audit(1700000000.123:77): arch=c000003e syscall=59 success=yes exit=0 a0=0 a1=0 '
    'a2=0 a3=0 items=1 ppid=1 pid=42 auid=1000 uid=0 gid=0 euid=0 suid=0 fsuid=0 egid=0 sgid=0 fsgid=0 '
    'tty=pts0 ses=3 comm="x" exe="/usr/bin/x" key="k"'),
    ('type=PATH msg=audit(1700000000.123:77): item=0 name="/usr/bin/x" inode=1 dev=fd:00 mode=0100755 '
    'ouid=0 ogid=0 rdev=00:00 nametype=NORMAL cap_fp=0 cap_fi=0 cap_fe=0 cap_fver=0'),
    "type=EOE msg=audit(1700000000.123:77): ",
]

META = HostMetadata(
    host={"name": "web-01", "hostname": "web-01", "architecture": "x86_64", "id": "abc",
          "os": {"type": "linux", "platform": "debian"}, "ip": ["192.0.2.1"], "mac": ["02-00-00-00-00-01"]},
    agent={"type": "auditpipe", "version": "0.1.0", "id": "a-1", "ephemeral_id": "e-1", "name": "web-01"},
    namespace="prod")


def docs_of(lines, **kw):
    events, _ = events_of_lines(lines)
    normalize = make_ecs_normalizer(None, **kw)
    return [d for e in events for d in normalize(e)]


def test_agent_fields_added():
    (d,) = docs_of(LINES, host_metadata=META)
    assert d["data_stream"] == {"type": "logs", "dataset": "auditd_manager.auditd", "namespace": "prod"}
    assert d["event"]["dataset"] == "auditd_manager.auditd" and d["event"]["module"] == "auditd"
    assert d["host"] == META.host and d["host"] is not META.host and d["host"]["os"] is not META.host["os"]
    assert d["agent"]["type"] == "auditpipe" and d["agent"]["ephemeral_id"] == "e-1"
    assert d["tags"] == ["k", "auditd_manager-auditd"]  # the rule key, then the integration's tag
    assert "_id" not in d
    (d,) = docs_of(LINES, host_metadata=META, extra_tags=["mine"])
    assert d["tags"] == ["k", "mine"]
    (d,) = docs_of(LINES)
    assert "agent" not in d and "data_stream" not in d and d["tags"] == ["k"]


def test_events_from_another_node_keep_their_own_host_name():
    lines = ["node=db-02 " + line for line in LINES]
    (d,) = docs_of(lines, host_metadata=META)
    assert d["host"] == {"name": "db-02"}
    (d,) = docs_of(["node=web-01 " + line for line in LINES], host_metadata=META)
    assert d["host"]["id"] == "abc"


def test_document_ids_are_stable_and_tell_events_apart():
    (a,) = docs_of(LINES, host_metadata=META, document_ids=True)
    (b,) = docs_of(LINES, host_metadata=META, document_ids=True)
    assert next(iter(a)) == "_id" and len(a["_id"]) == 20 and a["_id"] == b["_id"]
    assert orjson.dumps(a).startswith(b'{"_id":"')
    # the same serial with other records (a late part of the event, written on its own)
    (c,) = docs_of(LINES[1:], host_metadata=META, document_ids=True)
    assert c["_id"] != a["_id"]
    # another host, another id
    (d,) = docs_of(["node=db-02 " + line for line in LINES], host_metadata=META, document_ids=True)
    assert d["_id"] != a["_id"]
    assert a["_id"] == document_id("abc", 1700000000, 123, 77, ["SYSCALL", "PATH", "EOE"])


def test_read_host_metadata_from_the_host(tmp_path):
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc/machine-id").write_text("0123456789abcdef0123456789abcdef\n")
    (tmp_path / "etc/os-release").write_text('NAME="Debian GNU/Linux"\nID=debian\nVERSION="12 (bookworm)"\n'
                                             "VERSION_CODENAME=bookworm\n")
    m = read_host_metadata(namespace="x", root=str(tmp_path))
    assert m.host["id"] == "0123456789abcdef0123456789abcdef"
    assert m.host["os"]["name"] == "Debian GNU/Linux" and m.host["os"]["family"] == "debian"
    assert m.host["os"]["version"] == "12 (bookworm)" and m.host["os"]["kernel"]
    assert m.agent["id"] == read_host_metadata(root=str(tmp_path)).agent["id"]  # stable
    assert m.agent["ephemeral_id"] != read_host_metadata(root=str(tmp_path)).agent["ephemeral_id"]
    real = read_host_metadata()
    assert real.host["architecture"] and all("127.0.0.1" != ip and "::1" != ip for ip in real.host.get("ip", []))
    assert all(len(m) == 17 and m == m.upper() for m in real.host.get("mac", []))


def test_config_turns_it_on():
    assert ecs_agent_options(load_config(text="")) == {}
    opts = ecs_agent_options(load_config(text="[normalize]\nhost_metadata = true\n"))
    assert opts["host_metadata"].dataset == "auditd_manager.auditd" and opts["document_ids"] is False
    opts = ecs_agent_options(load_config(text='[[outputs]]\ntype = "elasticsearch"\nnamespace = "prod"\n'))
    assert opts["host_metadata"].namespace == "prod" and opts["document_ids"] is True
    assert ecs_agent_options(load_config(text='[normalize]\nformat = "panther"\nhost_metadata = true\n')) == {}


def test_elasticsearch_output_needs_ecs():
    import pytest

    from auditpipe.config import ConfigError

    with pytest.raises(ConfigError, match=r':4: \[\[outputs\]\] #1 type: the elasticsearch output takes ECS'):
        load_config(text='[normalize]\nformat = "panther"\n[[outputs]]\ntype = "elasticsearch"\n')
