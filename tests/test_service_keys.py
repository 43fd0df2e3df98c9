"""The service's memory of API keys (:class:`KeyCache`) on a real database, with a clock the
test moves: a key seen lately is answered without the database, a revoked one is refused
once its entry expires, unknown and revoked keys are never remembered. And what an error
that the service maps is answered with."""

from __future__ import annotations

import pytest

from optical_memory import ForgetIncomplete, MemoryManager, StoreBusy
from optical_memory.adapters.service import create_key, revoke_key
from optical_memory.adapters.service.keys import KeyCache, UnknownApiKey


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_cached_key_is_served_until_its_entry_expires_then_revocation_holds(
    sqlite_url: str,
) -> None:
    with MemoryManager(sqlite_url) as mm:
        key, info = create_key(mm, "ana")
        clock = Clock()
        cache = KeyCache(mm, ttl=5.0, clock=clock)
        assert cache.cached(key) is None  # never seen: the database is asked
        assert cache.owner(key) == "ana"
        assert cache.cached(key) == "ana"
        revoke_key(mm, str(info.id))
        clock.now += 4.9
        assert cache.owner(key) == "ana"  # remembered: no query (the row says revoked)
        clock.now += 0.2
        assert cache.cached(key) is None and cache.owner(key) is None  # expired, then refused
        assert cache.owner(key) is None  # and a revoked key is not remembered


def test_unknown_keys_are_not_remembered_and_ttl_zero_asks_every_time(sqlite_url: str) -> None:
    with MemoryManager(sqlite_url) as mm:
        clock = Clock()
        cache = KeyCache(mm, ttl=0.0, clock=clock)
        assert cache.owner("om_nobody") is None and cache.cached("om_nobody") is None
        key, info = create_key(mm, "bo")
        assert cache.owner(key) == "bo" and cache.cached(key) is None  # ttl 0: not kept
        revoke_key(mm, str(info.id))
        assert cache.owner(key) is None  # at once


def test_the_cache_is_bounded_oldest_first(sqlite_url: str) -> None:
    with MemoryManager(sqlite_url) as mm:
        keys = [create_key(mm, f"o{i}")[0] for i in range(4)]
        cache = KeyCache(mm, ttl=60.0, max_keys=3, clock=Clock())
        for k in keys:
            cache.owner(k)
        assert cache.cached(keys[0]) is None
        assert [cache.cached(k) for k in keys[1:]] == ["o1", "o2", "o3"]


def test_errors_below_the_service_map_to_a_status_and_headers_that_say_what_to_do() -> None:
    pytest.importorskip("fastapi")
    from optical_memory.adapters.service.errors import describe, headers_of, status_of

    incomplete = ForgetIncomplete("the session is deleted, but its bytes are still there")
    assert status_of(incomplete) == 503 and headers_of(incomplete) == {"Retry-After": "10"}
    body = describe(incomplete)["error"]
    assert body["type"] == "ForgetIncomplete" and "next write" in body["message"]
    assert status_of(StoreBusy("locked")) == 503 and headers_of(StoreBusy("x")) is not None


@pytest.mark.parametrize("name", ["99999999999999999999", "9" * 5000, "\u0661", "\u00b2"])
def test_a_key_id_that_no_key_has_is_refused_and_revokes_nothing(
    sqlite_url: str, name: str
) -> None:
    """Past what a store holds, or digits other than ASCII (``int`` reads Arabic-Indic ``١``
    as 1): no such key, in one line, and key 1 is still active."""
    with MemoryManager(sqlite_url) as mm:
        key, info = create_key(mm, "ana")
        assert info.id == 1
        with pytest.raises(UnknownApiKey, match="no key named"):
            revoke_key(mm, name)
        assert KeyCache(mm, ttl=0.0).owner(key) == "ana"
