"""What matters fades last: the salience score, and abridged pages that keep salient turns whole.

The score ranks facts people tell about themselves, plans, preferences, numbers, dates, codes,
addresses above chatter, never raises on any text, and can be replaced by a user function.
A faint tier that must abridge its page keeps the salient (and pinned, and recalled) turns
whole, cuts the chatter first and marks the turns it kept whole; a page with nothing marked
renders exactly as before.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from optical_memory import AgingPolicy, MemoryManager, Tier, TimeLadder, get_target
from optical_memory.aging import render_turn
from optical_memory.errors import InvalidConfiguration
from optical_memory.layout import KEPT_MARK
from optical_memory.render import GIST_CHARS, PageRenderer, RenderTurn
from optical_memory.salience import (
    RECALL_BONUS,
    SALIENT,
    keeps_whole,
    rehearsed,
    salience,
)

T0 = datetime(2023, 5, 8, 13, 56, tzinfo=UTC)
LAYOUT = (1280, 1280)
TINY = (512, 512)

# -- the score ----------------------------------------------------------------------------------

SALIENT_TURNS = [
    "I'm a nurse at the children's hospital.",  # a fact about oneself
    "I live in Porto with my wife and two cats.",
    "I work nights on weekends.",
    "I'm going to Japan next month.",  # plans
    "We will move to a bigger flat in 2024.",
    "I plan to run the marathon.",
    "I prefer tea over coffee.",  # preferences
    "I hate cilantro, it tastes like soap.",
    "my favourite band is still the one from school",
    "The invoice came to $1,240.50 in the end.",  # amounts
    "It was 30% cheaper than the other one.",
    "Meet at 10:30 on Monday?",  # a date and a time
    "My flight is TAP1357 from gate 12A.",  # codes
    "Your order #A-443 shipped.",
    "Write to ana.silva@example.com about it.",  # an e-mail address
    "The slides are at https://example.org/talk.pdf",  # a URL
    "Ask Marta and Joaquim what Lisbon was like.",  # names
]
CHATTER = [
    "haha ok",
    "sounds good",
    "Sounds good!",
    "lol",
    "ok",
    "Thanks!",
    "I'm so happy for you!",
    "I love that!",
    "I'll check it out.",
    "Yeah, I think so too.",
    "Wow, that's great! What made you decide?",
    "see you tomorrow",
    "That's amazing, Mel. Keep it up!",
    "Do you have any pets?",
    "",
]


@pytest.mark.parametrize("text", SALIENT_TURNS)
def test_what_people_need_back_is_salient(text: str) -> None:
    assert salience("user", text) >= SALIENT, text


@pytest.mark.parametrize("text", CHATTER)
def test_chatter_is_not(text: str) -> None:
    assert salience("user", text) < SALIENT, text


def test_every_salient_turn_outranks_every_chatter_turn() -> None:
    assert min(salience("user", t) for t in SALIENT_TURNS) > max(
        salience("assistant", t) for t in CHATTER
    )


def test_more_cues_score_higher() -> None:
    one = salience("user", "I'm flying to Lisbon.")
    more = salience("user", "I'm flying to Lisbon on 12 June at 10:30, flight TAP1357, $240.")
    assert SALIENT <= one < more < 1.0


def test_a_long_exposition_is_discounted() -> None:
    fact = "I moved to Porto in 2019."
    padding = " It is a nice place with many things to see and do." * 60
    assert salience("user", fact) > salience("user", fact + padding)


UNICODE = [
    "",
    " ",
    "\n\n\t",
    "中文字符测试：你好，世界！",
    "我明天去东京，2023年5月8日见。",
    "これは日本語です。三月三日に会いましょう",
    "한국어 텍스트",
    "שלום עולם, זה טקסט בעברית",
    "مرحبا بالعالم، هذا نص عربي ١٢٣",
    "emoji 😀🎉👍🏽 👨‍👩‍👧 ❤️ 🇫🇷",
    "\x00\x01\x07\x1b[31mred\x1b[0m \x7f \r\n",
    "lone surrogate \ud800 and private use \ue000",
    "combining e\u0301 a\u0308 ẞ İ ǅ",
    "full-width digits ０１２３ and Ⅻ",
    "I'm " * 5000,
    "@" * 10_000 + "." * 10_000,
    "x" * (1 << 20),
]


@pytest.mark.parametrize("text", UNICODE, ids=range(len(UNICODE)))
def test_any_text_scores_without_error(text: str) -> None:
    score = salience("user", text)
    assert isinstance(score, float) and 0.0 <= score < 1.0
    assert salience("user", text) == score  # deterministic


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=400), st.sampled_from(["user", "assistant", "system", "tool", ""]))
def test_random_text_scores_in_range(text: str, role: str) -> None:
    score = salience(role, text)
    assert 0.0 <= score < 1.0 and not math.isnan(score)


def test_the_score_reads_what_is_said_not_who_says_it() -> None:
    text = "I live in Porto."
    assert salience("user", text) == salience("assistant", text) == salience("tool", text)


def test_pins_and_recalls_make_any_turn_kept_whole() -> None:
    chatter = salience("user", "haha ok")
    assert not keeps_whole(chatter)
    assert keeps_whole(chatter, pinned=True)
    assert keeps_whole(chatter, recalls=1)  # one recall is enough (rehearsal)
    assert rehearsed(chatter, 3) == chatter + 3 * RECALL_BONUS
    assert keeps_whole(salience("user", "I live in Porto."))


# -- abridging ----------------------------------------------------------------------------------

CHAT = (
    "haha yes that sounds really fun and honestly it would be so nice to just hang out and "
    "relax for a while without thinking about anything much at all, you know how it goes "
) * 2
FACTS = [
    "I moved to Porto in 2019 and I work as a nurse at the Santo Antonio hospital, "
    "night shifts mostly, three nights a week, and my badge number is PT4471 so "
    "the parking gate lets me in after ten at night without any fuss at all",
    "My flight to Lisbon is TAP1357 on 12 June at 10:30 from gate 12A and the "
    "booking reference is QX7P2L, the hotel is the Memmo Alfama and it costs 240 euros "
    "a night which is a lot but it was the only one left near the river",
    "I prefer green tea over coffee and I am allergic to peanuts, so please tell "
    "Marta that the cake for the party on Saturday must be nut free, she can write "
    "to me at ana.silva@example.com if she has any questions about the recipe",
]


def rt(text: str, i: int, keep: bool = False) -> RenderTurn:
    return RenderTurn("Caroline" if i % 2 else "Melanie", T0 + timedelta(minutes=i), text, keep)


def page(n: int = 60, every: int = 10) -> list[RenderTurn]:
    """``n`` long turns, one in ``every`` a salient one (marked keep_whole), the rest chatter."""
    out = []
    for i in range(n):
        salient = i % every == 3 % every
        text = FACTS[(i // every) % len(FACTS)] if salient else CHAT
        out.append(rt(text, i, keep=salient and salience("user", text) >= SALIENT))
    return out


@pytest.fixture(scope="module")
def renderer() -> PageRenderer:
    return PageRenderer()


def shown(plan) -> str:
    return " ".join(plan.text_lines)


def test_the_fixture_facts_are_salient_and_the_chatter_is_not() -> None:
    assert all(salience("user", f) >= SALIENT for f in FACTS)
    assert salience("user", CHAT) < SALIENT


def test_an_abridged_page_keeps_the_salient_turns_whole_and_cuts_the_chatter(renderer) -> None:
    turns = page()
    marked = [i for i, t in enumerate(turns) if t.keep_whole]
    assert len(marked) == 6
    plan = renderer.plan(turns, LAYOUT, TINY)
    assert plan.abridged
    assert plan.kept_whole == tuple(marked)
    text = shown(plan)
    for i in marked:
        assert plan.turns[i].text == turns[i].text  # whole
        assert turns[i].text in text  # and all of it is on the page
    for i, (full, drawn) in enumerate(zip(turns, plan.turns, strict=True)):
        if i not in marked:
            assert drawn.text.endswith("…") and len(drawn.text) < len(full.text)
            assert full.text.startswith(drawn.text[:-1].rstrip())
            assert not drawn.kept_whole
    # the marker opens the label of each turn kept whole, and only those
    assert text.count(KEPT_MARK) == len(marked)
    assert f"{KEPT_MARK} Caroline 13:59:" in text
    # without the marks the same page is cut uniformly: the facts lose their ends
    uniform = renderer.plan([rt(t.text, i) for i, t in enumerate(turns)], LAYOUT, TINY)
    assert uniform.abridged and uniform.kept_whole == ()
    assert KEPT_MARK not in shown(uniform)
    assert all(FACTS[0] not in x.text for x in uniform.turns)
    # the chatter pays for it, but keeps its opening
    chatter_cap = max(len(plan.turns[i].text) for i in range(len(turns)) if i not in marked)
    assert GIST_CHARS < chatter_cap < max(len(t.text) for t in uniform.turns)


def test_the_abridged_image_is_the_plan_drawn_and_is_deterministic(renderer) -> None:
    turns = page()
    (tiny,) = renderer.render(turns, LAYOUT, [TINY])
    plan = renderer.plan(turns, LAYOUT, TINY)
    assert tiny.abridged
    assert tiny.png == renderer.to_png(
        renderer.downsample(renderer.draw(plan.layout, plan.canvas), TINY)
    )
    assert PageRenderer().render(turns, LAYOUT, [TINY])[0].png == tiny.png
    # the plan's turns lay out as drawn (benchmarks find a turn's lines this way)
    again = renderer.layout(plan.turns, plan.canvas, plan.layout.font_px)
    assert again is not None and again.text_lines == plan.text_lines


def test_keep_whole_changes_nothing_on_a_page_that_is_not_abridged(renderer) -> None:
    turns = page()
    plain = [rt(t.text, i) for i, t in enumerate(turns)]
    sizes = [LAYOUT, (1024, 1024)]
    marked = renderer.render(turns, LAYOUT, sizes)
    assert not any(im.abridged for im in marked)
    assert [im.png for im in marked] == [im.png for im in renderer.render(plain, LAYOUT, sizes)]
    assert renderer.plan(turns, LAYOUT, (1024, 1024)).kept_whole == ()
    # a short page at the faint tier is reflowed whole, marks or not
    short = turns[:8]
    plan = renderer.plan(short, LAYOUT, TINY)
    assert not plan.abridged and plan.kept_whole == () and KEPT_MARK not in shown(plan)


def test_when_the_salient_turns_alone_do_not_fit_they_are_cut_less_than_the_chatter(
    renderer,
) -> None:
    # half the page is long facts: they cannot all stay whole
    turns = [rt(FACTS[i % 3] * 2 if i % 2 else CHAT, i, keep=i % 2 == 1) for i in range(60)]
    plan = renderer.plan(turns, LAYOUT, TINY)
    assert plan.abridged
    marked = {i for i, t in enumerate(turns) if t.keep_whole}
    chatter = [len(plan.turns[i].text) for i in range(len(turns)) if i not in marked]
    kept = [len(plan.turns[i].text) for i in marked]
    assert max(chatter) <= GIST_CHARS + 1  # the chatter is down to its opening
    assert min(kept) > GIST_CHARS + 1  # the facts keep much more
    assert not plan.layout.truncated


def test_a_page_too_full_for_any_gist_falls_back_to_the_uniform_cut(renderer) -> None:
    turns = [rt(FACTS[0], i, keep=i % 2 == 0) for i in range(400)]
    plan = renderer.plan(turns, LAYOUT, TINY)
    assert plan.abridged
    lengths = {len(t.text) for t in plan.turns}
    assert max(lengths) <= GIST_CHARS + 1  # every turn, marked or not, cut alike


# -- through the aging pass ---------------------------------------------------------------------

FADE_NOW = TimeLadder(large=timedelta(0), base=timedelta(0), small=timedelta(0), tiny=timedelta(0))
POLICY = AgingPolicy(keep_last_turns=0, by_time=FADE_NOW, min_fill=0)
TARGET = get_target("deepseek-ocr")
START = datetime(2024, 1, 1, 9, 0, tzinfo=UTC)
QUOKKA = "the quokka photo was funny haha " * 8  # chatter, found by the cue "quokka"


def conversation() -> list[dict]:
    turns = []
    for i in range(70):
        if i % 10 == 3:
            text = FACTS[(i // 10) % len(FACTS)]
        elif i == 12:
            text = QUOKKA
        else:
            text = CHAT
        turns.append(
            {
                "role": "user" if i % 2 == 0 else "assistant",
                "content": text,
                "at": START + timedelta(minutes=i),
            }
        )
    return turns


def expected_tiny(mm: MemoryManager, session: str, keep: set[int]) -> tuple[list, bytes]:
    """The first page's turns as the aging pass renders them, turns in ``keep`` kept whole,
    and the tiny image they make."""
    first = mm.pages(session)[0]
    turns = [t for t in mm.turns(session) if first.first_seq <= t.seq <= first.last_seq]
    rts = [
        render_turn(
            SimpleNamespace(
                meta=t.metadata, role=t.role, at=t.at, content=t.content, attachments=()
            ),
            keep_whole=t.seq in keep,
        )
        for t in turns
    ]
    (img,) = mm.renderer.render(rts, TARGET.layout, [TARGET.spec(Tier.TINY).size])
    return rts, img.png


def aged_first_page(mm: MemoryManager, session: str) -> bytes:
    report = mm.age(now=START + timedelta(days=1))
    assert not report.errors, report.errors
    first = mm.pages(session)[0]
    assert first.tier == "tiny"
    return mm.page_image(session, first.page_id)


def test_the_aging_pass_keeps_salient_turns_whole_at_the_tiny_tier(db_url) -> None:
    with MemoryManager(db_url, policy=POLICY) as mm:
        mm.add_turns("s", conversation())
        png = aged_first_page(mm, "s")
        salient = {t.seq for t in mm.turns("s") if salience(t.role, t.content) >= SALIENT}
        rts, want = expected_tiny(mm, "s", salient)
        assert png == want
        plan = mm.renderer.plan(rts, TARGET.layout, TARGET.spec(Tier.TINY).size)
        assert plan.abridged
        kept = {rts[i].text for i in plan.kept_whole}
        assert set(FACTS) <= kept and CHAT not in kept
        for fact in FACTS:
            assert fact in shown(plan)
        # it differs from the page drawn without salience
        assert png != expected_tiny(mm, "s", set())[1]


def test_pinned_and_recalled_turns_are_kept_whole_too(db_url) -> None:
    with MemoryManager(db_url, policy=POLICY) as mm:
        mm.add_turns("s", conversation())
        assert salience("user", QUOKKA) < SALIENT
        mm.pin("s", 6)  # a chatter turn
        hits = mm.recall("s", "quokka")
        assert [h.turn.seq for h in hits] == [13]
        png = aged_first_page(mm, "s")
        salient = {t.seq for t in mm.turns("s") if salience(t.role, t.content) >= SALIENT}
        rts, want = expected_tiny(mm, "s", salient | {6, 13})
        assert png == want
        plan = mm.renderer.plan(rts, TARGET.layout, TARGET.spec(Tier.TINY).size)
        assert {5, 12} <= set(plan.kept_whole)  # positions of turns 6 and 13
        assert QUOKKA.rstrip() in shown(plan)


def test_the_pass_is_deterministic_for_the_same_turns_and_marks(tmp_path) -> None:
    pngs = []
    for name in ("a", "b"):
        with MemoryManager(tmp_path / f"{name}.db", policy=POLICY) as mm:
            mm.add_turns("s", conversation())
            mm.pin("s", 6)
            mm.recall("s", "quokka")
            pngs.append(aged_first_page(mm, "s"))
    assert pngs[0] == pngs[1]


def test_a_user_salience_function_replaces_the_score(db_url) -> None:
    seen: list[tuple[str, str]] = []

    def only_quokkas(role: str, content: str) -> float:
        seen.append((role, content))
        return 1.0 if "quokka" in content else 0.0

    with MemoryManager(db_url, policy=POLICY, salience=only_quokkas) as mm:
        mm.add_turns("s", conversation())
        png = aged_first_page(mm, "s")
        assert ("user", QUOKKA) in seen
        rts, want = expected_tiny(mm, "s", {13})
        assert png == want
        plan = mm.renderer.plan(rts, TARGET.layout, TARGET.spec(Tier.TINY).size)
        assert plan.kept_whole == (12,)  # the facts are cut like chatter now


def test_a_salience_function_may_answer_yes_or_no(tmp_path) -> None:
    with MemoryManager(
        tmp_path / "m.db", policy=POLICY, salience=lambda role, content: "quokka" in content
    ) as mm:
        mm.add_turns("s", conversation())
        png = aged_first_page(mm, "s")
        assert png == expected_tiny(mm, "s", {13})[1]


@pytest.mark.parametrize("bad", [42, "salient", object()])
def test_salience_must_be_a_function(tmp_path, bad) -> None:
    with pytest.raises(InvalidConfiguration, match="salience"):
        MemoryManager(tmp_path / "m.db", salience=bad)
    assert not (tmp_path / "m.db").exists()  # refused before opening anything


def test_a_salience_function_returning_no_number_fails_the_pass_typed(tmp_path) -> None:
    with MemoryManager(tmp_path / "m.db", policy=POLICY, salience=lambda r, c: "high") as mm:
        mm.add_turns("s", conversation())
        report = mm.age(now=START + timedelta(days=1))
        assert any("InvalidConfiguration" in e and "salience" in e for e in report.errors)
        assert all(p.tier == "text" for p in mm.pages("s"))  # nothing half-done
