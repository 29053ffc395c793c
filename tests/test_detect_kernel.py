"""Sigma's auditd rules against the real kernel.

Each activity runs in a child whose login uid is set (``/proc/self/loginuid``, before exec) to an
auid of its own, so every record and alert is attributed to exactly one activity. The audit rules
loaded are the ones the Sigma rules' ``logsource.definition`` (or their fields) ask for, each
filtered to that auid range and removed afterwards (``audit_state``). We register as the audit
daemon with our own netlink client, feed what the kernel sends through the same pipeline and
detection stage as ``auditpipe run``, and assert that each activity raises exactly the alerts of
the rules that describe it, once, and that a benign baseline workload raises none.

Nothing here changes the system for good: files live in a temp dir, the file under /etc/audit is
removed, /etc/ld.so.preload, /etc/rsyslog.conf and the BPFDoor pid file are opened for writing
*without* O_CREAT (they do not exist, the open fails, the kernel still records the path), the
nft table is a throwaway one, syslog(2) clear runs as nobody (EPERM), the user added is deleted.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest
from conftest import SHARED
from conftest_kernel import audit_state  # noqa: F401

from auditpipe.detect.config import DetectConfig
from auditpipe.detect.engine import DetectStage, load_rules
from auditpipe.kernel.netlink import open_unicast
from auditpipe.kernel.rules import compile_rules
from auditpipe.normalize.ecs import make_ecs_normalizer
from auditpipe.pipeline import Pipeline
from auditpipe.reassembly import Reassembler

pytestmark = [pytest.mark.kernel, pytest.mark.slow]

AUDITD = SHARED / "sigma" / "rules" / "linux" / "auditd"
BASE = 47000 + (os.getpid() % 500) * 100  # this run's auid range: BASE .. BASE+99
BASELINE = BASE + 99
NOBODY = 65534
WWW = 33
SYSTEM_PYTHON = "/usr/bin/python3"  # readable by nobody (the venv's interpreter may live under /root)


def _kernel_rules(tmp: Path) -> list[str]:
    rng = f"-F auid>={BASE} -F auid<={BASE + 99}"
    return [  # the first matching rule gives the key: keyed rules first
        # lnx_auditd_susp_c2_commands: -w /usr/bin/base64 -p x -k susp_activity
        f"-a always,exit -F arch=b64 -S execve -F path=/usr/bin/base64 {rng} -k susp_activity",
        # executions (EXECVE records: most auditd rules; the SYSCALL of execve: exe/comm rules)
        f"-a always,exit -F arch=b64 -S execve,execveat {rng} -k auditpipe_dt_exec",
        # writes and attribute changes, as a `-p wa` watch classifies them (PATH rules)
        f"-a always,exit -F arch=b64 -F perm=wa {rng} -k auditpipe_dt_write",
        # lnx_auditd_network_service_scanning: Neo23x0's network_connect_4
        f"-a always,exit -F arch=b64 -S connect {rng} -k network_connect_4",
        # mknod, personality (ASLR), syslog (dmesg clear), sysinfo (discovery)
        f"-a always,exit -F arch=b64 -S mknod -S personality -S syslog -S sysinfo {rng} -k auditpipe_dt_sys",
        # lnx_auditd_system_info_discovery2 reads
        f"-a always,exit -F arch=b64 -F path=/proc/version -F perm=r {rng} -k auditpipe_dt_read",
    ]




def _open_for_write(path: str) -> list[str]:
    """open(path, O_WRONLY) without O_CREAT/O_TRUNC: nothing is created or changed (the file
    does not exist or is left as it is), yet the kernel records the path of the attempt."""
    return ["dd", f"of={path}", "conv=nocreat,notrunc", "count=0", "status=none"]


#: python3 itself calls sysinfo(2) at start-up (glibc sysconf(_SC_PHYS_PAGES)): the rule rightly
#: fires for every activity run by the interpreter
SYSINFO = "lnx_auditd_susp_discovery_sysinfo_syscall"


def _activities(d: Path, user: str, table: str) -> list[tuple[str, list[str], set[str], dict]]:
    """(name, argv, rule file stems expected to fire, options for the child)."""
    f = str(d / "f")
    py = [SYSTEM_PYTHON, "-B", "-S", "-c"]
    return [
        ("truncate padding", ["truncate", "-s", "+1", f], {"lnx_auditd_binary_padding"}, {}),
        ("touch -t", ["touch", "-t", "202001010000", f], {"lnx_auditd_change_file_time_attr"}, {}),
        ("chattr -i", ["chattr", "-i", f], {"lnx_auditd_chattr_immutable_removal"}, {}),
        ("cpu-priority flag", ["/bin/echo", "--cpu-priority=3"], {"lnx_auditd_coinminer"}, {}),
        ("tar -c", ["tar", "-cf", str(d / "out.tar"), f], {"lnx_auditd_data_compressed"}, {}),
        ("wget --post-file", ["wget", f"--post-file={f}", "-q", "-t", "1", "-T", "1", "http://127.0.0.1:9/"],
         {"lnx_auditd_data_exfil_wget"}, {}),
        ("dd if=/dev/zero", ["dd", "if=/dev/zero", f"of={d / 'zeros'}", "bs=1", "count=1"],
         {"lnx_auditd_dd_delete_file"}, {}),
        ("chmod 777", ["chmod", "777", f], {"lnx_auditd_file_or_folder_permissions", "lnx_auditd_susp_cmds"}, {}),
        ("grep password", ["grep", "password", f], {"lnx_auditd_find_cred_in_files"}, {}),
        ("mkdir hidden", ["mkdir", str(d / ".stash")],
         {"lnx_auditd_hidden_files_directories", "lnx_auditd_hidden_binary_execution"}, {}),
        ("cat jpg zip", ["cat", str(d / "a.jpg"), str(d / "b.zip")], {"lnx_auditd_hidden_zip_files_steganography"},
         {}),
        ("cp sh crond", ["cp", "/bin/sh", str(d / "crond")], {"lnx_auditd_masquerading_crond", "lnx_auditd_susp_cmds"},
         {}),
        ("nft delete table", ["nft", "delete", "table", "inet", table], {"lnx_auditd_modify_system_firewall"}, {}),
        ("history file", ["cat", str(d / ".bash_history")], {"lnx_auditd_susp_histfile_operations"}, {}),
        ("systemctl start", ["systemctl", "start", "auditpipe-no-such-unit.service"],
         {"lnx_auditd_susp_service_reload_or_restart"}, {}),
        ("unzip jpg", ["unzip", str(d / "a.jpg"), "-d", str(d / "unz")],
         {"lnx_auditd_unzip_hidden_zip_files_steganography"}, {}),
        ("whoami", ["whoami"], {"lnx_auditd_user_discovery"}, {}),
        ("uptime", ["uptime"], {"lnx_auditd_system_info_discovery"}, {}),
        ("setarch -R", ["setarch", "x86_64", "-R", "/bin/true"], {"lnx_auditd_disable_aslr_protection"}, {}),
        ("chage -l", ["chage", "-l", "root"], {"lnx_auditd_password_policy_discovery"}, {}),
        ("base64 -d", ["base64", "-d", str(d / "b64")], {"lnx_auditd_susp_c2_commands"}, {}),
        ("write under /etc/audit", ["sh", "-c", f"echo x > /etc/audit/auditpipe-dt-{os.getpid()}.tmp"],
         {"lnx_auditd_auditing_config_change"}, {}),
        ("ld.so.preload open for write", _open_for_write("/etc/ld.so.preload"),
         {"lnx_auditd_ld_so_preload_mod"}, {}),
        ("BPFDoor pid file", _open_for_write("/var/run/haldrund.pid"), {"lnx_auditd_bpfdoor_file_accessed"},
         {}),
        ("rsyslog.conf open for write", _open_for_write("/etc/rsyslog.conf"),
         {"lnx_auditd_logging_config_change"}, {}),
        ("sysrq open for write", _open_for_write("/proc/sys/kernel/sysrq"),
         {"lnx_auditd_magic_system_request_key"}, {}),
        ("cat /proc/version", ["cat", "/proc/version"], {"lnx_auditd_system_info_discovery2"}, {}),
        ("systemd user unit", ["sh", "-c", f"echo '[Unit]' > {d}/home/.config/systemd/user/auditpipe-dt.service"],
         {"lnx_auditd_systemd_service_creation"}, {}),
        ("syslog clear as nobody", py + ["import ctypes; ctypes.CDLL(None).syscall(103, 5, 0, 0)"],
         {"lnx_auditd_clean_disable_dmesg_logs_via_syslog", SYSINFO}, {"uid": NOBODY}),
        # useradd writes /etc/.pwd.lock: a hidden path, which the hidden-path rule rightly reports
        ("useradd", ["useradd", "-M", "-N", "-s", "/usr/sbin/nologin", user],
         {"lnx_auditd_create_account", "lnx_auditd_hidden_binary_execution"}, {}),
        ("insmod missing module", ["insmod", str(d / "no-such-module.ko")], {"lnx_auditd_load_module_insmod"}, {}),
        ("nc scan", ["nc", "-z", "-w", "1", "127.0.0.1", "9"], {"lnx_auditd_network_service_scanning"}, {}),
        ("split", ["split", "-b", "1", f, str(d / "part")], {"lnx_auditd_split_file_into_pieces"}, {}),
        ("mknod syscall", py + [(f"import ctypes, stat; ctypes.CDLL(None).syscall(133, b'{d}/fifo', "
                                "stat.S_IFIFO | 0o600, 0)")],
         {"lnx_auditd_susp_special_file_creation_via_mknod_syscall", SYSINFO}, {}),
        ("exec from /tmp", [str(d / "truebin")], {"lnx_auditd_susp_exe_folders"}, {}),
        ("command as www-data", ["id"], {"lnx_auditd_web_rce", "lnx_auditd_user_discovery"}, {"uid": WWW}),
        ("sysinfo syscall", py + ["import ctypes; ctypes.CDLL(None).sysinfo(ctypes.create_string_buffer(128))"],
         {SYSINFO}, {}),
    ]


BENIGN = [["ls", "-l"], ["cat", "/etc/hostname"], ["true"], ["date"], ["echo", "hello"], ["sleep", "0"],
          ["sh", "-c", "echo ok > benign.txt"], ["wc", "-l", "/etc/hostname"], ["head", "-1", "/etc/passwd"]]
# (not GNU sort: it sizes its buffer with sysinfo(2), which the sysinfo discovery rule reports)


def _child(auid: int, uid: int | None = None):
    def pre() -> None:
        with open("/proc/self/loginuid", "w") as fh:
            fh.write(str(auid))
        if uid is not None:
            os.setgroups([])
            os.setgid(uid)
            os.setuid(uid)

    return pre


SYSTEM_PATH = "/usr/sbin:/usr/bin:/sbin:/bin"


def _run(argv: list[str], cwd: Path, auid: int, uid: int | None = None) -> None:
    """One exec of the resolved program (no PATH search, whose failed execve attempts would be
    activities of their own), argv[0] as given, under login uid ``auid``."""
    exe = argv[0] if "/" in argv[0] else shutil.which(argv[0], path=SYSTEM_PATH)
    assert exe, f"{argv[0]} not found"
    subprocess.run(argv, executable=exe, cwd=cwd, preexec_fn=_child(auid, uid), env={"PATH": SYSTEM_PATH},
                   stdin=subprocess.DEVNULL, capture_output=True, timeout=20, check=False)


def _prepare(d: Path, table: str) -> None:
    d.mkdir()
    for name in ("f", "a.jpg", "b.zip", ".bash_history"):
        (d / name).write_text("x\n")
    (d / "b64").write_text("aGVsbG8K\n")
    (d / "home" / ".config" / "systemd" / "user").mkdir(parents=True)
    shutil.copy("/bin/true", d / "truebin")
    subprocess.run(["nft", "add", "table", "inet", table], check=True)


def _drain(rx, sink: list, quiet: float = 0.4, limit: float = 5.0) -> None:
    deadline = time.monotonic() + limit
    last = time.monotonic()
    while time.monotonic() < deadline and time.monotonic() - last < quiet:
        got = list(rx.recv_messages(timeout=0.1))
        if got:
            sink.extend(got)
            last = time.monotonic()


def _require_tools() -> None:
    missing = [t for t in ("nft", "insmod", "nc", "chattr", "wget", "unzip", "setarch", "chage", "useradd")
               if shutil.which(t) is None]
    if missing:
        pytest.fail(f"tools missing for the activities: {', '.join(missing)} (scripts/setup.sh installs them)")


def test_auditd_rules_fire_once_per_activity_on_the_real_kernel(audit_state, tmp_path):  # noqa: F811
    assert AUDITD.is_dir(), f"shared Sigma rules missing at {AUDITD}"
    _require_tools()
    nl = audit_state
    d = tmp_path / "work"
    table = f"auditpipe_dt_{os.getpid()}"
    user = f"apdt{os.getpid()}"
    etc_audit_tmp = Path(f"/etc/audit/auditpipe-dt-{os.getpid()}.tmp")
    _prepare(d, table)
    activities = _activities(d, user, table)
    messages: list[tuple[int, bytes]] = []
    try:
        with open_unicast() as rx:
            for text in _kernel_rules(tmp_path):
                for item in compile_rules(text):
                    nl.add_rule(item.data)
            nl.set_status(enabled=1)
            for i, (_name, argv, _want, opts) in enumerate(activities):
                _run(argv, d, BASE + i, opts.get("uid"))
                _drain(rx, messages)
            for argv in BENIGN:
                _run(argv, d, BASELINE)
            _drain(rx, messages)
    finally:
        subprocess.run(["nft", "delete", "table", "inet", table], check=False, capture_output=True)
        subprocess.run(["userdel", user], check=False, capture_output=True)
        etc_audit_tmp.unlink(missing_ok=True)
    assert not Path("/etc/ld.so.preload").exists()

    fired = _detect(messages)
    report = []
    for i, (name, _argv, want, _opts) in enumerate(activities):
        got = fired.get(BASE + i, [])
        if sorted(got) != sorted(want):
            report.append(f"{name} (auid {BASE + i}): expected {sorted(want)}, got {sorted(got)}")
    baseline = fired.get(BASELINE, [])
    assert not report, "\n".join(report)
    assert baseline == [], f"benign baseline raised alerts: {baseline}"
    covered = set().union(*(w for _, _, w, _ in activities))
    assert len(covered) >= 20


def _detect(messages: list[tuple[int, bytes]]) -> dict[int, list[str]]:
    """Feed the kernel's messages through the pipeline + detection stage; alerts by auid."""
    rules = load_rules([str(AUDITD)])
    stems = {r.id: Path(r.path).stem for r in rules.sigma}
    stage = DetectStage(DetectConfig(rules=[str(AUDITD)]), "ecs", rules=rules)
    base = make_ecs_normalizer()
    fired: dict[int, list[str]] = {}

    def normalize(event):
        docs = base(event)
        auid = next((r.fields.get("auid") for r in event.records if r.fields.get("auid")), None)
        for alert in stage.process(event, docs, time.time())[len(docs):]:
            if auid is not None and auid.isdigit() and BASE <= int(auid) <= BASE + 99:
                fired.setdefault(int(auid), []).append(stems[alert["rule"]["id"]])
        return docs

    pipe = Pipeline(normalize, Reassembler())
    for mtype, payload in messages:
        pipe.feed_kernel(mtype, payload)
    pipe.flush()
    return fired
