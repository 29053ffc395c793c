"""uid/gid ↔ name resolution for the ECS normalizer.

Two sources:
- files (`--passwd FILE --group FILE`): another host's passwd/group read once, for offline
  forensics; lookups are plain dict gets.
- this host (pwd/grp, i.e. NSS): answers are cached for `ttl` seconds, failures too (for
  `negative_ttl`), so a busy uid costs one dict get. NSS may be LDAP/SSSD and hang, so a miss
  is looked up in a worker thread and waited for at most `timeout` seconds, once; if it is
  slower, callers get None ("unknown") without waiting until the answer lands in the cache.

`enabled=False` resolves nothing (names then come only from ENRICHED input).
"""

from __future__ import annotations

import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor

__all__ = ["IdResolver", "read_passwd", "read_group", "is_real_name"]

_UNSET = ("unset", "4294967295", "-1", "")


def is_real_name(name: str | None) -> bool:
    """Whether an ENRICHED interpretation is a name (auditd writes `unknown(N)` when it had none)."""
    if not name:
        return False
    return name not in ("unset", "?") and not name.startswith("unknown(")


def _read_db(path: str) -> tuple[dict[str, str], dict[str, str]]:
    by_id: dict[str, str] = {}
    by_name: dict[str, str] = {}
    with open(path, encoding="utf-8", errors="surrogateescape") as f:
        for line in f:
            if not line.strip() or line.startswith("#"):
                continue
            parts = line.rstrip("\n").split(":")
            if len(parts) < 3 or not parts[2].isdecimal():
                continue
            name, num = parts[0], str(int(parts[2]))
            by_id.setdefault(num, name)  # the first entry wins, as getpwuid does
            by_name.setdefault(name, num)
    return by_id, by_name


def read_passwd(path: str) -> tuple[dict[str, str], dict[str, str]]:
    """passwd(5) → (uid → name, name → uid)."""
    return _read_db(path)


def read_group(path: str) -> tuple[dict[str, str], dict[str, str]]:
    """group(5) → (gid → name, name → gid)."""
    return _read_db(path)


def _nss_user(uid: str):
    import pwd

    try:
        return pwd.getpwuid(int(uid)).pw_name
    except (KeyError, ValueError, OverflowError):
        return None


def _nss_group(gid: str):
    import grp

    try:
        return grp.getgrgid(int(gid)).gr_name
    except (KeyError, ValueError, OverflowError):
        return None


def _nss_uid_of(name: str):
    import pwd

    try:
        return str(pwd.getpwnam(name).pw_uid)
    except (KeyError, ValueError):
        return None


def _nss_gid_of(name: str):
    import grp

    try:
        return str(grp.getgrnam(name).gr_gid)
    except (KeyError, ValueError):
        return None


class _Cache:
    """One direction of one database (uid → name, ...): answers with expiry, lookups in flight."""

    __slots__ = ("lookup", "answers", "pending", "owner")

    def __init__(self, lookup, owner: IdResolver):
        self.lookup = lookup
        self.answers: dict[str, tuple[str | None, float]] = {}
        self.pending: dict[str, Future] = {}
        self.owner = owner

    def get(self, key: str) -> str | None:
        hit = self.answers.get(key)
        now = time.monotonic()
        if hit is not None and hit[1] > now:
            return hit[0]
        return self.owner._miss(self, key, now)


class IdResolver:
    """Resolve uids and gids (as the decimal strings audit writes) to names and back.

    `user(uid)`, `group(gid)`, `uid_of(name)`, `gid_of(name)` return None when unknown, unset
    (4294967295, "unset") or when this host's lookup is still running.
    """

    def __init__(self, passwd_file: str | None = None, group_file: str | None = None, enabled: bool = True,
                 ttl: float = 300.0, negative_ttl: float = 60.0, timeout: float = 0.05):
        self.enabled = enabled
        self.ttl = ttl
        self.negative_ttl = negative_ttl
        self.timeout = timeout
        self.offline = passwd_file is not None or group_file is not None
        self._executor: ThreadPoolExecutor | None = None
        self._lock = threading.Lock()
        if self.offline:
            # Only the given files count: a host's own accounts must not leak into another's log.
            users = read_passwd(passwd_file) if passwd_file else ({}, {})
            groups = read_group(group_file) if group_file else ({}, {})
            self._uid_name, self._user_uid = users
            self._gid_name, self._group_gid = groups
        else:
            self._caches = (_Cache(_nss_user, self), _Cache(_nss_group, self),
                            _Cache(_nss_uid_of, self), _Cache(_nss_gid_of, self))

    # -- the four lookups -----------------------------------------------------------------------

    def user(self, uid: str) -> str | None:
        if not self.enabled or uid in _UNSET:
            return None
        if self.offline:
            return self._uid_name.get(uid)
        return self._caches[0].get(uid)

    def group(self, gid: str) -> str | None:
        if not self.enabled or gid in _UNSET:
            return None
        if self.offline:
            return self._gid_name.get(gid)
        return self._caches[1].get(gid)

    def uid_of(self, name: str) -> str | None:
        if not self.enabled or not name:
            return None
        if self.offline:
            return self._user_uid.get(name)
        return self._caches[2].get(name)

    def gid_of(self, name: str) -> str | None:
        if not self.enabled or not name:
            return None
        if self.offline:
            return self._group_gid.get(name)
        return self._caches[3].get(name)

    # -- this host: cache misses ------------------------------------------------------------------

    def _miss(self, cache: _Cache, key: str, now: float) -> str | None:
        with self._lock:
            fut = cache.pending.get(key)
            if fut is not None:
                # already asked and still slow: do not wait again, one stall per lookup is enough
                return fut.result() if fut.done() else None
            if self._executor is None:
                self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="auditpipe-idresolve")
            fut = self._executor.submit(self._resolve, cache, key)
            cache.pending[key] = fut
        try:
            return fut.result(timeout=self.timeout)
        except TimeoutError:
            return None  # still running: "unknown" for now, cached when it lands

    def _resolve(self, cache: _Cache, key: str) -> str | None:
        try:
            value = cache.lookup(key)
        except Exception:  # NSS backends can raise anything; a failure is an answer too
            value = None
        ttl = self.ttl if value is not None else self.negative_ttl
        if len(cache.answers) > 65536:  # a crafted log full of distinct ids must not grow us
            cache.answers.clear()
        cache.answers[key] = (value, time.monotonic() + ttl)
        with self._lock:
            cache.pending.pop(key, None)
        return value

    def close(self) -> None:
        """Stop the worker thread (lookups still running are abandoned)."""
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)
            self._executor = None

    def __repr__(self) -> str:
        mode = "off" if not self.enabled else ("files" if self.offline else "nss")
        return f"IdResolver({mode})"
