"""What a process's cgroup path says about where it runs: container id and runtime, Kubernetes
pod, systemd unit. Sans-I/O: fed the text of ``/proc/<pid>/cgroup``.

Path shapes, as each runtime names its cgroups (systemd driver / cgroupfs driver):

==========  ===============================================  ===============================
runtime     systemd driver                                   cgroupfs driver
==========  ===============================================  ===============================
docker      ``…/docker-<64 hex>.scope``                      ``/docker/<64 hex>``
containerd  ``…/kubepods-…-pod<uid>.slice/cri-containerd-<64 hex>.scope``  ``/kubepods/…/pod<uid>/<64 hex>``
cri-o       ``…/crio-<64 hex>.scope``                        —
podman      ``…/libpod-<64 hex>.scope``                      ``/libpod_parent/libpod-<64 hex>``
lxc         ``/lxc.payload.<name>``                          ``/lxc/<name>``
==========  ===============================================  ===============================

A bare 64-hex directory under a pod says "a container" but not which runtime: ``runtime`` is
then None rather than a guess. The runtimes' helper processes (``…-conmon-….scope``,
``lxc.monitor.…``) are not containers.
"""

from __future__ import annotations

import re

__all__ = ["CgroupInfo", "parse_cgroup"]

_SCOPE = re.compile(r"^(docker|cri-containerd|crio|libpod)-([0-9a-f]{64})\.scope$")
_RUNTIME = {"docker": "docker", "cri-containerd": "containerd", "crio": "cri-o", "libpod": "podman"}
_HEX64 = re.compile(r"^(?:libpod-)?([0-9a-f]{64})$")
_POD = re.compile(r"pod([0-9a-f]{8}[-_][0-9a-f]{4}[-_][0-9a-f]{4}[-_][0-9a-f]{4}[-_][0-9a-f]{12})(?:\.slice)?$")
_UNIT = re.compile(r"^[^/]+\.(service|scope)$")


class CgroupInfo:
    """The facts one cgroup path gives; shared by every process in that cgroup (read-only)."""

    __slots__ = ("container_id", "container_name", "path", "pod_uid", "raw", "runtime", "unit")

    def __init__(self, path: str, container_id: str | None = None, runtime: str | None = None,
                 container_name: str | None = None, pod_uid: str | None = None,
                 unit: str | None = None) -> None:
        self.raw = ""  # the /proc/<pid>/cgroup text it was read from
        self.path = path
        self.container_id = container_id
        self.runtime = runtime
        self.container_name = container_name
        self.pod_uid = pod_uid
        self.unit = unit

    def ecs(self, doc: dict) -> None:
        """Add container.*, orchestrator.* and systemd.unit to an ECS document."""
        if self.container_id is not None:
            c = {"id": self.container_id}
            if self.runtime is not None:
                c["runtime"] = self.runtime
            if self.container_name is not None:
                c["name"] = self.container_name
            doc["container"] = c
        if self.pod_uid is not None:
            doc["orchestrator"] = {"type": "kubernetes",
                                   "resource": {"type": "pod", "id": self.pod_uid}}
        if self.unit is not None:
            doc["systemd"] = {"unit": self.unit}

    def as_dict(self) -> dict:
        d: dict = {}
        self.ecs(d)
        return d


def _from_path(path: str) -> CgroupInfo:
    parts = [p for p in path.split("/") if p]
    cid = runtime = name = pod = unit = None
    for i, p in enumerate(parts):
        m = _SCOPE.match(p)
        if m:
            cid, runtime = m.group(2), _RUNTIME[m.group(1)]
            continue
        m = _POD.search(p)
        if m and ("kubepods" in path):
            pod = m.group(1).replace("_", "-")
            continue
        if p.startswith("lxc.payload.") and len(p) > 12:
            cid = name = p[12:]
            runtime = "lxc"
            continue
        if i > 0 and parts[i - 1] == "lxc" and cid is None:
            cid = name = p
            runtime = "lxc"
            continue
        m = _HEX64.match(p)
        if m and cid is None:
            cid = m.group(1)
            prev = parts[i - 1] if i else ""
            runtime = "docker" if prev == "docker" else "podman" if prev == "libpod_parent" else None
            continue
        if _UNIT.match(p) and cid is None:
            unit = p
    return CgroupInfo(path, cid, runtime, name, pod, None if cid else unit)


def parse_cgroup(text: str) -> CgroupInfo:
    """Read ``/proc/<pid>/cgroup`` text (v1 ``N:ctrl:/path`` lines and the v2 ``0::/path``).

    The v2 path is the process's place when it says anything; otherwise the v1 hierarchies are
    looked at in order (``name=systemd`` first) for a container, then a unit."""
    v2: list[str] = []
    systemd: list[str] = []
    others: list[str] = []
    for line in text.splitlines():
        hid, _, rest = line.partition(":")
        ctrl, _, path = rest.partition(":")
        if not path or path == "/":
            continue
        (v2 if hid == "0" and ctrl == "" else systemd if ctrl == "name=systemd" else others).append(path)
    paths = v2 + systemd + others
    best: CgroupInfo | None = None
    for p in paths:
        info = _from_path(p)
        if info.container_id is not None:
            best = info
            break
        if best is None and info.unit is not None:
            best = info
    if best is None:
        best = CgroupInfo(paths[0] if paths else "/")
    best.raw = text
    return best

