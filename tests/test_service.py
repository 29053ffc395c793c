"""Service install: the unit passes `systemd-analyze verify`, the packaging/ files are the
renderings, the default configs load, `install` writes/keeps files; privileges are dropped
(read back from /proc/self/status of a real process); --log-format json; the built wheel
alone runs the CLI."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from click.testing import CliRunner

from auditpipe.cli import main
from auditpipe.config import load_config
from auditpipe.service.privileges import cap_numbers
from auditpipe.service.systemd import ServiceLayout

ROOT = Path(__file__).resolve().parent.parent
VENV_EXE = Path(sys.executable).parent / "auditpipe"


def test_packaging_files_are_the_renderings():
    pkg = ROOT / "packaging"
    assert (pkg / "auditpipe.service").read_text() == ServiceLayout().unit()
    assert (pkg / "auditpipe-beside-auditd.service").read_text() == \
        ServiceLayout(beside_auditd=True).unit()
    assert (pkg / "auditpipe.toml").read_text() == ServiceLayout().config()


@pytest.mark.parametrize("beside", [False, True], ids=["instead-of-auditd", "beside-auditd"])
def test_unit_verifies_and_config_loads(tmp_path, beside):
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.fail("systemd-analyze is missing: scripts/setup.sh installs the systemd package")
    args = ["install", "--systemd", "--prefix", str(tmp_path), "--executable", str(VENV_EXE)]
    res = CliRunner().invoke(main, args + (["--beside-auditd"] if beside else []))
    assert res.exit_code == 0, res.output
    unit = tmp_path / "etc/systemd/system/auditpipe.service"
    text = unit.read_text()
    assert ("Conflicts=auditd.service" in text) is not beside
    for line in ("NoNewPrivileges=yes", "ProtectSystem=strict", "Restart=on-failure",
                 "CapabilityBoundingSet=CAP_AUDIT_CONTROL CAP_AUDIT_READ CAP_DAC_READ_SEARCH",
                 "StateDirectory=auditpipe", "LogsDirectory=auditpipe"):
        assert line in text
    r = subprocess.run([analyze, "verify", str(unit)], capture_output=True, text=True)
    if r.returncode != 0 and "Failed to connect to bus" in r.stderr + r.stdout:
        pytest.fail(f"systemd-analyze verify cannot run here (no system bus): {r.stderr}")
    # verify exits 0 even for unknown keys or bad values: it must also say nothing
    assert r.returncode == 0 and not r.stderr.strip() and not r.stdout.strip(), r.stderr
    cfg = load_config(str(tmp_path / "etc/auditpipe/auditpipe.toml"))
    assert cfg.kernel.mode == ("multicast" if beside else "auto")
    assert (cfg.rules.files == []) is beside


def test_verify_catches_a_broken_unit(tmp_path):
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.fail("systemd-analyze is missing: scripts/setup.sh installs the systemd package")
    bad = tmp_path / "auditpipe.service"
    bad.write_text(ServiceLayout(executable=str(VENV_EXE)).unit()
                   .replace("ProtectSystem=strict", "ProtectSystem=nonsense"))
    r = subprocess.run([analyze, "verify", str(bad)], capture_output=True, text=True)
    assert "protect system" in r.stderr.lower()


def test_install_keeps_config_and_dry_run_writes_nothing(tmp_path):
    run = CliRunner().invoke
    conf = tmp_path / "etc/auditpipe/auditpipe.toml"
    conf.parent.mkdir(parents=True)
    conf.write_text("# mine\n")
    res = run(main, ["install", "--systemd", "--prefix", str(tmp_path)])
    assert res.exit_code == 0 and f"kept {conf}" in res.output
    assert conf.read_text() == "# mine\n"
    assert run(main, ["install", "--systemd", "--prefix", str(tmp_path), "--force"]).exit_code == 0
    assert conf.read_text() == ServiceLayout().config() and oct(conf.stat().st_mode)[-3:] == "600"
    dry = tmp_path / "dry"
    res = run(main, ["install", "--systemd", "--prefix", str(dry), "--dry-run"])
    assert res.exit_code == 0 and "[Service]" in res.output and not dry.exists()
    assert run(main, ["install", "--prefix", str(dry)]).exit_code == 2  # --systemd is required


_DROP = """
import json
from auditpipe.service.privileges import drop_privileges
drop_privileges(["CAP_AUDIT_CONTROL", "CAP_AUDIT_READ"])
status = dict(line.split(":", 1) for line in open("/proc/self/status").read().splitlines())
print(json.dumps({k: status[k].strip() for k in ("CapEff", "CapPrm", "CapInh", "CapBnd",
                                                  "CapAmb", "NoNewPrivs")}))
"""


def test_drop_privileges_in_a_real_process():
    if os.geteuid() != 0:
        pytest.skip("needs root: an unprivileged process has no capabilities to drop")
    r = subprocess.run([sys.executable, "-c", _DROP], capture_output=True, text=True, check=True)
    got = json.loads(r.stdout)
    want = f"{sum(1 << c for c in cap_numbers(['audit_control', 'audit_read'])):016x}"
    assert got["CapEff"] == got["CapPrm"] == got["CapBnd"] == want
    assert got["CapInh"] == got["CapAmb"] == "0" * 16 and got["NoNewPrivs"] == "1"
    with pytest.raises(ValueError):
        cap_numbers(["CAP_NOPE"])


def test_log_format_json():
    code = ("import logging, sys; from auditpipe.cli import main; "
            "sys.argv = ['auditpipe', '--log-format', 'json', 'rules', 'check', '/dev/null']; "
            "import auditpipe.cli.rules_cmd as r; "
            "orig = r.check.callback\n"
            "def cb(*a, **k):\n logging.getLogger('auditpipe.test').warning('hello %s', 'there')\n"
            " return orig(*a, **k)\n"
            "r.check.callback = cb; main()")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    (line,) = [ln for ln in r.stderr.splitlines() if ln.startswith("{")]
    doc = json.loads(line)
    assert doc["message"] == "hello there" and doc["log.level"] == "warning"
    assert doc["log.logger"] == "auditpipe.test" and doc["@timestamp"].endswith("Z")


@pytest.mark.slow
def test_built_wheel_alone_runs_the_cli(tmp_path):
    """`pip install .` material: the wheel holds every module and data file the CLI needs."""
    r = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w",
                        str(tmp_path), str(ROOT)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]
    (whl,) = tmp_path.glob("auditpipe-*.whl")
    site = tmp_path / "site"
    zipfile.ZipFile(whl).extractall(site)
    entry = [ln for ln in (next(site.glob("*.dist-info")) / "entry_points.txt").read_text()
             .splitlines() if ln.startswith("auditpipe")]
    assert entry == ["auditpipe = auditpipe.cli:main"]
    rules = tmp_path / "a.rules"
    rules.write_text("-a always,exit -F arch=b64 -S lsm_set_self_attr -k x\n")
    env = {**os.environ, "PYTHONPATH": str(site)}
    for args in (["rules", "check", str(rules)], ["install", "--systemd", "--dry-run"]):
        done = subprocess.run([sys.executable, "-c",
                               "import sys, auditpipe.cli as c; assert c.__file__.startswith("
                               f"{str(site)!r}), c.__file__; sys.argv[0] = 'auditpipe'; c.main()",
                               *args], capture_output=True, text=True, env=env, cwd=tmp_path)
        assert done.returncode == 0, done.stderr
