"""Budgeted assembly: recent text, older pages, within budget, stable, and read-only."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from benchmarks.chatgen import conversation
from optical_memory import (
    AgingPolicy,
    InvalidBudget,
    MemoryManager,
    PageSegment,
    Tier,
    UnknownSession,
    UnknownTarget,
)

START = datetime(2023, 1, 2, 8, 0, tzinfo=UTC)
HISTORY = conversation(500, START, timedelta(hours=3))
NOW = HISTORY[-1]["at"] + timedelta(minutes=30)


@pytest.fixture(scope="module")
def aged(tmp_path_factory) -> MemoryManager:
    m = MemoryManager(
        tmp_path_factory.mktemp("asm") / "m.db", policy=AgingPolicy(keep_last_turns=10)
    )
    m.add_turns("s", HISTORY)
    m.add_turn("s", "user", "What did Maya book in the spring?", NOW)
    m.age(now=NOW)
    yield m
    m.close()


def _order(ctx) -> list[int]:
    seqs = []
    for seg in ctx.segments:
        if isinstance(seg, PageSegment):
            seqs.extend(range(seg.first_seq, seg.last_seq + 1))
        else:
            seqs.append(seg.turn.seq)
    return seqs


def test_old_turns_arrive_as_pages_recent_ones_as_text_within_budget(aged: MemoryManager) -> None:
    ctx = aged.assemble("s", budget=4096, now=NOW)
    assert ctx.tokens <= 4096
    assert ctx.pages and ctx.texts
    first_text = ctx.segments.index(ctx.texts[0])
    assert all(isinstance(s, PageSegment) for s in ctx.segments[:first_text])
    assert ctx.texts[-1].turn.content == "What did Maya book in the spring?"
    seqs = _order(ctx)
    assert seqs == list(range(seqs[0], seqs[-1] + 1))  # one contiguous stretch, in order
    assert ctx.tokens == sum(s.tokens for s in ctx.segments) + ctx.intro_tokens
    assert ctx.text_tokens_replaced == sum(p.text_tokens for p in ctx.pages)
    assert ctx.compression == pytest.approx(ctx.text_tokens_replaced / ctx.image_tokens)
    assert ctx.compression > 5


def test_every_page_has_a_caption_with_its_turns_and_age(aged: MemoryManager) -> None:
    for p in aged.assemble("s", budget=4096, now=NOW).pages:
        assert f"turns {p.first_seq}–{p.last_seq}" in p.caption
        assert " old" in p.caption
        assert p.png.startswith(b"\x89PNG") and p.data_url.startswith("data:image/png;base64,")


def test_a_tight_budget_fades_the_oldest_pages_for_this_request_only(aged: MemoryManager) -> None:
    stored = [(p.page_id, p.tier) for p in aged.pages("s")]
    roomy = aged.assemble("s", budget=8192, now=NOW)
    budget = roomy.tokens - 30  # one fainter step of an old page is enough
    tight = aged.assemble("s", budget=budget, now=NOW)
    assert tight.tokens <= budget
    assert all(p.tier == p.stored_tier for p in roomy.pages)
    faded = [p for p in tight.pages if p.tier != p.stored_tier]
    assert faded, "the tight budget should show some page fainter than stored"
    assert all(Tier.parse(p.tier) > Tier.parse(p.stored_tier) for p in faded)
    # fading starts with the oldest page; the newest keeps its stored tier
    assert tight.pages[-1].tier == tight.pages[-1].stored_tier
    fadeable = [p for p in tight.pages if p.stored_tier != "tiny"]
    assert faded[0].page_id == fadeable[0].page_id  # the oldest that can still fade
    # the stored tiers are untouched by assembly
    assert [(p.page_id, p.tier) for p in aged.pages("s")] == stored


def test_a_very_tight_budget_leaves_the_oldest_pages_out(aged: MemoryManager) -> None:
    roomy = aged.assemble("s", budget=8192, now=NOW)
    for budget in range(roomy.tokens, 0, -25):
        tight = aged.assemble("s", budget=budget, now=NOW)
        assert tight.tokens <= budget or tight.over_budget
        if 0 < len(tight.pages) < len(roomy.pages):
            break
    else:
        pytest.fail("no budget dropped some pages but not all")
    assert all(p.tier == "tiny" for p in tight.pages[:1])  # faded as far as it goes first
    assert tight.pages[-1].page_id == roomy.pages[-1].page_id  # the newest stays
    assert tight.pages[0].page_id > roomy.pages[0].page_id  # the oldest went
    assert tight.omitted_turns > roomy.omitted_turns


def test_the_newest_user_turn_is_never_left_out(aged: MemoryManager) -> None:
    ctx = aged.assemble("s", budget=10, now=NOW)
    assert [s.turn.content for s in ctx.texts] == ["What did Maya book in the spring?"]
    assert ctx.over_budget == (ctx.tokens > 10)


def test_the_same_state_gives_the_same_bytes(aged: MemoryManager) -> None:
    a = aged.assemble("s", budget=4096, now=NOW)
    b = aged.assemble("s", budget=4096, now=NOW + timedelta(minutes=20))
    assert a.fingerprint() == b.fingerprint()
    assert [s.png for s in a.pages] == [s.png for s in b.pages]
    assert [s.caption for s in a.pages] == [s.caption for s in b.pages]


def test_other_targets_price_the_same_pages_by_their_own_rules(aged: MemoryManager) -> None:
    ds = aged.assemble("s", budget=6000, target="deepseek-ocr", now=NOW)
    oa = aged.assemble("s", budget=6000, target="openai", now=NOW)
    assert oa.tokens <= 6000 and ds.tokens <= 6000
    for p in oa.pages:
        assert p.image_tokens in (85, 255, 765)
        assert p.image_tokens < p.text_tokens


def test_a_tool_call_stays_with_its_results(tmp_path) -> None:
    with MemoryManager(tmp_path / "m.db") as mm:
        mm.add_turn("t", "user", "weather in Oslo?" + " please" * 50)
        mm.add_turn(
            "t", "assistant", "", metadata={"tool_calls": [{"id": "1", "name": "w", "args": {}}]}
        )
        mm.add_turn("t", "tool", "rain " * 100, metadata={"tool_call_id": "1"})
        mm.add_turn("t", "tool", "wind " * 100, metadata={"tool_call_id": "1"})
        mm.add_turn("t", "assistant", "It rains.")
        mm.add_turn("t", "user", "thanks")
        for budget in range(20, 400, 7):
            roles = [s.turn.role for s in mm.assemble("t", budget=budget).texts]
            if "tool" in roles:
                i = roles.index("tool")
                assert roles[i - 1] == "assistant" and roles[i : i + 2] == ["tool", "tool"]
            assert roles[-1] == "user"


def test_text_pages_show_as_their_turns_with_roles(tmp_path) -> None:
    policy = AgingPolicy(keep_last_turns=2, min_fill=0)
    with MemoryManager(tmp_path / "m.db", policy=policy) as mm:
        mm.add_turns(
            "s", [("user", "hi", START), ("assistant", "hello", START), ("user", "bye", START)]
        )
        mm.add_turn("s", "user", "again", START + timedelta(hours=5))
        mm.age(now=START + timedelta(hours=5))
        ctx = mm.assemble("s", budget=1000)
        assert [(s.turn.role, s.turn.content) for s in ctx.texts] == [
            ("user", "hi"),
            ("assistant", "hello"),
            ("user", "bye"),
            ("user", "again"),
        ]
        assert ctx.texts[0].page_id is not None and ctx.texts[-1].page_id is None
        assert not ctx.pages and ctx.compression == 0


def test_a_custom_token_counter_is_used_for_text(aged: MemoryManager) -> None:
    ctx = aged.assemble("s", budget=4096, now=NOW, token_counter=lambda text: 1)
    assert all(s.tokens == 1 + 3 for s in ctx.texts)


def test_assembly_never_renders(aged: MemoryManager, monkeypatch) -> None:
    def boom(*a, **k):
        raise AssertionError("assemble must not render")

    monkeypatch.setattr(aged.renderer, "render", boom)
    assert aged.assemble("s", budget=2000, now=NOW).pages


@pytest.mark.parametrize("budget", [0, -5, 1.5, "4096", True])
def test_bad_budgets_are_refused(aged: MemoryManager, budget) -> None:
    with pytest.raises(InvalidBudget):
        aged.assemble("s", budget=budget)


def test_unknown_targets_and_sessions_are_refused(aged: MemoryManager) -> None:
    with pytest.raises(UnknownTarget):
        aged.assemble("s", target="nope")
    with pytest.raises(UnknownSession):
        aged.assemble("missing")


def test_assembly_cost_follows_the_budget_not_the_history(tmp_path) -> None:
    """A budget that holds ~10 turns reads ~10 turns, however long the session."""
    with MemoryManager(tmp_path / "m.db", policy=AgingPolicy(by_time=None)) as mm:
        mm.add_turns("long", conversation(3000, START, timedelta(seconds=10)))
        statements: list[str] = []
        from sqlalchemy import event

        @event.listens_for(mm.database.engine, "before_cursor_execute")
        def count(conn, cursor, statement, *a):  # type: ignore[no-untyped-def]
            statements.append(statement)

        ctx = mm.assemble("long", budget=600)
        assert 3 <= len(ctx.texts) <= 40
        assert len(statements) <= 6


def test_a_young_page_still_stored_as_text_is_shown_as_an_image_under_a_tight_budget(
    tmp_path,
) -> None:
    turns = conversation(300, START, timedelta(seconds=5))  # full pages, sealed at once
    with MemoryManager(tmp_path / "m.db", policy=AgingPolicy(keep_last_turns=4)) as mm:
        mm.add_turns("s", turns)
        report = mm.age(now=turns[-1]["at"] + timedelta(minutes=10))  # not an hour old yet
        pages = mm.pages("s")
        assert pages and all(p.tier == "text" for p in pages)
        assert report.pages_prepared == len(pages) and not report.pages_moved
        assert mm.verify(repair=False).ok  # prepared renditions of a text page are sound
        roomy = mm.assemble("s", budget=100_000)
        assert not roomy.pages  # with room, young pages are shown as their text
        window = sum(t.tokens for t in mm.turns("s", since=pages[-1].last_seq))
        budget = window + 1200  # the unpaged text, and room for the pages only as images
        tight = mm.assemble("s", budget=budget)
        assert tight.tokens <= budget
        assert tight.pages and all(p.stored_tier == "text" for p in tight.pages)
        assert tight.omitted_turns == 0  # the whole history still fits, as images
        assert mm.age(now=turns[-1]["at"] + timedelta(minutes=10)).changed is False


def test_a_session_of_fewer_pages_than_one_read_takes_is_read_in_one_query(
    aged: MemoryManager,
) -> None:
    from helpers import sent_sql

    pages = len(aged.pages("s"))
    assert 0 < pages < 64
    sent = sent_sql(aged, lambda: aged.assemble("s", budget=200_000, now=NOW))
    page_reads = [q for q in sent if "FROM om_pages" in q and "ORDER BY om_pages.first_seq" in q]
    assert len(page_reads) == 1  # every page came in the first read: none asked for after it
