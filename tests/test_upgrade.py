"""Upgrades: a store written at the first migration (0001) upgrades to head with nothing lost,
and the aging pass carries on from the pages it already had."""

from __future__ import annotations

import io
from datetime import UTC, datetime, timedelta

import pytest
import sqlalchemy as sa
from helpers import make_history
from PIL import Image
from sqlalchemy import text
from workers.hardening import ThumbnailEncoder, row_counts

from optical_memory import (
    AgingPolicy,
    MemoryManager,
    UnknownSession,
    approximate_tokens,
    migrations,
)
from optical_memory.database import create_store_engine, normalise_url
from optical_memory.store import (
    AgingClaimRow,
    AttachmentRow,
    BigId,
    LosslessText,
    UTCDateTime,
)

T0 = datetime(2024, 1, 1, tzinfo=UTC)

# The tables as revision 0001 created them (no paged_until, aged_at, imageable, renditions).
META_0001 = sa.MetaData()
SESSIONS_0001 = sa.Table(
    "om_sessions",
    META_0001,
    sa.Column("id", BigId, primary_key=True),
    sa.Column("key", LosslessText()),
    sa.Column("owner", sa.String(256)),
    sa.Column("created_at", UTCDateTime()),
    sa.Column("metadata", sa.JSON()),
    sa.Column("next_seq", sa.Integer()),
)
TURNS_0001 = sa.Table(
    "om_turns",
    META_0001,
    sa.Column("id", BigId, primary_key=True),
    sa.Column("session_id", BigId),
    sa.Column("seq", sa.Integer()),
    sa.Column("role", sa.String(16)),
    sa.Column("content", LosslessText()),
    sa.Column("at", UTCDateTime()),
    sa.Column("tokens", sa.Integer()),
    sa.Column("metadata", sa.JSON()),
)
PAGES_0001 = sa.Table(
    "om_pages",
    META_0001,
    sa.Column("id", BigId, primary_key=True),
    sa.Column("session_id", BigId),
    sa.Column("first_seq", sa.Integer()),
    sa.Column("last_seq", sa.Integer()),
    sa.Column("first_at", UTCDateTime()),
    sa.Column("last_at", UTCDateTime()),
    sa.Column("text_tokens", sa.Integer()),
    sa.Column("target", sa.String(64)),
    sa.Column("tier", sa.String(8)),
    sa.Column("png", sa.LargeBinary()),
    sa.Column("width", sa.Integer()),
    sa.Column("height", sa.Integer()),
    sa.Column("token_cost", sa.Integer()),
    sa.Column("sealed", sa.Boolean()),
    sa.Column("version", sa.Integer()),
    sa.Column("created_at", UTCDateTime()),
    sa.Column("updated_at", UTCDateTime()),
)
TOKENS_0001 = sa.Table(
    "om_visual_tokens",
    META_0001,
    sa.Column("id", BigId, primary_key=True),
    sa.Column("page_id", BigId),
    sa.Column("tier", sa.String(8)),
    sa.Column("encoder_key", sa.String(512)),
    sa.Column("dtype", sa.String(32)),
    sa.Column("shape", sa.JSON()),
    sa.Column("data", sa.LargeBinary()),
    sa.Column("created_at", UTCDateTime()),
)


def _png(size: int) -> bytes:
    buf = io.BytesIO()
    Image.new("L", (size, size), 255).save(buf, format="PNG")
    return buf.getvalue()


def _turns(sid: int, n: int, tag: str) -> list[dict]:  # type: ignore[type-arg]
    rows = []
    for i in range(1, n + 1):
        role = ("user", "assistant", "tool", "system")[i % 4]
        body = (
            f"{tag} turn {i}: naïve ✓ 😀 \u202eRTL\u202c "
            + ("x\x00y " if i % 7 == 0 else "")
            + "words " * 40
        )
        rows.append(
            {
                "session_id": sid,
                "seq": i,
                "role": role,
                "content": body,
                "at": T0 + timedelta(minutes=i),
                "tokens": approximate_tokens(role, body),
                "metadata": {"i": i, "name": f"agent-{i % 3}"} if i % 2 else {},
            }
        )
    return rows


def _write_at_0001(url: str) -> dict:  # type: ignore[type-arg]
    engine = create_store_engine(normalise_url(url))
    try:
        migrations.upgrade(engine, "0001")
        assert migrations.current_revision(engine) == "0001"
        old_page = _png(1280)
        with engine.begin() as conn:
            # Ids come from the database, as 0001-era code let them.
            ids = {}
            for key, owner, meta, next_seq in (
                ("alpha ' \" ; --", None, {"k": "v"}, 60),
                ("beta/../x", "bob", {}, 12),
                ("gamma", None, {}, 0),
            ):
                ids[key] = conn.execute(
                    SESSIONS_0001.insert().returning(SESSIONS_0001.c.id),
                    {
                        "key": key,
                        "owner": owner,
                        "created_at": T0,
                        "metadata": meta,
                        "next_seq": next_seq,
                    },
                ).scalar_one()
            alpha = _turns(ids["alpha ' \" ; --"], 60, "alpha")
            beta = _turns(ids["beta/../x"], 12, "beta")
            conn.execute(TURNS_0001.insert(), alpha + beta)
            page_ids = []
            for first, last in [(1, 14), (15, 30)]:
                span = alpha[first - 1 : last]
                page_ids.append(
                    conn.execute(
                        PAGES_0001.insert().returning(PAGES_0001.c.id),
                        {
                            "session_id": ids["alpha ' \" ; --"],
                            "first_seq": first,
                            "last_seq": last,
                            "first_at": span[0]["at"],
                            "last_at": span[-1]["at"],
                            "text_tokens": sum(t["tokens"] for t in span),
                            "target": "deepseek-ocr",
                            "tier": "large",
                            "png": old_page,
                            "width": 1280,
                            "height": 1280,
                            "token_cost": 421,
                            "sealed": True,
                            "version": 2,
                            "created_at": T0 + timedelta(hours=1),
                            "updated_at": T0 + timedelta(hours=2),
                        },
                    ).scalar_one()
                )
            conn.execute(
                TOKENS_0001.insert(),
                [
                    {
                        "page_id": page_ids[0],
                        "tier": "large",
                        "encoder_key": "old-encoder",
                        "dtype": "float32",
                        "shape": [1, 4],
                        "data": b"\x00" * 16,
                        "created_at": T0,
                    }
                ],
            )
        return {"alpha": alpha, "beta": beta, "png": old_page}
    finally:
        engine.dispose()


def test_upgrade_from_0001_keeps_everything(db_url: str) -> None:
    old = _write_at_0001(db_url)
    with MemoryManager(db_url) as mm:  # migrates to head on open
        assert migrations.current_revision(mm.database.engine) == migrations.head_revision()
        bob = mm.scoped("bob")
        for key, rows, view in (
            ("alpha ' \" ; --", old["alpha"], mm),
            ("beta/../x", old["beta"], bob),
        ):
            got = view.turns(key)
            assert [(t.seq, t.role, t.content, t.at, t.tokens, t.metadata) for t in got] == [
                (r["seq"], r["role"], r["content"], r["at"], r["tokens"], r["metadata"])
                for r in rows
            ]
        assert mm.turns("gamma") == []
        assert {s.session_id: s.owner for s in mm.sessions(all_owners=True)} == {
            "alpha ' \" ; --": None,
            "beta/../x": "bob",
            "gamma": None,
        }
        assert [s.session_id for s in mm.scoped("bob").sessions()] == ["beta/../x"]
        pages = mm.pages("alpha ' \" ; --")
        assert [(p.first_seq, p.last_seq, p.tier, p.version, p.token_cost) for p in pages] == [
            (1, 14, "large", 2, 421),
            (15, 30, "large", 2, 421),
        ]
        assert mm.page_image("alpha ' \" ; --", pages[0].page_id) == old["png"]
        with mm.database.engine.connect() as conn:
            marks = dict(conn.execute(text("SELECT key, paged_until FROM om_sessions")).all())
            assert marks == {"alpha ' \" ; --": 30, "beta/../x": 0, "gamma": 0}  # backfilled
            assert (
                conn.execute(text("SELECT COUNT(*) FROM om_pages WHERE imageable")).scalar_one()
                == 2
            )
            assert conn.execute(text("SELECT COUNT(*) FROM om_page_renditions")).scalar_one() == 0
            assert conn.execute(text("SELECT COUNT(*) FROM om_visual_tokens")).scalar_one() == 1
            assert (
                conn.execute(text("SELECT aged_at FROM om_sessions")).scalars().all() == [None] * 3
            )

        # The next pass carries on where the old pages end: no turn is paged twice.
        report = mm.age(now=T0 + timedelta(days=40))
        assert not report.errors
        # The old pages fade to tiny with the new ones and, sparse, consolidate: whole, never cut.
        assert report.pages_moved.get("tiny", 0) >= 2 and report.merges >= 1
        pages = mm.pages("alpha ' \" ; --")
        assert pages[0].first_seq == 1 and pages[0].last_seq >= 14
        assert all(p.first_seq in (1, 15) or p.first_seq > 30 for p in pages)
        assert [p.first_seq for p in pages] == [1] + [p.last_seq + 1 for p in pages[:-1]]
        assert pages[-1].last_seq == 60 - mm.policy.keep_last_turns
        assert all(p.tier == "tiny" for p in pages)
        assert mm.verify(repair=False).ok
        assert mm.turns("alpha ' \" ; --")[-1].content == old["alpha"][-1]["content"]
        mm.add_turn("gamma", "user", "still writable")
        assert mm.sessions()[-1].turns == 1


def test_opening_twice_is_a_no_op(db_url: str) -> None:
    _write_at_0001(db_url)
    with MemoryManager(db_url, owner="bob") as mm:
        before = mm.turns("beta/../x")
    with MemoryManager(db_url, owner="bob") as mm:
        assert mm.turns("beta/../x") == before
        assert migrations.current_revision(mm.database.engine) == migrations.head_revision()


def test_stepping_up_from_0001_equals_creating_at_head(db_url: str) -> None:
    """Stepping 0001 -> head gives the same tables and columns as the models declare."""
    engine = create_store_engine(normalise_url(db_url))
    try:
        migrations.upgrade(engine, "0001")
        migrations.upgrade(engine)
        insp = sa.inspect(engine)
        stepped = {  # search_vector: PostgreSQL's full-text index column, not a model
            t: sorted(c["name"] for c in insp.get_columns(t) if c["name"] != "search_vector")
            for t in insp.get_table_names()
        }
    finally:
        engine.dispose()
    from optical_memory.store import Base

    made = {t.name: sorted(c.name for c in t.columns) for t in Base.metadata.sorted_tables}
    # om_turns_fts*: SQLite's full-text index (an FTS5 table and its shadow tables), not a model
    skip = ("alembic_version", "om_turns_fts")
    assert {k: v for k, v in stepped.items() if not k.startswith(skip)} == made


def test_down_to_0001_and_back_keeps_turns_pages_and_caches(db_url: str) -> None:
    """Batch migrations copy and drop tables on SQLite; nothing may cascade away meanwhile."""
    with MemoryManager(db_url, encoder=ThumbnailEncoder()) as mm:
        mm.add_turns("s", make_history(60, lambda i: f"{i} " + "words " * 60, T0, roles=["user"]))
        mm.age(now=T0 + timedelta(days=3))
        turns, pages = mm.turns("s"), mm.pages("s")
        before = row_counts(mm)
        # visual tokens for each page's stored image and each of its fainter renditions
        assert before["om_visual_tokens"] == before["om_page_renditions"] + len(pages) > 1
        migrations.downgrade(mm.database.engine, "0001")
        with mm.database.engine.connect() as conn:
            for table in ("om_turns", "om_pages", "om_visual_tokens"):
                n = conn.execute(text(f"SELECT COUNT(*) FROM {table}")).scalar_one()
                assert n == before[table], f"downgrade lost rows of {table}"
        migrations.upgrade(mm.database.engine)
        assert mm.turns("s") == turns
        assert [p.page_id for p in mm.pages("s")] == [p.page_id for p in pages]
        after = row_counts(mm)
        assert after["om_visual_tokens"] == before["om_visual_tokens"]
        assert after["om_page_renditions"] == 0  # dropped with its table on the way down
        report = mm.verify()  # ... and rebuilt from the turns
        assert report.pages_repaired == len([p for p in pages if p.tier not in ("text", "tiny")])
        assert mm.verify(repair=False).ok


# -- 0007: owners become namespaces ----------------------------------------------------------------

OWNERS_0006 = {"free ' one": None, "alice-chat": "alice", "bob-chat": "bob", "bob-two": "bob"}


def _write_at_0006(url: str) -> dict[str, int]:
    """Sessions of several owners (and none) as 0006 stored them: keys unique across owners,
    NULL for no owner; their turns go through 0004's full-text triggers. The newest session is
    then deleted, so SQLite's AUTOINCREMENT mark is above every id left."""
    engine = create_store_engine(normalise_url(url))
    try:
        migrations.upgrade(engine, "0006")
        ids = {}
        with engine.begin() as conn:
            for key, owner in [*OWNERS_0006.items(), ("gone", "carol")]:
                ids[key] = conn.execute(
                    SESSIONS_0001.insert().returning(SESSIONS_0001.c.id),
                    {
                        "key": key,
                        "owner": owner,
                        "created_at": T0,
                        "metadata": {"k": key},
                        "next_seq": 12,
                    },
                ).scalar_one()
                conn.execute(TURNS_0001.insert(), _turns(ids[key], 12, f"{key} platypus"))
            conn.execute(text("DELETE FROM om_turns WHERE session_id = :s"), {"s": ids["gone"]})
            conn.execute(text("DELETE FROM om_sessions WHERE id = :s"), {"s": ids["gone"]})
        return ids
    finally:
        engine.dispose()


def test_upgrade_from_0006_keeps_every_session_under_its_owner(db_url: str) -> None:
    ids = _write_at_0006(db_url)
    with MemoryManager(db_url) as root:
        assert migrations.current_revision(root.database.engine) == migrations.head_revision()
        listed = root.sessions(all_owners=True)
        assert {s.session_id: s.owner for s in listed} == OWNERS_0006
        assert all(s.turns == 12 and s.metadata == {"k": s.session_id} for s in listed)
        with root.database.engine.connect() as conn:
            rows = dict(conn.execute(text("SELECT key, id FROM om_sessions")).all())
        assert rows == {k: v for k, v in ids.items() if k != "gone"}  # row ids kept
        for key, owner in OWNERS_0006.items():
            view = root.scoped(owner)
            assert [t.seq for t in view.turns(key)] == list(range(1, 13))
            # the full-text index still covers the old turns, inside each namespace
            hits = view.recall(key, "platypus", scope="owner", limit=50)
            assert {h.turn.session_id for h in hits} == {
                k for k, o in OWNERS_0006.items() if o == owner
            }
            for other in {None, "alice", "bob"} - {owner}:
                with pytest.raises(UnknownSession):
                    root.scoped(other).turns(key)
        # The ids are now per owner: bob can open his own "alice-chat", alice keeps hers.
        bob = root.scoped("bob")
        assert bob.add_turn("alice-chat", "user", "bob's own").seq == 1
        assert len(root.scoped("alice").turns("alice-chat")) == 12
        # A deleted session's id is never handed out again (SQLite: AUTOINCREMENT kept).
        new = root.scoped("carol").add_turn("gone", "user", "again")
        assert new.seq == 1
        with root.database.engine.connect() as conn:
            newest = conn.execute(text("SELECT max(id) FROM om_sessions")).scalar_one()
        assert newest > ids["gone"]


def test_downgrade_below_0007_refuses_shared_ids_and_keeps_the_rest(db_url: str) -> None:
    from optical_memory.errors import UnknownSession as Unknown

    with MemoryManager(db_url) as root:
        root.add_turn("free", "user", "no owner")
        root.scoped("alice").add_turn("mine", "user", "alice's")
        root.scoped("bob").add_turn("mine", "user", "bob's")
        engine = root.database.engine
        with pytest.raises(RuntimeError, match="several owners have a session 'mine'"):
            migrations.downgrade(engine, "0006")
        assert migrations.current_revision(engine) == migrations.head_revision()
        root.scoped("bob").forget("mine")
        migrations.downgrade(engine, "0006")
        with engine.connect() as conn:
            owners = dict(conn.execute(text("SELECT key, owner FROM om_sessions")).all())
        assert owners == {"free": None, "mine": "alice"}
        migrations.upgrade(engine)
        assert root.turns("free")[0].content == "no owner"
        assert root.scoped("alice").turns("mine")[0].content == "alice's"
        with pytest.raises(Unknown):
            root.scoped("bob").turns("mine")


# -- 0009: blobs last --------------------------------------------------------------------------------


def _columns(engine: sa.Engine, table: str) -> list[str]:
    return [c["name"] for c in sa.inspect(engine).get_columns(table)]


def test_blobs_last_keeps_every_page_and_the_prompt(db_url: str) -> None:
    """A store written at 0008 (png in the middle of its rows) moves png last on SQLite: every
    page, rendition and id is kept, page ids are not handed out again, and the prompt that
    assemble builds is the same, fingerprint for fingerprint."""
    engine = create_store_engine(normalise_url(db_url))
    try:
        migrations.upgrade(engine, "0008")
        # This code reads and writes a turn's images (0011: om_turns.attachments and
        # om_attachments): the 0008 store has them while it is written through the manager,
        # and loses them before the upgrade.
        # And aging claims (0014): the passes below take them.
        with engine.begin() as conn:
            conn.execute(text("ALTER TABLE om_turns ADD COLUMN attachments JSON"))
            AttachmentRow.__table__.create(conn)
            AgingClaimRow.__table__.create(conn)
    finally:
        engine.dispose()
    later = T0 + timedelta(days=3)
    with MemoryManager(db_url, migrate=False, policy=AgingPolicy(min_fill=0)) as mm:
        mm.add_turns("s", make_history(120, lambda i: f"turn {i} " + "words " * 50, T0))
        mm.add_turns("gone", make_history(40, lambda i: f"gone {i} " + "words " * 50, T0))
        assert not mm.age(now=later).errors
        mm.forget("gone")  # its pages had the highest ids
        engine = mm.database.engine
        assert migrations.current_revision(engine) == "0008"
        if mm.database.dialect == "sqlite":
            assert _columns(engine, "om_pages").index("png") < _columns(engine, "om_pages").index(
                "width"
            )
        prints = {b: mm.assemble("s", b, now=later).fingerprint() for b in (300, 1500, 8000)}
        pages = mm.pages("s")
        images = {p.page_id: mm.page_image("s", p.page_id) for p in pages if p.tier != "text"}
        before = row_counts(mm)
        with engine.connect() as conn:
            top = conn.execute(text("SELECT max(id) FROM om_pages")).scalar_one()
        with engine.begin() as conn:
            conn.execute(text("ALTER TABLE om_turns DROP COLUMN attachments"))
            AttachmentRow.__table__.drop(conn)
            AgingClaimRow.__table__.drop(conn)
    with MemoryManager(db_url, policy=AgingPolicy(min_fill=0)) as mm:  # migrates to head
        engine = mm.database.engine
        assert migrations.current_revision(engine) == migrations.head_revision()
        if mm.database.dialect == "sqlite":
            assert _columns(engine, "om_pages")[-1] == "png"
            assert _columns(engine, "om_page_renditions")[-1] == "png"
        assert row_counts(mm) == before
        assert mm.pages("s") == pages
        got = {p.page_id: mm.page_image("s", p.page_id) for p in pages if p.tier != "text"}
        assert got == images
        assert {b: mm.assemble("s", b, now=later).fingerprint() for b in prints} == prints
        assert mm.verify(repair=False).ok
        mm.add_turns("s", make_history(60, lambda i: f"new {i} " + "words " * 50, later))
        assert not mm.age(now=later + timedelta(days=2)).errors
        assert min(p.page_id for p in mm.pages("s") if p.first_seq > 120) > top


def _fts(engine: sa.Engine) -> tuple[int, dict[str, int]]:
    """SQLite's search index: its rows, and each term's row count."""
    with engine.connect() as conn:
        conn.exec_driver_sql(
            "CREATE VIRTUAL TABLE IF NOT EXISTS temp.vocab USING fts5vocab(main, om_turns_fts, row)"
        )
        rows = conn.execute(text("SELECT COUNT(*) FROM om_turns_fts_docsize")).scalar_one()
        return rows, dict(conn.execute(text("SELECT term, doc FROM temp.vocab")).all())


def test_superseded_turns_leave_the_sqlite_index_on_upgrade_and_return_on_downgrade(
    sqlite_url: str,
) -> None:
    """A store written at 0012 (every version indexed) keeps only live turns in its index at
    head, and a regenerate there takes the replaced turns out too; down to 0012 they are all
    back in, as 0012 would have them. Search and the archive give the same answers at both."""
    engine = create_store_engine(normalise_url(sqlite_url))
    try:
        migrations.upgrade(engine, "0012")
    finally:
        engine.dispose()
    with MemoryManager(sqlite_url, migrate=False) as mm:
        mm.add_turns("s", [("user", f"the parcel, note {i}") for i in range(10)])
        mm.add_turns("s", [("assistant", f"zqvstale parcel {i}") for i in range(4)])
        mm.replace_turns("s", 11, [("assistant", "zqvfresh parcel")])
        assert _fts(mm.database.engine)[1]["zqvstale"] == 4  # 0012 keeps them
        live = [t.content for t in mm.turns("s")]
        old = [t.content for t in mm.superseded("s")]
    with MemoryManager(sqlite_url) as mm:  # migrates to head
        engine = mm.database.engine
        assert migrations.current_revision(engine) == migrations.head_revision()
        rows, terms = _fts(engine)
        assert rows == 11 and "zqvstale" not in terms and terms["parcel"] == 11
        assert [t.content for t in mm.turns("s")] == live
        assert [t.content for t in mm.superseded("s")] == old
        assert [r.turn.content for r in mm.recall("s", "zqvfresh parcel", limit=1)] == [
            "zqvfresh parcel"
        ]
        mm.replace_turns("s", 11, [("assistant", "zqvnewer parcel")])
        rows, terms = _fts(engine)
        assert rows == 11 and "zqvfresh" not in terms and terms["zqvnewer"] == 1
        migrations.downgrade(engine, "0012")
        rows, terms = _fts(engine)
        assert rows == 16 and terms["zqvstale"] == 4 and terms["zqvfresh"] == 1
        migrations.upgrade(engine)
        assert _fts(engine)[0] == 11


def test_a_word_beside_a_private_use_character_is_found_after_upgrade(sqlite_url: str) -> None:
    """Turns indexed at 0014 with a private-use character against a word (FTS5's unicode61
    read them as one token) are found by that word at head; the rest of the index is as it
    was, and the archive is unchanged."""
    engine = create_store_engine(normalise_url(sqlite_url))
    try:
        migrations.upgrade(engine, "0014")
    finally:
        engine.dispose()
    held = ["\ue000platypus sighting", "the \uf8ffechidna burrow", "東京\U000f0001wombat"]
    with MemoryManager(sqlite_url, migrate=False) as mm:
        mm.add_turns("s", [*(("user", t) for t in held), ("user", "a plain numbat")])
        with mm.database.engine.begin() as conn:  # indexed as 0014's code wrote them
            for seq, content in enumerate(held, 1):
                old = content if content.startswith("\ue000") else None
                if "東" in content:
                    old = " 東  京 " + content[2:]  # CJK spaced, the rest as it was
                conn.execute(
                    text("UPDATE om_turns SET search_text = :t WHERE seq = :q"),
                    {"t": old, "q": seq},
                )
        assert mm.recall("s", "platypus") == [] and mm.recall("s", "echidna") == []
        before = _fts(mm.database.engine)[1]
    with MemoryManager(sqlite_url) as mm:  # migrates to head
        assert migrations.current_revision(mm.database.engine) == migrations.head_revision()
        for word, seq in (("platypus", 1), ("echidna", 2), ("wombat", 3), ("numbat", 4)):
            assert [r.turn.seq for r in mm.recall("s", word)] == [seq], word
        assert [t.content for t in mm.turns("s")] == [*held, "a plain numbat"]
        after = _fts(mm.database.engine)[1]
        assert after["numbat"] == before["numbat"] == 1  # the plain turn as it was
        migrations.downgrade(mm.database.engine, "0014")
        assert [r.turn.seq for r in mm.recall("s", "platypus")] == [1]


@pytest.mark.postgres
def test_the_postgres_search_index_takes_new_turns_at_once(pg_url: str) -> None:
    """No pending list for searches to read through (``fastupdate = off``, migration 0016):
    turns just written are in the GIN index itself, so merging the list finds nothing."""
    engine = create_store_engine(normalise_url(pg_url))
    try:
        migrations.upgrade(engine, "0015")
        with MemoryManager(pg_url, migrate=False) as mm:
            mm.add_turns("s", make_history(300, lambda i: f"turn {i} about otters", T0))
        options = "SELECT reloptions FROM pg_class WHERE relname = 'om_turns_fts'"
        merge = "SELECT gin_clean_pending_list('om_turns_fts'::regclass)"
        with engine.begin() as conn:
            assert conn.execute(text(options)).scalar() is None  # GIN's default: a list
        with MemoryManager(pg_url) as mm:  # to head: what waited in the list is merged
            mm.add_turns("s", make_history(300, lambda i: f"more {i} about otters", T0))
            with engine.begin() as conn:
                assert conn.execute(text(options)).scalar() == ["fastupdate=off"]
                assert conn.execute(text(merge)).scalar() == 0  # nothing pending
            assert len(mm.recall("s", "otters", limit=1000)) == 600
            migrations.downgrade(mm.database.engine, "0015")
        with engine.begin() as conn:
            assert conn.execute(text(options)).scalar() is None
    finally:
        engine.dispose()
