"""Recall: a cue brings archived turns back exactly, from the database's own full-text index;
``read`` returns spans exactly; pins and rehearsal are stored; forget leaves the index clean."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa
from helpers import raw_sqlite_bytes, sent_sql
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from sqlalchemy import make_url, text

from benchmarks.chatgen import conversation
from optical_memory import (
    InvalidInput,
    MemoryManager,
    UnknownSession,
    migrations,
)
from optical_memory.database import create_store_engine, normalise_url
from optical_memory.store import LosslessText, UTCDateTime

T0 = datetime(2024, 3, 1, 9, 0, tzinfo=UTC)
FLIGHT = "Booked it: my flight is UA-2817 from Denver, seat 14C."


def _chat(n: int, seed: int = 3) -> list[dict]:  # type: ignore[type-arg]
    return conversation(n, T0, timedelta(minutes=2), seed=seed)


WINDOW_COUNT = "(SELECT count(*) FROM om_turns_fts WHERE"  # a common word's count in a window
ARCHIVE_PROBE = "(SELECT count(*) FROM (SELECT 1 FROM om_turns_fts WHERE"  # common or rare?
PG_ARCHIVE_PROBE = "(SELECT count(*) FROM (SELECT 1 FROM om_turns t WHERE"


def _sends(mm: MemoryManager, fn: Callable[[], object], fragment: str) -> bool:
    """Whether ``fn`` sends a statement holding ``fragment``."""
    return any(fragment in q for q in sent_sql(mm, fn))


def _recalls(mm: MemoryManager) -> dict[tuple[str, int], int]:
    """Rehearsal counts by (session id, turn), read with plain SQL."""
    with mm.database.engine.connect() as conn:
        rows = conn.execute(
            text(
                "SELECT s.key, t.seq, m.recalls FROM om_turn_marks m "
                "JOIN om_turns t ON t.id = m.turn_id JOIN om_sessions s ON s.id = t.session_id"
            )
        ).all()
    return {(k, seq): n for k, seq, n in rows if n}


# -- finding ------------------------------------------------------------------------------------


def test_recall_finds_an_exact_old_fact_by_its_code(mm: MemoryManager) -> None:
    turns = _chat(320)
    turns[4] = {**turns[4], "role": "user", "content": FLIGHT}
    mm.add_turns("trip", turns)
    mm.add_turns("other", _chat(40, seed=9))
    got = mm.recall("trip", "what was my flight UA-2817?")
    assert got, "the flight code was not recalled"
    best = got[0]
    assert best.turn.seq == 5 and best.turn.content == FLIGHT and best.turn.role == "user"
    assert best.turn == mm.turns("trip")[4]  # exactly as stored
    assert best.score > 0 and best.page_id is None and best.tier == "text"
    assert [r.score for r in got] == sorted((r.score for r in got), reverse=True)
    assert all(r.turn.session_id == "trip" for r in got)
    assert len(mm.recall("trip", "flight Denver seat", limit=3)) <= 3

    # Once aged, the recollection names the page holding the turn and its stored tier.
    mm.age(now=T0 + timedelta(days=3))
    page = next(p for p in mm.pages("trip") if p.first_seq <= 5 <= p.last_seq)
    best = mm.recall("trip", "UA-2817")[0]
    assert best.turn.content == FLIGHT
    assert (best.page_id, best.tier) == (page.page_id, page.tier)
    assert best.tier != "text"


def test_a_rare_word_outranks_common_ones(mm: MemoryManager) -> None:
    # 2,100 turns share "Lisbon": on SQLite that makes it a common term (weighed within the
    # scope rather than by bm25), so both ranking paths are exercised.
    mm.add_turns("bulk", [("user", f"Lisbon again, day {i}") for i in range(2100)])
    mm.add_turns(
        "a",
        [
            ("user", "I love Lisbon in spring."),
            ("assistant", "Your booking code for Lisbon is QX-77, the hotel is near the river."),
            ("user", "Booking a table for two tonight."),
            ("assistant", "Lisbon trams are fun."),
            ("user", "Nothing to do with it."),
        ],
    )
    got = mm.recall("a", "Lisbon booking QX-77")
    assert [r.turn.seq for r in got][:1] == [2]
    assert {r.turn.seq for r in got} == {1, 2, 3, 4}
    assert all(r.turn.session_id == "a" for r in got)
    got = mm.recall("a", "Lisbon booking QX-77", before=2)
    assert [r.turn.seq for r in got] == [1]
    assert {r.turn.seq for r in mm.recall("a", "Lisbon trams")} == {1, 2, 4}
    assert mm.recall("a", "Lisbon trams")[0].turn.seq == 4


def test_in_a_long_session_common_words_count_in_its_newest_turns_and_rare_ones_everywhere(
    db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The window scaled down (COMMON_TURNS 5, COMMON_WINDOW 40) so a short session is "long".
    from optical_memory import recall as recall_module

    mm = MemoryManager(db_url)

    monkeypatch.setattr(recall_module, "COMMON_TURNS", 5)
    monkeypatch.setattr(recall_module, "COMMON_WINDOW", 40)
    turns = [("user", f"the timetable, note {i}") for i in range(60)]
    turns += [("user", f"the ferry, note {i}") for i in range(60, 100)]
    turns[2] = ("user", "the ferry to Ilha Grande leaves pier nine, booking code QX-5521")
    turns[10] = ("user", "ferry timetable: the old copy")  # both common words, but old
    turns[90] = ("user", "the ferry timetable changed")
    mm.add_turns("long", turns)
    common = [r.turn.seq for r in mm.recall("long", "ferry timetable", limit=20)]
    assert common[0] == 91  # the newest turn holding both words comes first
    assert 11 not in common  # common words only, outside the window (else second)
    assert all(seq > 100 - 40 for seq in common)
    rare = mm.recall("long", "booking code QX-5521")  # rare terms: the whole session
    assert rare and rare[0].turn.seq == 3
    early = [r.turn.seq for r in mm.recall("long", "ferry timetable", before=50, limit=50)]
    assert early[0] == 11  # the window ends at ``before``: turns 10-49


def test_a_common_words_count_is_reused_while_the_session_has_barely_grown(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Scaled down: "ferry" (in 40 of the window's turns) is common; its count holds for
    # 40 // COUNT_DRIFT = 4 more turns, then it is counted again.
    from optical_memory import recall as recall_module

    monkeypatch.setattr(recall_module, "COMMON_TURNS", 5)
    monkeypatch.setattr(recall_module, "COUNT_DRIFT", 10)
    with MemoryManager(tmp_path / "m.db") as mm:
        mm.add_turns("s", [("user", f"the ferry, note {i}") for i in range(40)])

        def counted() -> bool:
            return _sends(mm, lambda: mm.recall("s", "ferry QX-1"), WINDOW_COUNT)

        assert counted() and not counted()  # counted once
        mm.add_turns("s", [("user", "nothing here")] * 4)
        assert not counted()  # 4 turns on: still within 1/10 of its count
        mm.add_turn("s", "user", "nothing here either")
        assert counted() and not counted()  # 5 on: counted again, then reused
        assert [r.turn.seq for r in mm.recall("s", "ferry", limit=3)] == [40, 39, 38]


def test_a_rare_words_verdict_is_reused_until_the_turns_since_could_make_it_common(
    db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Scaled down: a word in 20 turns of the archive is common. "apple" is in 15: rare, and it
    # stays rare for 4 more turns whatever they hold; after a 5th it could be common. (On
    # PostgreSQL the verdict picks how a term's turns are found: the GIN index, or the scope.)
    from optical_memory import recall as recall_module

    monkeypatch.setattr(recall_module, "COMMON_TURNS", 20)
    probe = ARCHIVE_PROBE if db_url.startswith("sqlite") else PG_ARCHIVE_PROBE
    with MemoryManager(db_url) as mm:
        mm.add_turns("s", [("user", f"apple note {i}") for i in range(15)])

        def probed() -> bool:
            return _sends(mm, lambda: mm.recall("s", "apple"), probe)

        assert probed() and not probed()  # probed once
        mm.add_turns("s", [("user", "apple again")] * 4)  # in 19 turns now
        assert not probed()
        mm.add_turns("other", [("user", "pears")])  # any session's turn counts
        assert probed()  # it could be in 20 turns: probed again (19: still rare)
        mm.add_turn("s", "user", "apple once more")
        assert probed() and not probed()  # in 20: common, and known to be
        assert [r.turn.seq for r in mm.recall("s", "apple", limit=3)] == [20, 19, 18]


def test_searches_with_known_rare_words_find_what_probing_every_word_finds(
    db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Words cross the (scaled-down) common threshold while the archive grows; after every
    # growth, each cue ranks the same with the verdicts kept as with every word probed again
    # (by a manager just opened: verdicts are kept per engine).
    import random

    from optical_memory import recall as recall_module

    monkeypatch.setattr(recall_module, "COMMON_TURNS", 30)
    words = ["amber", "birch", "cedar", "dune", "ember", "fjord", "grove", "heath"]
    rng = random.Random(11)
    with MemoryManager(db_url) as mm:
        for _ in range(10):
            for sid in ("a", "b"):
                mm.add_turns(
                    sid,
                    [("user", " ".join(rng.sample(words, rng.randint(1, 3)))) for _ in range(8)],
                )
            for _ in range(4):
                cue = " ".join(rng.sample(words, rng.randint(1, 4)))
                kept = [(r.turn.seq, round(r.score, 9)) for r in mm.recall("a", cue, limit=6)]
                with MemoryManager(db_url) as fresh:
                    found = fresh.recall("a", cue, limit=6)
                    probed = [(r.turn.seq, round(r.score, 9)) for r in found]
                assert kept == probed, cue


def test_word_verdicts_are_never_shared_by_two_databases_at_one_url(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Every ``:memory:`` database has the same URL. "kiwi" is rare in the first (1 turn of 41)
    # and common in the second (6 of 44, scaled down): had the first's verdict been reused
    # (3 ids since could not make it common there), BM25 would rank the short turns first.
    from optical_memory import recall as recall_module

    monkeypatch.setattr(recall_module, "COMMON_TURNS", 5)
    with MemoryManager("sqlite:///:memory:") as one, MemoryManager("sqlite:///:memory:") as two:
        one.add_turns("s", [("user", f"note {i}") for i in range(40)] + [("user", "kiwi")])
        kiwis = [("user", "kiwi" if i % 2 else "kiwi " + "and more " * 10) for i in range(6)]
        two.add_turns("s", [("user", f"note {i}") for i in range(38)] + kiwis)
        assert [r.turn.seq for r in one.recall("s", "kiwi")] == [41]
        found = two.recall("s", "kiwi", limit=6)
        assert [r.turn.seq for r in found] == [44, 43, 42, 41, 40, 39]  # by frequency, newest first
        assert len({r.score for r in found}) == 1


def test_common_words_ranked_set_by_set_rank_as_summing_every_match_would(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A cue's few common terms are ranked by the sets of them a turn holds (one query a set,
    # newest rows first); many are ranked by summing each term's matches. With every match
    # summed (here no term reaches the cap in the session), both give the same ranking.
    # Scaled down: a word in 400 turns of the archive is common.
    import random

    from optical_memory import recall as recall_module

    monkeypatch.setattr(recall_module, "COMMON_TURNS", 400)
    common = ["alpha", "bravo", "delta", "kilo", "oscar"]
    rare = ["quartz", "zephyr", "marlin"]
    rng = random.Random(5)
    with MemoryManager(tmp_path / "m.db") as mm:
        # The common words in 400 other turns; "marlin" in 300 of them: rare, yet so frequent
        # that its bm25 is as low as the common words' weights.
        bulk = " ".join(common)
        mm.add_turns("bulk", [("user", bulk + " marlin")] * 100)
        for i in range(300):  # more than a search asks for: the sets' queries stop early
            words = rng.sample(common, rng.randint(0, 4)) + rng.sample(rare, rng.randint(0, 1))
            mm.add_turn("s", "user", f"note {i}: " + " ".join(words or ["nothing"]))
            if i % 3:  # another session's turns between: s is searched by its scope token
                mm.add_turn("bulk", "user", bulk + " marlin")
        mm.add_turns("bulk", [("user", bulk)] * 100)
        for _ in range(30):
            cue = " ".join(
                rng.sample(common, rng.randint(1, 4)) + rng.sample(rare, rng.randint(0, 2))
            )
            limit = rng.choice([1, 3, 8, 30])
            by_sets = [(r.turn.seq, r.score) for r in mm.recall("s", cue, limit=limit)]
            monkeypatch.setattr(recall_module, "SUBSET_TERMS", 0)
            summed = [(r.turn.seq, r.score) for r in mm.recall("s", cue, limit=limit)]
            monkeypatch.setattr(recall_module, "SUBSET_TERMS", 4)
            assert [seq for seq, _ in by_sets] == [seq for seq, _ in summed], cue
            assert [round(x, 9) for _, x in by_sets] == [round(x, 9) for _, x in summed], cue
            assert by_sets, cue
        # Two common words in as many turns weigh the same: their turns are merged by age.
        mm.add_turns(
            "eq", [("user", f"{w} note {i}") for i in range(100) for w in ("kilo", "oscar")]
        )
        assert [r.turn.seq for r in mm.recall("eq", "kilo oscar", limit=5)] == [
            200, 199, 198, 197, 196
        ]  # fmt: skip


@pytest.mark.postgres
def test_postgresql_searches_with_one_statement_text_whatever_the_cue(pg_url: str) -> None:
    # The cue's terms are bound as arrays: the server sees one statement, which it can plan
    # once per connection, instead of one text per number of terms (planning cost more than
    # running it on a 300-turn session).
    mm = MemoryManager(pg_url)
    mm.add_turns("s", [("user", f"the parcel to Lisbon, note {i}, code QX-{i}") for i in range(30)])
    found: list[object] = []
    texts: set[str] = set()
    probes: set[str] = set()  # (a term not seen yet is probed: one text too)
    for cue in ("parcel", "the parcel to Lisbon?", "code QX-7 and ana@example.com please"):
        sent = sent_sql(mm, lambda cue=cue: found.append(mm.recall("s", cue)))
        texts |= {q for q in sent if "WITH q AS" in q and "ts_rank_cd" in q}
        probes |= {q for q in sent if "WITH q AS" in q and "ts_rank_cd" not in q}
    assert all(found) and len(texts) == 1
    assert len(probes) == 1
    assert mm.recall("s", "QX-7")[0].turn.seq == 8
    mm.close()


def test_before_and_limit(mm: MemoryManager) -> None:
    mm.add_turns("s", [("user", f"note {i}: the parcel tracking number ZT{i}") for i in range(30)])
    assert {r.turn.seq for r in mm.recall("s", "parcel", limit=50)} == set(range(1, 31))
    assert len(mm.recall("s", "parcel", limit=5)) == 5
    assert {r.turn.seq for r in mm.recall("s", "parcel", limit=50, before=11)} == set(range(1, 11))
    assert mm.recall("s", "parcel", before=1) == []
    assert [r.turn.seq for r in mm.recall("s", "ZT7")] == [8]
    assert mm.recall("s", "ZT7", before=8) == []


def test_earlier_versions_of_turns_never_crowd_out_live_ones(mm: MemoryManager) -> None:
    # 110 turns hold "parcel"; the 100 that say it three times (the best matches) are then
    # withdrawn. They stay in the archive (and in PostgreSQL's index), and a recall still fills
    # its limit.
    mm.add_turns("s", [("user", f"the parcel, note {i}") for i in range(10)])
    mm.add_turns("s", [("user", f"parcel parcel parcel {i}") for i in range(100)])
    mm.replace_turns("s", 11, [])
    got = mm.recall("s", "parcel", limit=5)
    assert [r.turn.seq for r in got] == [10, 9, 8, 7, 6]
    assert {r.turn.seq for r in mm.recall("s", "parcel", limit=50)} == set(range(1, 11))


def _indexed(mm: MemoryManager) -> tuple[int, dict[str, int]]:
    """SQLite's search index as FTS5 holds it: how many rows, and each term's row count."""
    with mm.database.engine.connect() as conn:
        conn.exec_driver_sql(
            "CREATE VIRTUAL TABLE IF NOT EXISTS temp.vocab USING fts5vocab(main, om_turns_fts, row)"
        )
        rows = conn.execute(text("SELECT COUNT(*) FROM om_turns_fts_docsize")).scalar_one()
        terms = dict(conn.execute(text("SELECT term, doc FROM temp.vocab")).all())
        conn.exec_driver_sql(  # raises if FTS5 finds its own structures inconsistent
            "INSERT INTO om_turns_fts(om_turns_fts, rank) VALUES ('integrity-check', 0)"
        )
    return rows, terms


def test_a_superseded_turn_leaves_the_sqlite_index_and_comes_out_of_it_once(
    sqlite_url: str,
) -> None:
    """Only live turns are indexed: the versions a regenerated reply replaces leave the index
    (the archive keeps them), and forgetting the session afterwards takes each indexed row
    out exactly once (FTS5 documents a contentless 'delete' that does not match what it
    holds as leaving the index in an undefined state)."""
    with MemoryManager(sqlite_url) as mm:
        mm.add_turns("s", [("user", f"the parcel, note {i}") for i in range(10)])
        mm.add_turns("s", [("assistant", f"zqvstale parcel answer {i}") for i in range(5)])
        mm.add_turns("other", [("user", "a parcel for the other session")])
        assert _indexed(mm)[1]["zqvstale"] == 5
        mm.replace_turns("s", 11, [("assistant", "zqvfresh parcel answer")])
        rows, terms = _indexed(mm)
        assert rows == 12 and "zqvstale" not in terms and terms["zqvfresh"] == 1
        assert terms["parcel"] == 12
        assert [t.content for t in mm.superseded("s")] == [
            f"zqvstale parcel answer {i}" for i in range(5)
        ]
        assert mm.recall("s", "zqvstale") == []
        assert [r.turn.content for r in mm.recall("s", "zqvfresh")] == ["zqvfresh parcel answer"]
        mm.forget("s")
        rows, terms = _indexed(mm)
        assert rows == 1 and set(terms.values()) == {1}  # the other session's turn alone
        assert {"parcel", "other", "session"} <= terms.keys() and "answer" not in terms
        assert [r.turn.content for r in mm.recall("other", "parcel")] == [
            "a parcel for the other session"
        ]


def test_discarded_drafts_never_change_how_live_turns_rank_on_sqlite(tmp_path: Path) -> None:
    """BM25 weighs a word by how many indexed turns hold it: regenerated drafts that all say
    "boiler" would make it look common. A store whose drafts were superseded ranks its live
    turns exactly as a store that never held them: same turns, same order, same scores."""
    live = [
        ("user", "the boiler broke again"),
        ("assistant", "call the plumber about the boiler"),
        ("user", "the invoice from the plumber came"),
        ("assistant", "pay the invoice by Friday"),
    ]
    drafts = [("assistant", f"draft {i}: the boiler, the boiler, the boiler") for i in range(30)]
    with MemoryManager(f"sqlite:///{tmp_path / 'drafts.db'}") as mm:
        mm.add_turns("s", live[:2])
        for _ in range(3):  # three regenerations of a long answer
            mm.add_turns("s", drafts)
            mm.replace_turns("s", 3, [])
        mm.add_turns("s", live[2:])
        with_drafts = [(r.turn.content, r.score) for r in mm.recall("s", "boiler invoice")]
    with MemoryManager(f"sqlite:///{tmp_path / 'clean.db'}") as mm:
        mm.add_turns("s", live)
        clean = [(r.turn.content, r.score) for r in mm.recall("s", "boiler invoice")]
    assert len(clean) == 4
    assert with_drafts == clean


@pytest.mark.parametrize("between", [5, 300])
def test_other_sessions_turns_between_a_sessions_turns_are_never_recalled(
    mm: MemoryManager, between: int
) -> None:
    # Another session's better matches written between this one's turns: a few (the
    # session's id range narrows the search) or many (its scope token does).
    mm.add_turns("a", [("user", f"the parcel, note {i}") for i in range(20)])
    mm.add_turns("b", [("user", f"parcel parcel parcel {i}") for i in range(between)])
    mm.add_turns("a", [("user", f"the parcel, later note {i}") for i in range(20)])
    got = mm.recall("a", "parcel", limit=30)
    assert len(got) == 30 and {r.turn.session_id for r in got} == {"a"}
    assert {r.turn.seq for r in mm.recall("a", "parcel", limit=100)} == set(range(1, 41))
    assert {r.turn.seq for r in mm.recall("a", "parcel", limit=100, before=21)} == set(range(1, 21))
    assert len(mm.recall("b", "parcel", limit=500)) == between


@pytest.mark.parametrize(
    ("content", "cue"),
    [
        ("我下个月去東京出差，住在新宿。", "東京"),  # a two-character word
        ("我下个月去東京出差，住在新宿。", "我什么时候去出差？"),  # Chinese question, 出差
        ("明日は東京タワーで友達と会います。", "東京タワーはどこですか"),  # Japanese
        ("明日は東京タワーで友達と会います。", "タワー"),  # katakana alone
        ("다음 주에 서울에서 회의가 있어요.", "서울"),  # Korean, agglutinated
        ("ありがとうございました！", "ありがとう"),  # kana only: weak terms, used alone
        ("Mixed: meeting 佐藤さん at 3pm in 大阪.", "佐藤"),
    ],
)
def test_a_cjk_cue_finds_a_turn_written_in_it(mm: MemoryManager, content: str, cue: str) -> None:
    mm.add_turns("cjk", _chat(30))
    mm.add_turn("cjk", "user", content)
    mm.add_turns(
        "cjk",
        [("user", "我喜欢喝茶。"), ("user", "今日は雨です。"), ("user", "오늘은 날씨가 좋아요.")],
    )
    mm.add_turns("cjk", _chat(10, seed=5))
    got = mm.recall("cjk", cue)
    assert got and got[0].turn.content == content and got[0].turn.seq == 31


def test_a_word_beside_a_private_use_character_is_found(mm: MemoryManager) -> None:
    """An icon font's glyph (a private-use character) against a word does not hide the word:
    FTS5's unicode61 would read both as one token, PostgreSQL parts them; both stores find
    it, and the turn comes back exactly."""
    texts = ["\ue000platypus sighting", "middle \uf8ffechidna", "x\U00100000wombat", "plain"]
    mm.add_turns("s", [("user", t) for t in texts])
    for word, seq in (("platypus", 1), ("echidna", 2), ("wombat", 3), ("plain", 4)):
        got = mm.recall("s", word)
        assert [r.turn.seq for r in got] == [seq], word
        assert got[0].turn.content == texts[seq - 1]


def test_a_cjk_cue_does_not_match_unrelated_text(mm: MemoryManager) -> None:
    mm.add_turns("s", [("user", "我喜欢喝茶。"), ("user", "Tokyo is big."), ("user", "京都")])
    assert mm.recall("s", "東京") == []
    assert [r.turn.seq for r in mm.recall("s", "京都は？")] == [3]


# -- scope --------------------------------------------------------------------------------------


def test_an_owner_never_recalls_another_owners_turns(db_url: str) -> None:
    with MemoryManager(db_url) as root:
        alice, bob = root.scoped("alice"), root.scoped("bob")
        alice.add_turn("alice-1", "user", "The vault code is 4417-ALPHA.")
        alice.add_turn("alice-2", "user", "Small talk, nothing secret.")
        bob.add_turn("bob-1", "user", "The vault code is 4417-BRAVO.")
        root.add_turn("free-1", "user", "The vault code is 4417-FREE.")

        def seen(m: MemoryManager, sid: str, **kw: object) -> set[str]:
            return {r.turn.content for r in m.recall(sid, "vault code 4417", **kw)}

        assert seen(alice, "alice-2") == set()  # session scope: only that session
        assert seen(alice, "alice-2", scope="owner") == {"The vault code is 4417-ALPHA."}
        assert seen(bob, "bob-1", scope="owner") == {"The vault code is 4417-BRAVO."}
        # a session without an owner searches the sessions without one
        assert seen(root, "free-1", scope="owner") == {"The vault code is 4417-FREE."}
        with MemoryManager(db_url, owner="alice") as own:
            assert seen(own, "alice-1", scope="owner") == {"The vault code is 4417-ALPHA."}
        with pytest.raises(UnknownSession):
            bob.recall("alice-1", "vault")
        with pytest.raises(UnknownSession):
            alice.recall("free-1", "vault", scope="owner")
        with pytest.raises(UnknownSession):
            alice.recall("nobody", "vault")
        # before applies to the focus session only
        alice.add_turn("alice-2", "user", "vault code 4417 again")
        assert seen(alice, "alice-2", scope="owner", before=2) == {"The vault code is 4417-ALPHA."}


# -- the cue is text, never syntax --------------------------------------------------------------

SYNTAX = [
    '"',
    '"unterminated phrase',
    "a AND",
    "OR OR OR",
    "NOT secret",
    "NEAR(secret vault, 2)",
    "secret*",
    "^secret",
    "-secret",
    "body:secret",
    "{body scope}: secret",
    "scope:s1x",
    "s1x",
    "(((",
    ")))",
    "secret AND (vault OR",
    "'; DROP TABLE om_turns; --",
    "\x00secret\x00",
    "\\ \\\\ % _ ' \" :: ::regconfig",
    "<-> & | ! :* :A",
    "secret:*",
    "\ud800 lone surrogate",
]


@pytest.mark.parametrize("cue", SYNTAX)
def test_query_syntax_in_a_cue_is_inert(mm: MemoryManager, cue: str) -> None:
    mm.add_turns("s", [("user", "the secret vault is behind the painting"), ("user", "hello")])
    got = mm.recall("s", cue)
    assert isinstance(got, list) and all(r.turn.session_id == "s" for r in got)
    if "secret" in cue.lower():
        assert [r.turn.seq for r in got] == [1]
    if cue in ("s1x", "scope:s1x"):  # the scope tokens are not searchable text
        assert got == []


@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    cue=st.lists(
        st.one_of(
            st.sampled_from(
                [
                    "AND",
                    "OR",
                    "NOT",
                    "NEAR",
                    "*",
                    "^",
                    '"',
                    "(",
                    ")",
                    ":",
                    "-",
                    "+",
                    "{",
                    "}",
                    "body:",
                    "scope:",
                    "secret",
                    "vault",
                    "東京",
                    "<->",
                    "&",
                    "|",
                    "!",
                    "\x00",
                ]
            ),
            st.text(max_size=12),
        ),
        max_size=12,
    ).map(" ".join)
)
@example(cue="")
def test_random_cues_succeed_or_recall_nothing(mm: MemoryManager, cue: str) -> None:
    if not mm.sessions():
        mm.add_turns("s", [("user", "the secret vault is in 東京"), ("user", "nothing here")])
    got = mm.recall("s", cue, scope="owner")
    assert isinstance(got, list) and len(got) <= 8
    assert all(r.turn.session_id == "s" for r in got)


def test_a_one_mebibyte_cue_works(mm: MemoryManager) -> None:
    mm.add_turns("s", [("user", "a note about Lisbon trams"), ("user", "something else")])
    big = ("Lisbon " * (1 << 17))[: 1 << 20]
    assert [r.turn.seq for r in mm.recall("s", big)] == [1]
    words = " ".join(f"w{i}" for i in range(150_000))[: 1 << 20]
    assert mm.recall("s", words) == []
    assert mm.recall("s", "x" * (1 << 20)) == []  # one 1 MiB "word": no real term
    assert mm.recall("s", "東" * (1 << 20)) == []


@pytest.mark.parametrize(
    "cue", ["", "   ", "?!", "what did I say about the", "The AND of it", "did you tell me?"]
)
def test_a_cue_of_stop_words_recalls_nothing(mm: MemoryManager, cue: str) -> None:
    mm.add_turns("s", [("user", "what did I say about the weather"), ("user", "tell me more")])
    assert mm.recall("s", cue) == []
    assert _recalls(mm) == {}


def test_a_cue_that_matches_nothing_recalls_nothing(mm: MemoryManager) -> None:
    mm.add_turns("s", _chat(50))
    assert mm.recall("s", "zeppelin quasar") == []


@pytest.mark.parametrize("cue", [None, 5, b"bytes", ["a"], {"q": 1}])
def test_a_cue_that_is_not_a_string_is_a_typed_error(mm: MemoryManager, cue: object) -> None:
    mm.add_turn("s", "user", "hello")
    with pytest.raises(InvalidInput, match="cue must be a string"):
        mm.recall("s", cue)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "kwargs",
    [
        {"limit": 0},
        {"limit": -1},
        {"limit": True},
        {"limit": "5"},
        {"scope": "all"},
        {"scope": None},
        {"before": "3"},
        {"before": 2.0},
        {"before": True},
    ],
)
def test_bad_recall_options_are_typed_errors(mm: MemoryManager, kwargs: dict) -> None:  # type: ignore[type-arg]
    mm.add_turn("s", "user", "hello there")
    with pytest.raises(InvalidInput):
        mm.recall("s", "hello", **kwargs)


# -- reading spans ------------------------------------------------------------------------------


def test_read_returns_spans_exactly(mm: MemoryManager) -> None:
    mm.add_turns("s", _chat(12))
    mm.add_turn("s", "tool", "x\x00y ✓ 😀", metadata={"k": [1, 2]})
    everything = mm.turns("s")
    assert mm.read("s", 1, 13) == everything
    assert mm.read("s", 3, 5) == everything[2:5]
    assert mm.read("s", 13, 13) == [everything[12]]
    assert mm.read("s", 13, 13)[0].content == "x\x00y ✓ 😀"
    for first, last in [(0, 2), (5, 4), (-1, 3), (12, 14), (14, 14)]:
        with pytest.raises(InvalidInput):
            mm.read("s", first, last)
    for first, last in [("1", 2), (True, 2), (1.0, 2), (1, None)]:
        with pytest.raises(InvalidInput, match="turn number"):
            mm.read("s", first, last)  # type: ignore[arg-type]
    with pytest.raises(UnknownSession):
        mm.read("nobody", 1, 1)
    with pytest.raises(UnknownSession):
        mm.scoped("eve").read("s", 1, 1)


def test_a_span_across_replaced_turns_reads_the_live_turns_around_them(mm: MemoryManager) -> None:
    """A replacement numbers its turns after the session's newest, so the numbers of the
    versions it superseded hold no live turn: a span across them (as a page's caption names
    it) reads the turns around them, not an error."""
    mm.add_turns("s", _chat(10))
    mm.replace_turns("s", 8, [("assistant", "regenerated eight"), ("user", "and on")])
    assert [t.seq for t in mm.turns("s")] == [1, 2, 3, 4, 5, 6, 7, 11, 12]
    assert [t.seq for t in mm.read("s", 1, 12)] == [1, 2, 3, 4, 5, 6, 7, 11, 12]
    assert [t.content for t in mm.read("s", 7, 11)][1:] == ["regenerated eight"]
    assert mm.read("s", 8, 10) == []  # only superseded versions there: see superseded()
    with pytest.raises(InvalidInput, match="runs past its end"):
        mm.read("s", 11, 13)


async def test_async_twins(mm: MemoryManager) -> None:
    await mm.aadd_turns("s", [("user", "the gate code is 9931"), ("assistant", "noted")])
    got = await mm.arecall("s", "gate code")
    assert [r.turn.seq for r in got] == [1]
    assert [t.content for t in await mm.aread("s", 1, 2)] == ["the gate code is 9931", "noted"]
    both = await asyncio.gather(mm.arecall("s", "9931"), mm.arecall("s", "noted"))
    assert [[r.turn.seq for r in g] for g in both] == [[1], [2]]


# -- pins and rehearsal -------------------------------------------------------------------------


def test_each_recall_is_a_rehearsal(mm: MemoryManager) -> None:
    mm.add_turns("s", [("user", "my locker is number 312"), ("user", "the weather is fine")])
    assert _recalls(mm) == {}
    mm.recall("s", "locker")
    mm.recall("s", "locker 312")
    mm.recall("s", "weather")
    assert _recalls(mm) == {("s", 1): 2, ("s", 2): 1}
    mm.read("s", 1, 2)  # reading is not recalling
    assert _recalls(mm) == {("s", 1): 2, ("s", 2): 1}


def test_a_pin_goes_with_the_turn_a_replacement_supersedes(mm: MemoryManager) -> None:
    mm.add_turns("s", _chat(10))
    mm.pin("s", 3)
    mm.pin("s", 9)
    mm.replace_turns("s", 8, [("assistant", "regenerated")])
    assert mm.pins("s") == [3]  # not the superseded version's row
    ctx = mm.assemble("s", budget=100_000)
    assert ctx.recalled is None or [t.seq for t in ctx.recalled.turns] == [3]


@pytest.mark.postgres
def test_pinning_while_a_replacement_holds_the_session_neither_waits_nor_deadlocks(
    pg_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On PostgreSQL a replacement holds the session's row while it supersedes turns; writing
    a pin meanwhile (its foreign key takes a key-share lock on that row) must not wait for
    it, or the two wait for each other's rows (a deadlock, one of them aborted and retried).
    (SQLite runs one write transaction at a time: the pin would simply come after.)"""
    import threading

    from optical_memory import manager as manager_module

    with MemoryManager(pg_url) as mm:
        mm.add_turns("s", _chat(10))
        held, pinned = threading.Event(), threading.Event()
        real = manager_module.supersede_turns
        calls = []

        def supersede_once_the_pin_is_in(*args, **kw):  # type: ignore[no-untyped-def]
            calls.append(1)
            held.set()  # the replacement holds the session row now
            pinned.wait(10)  # the pin does not wait for it: no lock cycle to break
            return real(*args, **kw)

        monkeypatch.setattr(manager_module, "supersede_turns", supersede_once_the_pin_is_in)
        worker = threading.Thread(target=lambda: mm.replace_turns("s", 8, [("user", "new")]))
        worker.start()
        assert held.wait(30)
        mm.pin("s", 9)
        pinned.set()
        worker.join(60)
        assert not worker.is_alive() and calls == [1]  # one attempt: nothing was aborted
        assert [t.seq for t in mm.turns("s")] == [*range(1, 8), 11]
        assert mm.pins("s") == []  # turn 9 was pinned, then superseded


def test_pin_and_unpin(mm: MemoryManager) -> None:
    mm.add_turns("s", _chat(10))
    assert mm.pins("s") == []
    mm.pin("s", 7)
    mm.pin("s", 2)
    mm.pin("s", 7)  # idempotent
    assert mm.pins("s") == [2, 7]
    mm.recall("s", mm.turns("s")[6].content)  # rehearsal keeps the pin
    assert mm.pins("s") == [2, 7]
    mm.unpin("s", 7)
    mm.unpin("s", 9)  # never pinned: nothing to do
    assert mm.pins("s") == [2]
    for bad in (0, 11, -3):
        with pytest.raises(InvalidInput, match="no turn"):
            mm.pin("s", bad)
    for bad in ("2", 2.0, True, None):
        with pytest.raises(InvalidInput, match="turn number"):
            mm.pin("s", bad)  # type: ignore[arg-type]
    with pytest.raises(UnknownSession):
        mm.scoped("eve").pin("s", 2)
    with pytest.raises(UnknownSession):
        mm.unpin("nobody", 1)
    assert mm.turns("s") == mm.read("s", 1, 10)  # marks never touch the turns
    mm.forget("s")
    with mm.database.engine.connect() as conn:
        assert conn.execute(text("SELECT COUNT(*) FROM om_turn_marks")).scalar_one() == 0


# -- forgetting ---------------------------------------------------------------------------------


def _index_blobs(mm: MemoryManager) -> bytes:
    """Every byte of the FTS5 shadow tables."""
    out = b""
    with mm.database.engine.connect() as conn:
        for table, cols in (
            ("om_turns_fts_data", "block"),
            ("om_turns_fts_idx", "term"),
            ("om_turns_fts_docsize", "sz"),
            ("om_turns_fts_config", "v"),
        ):
            for (value,) in conn.execute(text(f"SELECT {cols} FROM {table}")):
                out += value if isinstance(value, bytes) else str(value).encode()
    return out


def test_forget_removes_every_index_entry_from_the_sqlite_file(sqlite_url: str) -> None:
    marker = f"zqv{uuid.uuid4().hex}"  # lowercase: the index stores tokens case-folded
    # A leaf page stores a term after the prefix it shares with the term before, and the
    # stemmer may trim its last letters: look for the middle of the token.
    tail = marker[4:28].encode()
    cjk = "秘密の合言葉は鳳凰"
    path = Path(make_url(sqlite_url).database)
    with MemoryManager(sqlite_url) as mm:
        mm.add_turns("kept", _chat(120))
        mm.add_turns(
            "secret", [("user", f"the password is {marker}"), ("user", cjk)] + _chat(60, seed=8)
        )
        mm.add_turns("kept", _chat(30, seed=4))
        assert [r.turn.seq for r in mm.recall("secret", marker)] == [1]
        assert [r.turn.seq for r in mm.recall("secret", "鳳凰")] == [2]
        assert tail in _index_blobs(mm)  # the scan sees the token inside the index
        with mm.database.engine.connect() as conn:
            conn.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")
        assert tail in raw_sqlite_bytes(path)
        kept = {r.turn.seq for r in mm.recall("kept", "Lisbon flights", limit=200)}

        assert mm.forget("secret") == 62
        assert tail not in _index_blobs(mm)
        raw = raw_sqlite_bytes(path)
        assert tail not in raw and marker.encode() not in raw
        assert cjk.encode() not in raw and " 鳳 凰 ".encode() not in raw
        with mm.database.engine.connect() as conn:
            conn.exec_driver_sql(
                "CREATE VIRTUAL TABLE temp.vocab USING fts5vocab(main, om_turns_fts, row)"
            )
            terms = {t for (t,) in conn.execute(text("SELECT term FROM temp.vocab"))}
            assert marker not in terms and "鳳" not in terms
            assert "lisbon" in terms
            docs = conn.execute(text("SELECT COUNT(*) FROM om_turns_fts_docsize")).scalar_one()
            assert docs == 150
            assert conn.execute(text("SELECT COUNT(*) FROM om_turn_marks")).scalar_one() > 0
        assert {r.turn.seq for r in mm.recall("kept", "Lisbon flights", limit=200)} == kept
        assert mm.recall("kept", marker) == []
        mm.add_turn("kept", "user", "still indexed: zeppelin")
        assert [r.turn.seq for r in mm.recall("kept", "zeppelin")] == [151]
    assert tail not in raw_sqlite_bytes(path)


def test_forget_removes_the_index_entries_on_postgresql(pg_url: str) -> None:
    marker = f"zqv{uuid.uuid4().hex}"
    match = "SELECT COUNT(*) FROM om_turns WHERE search_vector @@ plainto_tsquery('english', :m)"
    with MemoryManager(pg_url) as mm:
        mm.add_turns("kept", _chat(60))
        mm.add_turns("secret", [("user", f"the password is {marker}"), ("user", "東京の秘密")])
        mm.recall("secret", marker)
        with mm.database.engine.connect() as conn:
            conn.exec_driver_sql("SET enable_seqscan = off")
            plan = "\n".join(r[0] for r in conn.execute(text(f"EXPLAIN {match}"), {"m": marker}))
            assert "om_turns_fts" in plan  # the GIN index answers the search
            assert conn.execute(text(match), {"m": marker}).scalar_one() == 1
        assert mm.forget("secret") == 2
        with mm.database.engine.connect() as conn:
            conn.exec_driver_sql("SET enable_seqscan = off")
            assert conn.execute(text(match), {"m": marker}).scalar_one() == 0
            assert conn.execute(text(match), {"m": "東 京"}).scalar_one() == 0
            assert conn.execute(text("SELECT COUNT(*) FROM om_turn_marks")).scalar_one() == 0
        assert mm.recall("kept", marker) == []


# -- the migration ------------------------------------------------------------------------------

# om_sessions and om_turns as revision 0003 has them (no search_text).
META_0003 = sa.MetaData()
SESSIONS_0003 = sa.Table(
    "om_sessions",
    META_0003,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("key", LosslessText()),
    sa.Column("owner", sa.String(256)),
    sa.Column("created_at", UTCDateTime()),
    sa.Column("metadata", sa.JSON()),
    sa.Column("next_seq", sa.Integer()),
)
TURNS_0003 = sa.Table(
    "om_turns",
    META_0003,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("session_id", sa.Integer),
    sa.Column("seq", sa.Integer()),
    sa.Column("role", sa.String(16)),
    sa.Column("content", LosslessText()),
    sa.Column("at", UTCDateTime()),
    sa.Column("tokens", sa.Integer()),
    sa.Column("metadata", sa.JSON()),
)
OLD_TURNS = [
    "We fixed the boiler on Friday, the plumber charged 180 euros.",
    "我下个月去東京出差。",
    "null\x00byte and the word porcupine",
    *[t["content"] for t in _chat(40)],
]


def test_the_migration_indexes_a_database_created_before_it(db_url: str) -> None:
    engine = create_store_engine(normalise_url(db_url))
    try:
        migrations.upgrade(engine, "0003")
        with engine.begin() as conn:
            sid = conn.execute(
                SESSIONS_0003.insert().returning(SESSIONS_0003.c.id),
                {
                    "key": "old",
                    "owner": None,
                    "created_at": T0,
                    "metadata": {},
                    "next_seq": len(OLD_TURNS),
                },
            ).scalar_one()
            conn.execute(
                TURNS_0003.insert(),
                [
                    {
                        "session_id": sid,
                        "seq": i,
                        "role": "user",
                        "content": c,
                        "at": T0 + timedelta(minutes=i),
                        "tokens": 10,
                        "metadata": {},
                    }
                    for i, c in enumerate(OLD_TURNS, 1)
                ],
            )
    finally:
        engine.dispose()

    with MemoryManager(db_url) as mm:  # migrates to head on open
        assert migrations.current_revision(mm.database.engine) == migrations.head_revision()
        assert [r.turn.seq for r in mm.recall("old", "boiler plumber")][:1] == [1]
        assert [r.turn.seq for r in mm.recall("old", "東京")] == [2]
        got = mm.recall("old", "porcupine")
        assert [r.turn.seq for r in got] == [3] and got[0].turn.content == OLD_TURNS[2]
        assert mm.read("old", 1, 3) == mm.turns("old")[:3]
        mm.add_turn("old", "user", "A new turn about the boiler pressure.")
        assert {r.turn.seq for r in mm.recall("old", "boiler")} == {1, len(OLD_TURNS) + 1}

        # down to 0003 and back: the index is dropped and rebuilt from the turns
        migrations.downgrade(mm.database.engine, "0003")
        migrations.upgrade(mm.database.engine)
        assert {r.turn.seq for r in mm.recall("old", "boiler")} == {1, len(OLD_TURNS) + 1}
        assert [r.turn.seq for r in mm.recall("old", "東京")] == [2]
        assert mm.forget("old") == len(OLD_TURNS) + 1


def _scaled_window(monkeypatch: pytest.MonkeyPatch) -> None:
    """A word in 5 turns of the archive is common; a session of over 40 turns is long."""
    from optical_memory import recall as recall_module

    monkeypatch.setattr(recall_module, "COMMON_TURNS", 5)
    monkeypatch.setattr(recall_module, "COMMON_WINDOW", 40)


def _long_with(word: str) -> list[tuple[str, str]]:
    """60 turns, ``word`` only in turn 10: outside the newest 40."""
    turns = [("user", f"the timetable, note {i}") for i in range(60)]
    turns[9] = ("user", f"an old note about {word}")
    return turns


def test_two_words_that_casefold_alike_keep_their_own_verdicts(
    db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """ "Straße" and "strasse" are two words to both indexes: the rare one's verdict must not
    make the common one rare (then found outside a long session's window)."""
    _scaled_window(monkeypatch)
    with MemoryManager(db_url) as mm:
        mm.add_turns("long", _long_with("strasse"))
        mm.add_turns("short", [("user", "die Straße")])
        mm.add_turns("other", [("user", f"strasse {i}") for i in range(6)])  # common
        assert [r.turn.seq for r in mm.recall("short", "Straße")] == [1]
        assert mm.recall("long", "strasse") == []  # common: the window only


def test_a_word_made_rare_by_a_forget_is_found_again_in_a_long_session(
    db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A verdict that a word is common is dropped when a session is forgotten: the word may
    be rare again, and rare words are matched in the whole session."""
    _scaled_window(monkeypatch)
    with MemoryManager(db_url) as mm:
        alice, bob = mm.scoped("alice"), mm.scoped("bob")
        alice.add_turns("long", _long_with("zephyr"))
        alice.add_turns("short", [("user", "a zephyr")])
        bob.add_turns("big", [("user", f"zephyr {i}") for i in range(6)])
        assert [r.turn.seq for r in alice.recall("short", "zephyr")] == [1]  # known common
        assert alice.recall("long", "zephyr") == []
        bob.forget("big")
        assert [r.turn.seq for r in alice.recall("long", "zephyr")] == [10]


def test_an_owners_common_word_count_is_reused_while_its_sessions_have_barely_grown(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # As for a session's window (scaled down): "ferry" is in 40 of the owner's turns; its
    # count holds while the owner's sessions grow by 4 turns, then it is counted again.
    from optical_memory import recall as recall_module

    monkeypatch.setattr(recall_module, "COMMON_TURNS", 5)
    monkeypatch.setattr(recall_module, "COUNT_DRIFT", 10)
    with MemoryManager(tmp_path / "m.db", owner="o") as mm:
        for sid in ("a", "b"):
            mm.add_turns(sid, [("user", f"the ferry, note {i}") for i in range(20)])

        def counted() -> bool:
            return _sends(mm, lambda: mm.recall("a", "ferry QX-1", scope="owner"), WINDOW_COUNT)

        assert counted() and not counted()  # counted once
        mm.add_turns("b", [("user", "nothing here")] * 4)
        assert not counted()  # 4 turns on, in any of its sessions: reused
        mm.add_turn("a", "user", "nothing here either")
        assert counted() and not counted()  # 5 on: counted again, then reused
        mm.forget("b")
        assert counted()  # a forget drops the counts
        assert [r.turn.seq for r in mm.recall("a", "ferry", scope="owner", limit=2)] == [20, 19]
