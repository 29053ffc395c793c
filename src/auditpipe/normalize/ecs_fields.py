"""ECS field groups built from a coalesced event: user.*, group.*, related.user, file.*,
source/destination.

Names: what auditd wrote in ENRICHED records (`UID="alice"`) wins; then the resolver; a field
with neither has only its id. The shapes follow auditbeat's auditd module so that Auditd
Manager dashboards and rules work unchanged.
"""

from __future__ import annotations

import time
from typing import Any

from auditpipe.normalize.idresolve import is_real_name

__all__ = ["Names", "apply_entities", "build_address", "build_file", "build_user", "drop_redundant_effective"]

# uid/gid field → (user.<sub>, under .group)
_ID_SLOT = {
    "uid": (None, False), "gid": (None, True),
    "euid": ("effective", False), "egid": ("effective", True),
    "suid": ("saved", False), "sgid": ("saved", True),
    "fsuid": ("filesystem", False), "fsgid": ("filesystem", True),
    "auid": ("audit", False),
}
# uid/gid field → (user.<sub>, under .group, ENRICHED key, is a gid)
_ID_INFO = {k: (sub, grp, k.upper(), k[-3:] == "gid") for k, (sub, grp) in _ID_SLOT.items()}
_UNSET_VALUES = frozenset(("", "unset", "4294967295", "-1"))
_CONTEXT_PARTS = ("user", "role", "domain", "level", "category")


_MISS = object()


class Names:
    """Name lookups: the event's ENRICHED interpretations first, then the resolver.

    One per normalizer. The resolver's answers are memoized here for `memo_ttl` seconds (a dict
    get instead of a call chain per uid); `tick()` is called per event and clears the memo when
    it is due, so renamed accounts and lookups that were still running get asked again.
    """

    __slots__ = ("resolver", "users", "groups", "identities", "memo_ttl", "expires", "count", "clock")

    def __init__(self, resolver, memo_ttl: float = 10.0, clock=time.monotonic):
        self.resolver = resolver
        self.users: dict = {}
        self.groups: dict = {}
        self.identities: dict = {}
        self.memo_ttl = memo_ttl
        self.clock = clock  # injected: the memo's age is the only time the normalizer looks at
        self.expires = clock() + memo_ttl
        self.count = 0

    def tick(self) -> None:
        self.count += 1
        if self.count & 255 == 0:
            now = self.clock()
            if now >= self.expires or len(self.identities) > 4096 or len(self.users) + len(self.groups) > 65536:
                self.users.clear()
                self.groups.clear()
                self.identities.clear()
                self.expires = now + self.memo_ttl

    def lookup(self, value: str, group: bool) -> str | None:
        """Name of uid/gid `value` from the resolver (memoized)."""
        memo = self.groups if group else self.users
        name: Any = memo.get(value, _MISS)
        if name is _MISS:
            resolver = self.resolver
            if resolver is None:
                name = None
            else:
                name = resolver.group(value) if group else resolver.user(value)
            memo[value] = name
        return name

    def of_id(self, key: str | None, value: str, group: bool, enriched: dict | None) -> str | None:
        """Name of uid/gid `value`, found in field `key` (None when it came from elsewhere)."""
        if enriched is not None and key is not None:
            name = enriched.get(key.upper())
            if name is not None and is_real_name(name):
                return name
        return self.lookup(value, group)

    def id_of(self, name: str, group: bool) -> str | None:
        resolver = self.resolver
        if resolver is None:
            return None
        return resolver.gid_of(name) if group else resolver.uid_of(name)


def _enriched_name(enriched: dict, ekey: str) -> str | None:
    name = enriched.get(ekey)
    if name is None or name[:8] == "unknown(" or name == "unset" or name == "?" or not name:
        return None
    return name


_STD_IDS = ("auid", "uid", "gid", "euid", "suid", "fsuid", "egid", "sgid", "fsgid")


def build_user(ids: dict, names: Names, enriched: dict | None, selinux: dict | None, id_names: dict,
               final: bool = False) -> dict:
    """user.{id,name,group,effective,saved,filesystem,audit,<other>} from the uid/gid fields.
    Fills `id_names` (field → name) for the summary's actor. `final`: nothing changes user.* after
    this (no table `users` mapping), so a redundant user.effective is left out here."""
    if len(ids) == 9 and ids.keys() == _STD_KEYSET:
        return _build_std_user(ids, names, enriched, selinux, id_names, final)
    user = build_any_user(ids, names, enriched, selinux, id_names)
    if final:
        drop_redundant_effective(user)
    return user


def build_any_user(ids: dict, names: Names, enriched: dict | None, selinux: dict | None, id_names: dict) -> dict:
    """build_user for any set of uid/gid fields (the general path)."""
    user: dict = {}
    lookup = names.lookup
    for k, v in ids.items():
        if v == "unset":
            continue
        info = _ID_INFO.get(k)
        if info is None:
            info = (k, False, k.upper(), k[-3:] == "gid")
        sub, grp, ekey, is_gid = info
        if sub is None:
            d = user
        else:
            sub_d = user.get(sub)
            if sub_d is None:
                sub_d = user[sub] = {}
            d = sub_d
        if grp:
            g = d.get("group")
            if g is None:
                g = d["group"] = {}
            d = g
        d["id"] = v
        name = _enriched_name(enriched, ekey) if enriched is not None else None
        if name is None:
            name = lookup(v, is_gid)
        if name is not None:
            d["name"] = name
            id_names[k] = name
    if selinux and ids:
        user["selinux"] = selinux
    return user


_STD_KEYSET = frozenset(_STD_IDS)


_STD_SLOTS = (("auid", "AUID", False), ("uid", "UID", False), ("gid", "GID", True), ("euid", "EUID", False),
              ("suid", "SUID", False), ("fsuid", "FSUID", False), ("egid", "EGID", True),
              ("sgid", "SGID", True), ("fsgid", "FSGID", True))


def _std_names(ids: dict, names: Names, enriched: dict | None) -> tuple:
    out = []
    for k, ekey, grp in _STD_SLOTS:
        name = _enriched_name(enriched, ekey) if enriched is not None else None
        if name is None:
            name = names.lookup(ids[k], grp)
        out.append(name)
    return tuple(out)


def _build_std_user(ids: dict, names: Names, enriched: dict | None, selinux: dict | None,
                    id_names: dict[str, str], final: bool) -> dict:
    """build_user for the nine ids of a SYSCALL record. The names of one identity (ids plus
    ENRICHED interpretations) are memoized with the resolver's answers; dicts are built fresh.
    When `final`, user.effective is built only if drop_redundant_effective would keep it."""
    vals = auid, uid, gid, euid, suid, fsuid, egid, sgid, fsgid = (
        ids["auid"], ids["uid"], ids["gid"], ids["euid"], ids["suid"], ids["fsuid"], ids["egid"], ids["sgid"],
        ids["fsgid"])
    # The parser shares one ENRICHED dict between records with the same text: the memo is keyed
    # by that dict's identity (kept alive in the entry, so the id cannot be reused while it is
    # there) rather than by its values, which would be hashed and compared on every event.
    key = (vals, id(enriched)) if enriched is not None else vals
    memo = names.identities
    hit = memo.get(key)
    if hit is None or hit[2] is not enriched:
        got = _std_names(ids, names, enriched)
        hit = memo[key] = (got, {k: n for k, n in zip(_STD_IDS, got, strict=True) if n is not None}, enriched)
    got, named, _ = hit
    id_names.update(named)
    n_auid, n_uid, n_gid, n_euid, n_suid, n_fsuid, n_egid, n_sgid, n_fsgid = got
    user = {"id": uid, "name": n_uid} if n_uid is not None else {"id": uid}
    user["group"] = {"id": gid, "name": n_gid} if n_gid is not None else {"id": gid}
    if not final or (euid != uid and (n_uid is None or n_euid != n_uid)):
        d = {"id": euid, "name": n_euid} if n_euid is not None else {"id": euid}
        d["group"] = {"id": egid, "name": n_egid} if n_egid is not None else {"id": egid}
        user["effective"] = d
    d = {"id": suid, "name": n_suid} if n_suid is not None else {"id": suid}
    d["group"] = {"id": sgid, "name": n_sgid} if n_sgid is not None else {"id": sgid}
    user["saved"] = d
    d = {"id": fsuid, "name": n_fsuid} if n_fsuid is not None else {"id": fsuid}
    d["group"] = {"id": fsgid, "name": n_fsgid} if n_fsgid is not None else {"id": fsgid}
    user["filesystem"] = d
    if auid != "unset":
        user["audit"] = {"id": auid, "name": n_auid} if n_auid is not None else {"id": auid}
    if selinux:
        user["selinux"] = selinux
    return user


def _entity(value: str | None, key: str | None, group: bool, names: Names, enriched) -> tuple[str, str]:
    """An ECS entity (id, name) from a value that is an id, a name, or unset ("" = absent)."""
    if value is None or value in _UNSET_VALUES:
        return "", ""
    if value.isdecimal():
        return value, (names.of_id(key, value, group, enriched) or "")
    return (names.id_of(value, group) or ""), value


def apply_entities(doc: dict, user: dict, norm, summary, data: dict, ids: dict, names: Names, enriched) -> None:
    """Fill user / user.effective / user.target / user.changes / group from the table's `users`
    mappings, then related.user."""
    related: set[str] | None = None
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
        ent_id, ent_name = _entity(value, key, group, names, enriched)
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


#: permission bits → file.mode text ("0755"): a lookup instead of a format with a spec, which is a
#: generic call in compiled code
_PERMS = tuple(f"{n:04o}" for n in range(0o1000))


def _owner(f: dict, item: dict, key: str, ekey: str, id_field: str, name_field: str, group: bool,
           enriched: dict | None, names: Names) -> None:
    v = item.get(key)
    if v is not None:
        f[id_field] = v
        name = _enriched_name(enriched, ekey) if enriched is not None else None
        if name is None:
            name = names.lookup(v, group)
        if name is not None:
            f[name_field] = name


# The device holding the file is `dev`; `rdev` is the device a device node stands for.
# auditbeat writes rdev as file.device (so "00:00" for every regular file); the kernel's meaning wins.
def build_file(item: dict, enriched: dict | None, names: Names) -> dict:
    """file.* from the PATH item that is the event's object (direct reads: this runs per event)."""
    f: dict = {}
    v = item.get("name")
    if v is not None:
        f["path"] = v
    v = item.get("dev")
    if v is not None:
        f["device"] = v
    v = item.get("inode")
    if v is not None:
        f["inode"] = v
    v = item.get("mode")
    if v is not None:
        try:
            f["mode"] = _PERMS[int(v, 8) & 0o777]
        except ValueError:
            pass
    _owner(f, item, "ouid", "OUID", "uid", "owner", False, enriched, names)
    _owner(f, item, "ogid", "OGID", "gid", "group", True, enriched, names)
    if "obj_user" in item or "obj_role" in item:
        sel = {}
        for part in _CONTEXT_PARTS:
            v = item.get("obj_" + part)
            if v is not None:
                sel[part] = v
        f["selinux"] = sel
    return f


def build_address(sock: dict) -> dict | None:
    """source/destination {ip, port, address} from a decoded SOCKADDR (a unix socket's path is
    its address); None for families without an address (netlink)."""
    out: dict = {}
    ip = sock.get("addr")
    if ip is not None:
        out["ip"] = ip
        out["address"] = ip
    port = sock.get("port")
    if port is not None:
        out["port"] = port
    path = sock.get("path")
    if path is not None:  # ECS has no source/destination.path: the integration renames it so
        out["address"] = path
    return out or None
