"""Isolation: a session belongs to its owner; other owners can neither read, page, assemble,
age nor forget it. Session ids are opaque strings, stored and returned exactly."""

from __future__ import annotations

import unicodedata
from datetime import UTC, datetime, timedelta

import pytest
from helpers import make_history
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from workers.hardening import row_counts

from optical_memory import MemoryManager, UnknownSession

T0 = datetime(2024, 1, 1, tzinfo=UTC)
LATER = T0 + timedelta(days=40)


@pytest.fixture
def tenants(db_url: str):  # type: ignore[no-untyped-def]
    with MemoryManager(db_url) as admin, MemoryManager(db_url, owner="alice") as alice:
        bob = alice.scoped("bob")
        alice.add_turns(
            "alice-chat", make_history(80, lambda i: f"alice-chat #{i} " + "words " * 60, T0)
        )
        bob.add_turns("bob-chat", make_history(80, lambda i: f"bob-chat #{i} " + "words " * 60, T0))
        admin.add_turn("ownerless", "user", "no owner")
        yield admin, alice, bob


def test_other_owners_are_refused_everything(tenants) -> None:  # type: ignore[no-untyped-def]
    admin, alice, bob = tenants
    alice.age(now=LATER)
    page = alice.pages("alice-chat")[0]
    before = row_counts(admin)
    calls = {
        "turns": lambda m: m.turns("alice-chat"),
        "pages": lambda m: m.pages("alice-chat"),
        "page_image": lambda m: m.page_image("alice-chat", page.page_id),
        "assemble": lambda m: m.assemble("alice-chat", 4096),
        "add_turn": lambda m: m.add_turn("alice-chat", "user", "let me in"),
        "add_turns": lambda m: m.add_turns("alice-chat", [("user", "a"), ("user", "b")]),
        "forget": lambda m: m.forget("alice-chat"),
    }
    for call in calls.values():
        for intruder in (bob, alice.scoped("ALICE"), alice.scoped("alice ")):
            with pytest.raises(UnknownSession):
                call(intruder)
    for call in (lambda m: m.turns("ownerless"), lambda m: m.forget("ownerless")):
        with pytest.raises(UnknownSession):  # an ownerless session is no owner's
            call(bob)
    assert row_counts(admin) == before, "a refused call changed something"
    # Bob's own pages are not reachable through Alice's session either.
    bob.age(now=LATER)
    bob_page = bob.pages("bob-chat")[0]
    with pytest.raises(LookupError):
        alice.page_image("alice-chat", bob_page.page_id)
    # The owner and the unscoped admin still see everything of the session.
    assert len(alice.turns("alice-chat")) == 80 == len(admin.turns("alice-chat"))
    assert alice.assemble("alice-chat", 4096).segments


def test_listing_is_scoped(tenants) -> None:  # type: ignore[no-untyped-def]
    admin, alice, bob = tenants
    assert [s.session_id for s in alice.sessions()] == ["alice-chat"]
    assert [s.session_id for s in bob.sessions()] == ["bob-chat"]
    assert [s.session_id for s in alice.scoped("carol").sessions()] == []
    assert sorted(s.session_id for s in admin.sessions()) == ["alice-chat", "bob-chat", "ownerless"]
    assert {s.owner for s in admin.sessions()} == {"alice", "bob", None}


def test_scoped_aging_touches_only_own_sessions(tenants) -> None:  # type: ignore[no-untyped-def]
    admin, alice, bob = tenants
    report = alice.age(now=LATER)
    assert report.sessions_visited == 1 and report.pages_created >= 2
    assert alice.pages("alice-chat")
    assert bob.pages("bob-chat") == []
    # Naming another owner's session explicitly does not reach it either.
    report = alice.age(now=LATER, sessions=["bob-chat", "ownerless"])
    assert report.sessions_visited == 0 and bob.pages("bob-chat") == []
    assert alice.verify(repair=False).pages_checked == len(alice.pages("alice-chat"))
    bob.age(now=LATER)
    assert bob.pages("bob-chat")


def test_forget_by_the_owner_leaves_others_alone(tenants) -> None:  # type: ignore[no-untyped-def]
    admin, alice, bob = tenants
    alice.age(now=LATER)
    bob.age(now=LATER)
    bob_turns = bob.turns("bob-chat")
    bob_pages = bob.pages("bob-chat")
    assert alice.forget("alice-chat") == 80
    with pytest.raises(UnknownSession):
        alice.turns("alice-chat")
    assert bob.turns("bob-chat") == bob_turns and bob.pages("bob-chat") == bob_pages
    # The id is free again; whoever writes first owns it.
    bob.add_turn("alice-chat", "user", "mine now")
    with pytest.raises(UnknownSession):
        alice.turns("alice-chat")


OPAQUE = [
    "it's",
    'say "hi"',
    "'; DROP TABLE om_turns; --",
    "a' OR '1'='1",
    "100%_done",
    "back\\slash",
    "a/b/c",
    "../../etc/passwd",
    "..",
    ".",
    " leading and trailing ",
    "tab\there\nnewline",
    "日本語のセッション",
    "\u202eevil\u202c",
    "😀" * 10,
    unicodedata.normalize("NFC", "café"),
    unicodedata.normalize("NFD", "café"),
    "Case",
    "case",
    "x" * 1024,
    '\ue000om-json:"marker"',
    "$1; SELECT pg_sleep(10)",
]


def test_opaque_session_ids_round_trip(mm: MemoryManager) -> None:
    for i, sid in enumerate(OPAQUE):
        mm.add_turn(sid, "user", f"content {i}")
    listed = [s.session_id for s in mm.sessions()]
    assert listed == OPAQUE  # every id distinct (NFC and NFD too), oldest first, unchanged
    for i, sid in enumerate(OPAQUE):
        turns = mm.turns(sid)
        assert [(t.session_id, t.content) for t in turns] == [(sid, f"content {i}")]
        assert mm.assemble(sid, 1000).texts[0].turn.session_id == sid
    assert mm.forget("a' OR '1'='1") == 1
    with pytest.raises(UnknownSession):
        mm.forget("%")  # no wildcard matching anywhere
    assert len(mm.sessions()) == len(OPAQUE) - 1
    with pytest.raises(UnknownSession):
        mm.turns("cafe")


@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    sid=st.text(
        st.characters(exclude_categories=("Cs",), exclude_characters="\x00"),
        min_size=1,
        max_size=40,
    ),
    owner=st.text(
        st.characters(exclude_categories=("Cs",), exclude_characters="\x00"),
        min_size=1,
        max_size=20,
    ),
)
def test_any_session_id_and_owner_round_trip(mm: MemoryManager, sid: str, owner: str) -> None:
    scoped = mm.scoped(owner)
    try:
        scoped.add_turn(sid, "user", "hello")
    except UnknownSession:  # an earlier example created it for another owner
        assert mm.turns(sid) and any(
            s.session_id == sid and s.owner != owner for s in mm.sessions()
        )
        return
    assert scoped.turns(sid)[-1].content == "hello"
    assert sid in [s.session_id for s in scoped.sessions()]
    assert all(s.owner == owner for s in scoped.sessions())
    other = mm.scoped(owner + "-other")
    with pytest.raises(UnknownSession):
        other.turns(sid)
    assert sid not in [s.session_id for s in other.sessions()]
