"""IdResolver: offline passwd/group files, this host's NSS with TTL caches, slow lookups that
must not stall the hot path, and failures that are cached too."""

from __future__ import annotations

import threading
import time

import pytest

from auditpipe.normalize import idresolve
from auditpipe.normalize.idresolve import IdResolver, is_real_name

from conftest import shared_path


def test_offline_files():
    folder = shared_path("conformance", "beats-auditbeat")
    r = IdResolver(passwd_file=str(folder / "passwd"), group_file=str(folder / "group"))
    assert r.user("9999") == "bob" and r.user("0") == "root"
    assert r.group("1004") == "testgroup"
    assert r.uid_of("oldbob") == "1002" and r.gid_of("bob") == "9999"
    assert r.user("4242") is None and r.uid_of("nobody-here") is None
    assert r.user("4294967295") is None and r.user("unset") is None


def test_offline_files_only_count(tmp_path):
    """With --passwd, this host's accounts must not leak into another host's log."""
    (tmp_path / "passwd").write_text("# comment\n\nalice:x:1000:1000::/:/bin/sh\nbroken line\nalice2:x:1000:1:::\n")
    r = IdResolver(passwd_file=str(tmp_path / "passwd"))
    assert r.user("1000") == "alice"  # the first entry wins, as getpwuid
    assert r.user("0") is None  # no root in that file, and no group file: nothing
    assert r.group("0") is None


def test_disabled():
    r = IdResolver(enabled=False)
    assert r.user("0") is None and r.group("0") is None and r.uid_of("root") is None


def test_this_host_root():
    r = IdResolver()
    assert r.user("0") == "root" and r.uid_of("root") == "0"
    assert r.group("0") in ("root", "wheel")
    assert r.user("3999999") is None
    r.close()


def test_slow_lookup_does_not_block(monkeypatch):
    release = threading.Event()
    calls = []

    def slow_user(uid):
        calls.append(uid)
        release.wait(5)
        return "slowpoke"

    monkeypatch.setattr(idresolve, "_nss_user", slow_user)
    r = IdResolver(timeout=0.02)
    started = time.monotonic()
    assert r.user("1234") is None  # unknown for now, after at most `timeout`
    assert time.monotonic() - started < 1.0
    again = time.monotonic()
    for _ in range(100):
        assert r.user("1234") is None  # neither started again nor waited for again
    assert time.monotonic() - again < 0.5
    release.set()
    deadline = time.monotonic() + 5
    while r.user("1234") is None and time.monotonic() < deadline:
        time.sleep(0.01)
    assert r.user("1234") == "slowpoke"
    assert calls == ["1234"]
    r.close()


def test_failures_are_cached_and_expire(monkeypatch):
    calls = []

    def failing(uid):
        calls.append(uid)
        raise OSError("ldap down")

    monkeypatch.setattr(idresolve, "_nss_user", failing)
    r = IdResolver(negative_ttl=0.05, ttl=10)
    assert r.user("77") is None
    assert r.user("77") is None
    assert calls == ["77"]
    time.sleep(0.08)
    assert r.user("77") is None
    assert calls == ["77", "77"]
    r.close()


def test_answers_expire(monkeypatch):
    names = iter(["first", "second"])
    monkeypatch.setattr(idresolve, "_nss_group", lambda gid: next(names))
    r = IdResolver(ttl=0.05)
    assert r.group("5") == "first"
    assert r.group("5") == "first"
    time.sleep(0.08)
    assert r.group("5") == "second"
    r.close()


@pytest.mark.parametrize("name, real", [("alice", True), ("unknown(5000)", False), ("unset", False), ("?", False),
                                         ("", False), (None, False)])
def test_enriched_names(name, real):
    assert is_real_name(name) is real


def test_the_name_memo_ages_by_the_injected_clock():
    """The ECS normalizer's only time reading is the age of its name memo: by the clock it is
    given, so a renamed account is asked again once the memo is older than its ttl."""
    from auditpipe.normalize.ecs_fields import Names

    asked: list[str] = []

    class Resolver:
        def user(self, uid):
            asked.append(uid)
            return f"user{uid}"

        def group(self, gid):
            return None

    now = [100.0]
    names = Names(Resolver(), memo_ttl=10.0, clock=lambda: now[0])
    assert names.lookup("1000", False) == names.lookup("1000", False) == "user1000"
    assert asked == ["1000"]
    for _ in range(256):
        names.tick()
    names.lookup("1000", False)
    assert asked == ["1000"]  # still young
    now[0] += 11
    for _ in range(256):
        names.tick()
    names.lookup("1000", False)
    assert asked == ["1000", "1000"]
