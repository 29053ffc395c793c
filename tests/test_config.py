"""`auditpipe run` configuration: defaults, located errors, outputs, shorthand flags, --check."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from auditpipe.cli.run_cmd import apply_overrides
from auditpipe.config import (
    DEFAULT_OUTPUT,
    Config,
    ConfigError,
    FileOutput,
    HttpOutput,
    StdoutOutput,
    load_config,
    rule_files,
)
from auditpipe.lake.config import LakeOutput

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "auditpipe.toml"


def cfg_of(text: str) -> Config:
    return load_config(text=textwrap.dedent(text))


def error_of(text: str, tmp_path: Path) -> ConfigError:
    p = tmp_path / "auditpipe.toml"
    p.write_text(textwrap.dedent(text).lstrip("\n"))
    with pytest.raises(ConfigError) as ei:
        load_config(str(p))
    return ei.value


def test_defaults_need_no_file():
    c = cfg_of("")
    assert c.kernel.mode == "auto"
    assert c.kernel.backpressure_strategy == "auto"
    assert c.kernel.backlog_limit is None and c.kernel.rate_limit is None
    assert c.kernel.keep_rules_on_exit is False and c.kernel.immutable is False
    assert c.kernel.exclude_self is True
    assert c.normalize.format == "ecs"
    assert c.rules.files is None and c.rules.purge == "auto"
    assert c.reassembly.timeout == 2.0 and c.reassembly.wall_timeout == 1.0
    assert c.source.type == "kernel"
    assert [type(o) for o in c.outputs] == [FileOutput, LakeOutput]  # JSON lines and a queryable lake
    assert c.outputs[1] == LakeOutput(path="./auditpipe-data")
    assert c.outputs[0].path == DEFAULT_OUTPUT and c.outputs[0].mode == 0o600
    assert c.outputs[0] == FileOutput(path=DEFAULT_OUTPUT, max_bytes=100 << 20, generations=5, mode=0o600,
                                      fsync="never", fsync_interval=1.0, documents="events")
    assert c.state.dir == "/var/lib/auditpipe"


def test_no_config_file_means_defaults(monkeypatch):
    from auditpipe import config

    monkeypatch.setattr(config, "DEFAULT_CONFIG_PATHS", ("/nonexistent/auditpipe.toml",))
    assert load_config() == Config()


def test_full_config():
    c = cfg_of("""
        log_level = "debug"
        [kernel]
        mode = "multicast"
        backlog_limit = 16384
        rate_limit = 0
        failure_mode = "silent"
        backpressure_strategy = "userspace"
        backlog_wait_time = 100
        keep_rules_on_exit = true
        queue_size = 1000
        [rules]
        files = ["/etc/audit/rules.d/*.rules", "/tmp/x.rules"]
        purge = false
        [reassembly]
        timeout = 3.5
        max_in_flight = 100
        wall_timeout = 0.5
        [normalize]
        format = "panther"
        resolve_ids = false
        include_raw = true
        tags = ["prod", "web"]
        passwd_file = "/tmp/passwd"
        [[outputs]]
        type = "file"
        path = "/tmp/a.jsonl"
        max_bytes = 1000
        generations = 2
        mode = "0640"
        fsync = "interval"
        [[outputs]]
        type = "stdout"
        [status]
        path = "/tmp/status.json"
        interval = 0.5
    """)
    assert c.kernel.mode == "multicast" and c.kernel.backlog_limit == 16384
    assert c.failure_value() == 0
    assert c.rules.purge is False
    assert c.normalize.tags == ["prod", "web"] and c.normalize.format == "panther"
    assert isinstance(c.outputs[1], StdoutOutput)
    assert c.outputs[0].file_mode() == 0o640
    assert c.status.interval == 0.5 and c.log_level == "debug"


def test_output_type_defaults_to_file_and_toml_octal_mode():
    c = cfg_of("""
        [[outputs]]
        path = "/tmp/b.jsonl"
        mode = 0o640
    """)
    assert c.outputs == [FileOutput(path="/tmp/b.jsonl", mode=0o640)]


def test_http_output_options_are_checked_against_the_shipper():
    c = cfg_of("""
        [[outputs]]
        type = "http"
        url = "https://127.0.0.1:8088/ingest"
        auth = "bearer"
        secret = "s3cret"
        queue_dir = "/tmp/q"
    """)
    assert c.outputs[0] == HttpOutput(url="https://127.0.0.1:8088/ingest", auth="bearer", secret="s3cret",
                                      queue_dir="/tmp/q")


HTTP = "[[outputs]]\ntype = \"http\"\nurl = \"https://127.0.0.1:1/\"\n"


@pytest.mark.parametrize("text, line, where, words", [
    # TOML syntax: tomllib's line
    ("[kernel]\nmode = auto\n", 2, None, "TOML syntax"),
    ("[kernel\nmode = 1\n", 1, None, "TOML syntax"),
    # wrong type
    ("# comment\n[kernel]\nmode = \"auto\"\nbacklog_limit = \"big\"\n", 4, "[kernel] backlog_limit",
     "expected `int`, got `str`"),
    # not one of the choices: the choices are named
    ("[normalize]\nformat = \"xml\"\n", 2, "[normalize] format", "one of: ecs, panther, coalesced"),
    ("[kernel]\n\nmode = \"broadcast\"\n", 3, "[kernel] mode", "auto, unicast, multicast"),
    # unknown option: its own line
    ("[kernel]\nmode = \"auto\"\nbacklog = 5\n", 3, "[kernel] backlog", "unknown option `backlog`"),
    ("[kernal]\nmode = \"auto\"\n", 1, "kernal", "unknown option `kernal`"),
    # the second [[outputs]] table, not the first
    ("[[outputs]]\npath = \"/tmp/a\"\n[[outputs]]\npath = \"/tmp/b\"\nsize = 3\n", 5,
     "[[outputs]] #2 size", "unknown option `size`"),
    ("[[outputs]]\ntype = \"kafka\"\n", 2, "[[outputs]] #1 type",
     "invalid value 'kafka' (one of: file, stdout, http, elasticsearch, lake)"),
    ("[[outputs]]\ntype = \"http\"\nurl = \"https://x\"\nretries = 3\n", 4, "[[outputs]] #1 retries",
     "unknown option `retries`"),
    ("[[outputs]]\ntype = \"http\"\n", 1, "[[outputs]] #1", "missing required option `url`"),
    ("[[outputs]]\ntype = \"http\"\nurl = \"http://127.0.0.1:1/\"\n", 3, "[[outputs]] #1 url", "TLS"),
    # output options that cannot work (issue 8, fault 10)
    (HTTP + "max_events = 0\n", 4, "[[outputs]] #1 max_events", "never send"),
    (HTTP + "timeout = 0\n", 4, "[[outputs]] #1 timeout", "never deliver"),
    (HTTP + "queue_max_bytes = 4096\n", 4, "[[outputs]] #1 queue_max_bytes", "one large record"),
    (HTTP + "max_bytes = 10\n", 4, "[[outputs]] #1 max_bytes", "at least one record"),
    (HTTP + "auth = \"bearer\"\n", 1, "[[outputs]] #1 secret", "needs a secret"),
    (HTTP + "documents = \"signals\"\n", 4, "[[outputs]] #1 documents", "one of: events, alerts, both"),
    ("[[outputs]]\npath = \"/tmp/x\"\nfsync_interval = 0\n", 3, "[[outputs]] #1 fsync_interval", "more than 0"),
    ("[state]\ndir = \"\"\n", 2, "[state] dir", "must not be empty"),
    # rules spanning fields
    ("[kernel]\nbackpressure_strategy = \"kernel\"\nbacklog_wait_time = 60000\n", 3,
     "[kernel] backlog_wait_time", "sets backlog_wait_time to 0"),
    ("[kernel]\nbacklog_limit = -1\n", 2, "[kernel] backlog_limit", "0 to 4294967295"),
    ("[kernel]\nfailure_mode = 7\n", 2, "[kernel] failure_mode", "silent, printk, panic"),
    ("[[outputs]]\nmode = \"rw-r--r--\"\n", 2, "[[outputs]] #1 mode", "octal"),
    ("[reassembly]\nwall_timeout = 0\n", 2, "[reassembly] wall_timeout", "more than 0"),
    ("outputs = []\n", 1, "outputs", "at least one output"),
    ("[status]\ninterval = \"often\"\n", 2, "[status] interval", "expected `float`"),
    # dotted keys at the top level
    ("kernel.mode = \"sideways\"\n", 1, "[kernel] mode", "invalid value"),
])
def test_errors_say_where_and_what(tmp_path, text, line, where, words):
    e = error_of(text, tmp_path)
    path = str(tmp_path / "auditpipe.toml")
    assert e.file == path
    assert e.line == line, str(e)
    assert e.where == where, str(e)
    assert words in str(e)
    assert str(e).startswith(f"{path}:{line}: ")


def test_unreadable_and_non_utf8(tmp_path):
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(str(tmp_path / "missing.toml"))
    p = tmp_path / "bad.toml"
    p.write_bytes(b"[kernel]\nmode = \"\xff\"\n")
    with pytest.raises(ConfigError) as ei:
        load_config(str(p))
    assert ei.value.line == 2 and "UTF-8" in str(ei.value)


def test_default_outputs_follow_the_format():
    """The lake takes ECS or Panther documents: coalesced (from the file or --format) gets the
    JSON-lines file alone; an explicit [[outputs]] is never changed."""
    assert [type(o) for o in cfg_of('[normalize]\nformat = "coalesced"').outputs] == [FileOutput]
    c = cfg_of("")
    apply_overrides(c, fmt="coalesced")
    assert c.outputs == [FileOutput()]
    c = cfg_of("")
    apply_overrides(c, fmt="panther")
    assert [type(o) for o in c.outputs] == [FileOutput, LakeOutput]
    c = cfg_of('[[outputs]]\ntype = "stdout"')
    apply_overrides(c, fmt="coalesced")
    assert c.outputs == [StdoutOutput()]


def test_overrides_replace_what_the_file_says():
    c = cfg_of("""
        [rules]
        files = ["/a.rules"]
        [[outputs]]
        type = "stdout"
    """)
    apply_overrides(c, rules=("/b.rules",), fmt="coalesced", output="/tmp/o.jsonl", mode="unicast",
                    status_file="/tmp/s.json")
    assert c.rules.files == ["/b.rules"]
    assert c.normalize.format == "coalesced" and c.kernel.mode == "unicast"
    assert c.outputs == [FileOutput(path="/tmp/o.jsonl")]
    assert c.status.path == "/tmp/s.json"
    apply_overrides(c, output="-")
    assert c.outputs == [StdoutOutput()]


def test_rule_files_expand_globs_in_order(tmp_path):
    for n in ("20-b.rules", "10-a.rules", "x.txt"):
        (tmp_path / n).write_text("")
    c = cfg_of(f"""
        [rules]
        files = ["{tmp_path}/*.rules", "/explicit.rules"]
    """)
    assert rule_files(c) == [f"{tmp_path}/10-a.rules", f"{tmp_path}/20-b.rules", "/explicit.rules"]
    assert rule_files(cfg_of("[rules]\nfiles = []\n")) == []


def test_default_rules_glob(monkeypatch, tmp_path):
    from auditpipe import config

    monkeypatch.setattr(config, "DEFAULT_RULES_GLOB", str(tmp_path / "*.rules"))
    assert rule_files(Config()) == []
    (tmp_path / "audit.rules").write_text("-D\n")
    assert rule_files(Config()) == [str(tmp_path / "audit.rules")]


def test_example_config_is_valid():
    c = load_config(str(EXAMPLE))
    assert c.path == str(EXAMPLE)


def _cli(*args, **kw):
    return subprocess.run([sys.executable, "-m", "auditpipe", *args], capture_output=True,
                          text=True, timeout=60, **kw)


def test_cli_check_with_bad_config_fails_fast(tmp_path):
    p = tmp_path / "c.toml"
    p.write_text("[kernel]\nmode = \"auto\"\nrate_limit = \"fast\"\n")
    r = _cli("run", "--config", str(p), "--check")
    assert r.returncode == 2
    assert f"{p}:3: [kernel] rate_limit: expected `int`, got `str`" in r.stderr


def test_cli_check_reports_rule_file_problems_before_touching_the_kernel(tmp_path):
    rules = tmp_path / "r.rules"
    rules.write_text("-a always,exit -S execve -k ok\n-a always,exit -S nosuchcall\n")
    r = _cli("run", "--rules", str(rules), "--format", "coalesced", "--check")
    assert r.returncode == 2
    assert f"{rules}:2:" in r.stderr and "nosuchcall" in r.stderr
    assert "nothing was changed" in r.stderr


def test_cli_check_summarises(tmp_path):
    rules = tmp_path / "r.rules"
    rules.write_text("-b 1024\n-a always,exit -F arch=b64 -S execve -k ok\n")
    r = _cli("run", "--rules", str(rules), "--format", "coalesced", "-o", str(tmp_path / "o.jsonl"),
             "--check")
    assert r.returncode == 0, r.stderr
    assert "rules: 1 rule(s) from 1 file(s)" in r.stdout
    assert "rule files set: backlog_limit=1024" in r.stdout
    assert f"output: file {tmp_path / 'o.jsonl'}" in r.stdout
    assert r.stdout.rstrip().endswith("OK")


def test_run_check_rejects_output_options_that_cannot_work(tmp_path):
    """Fault 10 (issue 8) in a real process: `run --check` stops at the first such option with
    its file and line."""
    import subprocess
    import sys

    p = tmp_path / "auditpipe.toml"
    p.write_text('[[outputs]]\ntype = "http"\nurl = "https://127.0.0.1:9/"\nqueue_max_bytes = 1000\n')
    r = subprocess.run([sys.executable, "-m", "auditpipe", "run", "--check", "--config", str(p)],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 2, r.stderr
    assert f"{p}:4: [[outputs]] #1 queue_max_bytes" in r.stderr


def test_run_check_names_every_default_output(tmp_path):
    """`run --check` says where each output writes (the lake by its folder, not as stdout)."""
    import subprocess
    import sys

    cfg = tmp_path / "a.toml"
    cfg.write_text(f'[status]\npath = "{tmp_path / "status.json"}"\n')
    out = subprocess.run([sys.executable, "-m", "auditpipe", "run", "--check", "--config", str(cfg)],
                         capture_output=True, text=True, check=True).stdout
    assert "output: lake ./auditpipe-data" in out and "stdout" not in out
