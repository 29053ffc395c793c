"""Read the collecting host's facts once, at start, for ``normalize.agent.HostMetadata``:
what Elastic Agent's host and agent processors put in host.* and agent.*."""

from __future__ import annotations

import fcntl
import os
import platform
import socket
import struct
import uuid
from collections.abc import Sequence
from typing import Any

import auditpipe
from auditpipe.config import Config
from auditpipe.normalize.agent import DEFAULT_DATASET, DEFAULT_TAGS, HostMetadata
from auditpipe.sinks.elasticsearch import ElasticsearchOutput

__all__ = ["ecs_agent_options", "read_host_metadata"]

_SIOCGIFADDR = 0x8915
#: agent.id is derived from the machine id, so it stays the same across restarts and reinstalls
_AGENT_NS = uuid.UUID("6f1c3b0e-5d2a-4f0e-9b7c-2a8e4d1f0a51")


def ecs_agent_options(cfg: Config) -> dict[str, Any]:
    """The ECS normalizer's host_metadata/document_ids for a configuration: on with
    ``[normalize] host_metadata`` or any elasticsearch output (whose dataset and namespace the
    data_stream fields then name: the first one's)."""
    es = [o for o in cfg.outputs if isinstance(o, ElasticsearchOutput)]
    if cfg.normalize.format != "ecs" or not (es or cfg.normalize.host_metadata):
        return {}
    target = es[0] if es else ElasticsearchOutput()
    meta = read_host_metadata(target.dataset, target.namespace,
                              DEFAULT_TAGS if cfg.normalize.tags is None else cfg.normalize.tags)
    return {"host_metadata": meta, "document_ids": bool(es)}


def read_host_metadata(dataset: str = DEFAULT_DATASET, namespace: str = "default",
                       tags: Sequence[str] = DEFAULT_TAGS, root: str = "/") -> HostMetadata:
    hostname = socket.gethostname()
    u = platform.uname()
    host: dict = {"name": hostname, "hostname": hostname, "architecture": u.machine,
                  "os": _os_fields(os.path.join(root, "etc/os-release"), u.release)}
    ips, macs = _addresses(os.path.join(root, "sys/class/net"), os.path.join(root, "proc/net/if_inet6"))
    if ips:
        host["ip"] = ips
    if macs:
        host["mac"] = macs
    machine_id = _read(os.path.join(root, "etc/machine-id")).strip()
    if machine_id:
        host["id"] = machine_id
    agent = {"type": "auditpipe", "version": auditpipe.__version__,
             "id": str(uuid.uuid5(_AGENT_NS, machine_id or hostname)),
             "ephemeral_id": str(uuid.uuid4()), "name": hostname}
    return HostMetadata(host=host, agent=agent, dataset=dataset, namespace=namespace, tags=tuple(tags))


def _read(path: str) -> str:
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return f.read()
    except OSError:
        return ""


def _os_fields(os_release: str, kernel: str) -> dict[str, str]:
    kv = {}
    for line in _read(os_release).splitlines():
        k, sep, v = line.partition("=")
        if sep:
            kv[k.strip()] = v.strip().strip('"').strip("'")
    out = {"type": "linux", "kernel": kernel}
    for ecs_key, keys in (("name", ("NAME",)), ("platform", ("ID",)), ("version", ("VERSION", "VERSION_ID")),
                          ("family", ("ID_LIKE", "ID"))):  # (no codename: not an ECS field)
        for k in keys:
            if kv.get(k):
                out[ecs_key] = kv[k].split()[0] if ecs_key == "family" else kv[k]
                break
    return out


def _addresses(sys_net: str, if_inet6: str) -> tuple[list[str], list[str]]:
    """Non-loopback IPv4/IPv6 addresses and MACs (ECS form: upper case, dashes)."""
    ips: list[str] = []
    macs: list[str] = []
    try:
        names = sorted(os.listdir(sys_net))
    except OSError:
        names = []
    for name in names:
        if name == "lo":
            continue
        mac = _read(os.path.join(sys_net, name, "address")).strip()
        if mac and mac != "00:00:00:00:00:00" and mac.upper().replace(":", "-") not in macs:
            macs.append(mac.upper().replace(":", "-"))
        ip = _ipv4_of(name)
        if ip:
            ips.append(ip)
    for line in _read(if_inet6).splitlines():
        parts = line.split()
        if len(parts) == 6 and parts[5] != "lo":
            ips.append(socket.inet_ntop(socket.AF_INET6, bytes.fromhex(parts[0])))
    return ips, macs


def _ipv4_of(ifname: str) -> str | None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            res = fcntl.ioctl(s.fileno(), _SIOCGIFADDR, struct.pack("256s", ifname.encode()[:15]))
        except OSError:
            return None
    return socket.inet_ntoa(res[20:24])
