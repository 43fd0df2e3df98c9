"""Bad input: every malformed call gives a typed error and writes nothing; damaged image and
cache blobs are found and rebuilt from the archived turns; the scheduler outlives a failing pass.
"""

from __future__ import annotations

import json
import sqlite3
import uuid
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal

import pytest
from helpers import make_history, read_png
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from sqlalchemy import make_url, text
from workers.hardening import ThumbnailEncoder, check_pages_match_tiers, row_counts, wait_for

from optical_memory import (
    AgingPolicy,
    ContentTooLarge,
    InvalidBudget,
    InvalidContent,
    InvalidInput,
    InvalidRole,
    InvalidSessionId,
    InvalidTimestamp,
    MemoryManager,
    OpticalMemoryError,
    PageSegment,
    TextSegment,
    TimeLadder,
    UnknownSession,
    UnknownTarget,
    target_names,
)

MAX_BYTES = 2048
T0 = datetime(2024, 1, 1, tzinfo=UTC)
FUNC_FIXTURE = [HealthCheck.function_scoped_fixture, HealthCheck.too_slow]

# -- strategies -------------------------------------------------------------------------------

SPECIAL = [
    "",
    "\x00",
    "a\x00b",
    "\ud800",  # lone high surrogate
    "x\udfffy",  # lone low surrogate
    "\u202eRTL override\u202c",
    "مرحبا بالعالم",
    "שלום",
    "👩\u200d👩\u200d👧 🏳️\u200d🌈",
    "\ufeffBOM",
    "e\u0301 vs \u00e9",
    "\r\n\t\x0b\x0c\x1b[31m",
    "\U0010ffff\U000e0001",
    "'; DROP TABLE om_turns; --",
    '\ue000om-json:"looks like the escape marker"',
]
any_char = st.characters(min_codepoint=0, max_codepoint=0x10FFFF, exclude_categories=())
contents = st.one_of(
    st.text(any_char, max_size=60),
    st.sampled_from(SPECIAL),
    st.builds(
        lambda n, c: c * n, st.integers(MAX_BYTES - 8, MAX_BYTES + 8), st.sampled_from("aé😀")
    ),
    st.sampled_from([None, b"bytes", 42, 3.5, ["list"], {"a": 1}]),
)
roles = st.one_of(
    st.sampled_from(["user", "assistant", "system", "tool"]),
    st.sampled_from(["User", "USER", "bot", "", " user", "function", None, 1, ["user"]]),
    st.text(max_size=8),
)
offsets = st.timedeltas(
    min_value=-timedelta(hours=23, minutes=59), max_value=timedelta(hours=23, minutes=59)
)
aware = st.builds(
    lambda dt, off: dt.replace(tzinfo=timezone(off)),
    st.datetimes(min_value=datetime(1, 1, 1), max_value=datetime(9999, 12, 31, 23, 59, 59)),
    offsets,
)
stamps = st.one_of(
    st.none(),
    aware,
    st.datetimes(),  # naive
    st.sampled_from(["2024-01-01T00:00:00Z", 1700000000, T0.date()]),
    st.sampled_from(
        [
            datetime.max.replace(tzinfo=timezone(-timedelta(hours=5))),
            datetime.min.replace(tzinfo=timezone(timedelta(hours=5))),
            datetime.max.replace(tzinfo=UTC),
            datetime.min.replace(tzinfo=UTC),
        ]
    ),
)
json_values = st.recursive(
    st.one_of(
        st.none(), st.booleans(), st.integers(-(2**53), 2**53), st.text(any_char, max_size=10)
    ),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3)
    ),
    max_leaves=8,
)
metadatas = st.one_of(
    st.none(),
    st.dictionaries(st.text(any_char, max_size=8), json_values, max_size=3),
    st.sampled_from(
        [{"x": float("nan")}, {"x": {1, 2}}, ["not", "a", "mapping"], "text", {"x": b"b"}]
    ),
)
session_ids = st.one_of(
    st.sampled_from(["s-1", "s-2", "'; --", "a/../b", "ünï ☃", "\u202e"]),
    st.text(any_char, max_size=12),
    st.sampled_from([None, 5, b"bytes", "", "x" * 1025]),
)


def _valid_text(s: object) -> bool:
    if not isinstance(s, str):
        return False
    try:
        s.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def expected_errors(session_id, role, content, at, metadata) -> set[type[OpticalMemoryError]]:  # type: ignore[no-untyped-def]
    """Every error class that this call may legitimately raise (empty: it must succeed)."""
    errs: set[type[OpticalMemoryError]] = set()
    if (
        not _valid_text(session_id)
        or not session_id
        or len(session_id) > 1024
        or "\x00" in session_id
    ):
        errs.add(InvalidSessionId)
    if role not in ("user", "assistant", "system", "tool"):
        errs.add(InvalidRole)
    if not _valid_text(content):
        errs.add(InvalidContent)
    elif len(content.encode("utf-8")) > MAX_BYTES:
        errs.add(ContentTooLarge)
    if at is not None:
        if not isinstance(at, datetime) or at.tzinfo is None:
            errs.add(InvalidTimestamp)
        else:
            try:
                at.astimezone(UTC)
            except OverflowError:
                errs.add(InvalidTimestamp)
    if metadata is not None:
        import json

        try:
            json.dumps(metadata, allow_nan=False)
            assert isinstance(metadata, dict)
        except (TypeError, ValueError, AssertionError):
            errs.add(InvalidContent)
    return errs


def _norm_meta(meta: dict) -> dict:  # type: ignore[type-arg]
    import json

    return json.loads(json.dumps(meta))


@pytest.fixture
def small(db_url: str):  # type: ignore[no-untyped-def]
    with MemoryManager(db_url, max_content_bytes=MAX_BYTES) as m:
        yield m


# -- add_turn ---------------------------------------------------------------------------------


@settings(max_examples=120, deadline=None, suppress_health_check=FUNC_FIXTURE)
@given(sid=session_ids, role=roles, content=contents, at=stamps, metadata=metadatas)
@example("s-1", "user", "ok", datetime.max.replace(tzinfo=timezone(-timedelta(hours=5))), None)
@example("s-1", "user", "x\udfffy", None, None)
@example("s-1", "user", "a\x00b", None, {"k\x00": "\ud800"})
@example("s-1", "tool", "", datetime(2024, 1, 1), None)
@example("\ud800", "user", "x", None, None)
@example("s-1", "system", "é" * (MAX_BYTES // 2 + 1), None, None)
def test_add_turn_typed_error_or_exact_roundtrip(small, sid, role, content, at, metadata) -> None:
    errs = expected_errors(sid, role, content, at, metadata)
    before = row_counts(small)
    try:
        turn = small.add_turn(sid, role, content, at, metadata=metadata)
    except OpticalMemoryError as exc:
        assert errs, f"valid call refused: {exc!r}"
        assert isinstance(exc, tuple(errs)), f"{type(exc).__name__} not in {errs}"
        assert row_counts(small) == before, "a refused call wrote something"
        return
    assert not errs, f"accepted, expected one of {errs}"
    after = row_counts(small)
    assert after["om_turns"] == before["om_turns"] + 1
    assert after["om_sessions"] - before["om_sessions"] in (0, 1)
    stored = small.turns(sid)[-1]
    assert stored == turn
    assert (stored.role, stored.content) == (role, content)
    assert stored.at.tzinfo is not None and stored.at.utcoffset() == timedelta(0)
    if at is not None:
        assert stored.at == at
    assert stored.metadata == _norm_meta(metadata or {})
    seqs = [t.seq for t in small.turns(sid)]
    assert seqs == list(range(1, len(seqs) + 1))


def test_huge_content_at_the_limit_and_over_it(db_url: str) -> None:
    with MemoryManager(db_url) as mm:  # the default 1 MiB limit
        limit = mm.max_content_bytes
        big = ("😀" * (limit // 4)) + "x" * (limit % 4)
        assert len(big.encode()) == limit
        assert mm.add_turn("big", "user", big).content == big
        assert mm.turns("big")[0].content == big
        before = row_counts(mm)
        with pytest.raises(ContentTooLarge):
            mm.add_turn("big", "user", big + "x")
        with pytest.raises(ContentTooLarge):
            mm.add_turns("big", [("user", "fine"), ("user", big + "!")])
        assert row_counts(mm) == before
        ctx = mm.assemble("big", budget=10)
        assert ctx.over_budget or ctx.tokens <= 10


# -- import (add_turns) -----------------------------------------------------------------------

items = st.one_of(
    st.fixed_dictionaries(
        {"role": roles, "content": contents}, optional={"at": stamps, "metadata": metadatas}
    ),
    st.tuples(roles, contents),
    st.tuples(roles, contents, stamps),
    st.sampled_from(["user", 5, None, ("user",), ("user", "a", None, "extra"), {"role": "user"}]),
)


def _item_errors(item) -> set[type[OpticalMemoryError]]:  # type: ignore[no-untyped-def]
    if isinstance(item, dict):
        return expected_errors(
            "ok", item.get("role"), item.get("content"), item.get("at"), item.get("metadata")
        )
    if isinstance(item, tuple) and 2 <= len(item) <= 3:
        return expected_errors("ok", item[0], item[1], item[2] if len(item) == 3 else None, None)
    return {InvalidInput}


@settings(max_examples=80, deadline=None, suppress_health_check=FUNC_FIXTURE)
@given(batch=st.lists(items, max_size=6), existing=st.booleans())
def test_bulk_import_is_all_or_nothing(small, batch, existing) -> None:
    sid = "bulk-" + uuid.uuid4().hex
    if existing:
        small.add_turn(sid, "user", "already here")
    errs = set().union(*(_item_errors(i) for i in batch)) if batch else set()
    before = row_counts(small)
    try:
        out = small.add_turns(sid, batch)
    except OpticalMemoryError as exc:
        assert errs, f"valid batch refused: {exc!r}"
        assert isinstance(exc, tuple(errs) + (InvalidInput,))
        assert row_counts(small) == before, "a refused batch was partly written"
        if not existing:
            with pytest.raises(UnknownSession):
                small.turns(sid)
        return
    assert not errs
    assert len(out) == len(batch)
    assert row_counts(small)["om_turns"] == before["om_turns"] + len(batch)
    if batch:
        stored = small.turns(sid)[-len(batch) :]
        assert stored == out
        first = 2 if existing else 1
        assert [t.seq for t in stored] == list(range(first, first + len(batch)))


@pytest.mark.parametrize("turns", [5, None, "user", b"x", {"role": "user", "content": "x"}, 3.5])
def test_bulk_import_of_a_non_list_is_refused(mm: MemoryManager, turns) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(InvalidInput):
        mm.add_turns("s", turns)
    assert row_counts(mm)["om_sessions"] == 0


def test_out_of_order_timestamps_are_kept_and_age(mm: MemoryManager) -> None:
    stamps_ = [T0 + timedelta(hours=h) for h in (5, 1, 9, 0, 3, 7, 2, 8, 4, 6) * 3]
    rows = [
        ("user" if i % 2 else "assistant", f"turn {i} " + "words " * 60, at)
        for i, at in enumerate(stamps_)
    ]
    mm.add_turns("ooo", rows)
    got = mm.turns("ooo")
    assert [t.at for t in got] == stamps_
    assert [t.seq for t in got] == list(range(1, 31))
    report = mm.age(now=T0 + timedelta(days=40))
    assert not report.errors and report.pages_created >= 1
    pages = mm.pages("ooo")
    for p in pages:
        span = stamps_[p.first_seq - 1 : p.last_seq]
        assert p.first_at == min(span) and p.last_at == max(span)
    ctx = mm.assemble("ooo", budget=100_000, now=T0 + timedelta(days=40))
    seqs = [s.turn.seq for s in ctx.texts] + [
        q for p in ctx.pages for q in range(p.first_seq, p.last_seq + 1)
    ]
    assert sorted(seqs) == list(range(1, 31))


# -- assemble ---------------------------------------------------------------------------------

budgets = st.one_of(
    st.integers(-5, 3),
    st.integers(4, 10**7),
    st.just(10**30),
    st.sampled_from(
        [0.0, 1.5, 4096.0, float("nan"), float("inf"), True, False, None, "4096", Decimal(10)]
    ),
)
targets = st.one_of(
    st.none(),
    st.sampled_from(target_names()),
    st.text(max_size=10),
    st.sampled_from([5, b"deepseek-ocr"]),
)
nows = st.one_of(st.none(), aware.filter(lambda d: d.year > 1 and d.year < 9999), st.datetimes())


@pytest.fixture
def history(db_url: str):  # type: ignore[no-untyped-def]
    with MemoryManager(db_url, max_content_bytes=MAX_BYTES) as m:
        m.add_turns("h", make_history(60, lambda i: f"message {i}: " + "lorem ipsum " * 40, T0))
        m.add_turn("h", "user", "\x00 and \u202e and 😀")
        m.age(now=T0 + timedelta(hours=3))
        assert m.pages("h")
        yield m


@settings(max_examples=80, deadline=None, suppress_health_check=FUNC_FIXTURE)
@given(
    budget=budgets,
    target=targets,
    now=nows,
    sid=st.one_of(st.just("h"), session_ids),
)
def test_assemble_typed_error_or_a_context_within_budget(history, budget, target, now, sid) -> None:
    before = row_counts(history)
    try:
        ctx = history.assemble(sid, budget, target, now)
    except OpticalMemoryError as exc:
        bad_budget = isinstance(budget, bool) or not isinstance(budget, int) or budget <= 0
        bad_target = target is not None and target not in target_names()
        bad_now = now is not None and now.tzinfo is None
        assert bad_budget or bad_target or bad_now or sid != "h", repr(exc)
        if isinstance(exc, InvalidBudget):
            assert bad_budget
        if isinstance(exc, UnknownTarget):
            assert bad_target
        if isinstance(exc, InvalidTimestamp):
            assert bad_now
        if isinstance(exc, UnknownSession | InvalidSessionId):
            assert sid != "h"
        return
    finally:
        assert row_counts(history) == before, "assemble wrote to the store"
    assert sid == "h" and isinstance(budget, int) and budget > 0
    assert ctx.tokens <= budget or ctx.over_budget
    archive = {t.seq: t for t in history.turns("h")}
    covered: list[int] = []
    for seg in ctx.segments:
        if isinstance(seg, TextSegment):
            assert seg.turn == archive[seg.turn.seq]
            covered.append(seg.turn.seq)
        else:
            assert isinstance(seg, PageSegment)
            read_png(seg.png)
            covered.extend(range(seg.first_seq, seg.last_seq + 1))
    assert covered == sorted(set(covered)), "segments overlap or are out of order"
    if covered:
        assert covered[-1] == max(archive)  # the newest turn is always there


# -- damaged blobs ----------------------------------------------------------------------------


def _blobs(mm: MemoryManager) -> dict[tuple[str, int, str], bytes]:
    out: dict[tuple[str, int, str], bytes] = {}
    with mm.database.engine.connect() as conn:
        for r in conn.execute(text("SELECT id, tier, png FROM om_pages WHERE png IS NOT NULL")):
            out[("page", r.id, r.tier)] = bytes(r.png)
        for r in conn.execute(text("SELECT page_id, tier, png FROM om_page_renditions")):
            out[("rendition", r.page_id, r.tier)] = bytes(r.png)
        for r in conn.execute(text("SELECT page_id, tier, data FROM om_visual_tokens")):
            out[("tokens", r.page_id, r.tier)] = bytes(r.data)
    return out


@pytest.mark.slow
def test_damaged_images_and_caches_are_found_and_rebuilt(db_url: str) -> None:
    enc = ThumbnailEncoder()
    with MemoryManager(db_url, encoder=enc) as mm:
        for s in ("a", "b"):
            mm.add_turns(
                s, make_history(100, lambda i, s=s: f"{s} says {i}: " + "quick brown fox " * 30, T0)
            )
        report = mm.age(now=T0 + timedelta(hours=4))  # large: every fainter tier has a rendition
        assert report.pages_moved.get("large", 0) >= 4 and not report.errors
        assert mm.verify(repair=False).ok
        good = _blobs(mm)
        turns_before = {s: mm.turns(s) for s in ("a", "b")}
        ids = sorted({k[1] for k in good if k[0] == "page"})
        p = ids[:6]
        tiny = good[("rendition", p[0], "tiny")]
        with mm.database.engine.begin() as conn:
            q = conn.execute
            q(
                text("UPDATE om_pages SET png = :b WHERE id = :i"),
                {"b": b"garbage" * 100, "i": p[0]},
            )
            q(
                text("UPDATE om_pages SET png = :b WHERE id = :i"), {"b": tiny, "i": p[1]}
            )  # wrong size
            broken = bytearray(good[("page", p[2], "large")])
            broken[len(broken) // 2 : len(broken) // 2 + 16] = b"\x00" * 16
            q(text("UPDATE om_pages SET png = :b WHERE id = :i"), {"b": bytes(broken), "i": p[2]})
            q(
                text("UPDATE om_page_renditions SET png = :b WHERE page_id = :i AND tier = 'base'"),
                {"b": good[("page", p[3], "large")][:300], "i": p[3]},  # truncated
            )
            q(
                text("DELETE FROM om_page_renditions WHERE page_id = :i AND tier = 'small'"),
                {"i": p[4]},
            )
            q(
                text("UPDATE om_visual_tokens SET data = :b WHERE page_id = :i"),
                {"b": b"\x07" * 256, "i": p[5]},
            )
        damaged = row_counts(mm)

        found = mm.verify(repair=False)
        assert {int(x.split(":")[0].split()[1]) for x in found.problems} == set(p)
        assert row_counts(mm) == damaged and _blobs(mm) != good  # a dry run changes nothing

        calls = enc.calls
        fixed = mm.verify(repair=True)
        # Five large pages re-rendered and re-encoded in all four forms (large and its three
        # renditions); the sixth page's four garbled cache entries re-encoded on their own.
        assert fixed.pages_repaired == 5 and fixed.visual_tokens_rebuilt == 5 * 4 + 4
        assert enc.calls == calls + 24
        assert mm.verify(repair=False).ok
        # Rebuilt from the archived turns: the same pixels and the same tokens as before.
        assert _blobs(mm) == good
        assert {s: mm.turns(s) for s in ("a", "b")} == turns_before
        with mm.database.engine.connect() as conn:
            assert check_pages_match_tiers(conn) == len(ids)
        for s in ("a", "b"):
            ctx = mm.assemble(s, budget=200_000, now=T0 + timedelta(hours=4))
            assert ctx.pages
            for seg in ctx.pages:
                read_png(seg.png)


def test_garbage_of_the_wrong_type_is_rebuilt_on_sqlite(sqlite_url: str) -> None:
    """SQLite keeps whatever type was written: a png column holding invalid UTF-8 text cannot
    even be read by the driver; verify still finds and rebuilds it."""
    with MemoryManager(sqlite_url) as mm:
        mm.add_turns("s", make_history(150, lambda i: f"{i} " + "text " * 80, T0, roles=["user"]))
        mm.age(now=T0 + timedelta(hours=4))
        good = _blobs(mm)
        assert len(mm.pages("s")) >= 2
        pid = min(k[1] for k in good)
        path = make_url(sqlite_url).database
        conn = sqlite3.connect(path)
        conn.execute("UPDATE om_pages SET png = CAST(x'89ff00fe' AS TEXT) WHERE id = ?", (pid,))
        conn.execute(
            "UPDATE om_page_renditions SET png = 'plain text' WHERE page_id = ?", (pid + 1,)
        )
        conn.commit()
        conn.close()
        report = mm.verify()
        assert report.pages_repaired == 2
        assert _blobs(mm) == good
        assert mm.verify(repair=False).ok


def test_text_pages_holding_images_are_cleared(db_url: str) -> None:
    with MemoryManager(db_url, policy=AgingPolicy(by_time=None, seal_after=timedelta(0))) as mm:
        mm.add_turns("s", make_history(40, lambda i: f"{i} " + "text " * 80, T0, roles=["user"]))
        mm.age(now=T0 + timedelta(days=50))  # packed, but nothing fades: still text
        pages = mm.pages("s")
        assert pages and all(p.tier == "text" for p in pages)
        with mm.database.engine.begin() as conn:
            conn.execute(
                text("UPDATE om_pages SET png = :b, width = 5 WHERE id = :i"),
                {"b": b"junk", "i": pages[0].page_id},
            )
        report = mm.verify()
        assert report.pages_repaired == 1
        with mm.database.engine.connect() as conn:
            check_pages_match_tiers(conn)
        assert mm.verify(repair=False).ok


# -- the scheduler survives -------------------------------------------------------------------


def test_scheduler_survives_a_failing_pass(db_url: str) -> None:
    """Break the store under the scheduler (its sessions table disappears), then restore it:
    the failing passes are counted and the next pass does its work."""
    policy = AgingPolicy(
        keep_last_turns=2, by_time=TimeLadder(large=timedelta(0)), seal_after=timedelta(0)
    )
    with MemoryManager(db_url, policy=policy) as m:
        m.start_scheduler(every=0.2)
        sched = m.scheduler
        assert sched is not None
        try:
            assert wait_for(lambda: sched.passes >= 1, 20)
            with m.database.engine.begin() as conn:
                conn.execute(text("ALTER TABLE om_sessions RENAME TO om_sessions_away"))
            assert wait_for(lambda: sched.failures >= 2, 20), "the pass did not fail"
            with m.database.engine.begin() as conn:
                conn.execute(text("ALTER TABLE om_sessions_away RENAME TO om_sessions"))
            assert sched.running
            m.add_turns(
                "s",
                make_history(
                    12, lambda i: f"{i} " + "words " * 50, T0, timedelta(0), roles=["user"]
                ),
            )
            assert wait_for(lambda: any(p.tier != "text" for p in m.pages("s")), 30), (
                "no pass ran after the failures"
            )
            assert sched.running and sched.last_error is not None
        finally:
            m.stop_scheduler()


def test_one_broken_session_does_not_stop_the_pass(sqlite_url: str) -> None:
    with MemoryManager(sqlite_url) as mm:
        for s in ("a", "b", "c"):
            mm.add_turns(
                s, make_history(30, lambda i, s=s: f"{s}{i} " + "words " * 50, T0, roles=["user"])
            )
        conn = sqlite3.connect(make_url(sqlite_url).database)
        conn.execute(
            "UPDATE om_turns SET metadata = '{not json' WHERE session_id = "
            "(SELECT id FROM om_sessions WHERE key = 'b')"
        )
        conn.commit()
        conn.close()
        report = mm.age(now=T0 + timedelta(days=3))
        assert len(report.errors) == 1 and report.errors[0].startswith("session 'b': ")
        assert all(p.tier != "text" for s in ("a", "c") for p in mm.pages(s))
        assert mm.pages("a") and mm.pages("c")


def test_closed_manager_refuses_typed(db_url: str) -> None:
    mm = MemoryManager(db_url)
    mm.add_turn("s", "user", "hi")
    mm.close()
    from optical_memory import MemoryClosed

    for call in (
        lambda: mm.add_turn("s", "user", "x"),
        lambda: mm.turns("s"),
        lambda: mm.assemble("s"),
        lambda: mm.age(),
        lambda: mm.forget("s"),
        lambda: mm.verify(),
    ):
        with pytest.raises(MemoryClosed):
            call()


@pytest.mark.parametrize("owner", ["", 5, b"a", "a\x00b", "\ud800", "x" * 257])
def test_bad_owner_is_refused(sqlite_url: str, owner) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(InvalidInput):
        MemoryManager(sqlite_url, owner=owner)
    with MemoryManager(sqlite_url) as mm, pytest.raises(InvalidInput):
        mm.scoped(owner)


# -- import from files ------------------------------------------------------------------------

json_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**70), 2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(any_char, max_size=12),
)
line_objects = st.fixed_dictionaries(
    {},
    optional={
        "session_id": st.one_of(st.sampled_from(["imp-a", "imp-b", "", "../x"]), json_scalars),
        "role": st.one_of(
            st.sampled_from(["user", "assistant", "system", "tool", "human", "ai", "developer"]),
            json_scalars,
        ),
        "content": st.one_of(
            st.text(any_char, max_size=30),
            st.sampled_from(SPECIAL),
            st.lists(st.one_of(st.text(max_size=5), st.fixed_dictionaries({"text": st.text(max_size=5)})), max_size=3),
            json_scalars,
        ),
        "at": st.one_of(
            st.sampled_from(
                ["2024-01-01T00:00:00Z", "2024-01-01 10:00", "9999-12-31T23:59:59-05:00",
                 "0001-01-01T00:00:00+05:00", "yesterday", ""]
            ),
            json_scalars,
        ),
        "metadata": st.one_of(st.dictionaries(st.text(max_size=4), json_scalars, max_size=2), json_scalars),
        "name": json_scalars,
    },
)  # fmt: skip
file_lines = st.lists(
    st.one_of(
        line_objects.map(lambda o: json.dumps(o, ensure_ascii=True)),
        st.sampled_from(["", "   ", "not json", "[1, 2]", '{"role": "user"', "null"]),
    ),
    max_size=6,
)


@settings(max_examples=80, deadline=None, suppress_health_check=FUNC_FIXTURE)
@given(lines=file_lines, tail=st.sampled_from([b"", b"\n", b"\xff\xfe", b"\x00"]))
@example(
    lines=[
        '{"role": "user", "content": "hi \\u0000 \\ud83d\\ude00", "session_id": "imp-a"}',
        '{"role": "ai", "content": "yo", "at": "2024-01-01T00:00:00Z", "name": "bot"}',
    ],
    tail=b"\n",
)
@example(lines=['{"role": "user", "content": "x", "at": "9999-12-31T23:59:59-05:00"}'], tail=b"")
@example(lines=['{"role": "user", "content": "\\ud800"}'], tail=b"")
def test_file_import_typed_error_or_all_turns(small, tmp_path_factory, lines, tail) -> None:
    from optical_memory.importers import load_conversations

    path = tmp_path_factory.mktemp("import") / "chat.jsonl"
    path.write_bytes("\n".join(lines).encode("utf-8", "surrogatepass") + tail)
    before = row_counts(small)
    try:
        convs = load_conversations(path)
        written = small.add_sessions(convs)
    except OpticalMemoryError:
        assert row_counts(small) == before, "a refused import was partly written"
        return
    n = sum(len(v) for v in convs.values())
    assert sum(len(v) for v in written.values()) == n
    assert row_counts(small)["om_turns"] == before["om_turns"] + n
    for sid, turns in convs.items():
        stored = small.turns(sid)[-len(turns) :] if turns else []
        assert [(t.role, t.content) for t in stored] == [(t["role"], t["content"]) for t in turns]


def test_file_import_of_awkward_but_valid_text_round_trips(mm: MemoryManager, tmp_path) -> None:  # type: ignore[no-untyped-def]
    from optical_memory.importers import load_conversations

    rows = [
        {"session_id": "imp", "role": "user", "content": "NUL \x00 RTL \u202e emoji 😀 é"},
        {"session_id": "imp", "role": "ai", "content": "", "at": "2024-01-01T00:00:00+14:00"},
        {"session_id": "imp", "role": "user", "content": "'; DROP TABLE om_turns; --"},
    ]
    path = tmp_path / "chat.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n", encoding="utf-8")
    written = mm.add_sessions(load_conversations(path))
    assert [t.content for t in written["imp"]] == [r["content"] for r in rows]
    assert mm.turns("imp") == written["imp"]
    assert mm.turns("imp")[1].at == datetime(2023, 12, 31, 10, tzinfo=UTC)


def test_every_error_the_library_raises_is_importable_from_the_package_root() -> None:
    """The README lists the errors as ``optical_memory.X``: each one must be there."""
    import optical_memory
    from optical_memory import errors

    defined = {
        name
        for name, obj in vars(errors).items()
        if isinstance(obj, type) and issubclass(obj, errors.OpticalMemoryError)
    }
    assert defined - set(optical_memory.__all__) == set()
    assert all(getattr(optical_memory, name) is getattr(errors, name) for name in defined)
