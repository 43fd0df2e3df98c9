"""Cue-aware assembly: what a cue recalls comes back as exact text, pins stay legible, and a
tight budget keeps a share for the past."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from helpers import sent_sql
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from benchmarks.chatgen import conversation
from optical_memory import (
    AgingPolicy,
    AssemblyShares,
    InvalidInput,
    MemoryManager,
    OpticalMemoryError,
    PageSegment,
    RecalledSegment,
    TextSegment,
)

START = datetime(2023, 1, 2, 8, 0, tzinfo=UTC)
HISTORY = conversation(400, START, timedelta(hours=3))
FACT = "My passport number is XK4471902 and it expires on 3 March 2031."
FACT_AT = 37  # an early turn: on a page long faded to tiny
QUESTION = "What is my passport number again?"
NOW = HISTORY[-1]["at"] + timedelta(minutes=30)


def _history() -> list[dict]:
    turns = [dict(t) for t in HISTORY]
    turns[FACT_AT - 1] = {**turns[FACT_AT - 1], "role": "user", "content": FACT}
    return turns


@pytest.fixture(scope="module")
def faded(tmp_path_factory) -> MemoryManager:
    m = MemoryManager(
        tmp_path_factory.mktemp("cue") / "m.db", policy=AgingPolicy(keep_last_turns=10)
    )
    m.add_turns("s", _history())
    m.add_turn("s", "user", QUESTION, NOW)
    m.age(now=NOW)
    yield m
    m.close()


def _pages(ctx) -> list[tuple[int, str, str]]:
    return [
        (p.page_id, p.tier, hashlib.sha256(p.png).hexdigest())
        for p in ctx.segments
        if isinstance(p, PageSegment)
    ]


def test_a_cue_brings_an_old_fact_back_as_exact_text(faded: MemoryManager) -> None:
    plain = faded.assemble("s", budget=2000, now=NOW)
    cued = faded.assemble("s", budget=2000, now=NOW, cue=QUESTION)
    assert FACT not in [t.turn.content for t in plain.texts]
    block = cued.recalled
    assert block is not None and FACT in block.text
    fact = next(t for t in block.turns if t.seq == FACT_AT)
    assert fact.content == FACT  # exactly as stored
    # placed after the pages and before the recent text
    kinds = [s.kind for s in cued.segments]
    at = kinds.index("recalled")
    assert all(k == "page" or k == "text" for k in kinds[:at])
    assert "page" not in kinds[at + 1 :]
    assert cued.texts[-1].turn.content == QUESTION
    assert cued.tokens <= 2000
    assert cued.tokens == sum(s.tokens for s in cued.segments) + cued.intro_tokens


def test_the_json_export_carries_the_recalled_block(faded: MemoryManager) -> None:
    from optical_memory.export import export_context

    cued = faded.assemble("s", budget=2000, now=NOW, cue=QUESTION)
    data = export_context(cued, "json")
    assert [s["kind"] for s in data["segments"]] == [s.kind for s in cued.segments]
    (block,) = (s for s in data["segments"] if s["kind"] == "recalled")
    assert block["text"] == cued.recalled.text and block["tokens"] == cued.recalled.tokens
    fact = next(t for t in block["turns"] if t["seq"] == FACT_AT)
    assert fact["content"] == FACT and fact["role"] == "user"


def test_the_recalled_turn_comes_with_its_neighbour_for_context(faded: MemoryManager) -> None:
    block = faded.assemble("s", budget=2000, now=NOW, cue=QUESTION).recalled
    assert block is not None
    seqs = [t.seq for t in block.turns]
    assert FACT_AT in seqs and FACT_AT + 1 in seqs  # the fact and the reply to it
    assert seqs == sorted(set(seqs))  # in order, no duplicates


def test_a_recalled_fact_whose_neighbour_does_not_fit_comes_back_alone(tmp_path) -> None:
    """Context is second to the memory: when the reply beside a recalled fact is too long for
    the block, the fact comes back without it rather than not at all."""
    turns = _history()
    essay = " ".join(f"Paragraph {i} of a long answer about travel documents." for i in range(300))
    turns[FACT_AT] = {**turns[FACT_AT], "role": "assistant", "content": essay}
    with MemoryManager(tmp_path / "m.db", policy=AgingPolicy(keep_last_turns=10)) as m:
        m.add_turns("s", turns)
        m.add_turn("s", "user", QUESTION, NOW)
        m.age(now=NOW)
        ctx = m.assemble("s", budget=2000, now=NOW, cue=QUESTION)
    assert ctx.recalled is not None and ctx.tokens <= 2000
    seqs = [t.seq for t in ctx.recalled.turns]
    assert FACT_AT in seqs and FACT_AT + 1 not in seqs  # the fact, without the essay
    assert ctx.recalled.tokens < 2000 * 0.2 + 1


def test_the_recall_share_is_kept_when_long_recent_turns_leave_text_under_its_cap(
    tmp_path,
) -> None:
    """The newest exchange is too long for the text's share, so text stays far under its cap
    and the pages fill what it leaves. The cue's share still comes out of the text shown:
    the block has room for the fact and the reply to it, not just the tokens the pages left."""

    def sentences(n: int, what: str) -> str:
        return " ".join(f"{what} {k}: check the tide table for pier {k % 7}." for k in range(n))

    turns = [dict(t) for t in conversation(1200, START, timedelta(hours=3))]
    turns[FACT_AT - 1] = {**turns[FACT_AT - 1], "role": "user", "content": FACT}
    reply = "Noted. " + " ".join(
        f"Remember to renew it {k} months ahead of travel to country {k}." for k in range(18)
    )
    turns[FACT_AT] = {**turns[FACT_AT], "role": "assistant", "content": reply}
    turns[-2] = {**turns[-2], "role": "user", "content": sentences(60, "Question")}
    turns[-1] = {**turns[-1], "role": "assistant", "content": sentences(40, "Step")}
    now = turns[-1]["at"] + timedelta(minutes=30)
    with MemoryManager(tmp_path / "m.db", policy=AgingPolicy(keep_last_turns=10)) as m:
        m.add_turns("s", turns)
        m.add_turn("s", "user", QUESTION, now)
        m.age(now=now)
        plain = m.assemble("s", budget=2000, now=now)
        cued = m.assemble("s", budget=2000, now=now, cue=QUESTION)
    assert _pages(plain) == _pages(cued) and _pages(plain)  # the prefix does not move
    assert cued.recalled is not None
    assert [t.seq for t in cued.recalled.turns][:2] == [FACT_AT, FACT_AT + 1]  # with context
    assert cued.tokens <= 2000 and cued.texts[-1].turn.content == QUESTION


def test_when_everything_fits_a_cue_takes_nothing_from_the_text(tmp_path) -> None:
    """A short session fits the budget whole: with or without a cue it is shown in order as
    text, and the cue (whose words every turn holds) recalls nothing out of place."""
    with MemoryManager(tmp_path / "m.db") as m:
        for i in range(40):
            m.add_turn("s", "user", f"question {i}: where is boat {i}?", START)
            m.add_turn("s", "assistant", f"Boat {i} is at pier {i % 7}.", START)
        snug = m.assemble("s", budget=4096, now=START).tokens + 10  # it just fits
        plain = m.assemble("s", budget=snug, now=START)
        cue = "question 40: where is boat 40?"
        found: list[Any] = []
        sent = sent_sql(m, lambda: found.append(m.assemble("s", budget=snug, now=START, cue=cue)))
        searched = sent_sql(m, lambda: found.append(m.recall("s", cue)))
        cued = found[0]
    assert found[1] and any("om_turns_fts" in q for q in searched)  # a search would show
    assert len(plain.texts) == 80 and plain.omitted_turns == 0
    assert cued.recalled is None
    assert [t.turn.seq for t in cued.texts] == [t.turn.seq for t in plain.texts]
    assert sent and not any("om_turns_fts" in q for q in sent)  # not even searched


def test_no_cue_no_block_and_a_cue_that_matches_nothing_adds_nothing(faded: MemoryManager) -> None:
    assert faded.assemble("s", budget=2000, now=NOW).recalled is None
    nothing = faded.assemble("s", budget=2000, now=NOW, cue="zzqx vvplm")
    assert nothing.recalled is None
    assert nothing.tokens <= 2000


def test_the_page_prefix_does_not_depend_on_the_cue(faded: MemoryManager) -> None:
    a = faded.assemble("s", budget=2000, now=NOW, cue=QUESTION)
    b = faded.assemble("s", budget=2000, now=NOW, cue="Maya painted the kitchen shelves")
    c = faded.assemble("s", budget=2000, now=NOW, cue="zzqx")
    assert _pages(a) == _pages(b) == _pages(c) and _pages(a)
    assert a.fingerprint() == faded.assemble("s", budget=2000, now=NOW, cue=QUESTION).fingerprint()


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    cue=st.text(max_size=200) | st.sampled_from(['"', "(", "AND OR NEAR", "*", "body:x", QUESTION]),
    budget=st.integers(min_value=300, max_value=6000),
)
def test_any_cue_stays_within_budget_and_keeps_the_newest_turn(
    faded: MemoryManager, cue: str, budget: int
) -> None:
    ctx = faded.assemble("s", budget=budget, now=NOW, cue=cue)
    assert ctx.tokens <= budget
    assert ctx.texts[-1].turn.content == QUESTION
    assert _pages(ctx) == _pages(faded.assemble("s", budget=budget, now=NOW, cue="zzqx"))
    shown = [s.turn.seq for s in ctx.segments if isinstance(s, TextSegment)]
    assert len(shown) == len(set(shown))


def test_a_pinned_turn_survives_a_budget_that_fades_everything_else(db_url: str) -> None:
    with MemoryManager(db_url, policy=AgingPolicy(keep_last_turns=10)) as mm:
        mm.add_turns("s", _history())
        mm.add_turn("s", "user", "hello again", NOW)
        mm.age(now=NOW)
        before = mm.assemble("s", budget=700, now=NOW)
        assert FACT not in str([t.turn.content for t in before.texts])
        mm.pin("s", FACT_AT)
        ctx = mm.assemble("s", budget=700, now=NOW)
        assert ctx.recalled is not None and ctx.recalled.pinned == (FACT_AT,)
        assert FACT in ctx.recalled.text
        assert all(p.tier in ("small", "tiny") for p in ctx.pages)  # everything else faded
        assert ctx.tokens <= 700
        mm.unpin("s", FACT_AT)
        assert mm.assemble("s", budget=700, now=NOW).recalled is None


def test_a_tight_budget_keeps_a_share_for_the_past_even_with_a_long_tail(db_url: str) -> None:
    # 60 unpaged turns (a long text window) cost far more than 1k: text alone could fill it.
    with MemoryManager(db_url, policy=AgingPolicy(keep_last_turns=60)) as mm:
        mm.add_turns("s", HISTORY)
        mm.add_turn("s", "user", "and now?", NOW)
        mm.age(now=NOW)
        ctx = mm.assemble("s", budget=1000, now=NOW)
        assert ctx.pages, "the past gets its share: pages are shown"
        assert ctx.tokens <= 1000
        text_cost = sum(s.tokens for s in ctx.texts)
        assert text_cost <= 1000 * (1 - AssemblyShares().memory) + 100
        assert ctx.texts[-1].turn.content == "and now?"
        # everything fits: all of it is shown as it is, text first
        big = mm.assemble("s", budget=200_000, now=NOW)
        assert big.omitted_turns == 0 and all(p.tier == p.stored_tier for p in big.pages)
        assert [s.turn.seq for s in big.texts if s.page_id is None] == list(range(342, 402))


def test_recent_turns_matching_the_cue_do_not_crowd_out_an_old_fact(db_url: str) -> None:
    # More recent turns than the search's candidates repeat the cue's words, and each of them
    # outranks the old fact. They are in the prompt as text already; the fact is on a faded
    # page, and the cue brings it back all the same.
    chatter = [
        {
            "role": "user" if i % 2 == 0 else "assistant",
            "content": f"Passport number photos, passport number forms, step {i}.",
            "at": NOW - timedelta(minutes=40 - i),
        }
        for i in range(30)  # more than the 12 the search is asked for
    ]
    with MemoryManager(db_url, policy=AgingPolicy(keep_last_turns=len(chatter) + 1)) as mm:
        mm.add_turns("s", [*_history(), *chatter])
        mm.add_turn("s", "user", QUESTION, NOW)
        mm.age(now=NOW)
        ctx = mm.assemble("s", budget=2000, now=NOW, cue=QUESTION)
        shown = {t.turn.seq for t in ctx.texts}
        assert all(t["content"] in [x.turn.content for x in ctx.texts] for t in chatter)
        found = mm.recall("s", QUESTION, limit=12)
        assert all(r.turn.seq in shown for r in found), "the recent turns rank first"
        assert ctx.recalled is not None and FACT in ctx.recalled.text
        assert ctx.tokens <= 2000


def test_shares_are_configurable_and_checked(faded: MemoryManager) -> None:
    none_for_recall = AssemblyShares(memory=0.5, recall=0.0)
    ctx = faded.assemble("s", budget=2000, now=NOW, cue=QUESTION, shares=none_for_recall)
    assert ctx.recalled is None
    for bad in (-0.1, 0.95, "half", True):
        with pytest.raises(OpticalMemoryError):
            AssemblyShares(memory=bad)  # type: ignore[arg-type]
    with pytest.raises(InvalidInput):
        faded.assemble("s", budget=2000, cue=42)  # type: ignore[arg-type]


def test_recalled_segment_is_public() -> None:
    assert RecalledSegment.__dataclass_fields__["kind"].default == "recalled"


def test_a_cue_never_changes_the_pages_shown(tmp_path) -> None:
    """Under the pressure policy the pass fades the pages until they fit the budget; a cued
    prompt shows exactly the pages the plain one shows (the recall reserve comes out of the
    recent text, never the pages), still recalls the fact, and stays within the budget."""
    for budget in (800, 1500):
        with MemoryManager(
            tmp_path / f"m{budget}.db", policy=AgingPolicy(keep_last_turns=10, budget=budget)
        ) as m:
            m.add_turns("s", _history())
            m.add_turn("s", "user", QUESTION, NOW)
            for hours in (0, 2, 30):
                m.age(now=NOW + timedelta(hours=hours))
            plain = m.assemble("s", budget=budget, now=NOW)
            cued = m.assemble("s", budget=budget, now=NOW, cue=QUESTION)
            assert _pages(plain) and _pages(cued) == _pages(plain), budget
            assert cued.recalled is not None and "XK4471902" in cued.recalled.text
            assert cued.tokens <= budget


def test_a_pinned_turn_shows_wherever_the_text_stops(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """A pinned turn not on a page yet, just past what the recent text can take, goes in the
    block (it was gathered as recent text, then cut, and shown nowhere); pinned, every turn
    is in the prompt, within the budget."""
    with MemoryManager(tmp_path / "pins.db") as m:
        for i in range(20):
            role = "user" if i % 2 == 0 else "assistant"
            m.add_turn("s", role, f"turn {i + 1}: " + "word " * 40, START + timedelta(minutes=i))
        now = START + timedelta(minutes=30)
        for seq in range(1, 21):
            m.pin("s", seq)
            ctx = m.assemble("s", budget=300, now=now)
            shown = {t.turn.seq for t in ctx.texts}
            block = ctx.recalled
            in_block = {t.seq for t in block.turns} if block is not None else set()
            assert seq in shown | in_block, seq
            assert not shown & in_block and ctx.tokens <= 300, seq
            m.unpin("s", seq)


def test_many_pins_never_take_the_prompt_over_its_budget(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """The pins are chosen by what their block costs as the model reads it (header, dated
    lines): summing the turns' own counts let six pins take a 207-token prompt to 210."""
    with MemoryManager(tmp_path / "pins.db") as m:
        turns = conversation(400, START, timedelta(minutes=3), seed=11)
        turns[20] = {**turns[20], "content": "my locker code is ZX-4471 " + "and a note " * 200}
        m.add_turns("s", turns)
        m.add_turn("s", "user", "what was my locker code?", START + timedelta(days=1))
        for seq in (31, 61, 100, 150, 200, 399):
            m.pin("s", seq)
        now = START + timedelta(days=2)
        for budget in range(150, 330):
            for cue in (None, "Maya Lisbon"):
                ctx = m.assemble("s", budget=budget, now=now, cue=cue)
                assert ctx.tokens <= budget or ctx.over_budget, (budget, cue, ctx.tokens)
        ctx = m.assemble("s", budget=209, now=now)
        assert ctx.tokens <= 209 and ctx.recalled is not None and ctx.recalled.pinned
