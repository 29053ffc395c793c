"""ECS field groups built from a coalesced event: user.*, group.*, related.user, file.*,
source/destination.

Names: what auditd wrote in ENRICHED records (`UID="alice"`) wins; then the resolver; a field
with neither has only its id. The shapes follow auditbeat's auditd module so that Auditd
Manager dashboards and rules work unchanged.
"""

from __future__ import annotations

from auditpipe.normalize.idresolve import is_real_name

__all__ = ["Names", "build_user", "apply_entities", "drop_redundant_effective", "build_file", "build_address", "split_context"]

# uid/gid field → (user.<sub>, under .group)
_ID_SLOT = {
    "uid": (None, False), "gid": (None, True),
    "euid": ("effective", False), "egid": ("effective", True),
    "suid": ("saved", False), "sgid": ("saved", True),
    "fsuid": ("filesystem", False), "fsgid": ("filesystem", True),
    "auid": ("audit", False),
}
_UNSET_VALUES = frozenset(("", "unset", "4294967295", "-1"))
_CONTEXT_PARTS = ("user", "role", "domain", "level", "category")


def split_context(ctx: str) -> dict:
    """SELinux `user:role:domain:level[:category]` → {user, role, domain, level, category}."""
    return dict(zip(_CONTEXT_PARTS, ctx.split(":", 4)))


class Names:
    """Name lookups for one event: its ENRICHED interpretations first, then the resolver."""

    __slots__ = ("enriched", "resolver")

    def __init__(self, enriched: dict | None, resolver):
        self.enriched = enriched
        self.resolver = resolver

    def of_id(self, key: str | None, value: str, group: bool) -> str | None:
        """Name of uid/gid `value`, found in field `key` (None when it came from elsewhere)."""
        enriched = self.enriched
        if enriched is not None and key is not None:
            name = enriched.get(key.upper())
            if name is not None and is_real_name(name):
                return name
        resolver = self.resolver
        if resolver is None:
            return None
        return resolver.group(value) if group else resolver.user(value)

    def id_of(self, name: str, group: bool) -> str | None:
        resolver = self.resolver
        if resolver is None:
            return None
        return resolver.gid_of(name) if group else resolver.uid_of(name)


def build_user(ids: dict, names: Names, selinux: dict | None) -> dict:
    """user.{id,name,group,effective,saved,filesystem,audit,<other>} from the uid/gid fields."""
    user: dict = {}
    for k, v in ids.items():
        if v == "unset":
            continue
        slot = _ID_SLOT.get(k)
        if slot is None:
            sub, grp = k, False
        else:
            sub, grp = slot
        if sub is None:
            d = user
        else:
            d = user.get(sub)
            if d is None:
                d = user[sub] = {}
        is_gid = k[-3:] == "gid"
        if grp:
            g = d.get("group")
            if g is None:
                g = d["group"] = {}
            d = g
        d["id"] = v
        name = names.of_id(k, v, is_gid)
        if name is not None:
            d["name"] = name
    if ids and selinux:
        user["selinux"] = selinux
    return user


def _entity(value: str | None, key: str | None, group: bool, names: Names) -> tuple[str, str]:
    """An ECS entity (id, name) from a value that is an id, a name, or unset ("" = absent)."""
    if value is None or value in _UNSET_VALUES:
        return "", ""
    if value.isdigit():
        return value, (names.of_id(key, value, group) or "")
    return (names.id_of(value, group) or ""), value


def apply_entities(doc: dict, user: dict, norm, summary, data: dict, ids: dict, names: Names) -> None:
    """Fill user / user.effective / user.target / user.changes / group from the table's `users`
    mappings, then related.user."""
    related = None
    for target, kind, key in norm.users:
        if kind == "actor.primary":
            value, key = summary.actor_primary, summary.actor_primary_key
        elif kind == "actor.secondary":
            value, key = summary.actor_secondary, summary.actor_secondary_key
        elif kind == "object.primary":
            value, key = summary.object_primary, summary.object_primary_key
        elif kind == "object.secondary":
            value, key = summary.object_secondary, summary.object_secondary_key
        elif kind == "data":
            value = data.get(key)
        else:
            value = ids.get(key)
        group = target == "group"
        ent_id, ent_name = _entity(value, key, group, names)
        if group:
            d = doc.get("group")
            if d is None:
                d = doc["group"] = {}
        elif target == "user":
            d = user
        else:
            sub = target[5:]
            d = user.get(sub)
            if d is None:
                d = user[sub] = {}
        if ent_id:
            d["id"] = ent_id
        else:
            d.pop("id", None)
        if ent_name:
            d["name"] = ent_name
            if not group:
                if related is None:
                    related = set()
                related.add(ent_name)
        else:
            d.pop("name", None)
        if not d:
            if group:
                del doc["group"]
            elif target != "user":
                del user[target[5:]]
    if related:
        doc["related"] = {"user": sorted(related)}


def drop_redundant_effective(user: dict) -> None:
    """user.effective goes when its id or name repeats user's (as auditbeat: the whole subtree)."""
    eff = user.get("effective")
    if eff is not None:
        uid = user.get("id")
        name = user.get("name")
        if (uid is not None and eff.get("id") == uid) or (name is not None and eff.get("name") == name):
            del user["effective"]


def build_file(item: dict, enriched: dict | None, names: Names) -> dict:
    """file.* from the PATH item that is the event's object."""
    f: dict = {}
    v = item.get("name")
    if v is not None:
        f["path"] = v
    # The device holding the file is `dev`; `rdev` is the device a device node stands for.
    # auditbeat writes rdev here (so "00:00" for every regular file); the kernel's meaning wins.
    v = item.get("dev")
    if v is not None:
        f["device"] = v
    v = item.get("inode")
    if v is not None:
        f["inode"] = v
    v = item.get("mode")
    if v is not None:
        try:
            f["mode"] = f"{int(v, 8) & 0o777:04o}"
        except ValueError:
            pass
    sub = Names(enriched, names.resolver)
    v = item.get("ouid")
    if v is not None:
        f["uid"] = v
        owner = sub.of_id("ouid", v, False)
        if owner is not None:
            f["owner"] = owner
    v = item.get("ogid")
    if v is not None:
        f["gid"] = v
        grp = sub.of_id("ogid", v, True)
        if grp is not None:
            f["group"] = grp
    sel = None
    for part in _CONTEXT_PARTS:
        v = item.get("obj_" + part)
        if v is not None:
            if sel is None:
                sel = {}
            sel[part] = v
    if sel is not None:
        f["selinux"] = sel
    return f


def build_address(sock: dict) -> dict | None:
    """source/destination {ip, port, path, address} from a decoded SOCKADDR; None for families
    without an address (netlink)."""
    out: dict = {}
    ip = sock.get("addr")
    if ip is not None:
        out["ip"] = ip
        out["address"] = ip
    port = sock.get("port")
    if port is not None:
        out["port"] = port
    path = sock.get("path")
    if path is not None:
        out["path"] = path
        out["address"] = path
    return out or None
