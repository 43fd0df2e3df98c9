"""The lossless turn store: what goes in comes out, in order, on SQLite and PostgreSQL."""

from __future__ import annotations

import inspect as pyinspect
import threading
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest
from sqlalchemy import create_engine, func, inspect, select

from optical_memory import (
    ContentTooLarge,
    InvalidAttachment,
    InvalidContent,
    InvalidInput,
    InvalidRole,
    InvalidSessionId,
    InvalidTimestamp,
    MemoryClosed,
    MemoryManager,
    OpticalMemoryError,
    SessionChanged,
    UnknownSession,
)
from optical_memory.store import SessionRow, TurnRow

AWKWARD = [
    "你好，世界。記憶は薄れていく。기억",  # CJK
    "مرحبا بالعالم — שלום עולם",  # right-to-left
    "emoji 🧠📄🔍 and ZWJ 👩‍💻 and flags 🇫🇷",
    "control \x00 \x01 \x07 \x1b[31m \x7f tab\tnewline\ncr\r end",
    "",
    "\ue000om-json:looks like the escape marker",
]


def _count_rows(url: str) -> tuple[int, int]:
    engine = create_engine(url)
    with engine.connect() as conn:
        sessions = conn.scalar(select(func.count()).select_from(SessionRow)) or 0
        turns = conn.scalar(select(func.count()).select_from(TurnRow)) or 0
    engine.dispose()
    return sessions, turns


@pytest.mark.parametrize("content", AWKWARD)
def test_awkward_text_round_trips_exactly(mm: MemoryManager, content: str) -> None:
    mm.add_turn("s", "user", content)
    assert mm.turns("s")[0].content == content


def test_one_mebibyte_message_round_trips(mm: MemoryManager) -> None:
    content = ("0123456789abcdef" * 65536)[: 1 << 20]
    assert len(content.encode()) == 1 << 20
    mm.add_turn("big", "assistant", content)
    assert mm.turns("big")[0].content == content


def test_turns_keep_order_role_time_metadata_and_token_count(mm: MemoryManager) -> None:
    at = datetime(2023, 5, 8, 13, 56, tzinfo=timezone(timedelta(hours=2)))
    mm.add_turn("s", "system", "be brief", at)
    mm.add_turn("s", "user", "hi", at + timedelta(seconds=5), metadata={"name": "Ann"})
    mm.add_turns("s", [("assistant", "hello"), {"role": "tool", "content": "{}"}])
    turns = mm.turns("s")
    assert [t.seq for t in turns] == [1, 2, 3, 4]
    assert [t.role for t in turns] == ["system", "user", "assistant", "tool"]
    assert turns[0].at == at and turns[0].at.tzinfo is not None
    assert turns[1].metadata == {"name": "Ann"}
    # a name is sent too, so it is counted (optical_memory.turn_text.cost_text)
    assert turns[1].tokens == mm.count_tokens("user", "Ann:\nhi") > mm.count_tokens("user", "hi")
    assert mm.turns("s", since=2)[0].seq == 3
    info = {s.session_id: s for s in mm.sessions()}
    assert info["s"].turns == 4


def test_concurrent_add_turn_from_threads_keeps_a_gapless_sequence(mm: MemoryManager) -> None:
    errors: list[BaseException] = []

    def writer(n: int) -> None:
        try:
            for i in range(25):
                mm.add_turn("shared", "user", f"w{n}-{i}")
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    turns = mm.turns("shared")
    assert [t.seq for t in turns] == list(range(1, 151))
    assert len({t.content for t in turns}) == 150
    for n in range(6):  # each writer's own turns stay in its order
        mine = [int(t.content.split("-")[1]) for t in turns if t.content.startswith(f"w{n}-")]
        assert mine == sorted(mine)


def test_turns_persist_across_reopen(db_url: str) -> None:
    with MemoryManager(db_url) as mm:
        mm.add_turns("s", [("user", "remember the blue door"), ("assistant", "noted")])
    with MemoryManager(db_url) as mm:
        assert [t.content for t in mm.turns("s")] == ["remember the blue door", "noted"]


def test_sqlite_is_tuned_for_concurrent_use(sqlite_url: str) -> None:
    with MemoryManager(sqlite_url) as mm, mm.database.engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
        assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar() >= 5000
        assert conn.exec_driver_sql("PRAGMA secure_delete").scalar() == 1


def test_default_url_comes_from_the_environment(tmp_path, monkeypatch) -> None:
    path = tmp_path / "env.db"
    monkeypatch.setenv("OPTICAL_MEMORY_URL", f"sqlite:///{path}")
    with MemoryManager() as mm:
        mm.add_turn("s", "user", "x")
    assert path.exists()


def test_plain_file_paths_and_postgres_urls_are_accepted(tmp_path) -> None:
    from optical_memory.database import normalise_url

    assert normalise_url("postgresql://u@h/db") == "postgresql+psycopg://u@h/db"
    with MemoryManager(tmp_path / "plain.db") as mm:
        mm.add_turn("s", "user", "x")
    assert (tmp_path / "plain.db").exists()


BAD_CALLS = [
    (lambda mm: mm.add_turn("", "user", "x"), InvalidSessionId),
    (lambda mm: mm.add_turn(42, "user", "x"), InvalidSessionId),
    (lambda mm: mm.add_turn(None, "user", "x"), InvalidSessionId),
    (lambda mm: mm.add_turn("s", "robot", "x"), InvalidRole),
    (lambda mm: mm.add_turn("s", "user", b"bytes"), InvalidContent),
    (lambda mm: mm.add_turn("s", "user", None), InvalidContent),
    (lambda mm: mm.add_turn("s", "user", "\ud800 lone surrogate"), InvalidContent),
    (lambda mm: mm.add_turn("s", "user", "x" * ((1 << 20) + 1)), ContentTooLarge),
    (lambda mm: mm.add_turn("s", "user", "x", datetime(2023, 1, 1)), InvalidTimestamp),
    (lambda mm: mm.add_turn("s", "user", "x", "2023-01-01"), InvalidTimestamp),
    (lambda mm: mm.add_turn("s", "user", "x", metadata={"f": object()}), InvalidContent),
    (lambda mm: mm.add_turns("s", [("user", "ok"), ("nobody", "bad")]), InvalidRole),
    (lambda mm: mm.add_turns("s", [("user", "ok"), ("user", 3)]), InvalidContent),
]


@pytest.mark.parametrize(("call", "error"), BAD_CALLS)
def test_bad_input_raises_a_typed_error_and_writes_nothing(
    db_url: str, call, error: type[Exception]
) -> None:
    with MemoryManager(db_url) as mm:
        mm.add_turn("other", "user", "already here")
        before = _count_rows(mm.url)
        with pytest.raises(error) as info:
            call(mm)
        assert isinstance(info.value, OpticalMemoryError)
        assert str(info.value)  # says what to do
        assert _count_rows(mm.url) == before


def test_content_limit_is_configurable(sqlite_url: str) -> None:
    with MemoryManager(sqlite_url, max_content_bytes=10) as mm:
        mm.add_turn("s", "user", "x" * 10)
        with pytest.raises(ContentTooLarge):
            mm.add_turn("s", "user", "é" * 6)  # 12 bytes in UTF-8
        assert len(mm.turns("s")) == 1


def test_reading_an_unknown_session_is_a_typed_error(mm: MemoryManager) -> None:
    for call in (mm.turns, mm.pages, mm.forget, mm.assemble):
        with pytest.raises(UnknownSession):
            call("nope")


def test_use_after_close_is_refused(sqlite_url: str) -> None:
    mm = MemoryManager(sqlite_url)
    mm.add_turn("s", "user", "x")
    mm.close()
    mm.close()  # idempotent
    for call in (
        lambda: mm.add_turn("s", "user", "y"),
        lambda: mm.turns("s"),
        lambda: mm.assemble("s"),
        lambda: mm.age(),
        lambda: mm.forget("s"),
    ):
        with pytest.raises(MemoryClosed):
            call()
    with MemoryManager(sqlite_url) as again:
        assert len(again.turns("s")) == 1


def test_forget_deletes_the_session_and_only_it(mm: MemoryManager) -> None:
    mm.add_turns("a", [("user", "one"), ("assistant", "two")])
    mm.add_turn("b", "user", "keep me")
    assert mm.forget("a") == 2
    assert [s.session_id for s in mm.sessions()] == ["b"]
    with pytest.raises(UnknownSession):
        mm.turns("a")
    assert mm.turns("b")[0].content == "keep me"


async def test_async_twins(mm: MemoryManager) -> None:
    await mm.aadd_turn("s", "user", "async hello")
    await mm.aadd_turns("s", [("assistant", "async reply")])
    assert [t.content for t in await mm.aturns("s")] == ["async hello", "async reply"]
    assert await mm.aforget("s") == 2


def test_every_call_that_touches_the_database_has_an_async_twin_that_takes_the_same_arguments() -> (
    None
):
    pure = {"close", "count_tokens", "scoped", "start_scheduler", "stop_scheduler"}

    def parameters(f: object) -> list[tuple[str, object, object]]:
        return [(p.name, p.kind, p.default) for p in pyinspect.signature(f).parameters.values()]  # type: ignore[arg-type]

    calls = [
        n
        for n, f in vars(MemoryManager).items()
        if callable(f) and not n.startswith("_") and not pyinspect.iscoroutinefunction(f)
    ]
    for name in sorted(set(calls) - pure):
        twin = getattr(MemoryManager, "a" + name, None)
        assert twin is not None and pyinspect.iscoroutinefunction(twin), f"no twin of {name}"
        assert parameters(twin) == parameters(getattr(MemoryManager, name)), name


async def test_async_twins_refuse_bad_input_as_the_sync_calls_do(mm: MemoryManager) -> None:
    for bad in (None, 5, "user: hi"):
        with pytest.raises(InvalidInput, match="iterable of turns"):
            await mm.aadd_turns("s", bad)  # type: ignore[arg-type]
        with pytest.raises(InvalidInput, match="iterable of turns"):
            await mm.areplace_turns("s", 1, bad)  # type: ignore[arg-type]
    with pytest.raises(InvalidAttachment):
        await mm.aadd_turn("s", "user", "hi", attachments=5)  # type: ignore[arg-type]
    assert mm.sessions() == []  # nothing written
    first = await mm.aadd_turns("s", (t for t in [("user", "a"), ("assistant", "b")]))
    with pytest.raises(SessionChanged):
        await mm.aadd_turn("s", "user", "c", expected_last_turn=1)
    await mm.aadd_turn("s", "user", "c", expected_last_turn=first[-1].seq)
    await mm.areplace_turns("s", 3, [("user", "c, edited")], expected_last_turn=3)
    assert [t.content for t in await mm.aturns("s")] == ["a", "b", "c, edited"]
    assert [t.content for t in await mm.asuperseded("s")] == ["c"]
    report = await mm.aage(sessions=["s"])
    assert report.errors == []


def test_migrated_schema_equals_the_models(db_url: str) -> None:
    from alembic.autogenerate import compare_metadata
    from alembic.runtime.migration import MigrationContext

    from optical_memory import migrations
    from optical_memory.store import Base

    with MemoryManager(db_url) as mm:
        engine = mm.database.engine
        assert migrations.current_revision(engine) == migrations.head_revision()
        with engine.connect() as conn:
            # the full-text index, built by migration 0004 and not modelled: om_turns_fts*
            # (SQLite FTS5 tables, a PostgreSQL GIN index) and PostgreSQL's search_vector
            opts = {
                "compare_type": True,
                "include_name": lambda name, *_: (
                    not (name or "").startswith(("om_turns_fts", "search_vector"))
                ),
            }
            ctx = MigrationContext.configure(conn, opts=opts)
            assert compare_metadata(ctx, Base.metadata) == []
        tables = set(inspect(engine).get_table_names())
    assert {
        "om_sessions",
        "om_turns",
        "om_pages",
        "om_page_renditions",
        "om_visual_tokens",
    } <= tables


def test_migration_to_head_on_an_empty_database(db_url: str) -> None:
    from optical_memory import migrations
    from optical_memory.database import create_store_engine

    engine = create_store_engine(MemoryManager.__init__.__globals__["normalise_url"](db_url))
    assert migrations.current_revision(engine) is None
    migrations.upgrade(engine)
    assert migrations.current_revision(engine) == migrations.head_revision()
    migrations.upgrade(engine)  # a second upgrade is a no-op
    engine.dispose()


def test_timestamps_default_to_now_in_utc(mm: MemoryManager) -> None:
    before = datetime.now(UTC)
    turn = mm.add_turn("s", "user", "x")
    assert before - timedelta(seconds=1) <= turn.at <= datetime.now(UTC) + timedelta(seconds=1)
    assert mm.turns("s")[0].at == turn.at


def test_bad_page_ids_and_cursor_arguments_are_typed_errors(mm: MemoryManager) -> None:
    from optical_memory import InvalidInput, UnknownPage

    mm.add_turn("s", "user", "x")
    for bad in (0, -1, 2**70, "1", None):
        with pytest.raises(UnknownPage):
            mm.page_image("s", bad)
    with pytest.raises(UnknownPage):
        mm.page_image("s", 12345)
    for bad in ("x", 1.5, True):
        with pytest.raises(InvalidInput):
            mm.turns("s", since=bad)
        with pytest.raises(InvalidInput):
            mm.turns("s", limit=bad)


def test_sqlite_timestamps_read_back_as_aware_utc_in_every_stored_form(tmp_path: Path) -> None:
    """The fast SQLite reader of UTCDateTime: SQLAlchemy's own form, ISO 8601 with a ``T`` or an
    offset (raw SQL, other tools), without microseconds; NULL stays NULL."""
    import sqlalchemy as sa

    from optical_memory.store import UTCDateTime

    engine = sa.create_engine(f"sqlite:///{tmp_path / 'ts.db'}")
    table = sa.Table("ts", sa.MetaData(), sa.Column("at", UTCDateTime()))
    with engine.begin() as conn:
        table.create(conn)
        for raw in (
            "2026-12-02 03:00:00.123456",
            "2026-12-02T03:00:00.123456",
            "2026-12-02T05:00:00.123456+02:00",
            "2026-12-02 03:00:00",
            None,
        ):
            conn.execute(sa.text("INSERT INTO ts (at) VALUES (:v)"), {"v": raw})
        got = conn.execute(sa.select(table.c.at)).scalars().all()
    want = datetime(2026, 12, 2, 3, 0, 0, 123456, tzinfo=UTC)
    assert got == [want, want, want, want.replace(microsecond=0), None]
    assert all(g.tzinfo is UTC for g in got if g is not None)
