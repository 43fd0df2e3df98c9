"""The tail reaches the past, sittings seal, faded pages consolidate.

- Turns that left the text window but do not fill a page wait on the session's *open* page,
  prepared as images so a tight budget can show it; each pass re-cuts it only when new turns
  joined it, and seals it once full or when the sitting ends.
- As pages fade to the faint tiers, adjacent sparse pages of a session merge into dense ones,
  losslessly, at tier moves only, so between passes without a tier move the prefix is stable.
"""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import select, text
from workers.hardening import ThumbnailEncoder

from benchmarks.chatgen import conversation
from optical_memory import AgingPolicy, MemoryManager, Tier, get_target
from optical_memory.errors import UnknownPage
from optical_memory.render import PageRenderer
from optical_memory.store import PageRow, RenditionRow, VisualTokenRow

START = datetime(2024, 1, 1, 18, 0, tzinfo=UTC)
SITTINGS = 30
EVERY = timedelta(days=3)
GAP = AgingPolicy().sitting_gap


def _sitting(k: int, n: int = 10) -> list[dict]:
    """Sitting ``k``: ``n`` short turns two minutes apart, ``EVERY`` after the one before."""
    return conversation(n, START + k * EVERY, timedelta(minutes=2), seed=k, sentences=(1, 2))


def _snapshot(mm: MemoryManager, session: str = "s") -> list[tuple]:  # type: ignore[type-arg]
    """Each page: id, span, stored tier, version, and the hash of every image it can show."""
    out = []
    with mm.database.read() as s:
        for p in s.scalars(select(PageRow).order_by(PageRow.session_row_id, PageRow.first_seq)):
            forms = {p.tier: hashlib.sha256(p.png).hexdigest()} if p.png is not None else {}
            for r in s.scalars(select(RenditionRow).where(RenditionRow.page_id == p.id)):
                forms[r.tier] = hashlib.sha256(r.png).hexdigest()
            out.append((p.id, p.first_seq, p.last_seq, p.tier, p.version, p.open, forms))
    return out


def _assert_tiling(mm: MemoryManager, session: str, paged_until: int) -> None:
    """Every paged turn in exactly one page: pages tile 1..paged_until, no gap, no overlap."""
    pages = mm.pages(session)
    assert pages[0].first_seq == 1
    for a, b in zip(pages, pages[1:], strict=False):
        assert b.first_seq == a.last_seq + 1
    assert pages[-1].last_seq == paged_until
    with mm.database.engine.connect() as conn:
        stored = conn.execute(
            text("SELECT paged_until FROM om_sessions WHERE key = :k"), {"k": session}
        ).scalar_one()
    assert stored == paged_until


@pytest.fixture
def many_sittings(db_url: str):  # type: ignore[no-untyped-def]
    """Thirty sittings three days apart, aged as a scheduler would: during each sitting, after
    it, the next day; then for two more months."""
    mm = MemoryManager(db_url, encoder=ThumbnailEncoder())
    added = []
    reports = []
    stable_checks = 0
    for k in range(SITTINGS):
        turns = _sitting(k)
        added += mm.add_turns("s", turns)
        end = turns[-1]["at"]
        reports.append(mm.age(now=end + timedelta(minutes=5)))  # mid-sitting: the open tail
        reports.append(mm.age(now=end + 2 * GAP))  # the sitting has ended: sealed
        before = _snapshot(mm)
        again = mm.age(now=end + 3 * GAP)  # no tier threshold crossed since: nothing changes
        assert not again.changed and not again.pages_moved and again.pages_skipped == 0
        assert _snapshot(mm) == before, "the page prefix changed without a tier move"
        stable_checks += 1
        reports.append(mm.age(now=end + timedelta(days=1, hours=1)))
    last = added[-1].at
    for days in range(3, 70, 3):
        reports.append(mm.age(now=last + timedelta(days=days)))
    assert stable_checks == SITTINGS
    yield mm, added, reports
    mm.close()


@pytest.mark.slow
def test_many_sittings_consolidate_into_few_dense_pages(many_sittings) -> None:  # type: ignore[no-untyped-def]
    mm, added, reports = many_sittings
    pages = mm.pages("s")
    target = get_target("deepseek-ocr")
    keep = mm.policy.keep_last_turns
    _assert_tiling(mm, "s", len(added) - keep)
    assert not any(p.open for p in pages)  # every sitting has ended
    assert all(not r.errors for r in reports)
    # Lossless: the archive is untouched, byte for byte.
    assert mm.turns("s") == added
    with_images = [p for p in pages if p.tier != "text"]
    assert all(p.tier == "tiny" for p in with_images)
    # Far fewer pages than sittings (one page per sitting without consolidation).
    assert len(pages) <= SITTINGS // 5, [(p.first_seq, p.last_seq) for p in pages]
    assert sum(r.merges for r in reports) >= 1
    assert sum(r.pages_merged for r in reports) > sum(r.merges for r in reports)
    assert len(pages) * target.tier_cost(Tier.TINY) <= 6 * 73  # every page shown at tiny
    # Visual tokens: exactly one cache entry per form a page can be shown in, none orphaned.
    with mm.database.read() as s:
        ids = set(s.scalars(select(PageRow.id)))
        cached = list(s.scalars(select(VisualTokenRow.page_id)))
        forms = len(with_images) + len(list(s.scalars(select(RenditionRow.page_id))))
    assert set(cached) <= ids and len(cached) == forms
    assert mm.verify(repair=False).ok


def test_a_merged_page_names_its_whole_span_and_shows_it(db_url: str) -> None:
    policy = AgingPolicy(keep_last_turns=0)
    with MemoryManager(db_url, policy=policy) as mm:
        for k in range(3):
            turns = _sitting(k, 6)
            mm.add_turns("s", turns)
            mm.age(now=turns[-1]["at"] + 2 * GAP)
        before = mm.pages("s")
        assert len(before) == 3 and all(p.tier == "text" for p in before)  # alone, none pays
        report = mm.age(now=START + timedelta(days=60))
        (merged,) = mm.pages("s")
        assert report.merges == 1 and report.pages_merged == 3
        assert report.pages_moved == {"tiny": 1}
        assert (merged.first_seq, merged.last_seq) == (1, 18)
        assert merged.tier == "tiny" and merged.text_tokens == sum(p.text_tokens for p in before)
        assert merged.page_id not in {p.page_id for p in before}
        for p in before:  # the replaced pages are gone with their images
            with pytest.raises(UnknownPage):
                mm.page_image("s", p.page_id, "tiny")
        ctx = mm.assemble("s", budget=400, now=START + timedelta(days=60))
        (page,) = ctx.pages
        assert (page.page_id, page.first_seq, page.last_seq) == (merged.page_id, 1, 18)
        assert mm.read("s", 1, 18) == mm.turns("s")


def test_a_sittings_page_is_sealed_after_the_sitting_gap(db_url: str) -> None:
    turns = conversation(20, START, timedelta(minutes=1))
    with MemoryManager(db_url, policy=AgingPolicy(by_time=None)) as mm:  # sealing alone
        mm.add_turns("s", turns)
        during = mm.age(now=turns[-1]["at"] + timedelta(minutes=10))
        (page,) = mm.pages("s")
        assert page.open and page.tier == "text" and during.pages_created == 0
        assert mm.age(now=turns[-1]["at"] + GAP - timedelta(minutes=1)).changed is False
        after = mm.age(now=turns[-1]["at"] + GAP)
        (sealed,) = mm.pages("s")
        assert after.pages_created == 1 and after.pages_opened == 0
        assert not sealed.open
        # Sealing is a flag: the same row, the same images, no re-render.
        assert (sealed.page_id, sealed.version) == (page.page_id, page.version)
        # The next sitting starts a new page after it; the sealed one never changes.
        more = conversation(20, START + timedelta(days=1), timedelta(minutes=1), seed=3)
        mm.add_turns("s", more)
        mm.age(now=more[-1]["at"] + timedelta(minutes=5))
        first, tail = mm.pages("s")
        assert first.page_id == sealed.page_id and first.last_seq == sealed.last_seq
        assert tail.open and tail.first_seq == sealed.last_seq + 1


def test_seal_quiet_after_is_a_deprecated_name_for_the_sitting_gap() -> None:
    with pytest.warns(DeprecationWarning, match="sitting_gap"):
        policy = AgingPolicy(seal_quiet_after=timedelta(days=7))
    assert policy.sitting_gap == timedelta(days=7)
    assert AgingPolicy().seal_quiet_after is None


def test_the_open_tail_is_an_image_under_a_tight_budget_and_replaced_when_turns_join(
    db_url: str,
) -> None:
    turns = conversation(60, START, timedelta(minutes=1))  # about 2.4k tokens, not a full page
    with MemoryManager(db_url) as mm:
        mm.add_turns("s", turns)
        now = turns[-1]["at"] + timedelta(minutes=5)  # still in the sitting
        report = mm.age(now=now)
        (tail,) = mm.pages("s")
        assert report.pages_opened == 1 and report.pages_created == 0
        assert tail.open and tail.tier == "text"
        assert (tail.first_seq, tail.last_seq) == (1, 60 - mm.policy.keep_last_turns)
        for tier in ("large", "base", "small", "tiny"):  # prepared like any text page
            assert mm.page_image("s", tail.page_id, tier)
        tight = mm.assemble("s", budget=1000, now=now)
        assert tight.tokens <= 1000
        assert [p.page_id for p in tight.pages] == [tail.page_id]
        assert tight.pages[0].stored_tier == "text" and tight.pages[0].tier != "text"
        roomy = mm.assemble("s", budget=100_000, now=now)
        assert not roomy.pages and len(roomy.texts) == 60  # with room it is plain text
        # Nothing new: left alone, the same row and bytes.
        before = _snapshot(mm)
        assert mm.age(now=now + timedelta(minutes=5)).changed is False
        assert _snapshot(mm) == before
        # New turns join it: it is replaced, re-cut from its first turn, in one go.
        more = conversation(12, turns[-1]["at"] + timedelta(minutes=1), timedelta(minutes=1), 5)
        mm.add_turns("s", more)
        report = mm.age(now=more[-1]["at"] + timedelta(minutes=5))
        (new,) = mm.pages("s")
        assert report.pages_opened == 1 and report.pages_created == 0
        assert new.open and new.page_id != tail.page_id
        assert (new.first_seq, new.last_seq) == (1, 72 - mm.policy.keep_last_turns)
        with pytest.raises(UnknownPage):
            mm.page_image("s", tail.page_id, "tiny")
        assert mm.page_image("s", new.page_id, "tiny")
        ctx = mm.assemble("s", budget=1000, now=more[-1]["at"])
        assert [p.page_id for p in ctx.pages] == [new.page_id]
        assert mm.verify(repair=False).ok


def test_a_full_open_page_is_sealed_and_only_the_newest_page_changes(db_url: str) -> None:
    policy = AgingPolicy(by_time=None)
    with MemoryManager(db_url, policy=policy) as mm:
        at = START
        sealed_prefix: list[tuple] = []  # type: ignore[type-arg]
        for _ in range(8):
            turns = conversation(40, at, timedelta(seconds=30), seed=int(at.timestamp()))
            mm.add_turns("s", turns)
            mm.age(now=turns[-1]["at"] + timedelta(minutes=2))
            snap = _snapshot(mm)
            assert sum(p[5] for p in snap) <= 1 and all(not p[5] for p in snap[:-1])
            # What was sealed before is still there, byte for byte.
            assert snap[: len(sealed_prefix)] == sealed_prefix
            sealed_prefix = [p for p in snap if not p[5]]
            at = turns[-1]["at"] + timedelta(minutes=1)
        assert len(sealed_prefix) >= 2  # the tail filled pages and they were sealed
        assert mm.pages("s")[-1].open
        _assert_tiling(mm, "s", len(mm.turns("s")) - mm.policy.keep_last_turns)


def _tool_sitting(k: int) -> list[dict]:
    at = START + k * EVERY
    turns: list[dict] = []
    for i in range(3):
        t = at + timedelta(minutes=3 * i)
        turns.append({"role": "user", "content": f"sitting {k} question {i}: weather?", "at": t})
        turns.append(
            {
                "role": "assistant",
                "content": "",
                "at": t,
                "metadata": {"tool_calls": [{"id": f"c{k}-{i}", "name": "lookup", "args": {}}]},
            }
        )
        for j in range(2):
            turns.append(
                {
                    "role": "tool",
                    "content": f"result {j} for {k}/{i}: sunny, 21 C",
                    "at": t,
                    "metadata": {"tool_call_id": f"c{k}-{i}"},
                }
            )
        turns.append({"role": "assistant", "content": f"It is sunny ({k}/{i}).", "at": t})
    return turns


def test_a_tool_call_and_its_results_never_split_across_pages_after_a_merge(db_url: str) -> None:
    policy = AgingPolicy(keep_last_turns=3)  # the window ends inside tool groups
    with MemoryManager(db_url, policy=policy) as mm:
        merges = 0
        for k in range(12):
            turns = _tool_sitting(k)
            mm.add_turns("s", turns)
            for after in (timedelta(minutes=1), 2 * GAP, timedelta(days=1)):
                merges += mm.age(now=turns[-1]["at"] + after).merges
        for days in (10, 40, 80):
            merges += mm.age(now=START + 12 * EVERY + timedelta(days=days)).merges
        assert merges >= 1
        roles = {t.seq: t.role for t in mm.turns("s")}
        pages = mm.pages("s")
        assert len(pages) < 12
        for p in pages:
            assert roles[p.first_seq] != "tool"
            assert roles.get(p.last_seq + 1) != "tool"
        paged = pages[-1].last_seq
        assert roles.get(paged + 1) != "tool"


class _HookedRenderer(PageRenderer):
    """A renderer that runs ``hook`` once, at the next footprint it measures: the aging
    pass measures pages for consolidation in a read, between planning a merge and making it."""

    hook = None

    def footprint(self, turn, canvas):  # type: ignore[no-untyped-def]
        hook, self.hook = self.hook, None
        if hook is not None:
            hook()
        return super().footprint(turn, canvas)


def _three_sparse_pages(mm: MemoryManager) -> None:
    for k in range(3):
        turns = _sitting(k, 6)
        mm.add_turns("s", turns)
        mm.age(now=turns[-1]["at"] + 2 * GAP)
    assert len(mm.pages("s")) == 3


def test_a_merge_whose_page_changed_meanwhile_is_skipped_and_redone(db_url: str) -> None:
    renderer = _HookedRenderer()
    policy = AgingPolicy(keep_last_turns=0)
    now = START + timedelta(days=60)
    with (
        MemoryManager(db_url, policy=policy, renderer=renderer) as mm,
        MemoryManager(db_url, policy=policy) as other,
    ):
        _three_sparse_pages(mm)
        middle = mm.pages("s")[1]

        def repair_the_middle_page() -> None:  # another worker rebuilds it: a new version
            with other.database.engine.begin() as conn:
                conn.execute(
                    text("UPDATE om_page_renditions SET png = :x WHERE page_id = :p"),
                    {"x": b"\x00broken", "p": middle.page_id},
                )
            assert other.verify(repair=True).pages_repaired == 1

        renderer.hook = repair_the_middle_page
        skipped = mm.age(now=now)
        assert skipped.merges == 0 and skipped.pages_skipped == 1
        assert [p.version for p in mm.pages("s")][1] == middle.version + 1
        redone = mm.age(now=now)  # the pages still have to move: the merge is redone
        assert redone.merges == 1 and redone.pages_merged == 3
        assert len(mm.pages("s")) == 1
        _assert_tiling(mm, "s", 18)


def test_two_workers_never_merge_the_same_pages_twice(db_url: str) -> None:
    renderer = _HookedRenderer()
    policy = AgingPolicy(keep_last_turns=0)
    now = START + timedelta(days=60)
    with (
        MemoryManager(db_url, policy=policy, renderer=renderer, encoder=ThumbnailEncoder()) as mm,
        MemoryManager(db_url, policy=policy, encoder=ThumbnailEncoder()) as other,
    ):
        _three_sparse_pages(mm)
        theirs = []
        renderer.hook = lambda: theirs.append(other.age(now=now))  # the other worker is quicker
        ours = mm.age(now=now)
        # This pass holds the session (see test_aging_claims.py): the other leaves it.
        assert theirs[0].sessions_busy == 1 and theirs[0].merges == 0
        assert ours.merges == 1 and ours.pages_skipped == 0
        assert not mm.age(now=now).changed
        (page,) = mm.pages("s")
        assert page.tier == "tiny"
        _assert_tiling(mm, "s", 18)
        with mm.database.read() as s:
            assert list(s.scalars(select(VisualTokenRow.page_id))) == [page.page_id]


def _pressure_history(mm: MemoryManager, sittings: int, n: int = 8) -> None:
    """``sittings`` short sittings three days apart, each aged as a scheduler would once it
    has ended (its page sealed), under the manager's policy."""
    for k in range(sittings):
        turns = _sitting(k, n)
        mm.add_turns("s", turns)
        mm.age(now=turns[-1]["at"] + 2 * GAP)


def test_under_pressure_merging_stops_once_the_session_fits_and_the_budget_is_spent(
    sqlite_url: str,
) -> None:
    """Pressure with consolidation spends the budget: merges only until the pages and the
    protected tail fit, so the prompt uses most of the budget (not a fraction of it), stays
    within it, shows every turn, and a second pass changes nothing."""
    tiny = get_target("deepseek-ocr").tier_cost(Tier.TINY)
    sittings = 14
    # Every sitting's page at tiny would cost about 14 x (73 + a 16-token caption) plus the
    # tail and the intro: over this budget, so about half of them must merge, and no more.
    budget = 900
    policy = AgingPolicy(by_time=None, budget=budget, keep_last_turns=4)
    with MemoryManager(sqlite_url, policy=policy) as mm:
        _pressure_history(mm, sittings)
        added = mm.turns("s")
        later = START + sittings * EVERY + timedelta(days=1)
        mm.age(now=later)
        pages = mm.pages("s")
        assert all(p.tier == "tiny" for p in pages)  # fading alone could not make it fit
        assert 1 < len(pages) < sittings  # merged, but not into a few huge pages
        assert len(pages) * tiny > budget / 2
        ctx = mm.assemble("s", budget=budget, now=later)
        assert ctx.tokens <= budget
        assert ctx.tokens >= 0.8 * budget, (ctx.tokens, len(pages))
        assert ctx.omitted_turns == 0 and len(ctx.pages) == len(pages)
        assert all(p.tier == p.stored_tier for p in ctx.pages)
        before = _snapshot(mm)
        again = mm.age(now=later + timedelta(hours=2))
        assert not again.changed and again.merges == 0 and not again.pages_moved
        assert _snapshot(mm) == before
        assert mm.turns("s") == added  # lossless


def test_under_pressure_pages_that_fit_by_fading_do_not_merge(sqlite_url: str) -> None:
    """A session that fits once its oldest pages fade keeps one page per sitting: under a
    budget, a tier move alone does not merge (it would leave the budget unspent)."""
    sittings = 8
    policy = AgingPolicy(by_time=None, budget=1200, keep_last_turns=4)
    with MemoryManager(sqlite_url, policy=policy) as mm:
        _pressure_history(mm, sittings)
        later = START + sittings * EVERY + timedelta(days=1)
        report = mm.age(now=later)
        pages = mm.pages("s")
        assert len(pages) == sittings and report.merges == 0
        assert {p.tier for p in pages} & {"small", "tiny"}  # pages did fade to faint tiers
        assert not all(p.tier == "tiny" for p in pages)  # only as far as needed
        ctx = mm.assemble("s", budget=1200, now=later)
        assert 0.8 * 1200 <= ctx.tokens <= 1200 and ctx.omitted_turns == 0
