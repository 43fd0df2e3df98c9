"""Isolation: owners are namespaces. A session is (owner, session id): the same id under two
owners is two sessions, and every entry point (manager, async twins, adapters, CLI) resolves
an id inside the caller's owner only. Session ids are opaque strings, stored and returned
exactly."""

from __future__ import annotations

import json
import unicodedata
from datetime import UTC, datetime, timedelta

import pytest
from helpers import make_history
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from workers.hardening import ThumbnailEncoder

from optical_memory import MemoryManager, UnknownPage, UnknownSession

T0 = datetime(2024, 1, 1, tzinfo=UTC)
LATER = T0 + timedelta(days=40)


NAMES = {None: "root", "alice": "alice", "bob": "bob"}
SHARED = "chat-1"  # the one session id every owner uses


def _history(who: str, n: int = 80) -> list[dict]:  # type: ignore[type-arg]
    return make_history(n, lambda i: f"{who}-secret-{i} zebra " + "words " * 60, T0)


@pytest.fixture
def tenants(db_url: str):  # type: ignore[no-untyped-def]
    """Three namespaces (no owner, alice, bob), each with its own session ``chat-1``, aged
    with a real encoder so pages, renditions and cached visual tokens exist in each."""
    with MemoryManager(db_url, encoder=ThumbnailEncoder()) as root:
        views = {None: root, "alice": root.scoped("alice"), "bob": root.scoped("bob")}
        for owner, view in views.items():
            view.add_turns(SHARED, _history(NAMES[owner]))
        for view in views.values():
            assert view.age(now=LATER, sessions=[SHARED]).sessions_visited == 1
        yield views


def _mine(view: MemoryManager, owner: str | None) -> None:
    """Every read of ``chat-1`` through ``view`` shows that owner's turns and no one else's."""
    me = NAMES[owner]
    others = [n for n in NAMES.values() if n != me]

    def clean(text: str) -> None:
        assert f"{me}-secret" in text
        assert not any(f"{o}-secret" in text for o in others), text[:200]

    turns = view.turns(SHARED)
    assert len(turns) == 80 and all(t.session_id == SHARED for t in turns)
    clean(" ".join(t.content for t in turns))
    clean(" ".join(t.content for t in view.read(SHARED, 1, 80)))
    for scope in ("session", "owner"):
        hits = view.recall(SHARED, "zebra secret", scope=scope, limit=20)
        assert hits
        clean(" ".join(h.turn.content for h in hits))
    ctx = view.assemble(SHARED, 100_000, now=LATER, cue="zebra")
    clean(" ".join(seg.turn.content for seg in ctx.texts))
    own_pages = view.pages(SHARED)
    assert own_pages and {p.page_id for p in ctx.pages} <= {p.page_id for p in own_pages}
    for p in own_pages:
        if p.tier != "text":
            assert view.page_image(SHARED, p.page_id)
            assert view.visual_tokens(p.page_id, p.tier, ThumbnailEncoder().key) is not None
    summary = view.tier_summary(SHARED)
    assert sum(r.turns for r in summary) == 80
    assert [s.session_id for s in view.sessions()] == [SHARED]
    assert [s.owner for s in view.sessions()] == [owner]


def test_same_id_under_three_owners_is_three_sessions(tenants) -> None:  # type: ignore[no-untyped-def]
    for owner, view in tenants.items():
        _mine(view, owner)
    root = tenants[None]
    listed = root.sessions(all_owners=True)
    assert sorted((s.owner or "", s.session_id) for s in listed) == [
        ("", SHARED),
        ("alice", SHARED),
        ("bob", SHARED),
    ]
    pages = {o: {p.page_id for p in v.pages(SHARED)} for o, v in tenants.items()}
    assert not (pages[None] & pages["alice"]) and not (pages["alice"] & pages["bob"])
    # A page of another owner is not reachable through one's own session of the same id,
    # nor its cached visual tokens.
    alice, bob = tenants["alice"], tenants["bob"]
    stolen = next(p for p in alice.pages(SHARED) if p.tier != "text")
    with pytest.raises(UnknownPage):
        bob.page_image(SHARED, stolen.page_id)
    assert bob.visual_tokens(stolen.page_id, stolen.tier, ThumbnailEncoder().key) is None
    assert root.visual_tokens(stolen.page_id, stolen.tier, ThumbnailEncoder().key) is None


def test_writes_pins_and_forget_stay_inside_the_owner(tenants) -> None:  # type: ignore[no-untyped-def]
    root, alice, bob = tenants[None], tenants["alice"], tenants["bob"]
    # Writing to an id another owner uses creates nothing there: the writer's own session.
    t = bob.add_turn(SHARED, "user", "bob-secret-new zebra")
    assert t.seq == 81 and alice.turns(SHARED)[-1].seq == 80 and root.turns(SHARED)[-1].seq == 80
    added = alice.add_sessions(
        {SHARED: [("user", "alice-secret-x")], "only-alice": [("user", "a")]}
    )
    assert [x.seq for x in added[SHARED]] == [81]
    carol = root.scoped("carol")
    assert carol.add_turn(SHARED, "user", "carol's first").seq == 1  # a new session, no error
    assert [s.session_id for s in carol.sessions()] == [SHARED]
    # Pins are per session.
    alice.pin(SHARED, 3)
    assert alice.pins(SHARED) == [3] and bob.pins(SHARED) == [] and root.pins(SHARED) == []
    assert alice.assemble(SHARED, 2000, now=LATER).recalled is not None
    bob.unpin(SHARED, 3)  # bob's turn 3 was never pinned: alice's pin stays
    assert alice.pins(SHARED) == [3]
    # Forget removes only the caller's session.
    bob_before = [(p.page_id, p.tier) for p in bob.pages(SHARED)]
    assert alice.forget(SHARED) == 81
    with pytest.raises(UnknownSession):
        alice.turns(SHARED)
    assert len(bob.turns(SHARED)) == 81 and len(root.turns(SHARED)) == 80
    assert [(p.page_id, p.tier) for p in bob.pages(SHARED)] == bob_before
    assert carol.turns(SHARED)[0].content == "carol's first"
    assert alice.add_turn(SHARED, "user", "again").seq == 1  # a fresh session of alice's
    assert root.forget(SHARED) == 80 and len(bob.turns(SHARED)) == 81


def test_maintenance_scopes(tenants) -> None:  # type: ignore[no-untyped-def]
    """Scoped managers age and verify their own sessions only (naming an id reaches one's
    own session of it); the unscoped manager's maintenance spans every owner, and the ids it
    names are those without an owner."""
    root, alice, bob = tenants[None], tenants["alice"], tenants["bob"]
    for view in tenants.values():
        view.add_turns(SHARED, _history("more", 40))
    own = {o: len(v.pages(SHARED)) for o, v in tenants.items()}
    assert alice.verify(repair=False).pages_checked == own["alice"]
    assert alice.verify(repair=False, sessions=[SHARED]).pages_checked == own["alice"]
    assert root.verify(repair=False).pages_checked == sum(own.values())  # every owner
    assert root.verify(repair=False, sessions=[SHARED]).pages_checked == own[None]
    later = LATER + timedelta(days=30)
    assert alice.age(now=later, sessions=[SHARED, "nobody"]).sessions_visited == 1
    assert len(alice.pages(SHARED)) > own["alice"]
    assert len(bob.pages(SHARED)) == own["bob"] and len(root.pages(SHARED)) == own[None]
    assert root.age(now=later, sessions=[SHARED]).sessions_visited == 1  # the ownerless one
    assert len(bob.pages(SHARED)) == own["bob"]
    assert root.age(now=later).sessions_visited >= 1  # spans bob's too
    assert len(bob.pages(SHARED)) > own["bob"]


async def test_async_twins_stay_inside_the_owner(tenants) -> None:  # type: ignore[no-untyped-def]
    alice, bob = tenants["alice"], tenants["bob"]
    await bob.aadd_turn(SHARED, "user", "bob-secret-async")
    assert [t.content for t in await alice.aturns(SHARED, since=79)] == [
        alice.turns(SHARED)[-1].content
    ]
    assert all("bob" not in t.content for t in await alice.aread(SHARED, 1, 80))
    hits = await alice.arecall(SHARED, "bob-secret-async")
    assert all("bob" not in h.turn.content for h in hits)
    ctx = await alice.aassemble(SHARED, 4096, now=LATER)
    assert all("bob" not in s.turn.content for s in ctx.texts)
    assert await bob.aforget(SHARED) == 81
    assert len(await alice.aturns(SHARED)) == 80


def test_openai_adapter_records_and_answers_inside_the_owner(tenants) -> None:  # type: ignore[no-untyped-def]
    import json

    from optical_memory.adapters.openai import handle_memory_tool_call, record_openai_messages

    alice, bob = tenants["alice"], tenants["bob"]
    convo = [{"role": "user", "content": "bob-secret-adapter zebra"}]
    assert len(record_openai_messages(bob, SHARED, convo)) == 1
    assert len(record_openai_messages(bob, SHARED, convo)) == 0  # recorded once
    assert len(alice.turns(SHARED)) == 80
    call = {
        "id": "c1",
        "function": {"name": "recall_memory", "arguments": json.dumps({"query": "adapter"})},
    }
    assert "bob-secret-adapter" not in handle_memory_tool_call(alice, SHARED, call)["content"]
    assert "bob-secret-adapter" in handle_memory_tool_call(bob, SHARED, call)["content"]


def test_cli_owner_option(tenants, db_url: str, tmp_path) -> None:  # type: ignore[no-untyped-def]
    from typer.testing import CliRunner

    from optical_memory.cli import app

    def cli(*args: str) -> str:
        result = CliRunner().invoke(app, [*args, "--db", db_url], env={"COLUMNS": "200"})
        assert result.exit_code == 0, result.output
        return result.output

    assert "alice" in cli("sessions", "--owner", "alice")
    assert "bob" not in cli("sessions", "--owner", "alice")
    out = cli(
        "assemble", SHARED, "--owner", "bob", "--budget", "100000", "--now", LATER.isoformat()
    )
    assert "bob-secret" in out and "alice-secret" not in out and "root-secret" not in out
    out = cli("assemble", SHARED, "--budget", "100000", "--now", LATER.isoformat())
    assert "root-secret" in out and "bob-secret" not in out
    src = tmp_path / "c.jsonl"
    src.write_text(json.dumps({"role": "user", "content": "carol-secret"}) + "\n")
    cli("import", str(src), "--session", SHARED, "--owner", "carol")
    assert [t.content for t in tenants[None].scoped("carol").turns(SHARED)] == ["carol-secret"]
    assert "forgot" in cli("forget", SHARED, "--owner", "carol", "--yes")
    assert len(tenants["alice"].turns(SHARED)) == 80 and tenants[None].turns(SHARED)


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
    other = mm.scoped(owner + "-other")
    before = [t.content for t in other.turns(sid)] if sid in _ids(other) else None
    scoped.add_turn(sid, "user", f"hello {owner}")  # never refused: the id is this owner's
    assert scoped.turns(sid)[-1].content == f"hello {owner}"
    assert sid in [s.session_id for s in scoped.sessions()]
    assert all(s.owner == owner for s in scoped.sessions())
    if before is None:
        with pytest.raises(UnknownSession):
            other.turns(sid)
        assert sid not in _ids(other)
    else:
        assert [t.content for t in other.turns(sid)] == before


def _ids(m: MemoryManager) -> list[str]:
    return [s.session_id for s in m.sessions()]
