"""Detections: Sigma and Python rules on events, alerts, dedup, the stage and the CLI."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import yaml
from conftest import SHARED

from auditpipe.detect.alerts import Deduper, threat_of, webhook_payload
from auditpipe.detect.config import DetectConfig
from auditpipe.detect.engine import DetectStage, load_rules
from auditpipe.detect.sigma_rules import load_sigma
from auditpipe.normalize.coalesced import make_coalesced_normalizer
from auditpipe.normalize.ecs import make_ecs_normalizer
from auditpipe.parsing import parse_line
from auditpipe.reassembly import Reassembler

SIGMA_LINUX = SHARED / "sigma" / "rules" / "linux"
AUDITD = SIGMA_LINUX / "auditd"


def _require_shared() -> None:
    assert SIGMA_LINUX.is_dir(), f"shared Sigma rules missing at {SIGMA_LINUX} (../shared is required)"


def events(lines: list[str]):
    r = Reassembler()
    out = []
    for line in lines:
        out.extend(r.feed(parse_line(line)))
    out.extend(r.flush())
    return out


def run_stage(stage: DetectStage, lines: list[str], fmt: str = "ecs") -> list[dict]:
    norm = make_ecs_normalizer() if fmt == "ecs" else make_coalesced_normalizer()
    alerts = []
    for ev in events(lines):
        docs = norm(ev)
        out = stage.process(ev, docs, 1000.0)
        assert out[:len(docs)] == docs  # the events pass on untouched
        alerts.extend(out[len(docs):])
    return alerts


def _rule_ids(path: Path) -> int:
    return sum(1 for f in path.rglob("*.yml") for d in yaml.safe_load_all(f.read_text()) if d)


def test_every_linux_rule_runs_or_is_reported_with_a_reason():
    _require_shared()
    s = load_sigma([SIGMA_LINUX])
    assert len(s.rules) + len(s.problems) == _rule_ids(SIGMA_LINUX)  # no silent skips
    assert all(p.reason for p in s.problems)
    auditd = [r for r in s.rules if r.category == "auditd"]
    assert len(auditd) == _rule_ids(AUDITD) == 53
    parent = [p for p in s.problems if "parent process context" in p.reason]
    assert parent and all("ParentImage" in p.reason or "ParentCommandLine" in p.reason for p in parent)
    # with the parent context provided (process table), those rules load
    with_ctx = load_sigma([SIGMA_LINUX / "process_creation"],
                          context=frozenset({"process.parent.executable", "process.parent.command_line"}))
    assert not [p for p in with_ctx.problems if "parent process" in p.reason]


SYSCALL_MKNOD_RAW = ('type=SYSCALL msg=audit(1700000000.100:10): arch=c000003e syscall=133 success=yes exit=0 '
                     'a0=7ffd a1=1180 a2=0 a3=0 items=2 ppid=1 pid=77 auid=1000 uid=0 gid=0 euid=0 suid=0 '
                     'fsuid=0 egid=0 sgid=0 fsgid=0 tty=pts0 ses=3 comm="mknod" exe="/usr/bin/mknod" key=(null)')


def test_enriched_field_matches_raw_kernel_record(tmp_path):
    """`SYSCALL: mknod` must match a RAW record (syscall=133 on x86_64) as it does an ENRICHED one."""
    _require_shared()
    rule = AUDITD / "syscall" / "lnx_auditd_susp_special_file_creation_via_mknod_syscall.yml"
    stage = DetectStage(DetectConfig(rules=[str(rule)]), "ecs")
    raw = run_stage(stage, [SYSCALL_MKNOD_RAW, 'type=PROCTITLE msg=audit(1700000000.100:10): proctitle=6D6B6E6F64'])
    assert [a["rule"]["name"] for a in raw] == ["Special File Creation via Mknod Syscall"]
    enriched = SYSCALL_MKNOD_RAW.replace(" syscall=133", " syscall=133").replace(
        "1700000000.100:10", "1700000000.200:11") + "\x1dARCH=x86_64 SYSCALL=mknod AUID=\"u\" UID=\"root\""
    stage2 = DetectStage(DetectConfig(rules=[str(rule)]), "ecs")
    assert len(run_stage(stage2, [enriched])) == 1
    other = SYSCALL_MKNOD_RAW.replace("syscall=133", "syscall=59").replace(":10)", ":12)")
    assert run_stage(DetectStage(DetectConfig(rules=[str(rule)]), "ecs"), [other]) == []


def test_uid_interpreted_through_the_resolver(tmp_path):
    rule = tmp_path / "uid.yml"
    rule.write_text(textwrap.dedent("""\
        title: Root by name
        id: 11111111-2222-3333-4444-555555555555
        logsource: {product: linux, service: auditd}
        detection:
            sel: {type: SYSCALL, UID: alice}
            condition: sel
        level: low
        """))
    passwd = tmp_path / "passwd"
    passwd.write_text("alice:x:1000:1000::/home/alice:/bin/sh\n")
    from auditpipe.normalize.idresolve import IdResolver

    stage = DetectStage(DetectConfig(rules=[str(rule)]), "coalesced", resolver=IdResolver(passwd_file=str(passwd)))
    line = SYSCALL_MKNOD_RAW.replace(" uid=0", " uid=1000")
    assert len(run_stage(stage, [line], fmt="coalesced")) == 1
    assert run_stage(stage, [SYSCALL_MKNOD_RAW.replace(":10)", ":13)")], fmt="coalesced") == []


def test_corpus_alerts_identical_for_raw_and_enriched_input(tmp_path):
    """The same events with the ENRICHED part cut off (as the kernel sends them) give the same alerts."""
    _require_shared()
    lines = [ln for ln in (SHARED / "corpus" / "enriched.log").read_text(errors="surrogateescape").split("\n") if ln]
    raw = [ln.split("\x1d")[0] for ln in lines]
    got = []
    for variant in (lines, raw):
        stage = DetectStage(DetectConfig(rules=[str(AUDITD)], dedup_minutes=0), "ecs")
        got.append(sorted((a["rule"]["id"], a["signal"]["event_ids"][0]) for a in run_stage(stage, variant)))
    assert got[0] == got[1] and len(got[0]) > 10


EXECVE_EVENT = [
    ('type=SYSCALL msg=audit(1700000100.000:20): arch=c000003e syscall=59 success=yes exit=0 a0=1 a1=2 a2=3 a3=4 '
    'items=2 ppid=1 pid=88 auid=1000 uid=0 gid=0 euid=0 suid=0 fsuid=0 egid=0 sgid=0 fsgid=0 tty=pts0 ses=3 '
    'comm="chattr" exe="/usr/bin/chattr" key=(null)'),
    'type=EXECVE msg=audit(1700000100.000:20): argc=3 a0="chattr" a1="-i" a2="/tmp/f"',
    'type=CWD msg=audit(1700000100.000:20): cwd="/tmp"',
    'type=PROCTITLE msg=audit(1700000100.000:20): proctitle=63686174747200'
]


def test_alert_document_shape_and_one_alert_per_event():
    _require_shared()
    rule = AUDITD / "execve" / "lnx_auditd_chattr_immutable_removal.yml"
    pc = SIGMA_LINUX / "process_creation" / "proc_creation_lnx_chattr_immutable_removal.yml"
    stage = DetectStage(DetectConfig(rules=[str(rule), str(pc)], host="h1"), "ecs")
    alerts = run_stage(stage, EXECVE_EVENT)
    assert sorted(a["rule"]["id"] for a in alerts) == sorted(
        [yaml.safe_load(rule.read_text())["id"], yaml.safe_load(pc.read_text())["id"]])
    a = alerts[0]
    assert a["event"]["kind"] == "signal" and a["host"]["name"] == "h1"
    assert a["signal"]["event_ids"] == ["1700000100.000:20"]
    assert a["signal"]["events"][0]["process"]["executable"] == "/usr/bin/chattr"
    assert a["threat"]["technique"]["id"] == ["T1222"]
    assert a["kibana"]["alert"]["severity"] in ("low", "medium", "high", "critical")
    assert a["rule"]["reference"].startswith("http")
    # a coalesced pipeline embeds its own document and still evaluates the ECS-mapped rule
    stage_c = DetectStage(DetectConfig(rules=[str(rule), str(pc)]), "coalesced")
    alerts_c = run_stage(stage_c, EXECVE_EVENT, fmt="coalesced")
    assert len(alerts_c) == 2 and alerts_c[0]["signal"]["events"][0]["id"] == "1700000100.000:20"
    body = webhook_payload(a)
    assert "Remove Immutable" in body["text"] and {"title": "Host", "value": "h1", "short": True} in body["fields"]


def test_dedup_window_counts_suppressed_hits():
    d = Deduper(window=60.0)
    assert d.admit("r", "k", 0.0)
    assert not d.admit("r", "k", 59.0)
    assert d.admit("r", "other", 59.0)
    assert d.admit("r", "k", 60.0)  # a new window
    assert d.suppressed == {"r": 1}
    d.expire(200.0)
    assert d.open_windows == 0


def test_stage_dedups_repeated_activity_by_audit_time():
    _require_shared()
    rule = AUDITD / "execve" / "lnx_auditd_chattr_immutable_removal.yml"
    stage = DetectStage(DetectConfig(rules=[str(rule)], dedup_minutes=1), "ecs")
    later = [ln.replace("1700000100.000:20", "1700000130.000:21") for ln in EXECVE_EVENT]
    much_later = [ln.replace("1700000100.000:20", "1700000200.000:22") for ln in EXECVE_EVENT]
    assert len(run_stage(stage, EXECVE_EVENT + later + much_later)) == 2
    assert stage.metrics()["detect.suppressed"] == 1


def test_threat_from_tags():
    t = threat_of(["attack.defense-evasion", "attack.t1070.006", "attack.t1070", "attack.s0002", "car.2016"])
    assert t["technique"]["id"] == ["T1070"] and t["technique"]["subtechnique"]["id"] == ["T1070.006"]
    assert t["tactic"]["name"] == ["defense-evasion"]


PY_RULE = '''\
"""Chattr by a human."""
RULE_ID = "py.chattr"
SEVERITY = "HIGH"
TAGS = ["attack.t1222.002"]

def rule(event):
    return event.deep_get("process", "name") == "chattr"

def title(event):
    return f"chattr in {event.deep_get('process', 'working_directory')}"

def dedup(event):
    return event.deep_get("process", "executable")

def alert_context(event):
    return {"args": event.deep_get("process", "args")}
'''

PY_RAISING = '''\
def rule(event):
    return event["no_such_key"] == 1
'''

PY_YAML_RULE = '''\
def rule(event):
    return "-i" in (event.deep_get("process", "args") or [])
'''
PY_YAML_SPEC = {
    "RuleID": "py.yaml.immutable", "DisplayName": "Immutable flag removed", "Severity": "Medium",
    "Reports": {"MITRE ATT&CK": ["TA0005:T1222.002"]},
    "Tests": [
        {"Name": "chattr -i", "ExpectedResult": True, "Log": {"process": {"args": ["chattr", "-i", "f"]}}},
        {"Name": "ls", "ExpectedResult": False, "Log": {"process": {"args": ["ls"]}}},
    ],
}


def _py_rules(tmp_path: Path, failing_test: bool = False) -> Path:
    d = tmp_path / "pyrules"
    d.mkdir()
    (d / "chattr.py").write_text(PY_RULE)
    (d / "raises.py").write_text(PY_RAISING)
    (d / "immutable.py").write_text(PY_YAML_RULE)
    spec = json.loads(json.dumps(PY_YAML_SPEC))
    if failing_test:
        spec["Tests"][1]["ExpectedResult"] = True
    (d / "immutable.yml").write_text(yaml.safe_dump(spec))
    return d


def test_python_rules_hooks_metadata_and_a_raising_rule(tmp_path, caplog):
    d = _py_rules(tmp_path)
    stage = DetectStage(DetectConfig(rules=[str(d)]), "ecs")
    alerts = run_stage(stage, EXECVE_EVENT)
    by_id = {a["rule"]["id"]: a for a in alerts}
    assert set(by_id) == {"py.chattr", "py.yaml.immutable"}
    a = by_id["py.chattr"]
    assert a["message"] == "chattr in /tmp" and a["kibana"]["alert"]["severity"] == "high"
    assert a["signal"]["context"] == {"args": ["chattr", "-i", "/tmp/f"]}
    assert a["signal"]["dedup_key"] == "/usr/bin/chattr"
    assert by_id["py.yaml.immutable"]["threat"]["technique"]["subtechnique"]["id"] == ["T1222.002"]
    m = stage.metrics()
    assert m["detect.rule_errors"] == 1 and m["detect.rule_errors.raises"] == 1
    assert "1700000100.000:20" in caplog.text and "KeyError" in caplog.text


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "auditpipe", "detect", *args], capture_output=True, text=True, check=False,
                          timeout=120)


def test_cli_detect_test_passes_and_fails(tmp_path):
    ok = _cli("test", str(_py_rules(tmp_path)))
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "PASS  py.yaml.immutable: chattr -i" in ok.stdout and "2 tests, 0 failed" in ok.stdout
    (tmp_path / "b").mkdir()
    bad = _cli("test", str(_py_rules(tmp_path / "b", failing_test=True)))
    assert bad.returncode == 1 and "FAIL  py.yaml.immutable: ls  expected True, got False" in bad.stdout


def test_cli_check_reports_every_rule_not_run():
    _require_shared()
    r = _cli("check", str(SIGMA_LINUX))
    assert r.returncode == 0, r.stderr
    skipped = [ln for ln in r.stdout.splitlines() if ln.startswith("skip ")]
    assert any("proc_creation_lnx_susp_java_children.yml" in ln and "ParentImage" in ln for ln in skipped)
    assert any("net_connection_lnx_ngrok_tunnel.yml" in ln and "DestinationHostname" in ln for ln in skipped)
    assert "53 auditd" in r.stdout


def test_cli_detect_run_over_a_log(tmp_path):
    _require_shared()
    log = tmp_path / "audit.log"
    log.write_text("\n".join(EXECVE_EVENT) + "\n")
    r = _cli("run", str(AUDITD), str(log))
    assert r.returncode == 0, r.stderr
    alerts = [json.loads(ln) for ln in r.stdout.splitlines()]
    assert [a["rule"]["name"] for a in alerts] == ["Remove Immutable File Attribute - Auditd"]
    assert "1 alerts" in r.stderr


@pytest.mark.parametrize("bad", ["[detect]\nrules = 3\n", "[detect]\nrulez = []\n"])
def test_detect_config_fails_fast(bad):
    from auditpipe.config import ConfigError, load_config

    with pytest.raises(ConfigError):
        load_config(text=bad)


BAD_RULES = {
    "broken.yml": "title: x\n  bad: [yaml\n",
    "badmod.yml": ("title: y\nlogsource: {product: linux, service: auditd}\n"
                   "detection:\n  sel: {a0|foo: x}\n  condition: sel\n"),
    "agg.yml": ("title: z\nlogsource: {product: linux, service: auditd}\n"
                "detection:\n  sel: {a0: x}\n  condition: sel | count() > 5\n"),
    "corr.yml": ("title: base\nname: base_rule\nid: 0e4b8b30-4a4b-4a8e-9d3c-3b9d2f1f0a01\n"
                 "logsource: {product: linux, service: auditd}\ndetection:\n  sel: {a0: ssh}\n  condition: sel\n"
                 "---\ntitle: many ssh\ncorrelation:\n  type: event_count\n  rules: [base_rule]\n"
                 "  group-by: [exe]\n  timespan: 5m\n  condition: {gte: 10}\n"),
}


def test_broken_rules_are_reported_with_the_reason(tmp_path):
    for name, text in BAD_RULES.items():
        (tmp_path / name).write_text(text)
    rs = load_rules([str(tmp_path)])
    reasons = {Path(p.path).name + ":" + p.title: p.reason for p in rs.problems}
    assert "line 2, column 6" in reasons["broken.yml:broken"]
    assert "Unknown modifier 'foo'" in reasons["badmod.yml:y"]
    assert "pipe syntax" in reasons["agg.yml:z"]
    assert "correlation rule (event_count)" in reasons["corr.yml:many ssh"]
    assert [r.title for r in rs.sigma] == ["base"]  # the correlation's base rule itself runs


def test_strict_and_missing_rules_fail_as_config_errors(tmp_path):
    from auditpipe.config import ConfigError

    (tmp_path / "badmod.yml").write_text(BAD_RULES["badmod.yml"])
    with pytest.raises(ConfigError, match=r"\[detect\] rules: .*Unknown modifier"):
        DetectStage(DetectConfig(rules=[str(tmp_path)], strict=True), "ecs")
    with pytest.raises(ConfigError, match="no such rule file"):
        DetectStage(DetectConfig(rules=[str(tmp_path / "nope.yml")]), "ecs")
    assert DetectStage(DetectConfig(rules=[str(tmp_path)]), "ecs").metrics()["detect.rules_not_run"] == 1
