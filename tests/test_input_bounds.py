"""Numbers and times at the edges of what the store holds get typed errors or their plain
meaning, the same on both backends: turn numbers are PostgreSQL INTEGERs (up to 2**31 - 1),
so a larger one never reaches a statement as a raw driver error."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from optical_memory import InvalidInput, MemoryManager

BIG = 2**31  # one past the largest turn number


def test_turn_numbers_past_the_largest_are_refused_or_mean_what_they_say(mm: MemoryManager) -> None:
    mm.add_turns("s", [("user", "the boiler code is 4412"), ("assistant", "noted")])
    assert mm.turns("s", since=BIG) == []  # no turn after it
    assert [r.turn.seq for r in mm.recall("s", "boiler", before=2**40)] == [1]  # every turn
    assert mm.recall("s", "boiler", before=-(2**40)) == []  # none
    for call in (
        lambda: mm.pin("s", BIG),
        lambda: mm.pin("s", -(2**62)),
        lambda: mm.unpin("s", BIG),
        lambda: mm.add_turn("s", "user", "x", expected_last_turn=BIG),
        lambda: mm.add_turns("s", [("user", "x")] * 2, expected_last_turn=BIG),
        lambda: mm.replace_turns("s", BIG, []),
        lambda: mm.replace_turns("s", 2, [], expected_last_turn=BIG),
        lambda: mm.read("s", 1, BIG),
    ):
        with pytest.raises(InvalidInput):
            call()
    assert [t.content for t in mm.turns("s")] == ["the boiler code is 4412", "noted"]


def test_replace_turns_refuses_what_is_not_turns_and_turn_zero_plainly(mm: MemoryManager) -> None:
    mm.add_turn("s", "user", "hi")
    for bad in (None, 5, "user: hello", {"role": "user", "content": "x"}):
        with pytest.raises(InvalidInput, match="iterable of turns"):
            mm.replace_turns("s", 1, bad)  # type: ignore[arg-type]
    with pytest.raises(InvalidInput, match="from_turn must be between 1 and"):
        mm.replace_turns("s", 0, [("user", "x")])
    assert [t.content for t in mm.turns("s")] == ["hi"]


def test_a_page_of_huge_token_counts_is_stored_at_the_largest_count(db_url: str) -> None:
    """A counter may return up to 2**31 - 1 per turn; a page's total is kept at that (an
    INTEGER column): the page still pays as an image, and aging never fails on it."""
    start = datetime(2024, 1, 1, tzinfo=UTC)
    turns = [("user", f"turn {i} " + "word " * 40, start + timedelta(minutes=i)) for i in range(40)]
    with MemoryManager(db_url, token_counter=lambda role, text: 2_000_000_000) as mm:
        mm.add_turns("s", turns)
        report = mm.age(now=start + timedelta(days=3))
        assert report.errors == []
        pages = mm.pages("s")
        assert pages and {p.text_tokens for p in pages} == {2**31 - 1}
        assert {p.tier for p in pages} <= {"large", "base", "small", "tiny"}
        assert mm.age(now=start + timedelta(days=40)).errors == []


def test_an_aging_pass_at_the_earliest_time_there_is_does_nothing(mm: MemoryManager) -> None:
    mm.add_turns("s", [("user", "hello"), ("assistant", "hi")])
    report = mm.age(now=datetime.min.replace(tzinfo=UTC))
    assert report.errors == [] and not report.changed
    assert mm.age(now=datetime.max.replace(tzinfo=UTC)).errors == []
