"""The systemd unit and the default config that ``auditpipe install --systemd`` writes.

The unit is sandboxed as far as the collector still works: root, but with a capability bounding
set of what it uses (audit control/read, reading other users' files and /proc entries),
``NoNewPrivileges``, a read-only system (``ProtectSystem=strict``) except its state, log and
runtime folders and the folder where rules for the next boot go, netlink/unix/inet sockets only.
It runs *instead of* auditd (``Conflicts=auditd.service``: only one process can be the kernel's
audit daemon); ``beside_auditd`` renders the variant that runs next to auditd, reading the
kernel's multicast group (``[kernel] mode = "multicast"``) and leaving auditd's rules alone.

The files under ``packaging/`` are these renderings with the defaults (a test keeps them equal).
"""

from __future__ import annotations

from dataclasses import dataclass

from auditpipe.kernel.immutable import DEFAULT_PENDING_PATH

from .privileges import RUN_KEEPS

UNIT_NAME = "auditpipe.service"
CONFIG_PATH = "/etc/auditpipe/auditpipe.toml"


@dataclass(frozen=True)
class ServiceLayout:
    """What varies between installs: the auditpipe executable, and whether auditd stays."""

    executable: str = "/usr/local/bin/auditpipe"
    beside_auditd: bool = False

    def unit(self) -> str:
        return render_unit(self)

    def config(self) -> str:
        return render_config(self)


def render_unit(layout: ServiceLayout) -> str:
    pending_dir = DEFAULT_PENDING_PATH.rsplit("/", 1)[0]
    ordering = ("After=network-online.target auditd.service\n"
                "Wants=network-online.target\n") if layout.beside_auditd else (
                "After=network-online.target local-fs.target\n"
                "Wants=network-online.target\n"
                "# only one process can be the kernel's audit daemon; to run beside auditd use\n"
                "# `auditpipe install --systemd --beside-auditd` (multicast mode)\n"
                "Conflicts=auditd.service\n")
    return f"""\
# Installed by `auditpipe install --systemd`{' --beside-auditd' if layout.beside_auditd else ''}.
[Unit]
Description=auditpipe: Linux audit collection, normalization and shipping
{ordering}
[Service]
Type=simple
ExecStart={layout.executable} --log-format json run --config {CONFIG_PATH}
Restart=on-failure
RestartSec=2s
TimeoutStopSec=30s
# state (durable queue, checkpoints), its own log files, the status file
StateDirectory=auditpipe
LogsDirectory=auditpipe
RuntimeDirectory=auditpipe
ConfigurationDirectory=auditpipe
UMask=0077
# what the collector uses: the audit socket (control, multicast read), reading other users'
# files and /proc entries (rules, tailed logs, the process table, /proc/PID/exe)
CapabilityBoundingSet={' '.join(RUN_KEEPS)}
NoNewPrivileges=yes
ProtectSystem=strict
ReadWritePaths=-{pending_dir}
ProtectHome=read-only
PrivateTmp=yes
PrivateDevices=yes
ProtectKernelTunables=yes
ProtectKernelModules=yes
ProtectKernelLogs=yes
ProtectControlGroups=yes
ProtectClock=yes
ProtectHostname=yes
RestrictNamespaces=yes
RestrictRealtime=yes
RestrictSUIDSGID=yes
LockPersonality=yes
RestrictAddressFamilies=AF_NETLINK AF_UNIX AF_INET AF_INET6
SystemCallArchitectures=native
LimitNOFILE=65536

[Install]
WantedBy=multi-user.target
"""


def render_config(layout: ServiceLayout) -> str:
    mode = "multicast" if layout.beside_auditd else "auto"
    rules = ("files = []                           # auditd owns the rules beside it"
             if layout.beside_auditd else
             'files = ["/etc/audit/rules.d/*.rules"]')
    return f"""\
# /etc/auditpipe/auditpipe.toml, installed by `auditpipe install --systemd`. See docs/config.md
# and docs/operations.md. An option left out keeps its default.

[kernel]
mode = "{mode}"                       # auto | unicast | multicast (beside auditd)

[rules]
{rules}
check_interval = 10.0                # compare the kernel's rules with ours (seconds)
on_drift = "alert"                   # alert | reinstall

[[outputs]]
type = "file"
path = "/var/log/auditpipe/events.jsonl"
max_bytes = 104857600
generations = 5

[status]
path = "/run/auditpipe/status.json"

[metrics]
# listen = "127.0.0.1:9464"          # Prometheus metrics

[heartbeat]
interval = 60.0                      # an auditpipe heartbeat event down the outputs; 0: off
"""
