"""A scoped view shares its manager's database but does not own it."""

from __future__ import annotations

import pytest

from optical_memory import InvalidInput, MemoryClosed, MemoryManager, OpticalMemoryError


def test_closing_a_view_leaves_the_manager_working_even_in_memory() -> None:
    # On sqlite:// the database lives in the engine's one connection: disposing it loses it.
    with MemoryManager("sqlite://") as mm:
        mm.add_turn("chat-1", "user", "kept")
        with mm.scoped(None) as view:
            assert [t.content for t in view.turns("chat-1")] == ["kept"]
        assert [t.content for t in mm.turns("chat-1")] == ["kept"]
        mm.add_turn("chat-1", "assistant", "still writable")
        assert len(mm.turns("chat-1")) == 2


def test_a_closed_view_refuses_calls_but_its_siblings_do_not(db_url: str) -> None:
    with MemoryManager(db_url) as mm:
        a, b = mm.scoped("alice"), mm.scoped("bob")
        a.add_turn("a-1", "user", "hi")
        a.close()
        with pytest.raises(MemoryClosed):
            a.turns("a-1")
        b.add_turn("b-1", "user", "hello")
        assert [s.session_id for s in b.sessions()] == ["b-1"]


def test_closing_the_manager_closes_its_views_and_their_schedulers(db_url: str) -> None:
    mm = MemoryManager(db_url)
    view = mm.scoped("alice")
    nested = view.scoped("bob")
    view.start_scheduler(every=3600)
    mm.close()
    for closed in (view, nested):
        with pytest.raises(MemoryClosed):
            closed.add_turn("s", "user", "x")
        with pytest.raises(MemoryClosed):
            closed.turns("s")
    assert view.scheduler is None  # the view's scheduler was stopped


@pytest.mark.parametrize("every", [0, -1, float("nan"), float("inf"), "5", None])
def test_scheduler_intervals_are_checked(every: object) -> None:
    with MemoryManager("sqlite://") as mm, pytest.raises(InvalidInput):
        mm.start_scheduler(every=every)  # type: ignore[arg-type]


def test_errors_from_configuration_are_typed() -> None:
    from optical_memory import AgingPolicy, Tier, get_target

    with pytest.raises(OpticalMemoryError):
        AgingPolicy(keep_last_turns=-1)
    with pytest.raises(OpticalMemoryError):
        Tier.parse("huge")
    with pytest.raises(OpticalMemoryError):
        Tier.parse(99)
    with pytest.raises(OpticalMemoryError):
        get_target("deepseek-ocr").spec("text")
    with pytest.raises(OpticalMemoryError):
        MemoryManager("sqlite://", token_counter=42)
    with pytest.raises(OpticalMemoryError):
        MemoryManager("sqlite://", max_content_bytes=0)


def test_page_image_with_a_bad_tier_is_a_typed_error() -> None:
    from optical_memory import UnknownPage

    with MemoryManager("sqlite://") as mm:
        mm.add_turn("chat-1", "user", "hi")
        for tier in ("huge", 3.5, ["large"]):
            with pytest.raises(UnknownPage):
                mm.page_image("chat-1", 1, tier=tier)  # type: ignore[arg-type]
