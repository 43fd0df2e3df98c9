"""Deletion: forget removes a session's text, pages, images, renditions and cached visual
tokens, leaving no trace in the SQLite file or in any table."""

from __future__ import annotations

import io
import random
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from helpers import make_history, raw_sqlite_bytes
from PIL import Image, PngImagePlugin
from sqlalchemy import make_url, text
from workers.hardening import ThumbnailEncoder, row_counts

from optical_memory import MemoryManager, UnknownSession

T0 = datetime(2024, 1, 1, tzinfo=UTC)
LATER = T0 + timedelta(hours=5)  # pages at the large tier: every fainter rendition exists


def _fill(mm: MemoryManager, sid: str, marker: str, n: int = 90) -> None:
    mm.add_turns(
        sid,
        make_history(
            n,
            lambda i: f"turn {i} holds {marker} " + "the quick brown fox " * 25,
            T0,
            metadata=lambda i: {"note": f"{marker}-{i}"} if marker else {},
        ),
    )


def _marked_png(marker: str, seed: int) -> bytes:
    """A noisy PNG that carries ``marker`` in a text chunk: distinctive bytes to scan for."""
    rnd = random.Random(seed)
    im = Image.frombytes("RGB", (96, 64), bytes(rnd.randrange(256) for _ in range(96 * 64 * 3)))
    info = PngImagePlugin.PngInfo()
    info.add_text("note", marker)
    buf = io.BytesIO()
    im.save(buf, format="PNG", pnginfo=info)
    return buf.getvalue()


def test_forget_removes_a_turns_images_from_the_sqlite_file(sqlite_url: str) -> None:
    marker = f"OMSECRET{uuid.uuid4().hex}"
    path = Path(make_url(sqlite_url).database)
    secret_png, kept_png = _marked_png(marker, 1), _marked_png("kept", 2)
    with MemoryManager(sqlite_url) as mm:
        mm.add_turns("kept", make_history(30, lambda i: f"kept {i} " + "words " * 30, T0))
        mm.add_turn("kept", "user", "my cat", attachments=[kept_png])
        mm.add_turns("secret", make_history(30, lambda i: f"secret {i} " + "words " * 30, T0))
        mm.add_turn("secret", "user", "my passport", attachments=[secret_png])
        mm.add_turn("secret", "user", "again", attachments=[secret_png])
        mm.add_turn("kept", "user", "my dog", attachments=[_marked_png("dog", 3)])
        assert not mm.age(now=LATER).errors
        windows = _windows([secret_png], width=32, every=101)
        assert len(windows) > 50
        raw = raw_sqlite_bytes(path)
        assert marker.encode() in raw  # the scan sees the image while it is there
        seen = sum(w in raw for w in windows)  # (a few slices straddle overflow pages)
        assert seen >= 0.9 * len(windows), f"scan found only {seen}/{len(windows)} windows"

        assert mm.forget("secret") == 32
        raw = raw_sqlite_bytes(path)
        assert marker.encode() not in raw
        left = [w for w in windows if w in raw]
        assert not left, f"{len(left)} slices of the forgotten image remain in the file"
        assert mm.turns("kept")[30].attachments[0].data == kept_png
    raw = raw_sqlite_bytes(path)
    assert marker.encode() not in raw and not [w for w in windows if w in raw]


def _derived_blobs(mm: MemoryManager, sid: str) -> list[bytes]:
    """Every image, rendition and visual-token blob of one session."""
    with mm.database.engine.connect() as conn:
        q = conn.execute
        sess = q(text("SELECT id FROM om_sessions WHERE key = :k"), {"k": sid}).scalar_one()
        pids = [r[0] for r in q(text("SELECT id FROM om_pages WHERE session_id = :s"), {"s": sess})]
        blobs = [
            bytes(r[0])
            for r in q(
                text("SELECT png FROM om_pages WHERE session_id = :s AND png IS NOT NULL"),
                {"s": sess},
            )
        ]
        for pid in pids:
            blobs += [
                bytes(r[0])
                for r in q(
                    text("SELECT png FROM om_page_renditions WHERE page_id = :p"), {"p": pid}
                )
            ]
            blobs += [
                bytes(r[0])
                for r in q(text("SELECT data FROM om_visual_tokens WHERE page_id = :p"), {"p": pid})
            ]
    return blobs


def _windows(blobs: list[bytes], width: int = 48, every: int = 997) -> list[bytes]:
    """Distinctive slices of each blob (skipping the PNG/safetensors headers everyone shares)."""
    out = []
    for b in blobs:
        for start in range(64, max(65, len(b) - width), every):
            w = b[start : start + width]
            if len(w) == width and len(set(w)) > 8:
                out.append(w)
    return out


@pytest.mark.slow
def test_forget_leaves_no_trace_in_the_sqlite_file(sqlite_url: str) -> None:
    marker = f"OMSECRET{uuid.uuid4().hex}"
    secret = f"chat-{marker}"
    path = Path(make_url(sqlite_url).database)
    encoder = ThumbnailEncoder(marker)  # the marker lands in the secret's visual tokens
    with MemoryManager(sqlite_url, encoder=encoder) as mm:
        _fill(mm, "kept", "")
        _fill(mm, secret, marker)
        _fill(mm, "kept", "", n=20)  # interleave, so the secret's rows sit between others
        report = mm.age(now=LATER, sessions=[secret])
        assert not report.errors and report.pages_moved.get("large", 0) >= 2
        encoder.marker = ""
        assert mm.age(now=LATER).pages_moved.get("large", 0) >= 2
        blobs = _derived_blobs(mm, secret)
        kinds = {b[:4] for b in blobs}
        # per page: the large image, 3 renditions, and visual tokens for each of those 4 forms
        assert b"\x89PNG" in kinds and len(blobs) >= 2 * 8 and len(blobs) % 8 == 0
        # A slice the kept session's images share (pages drawn alike compress alike at
        # times) is no trace of the secret: only the secret's own slices must go.
        kept_blobs = _derived_blobs(mm, "kept")
        windows = [w for w in _windows(blobs) if not any(w in b for b in kept_blobs)]
        assert len(windows) > 50

        raw = raw_sqlite_bytes(path)
        assert marker.encode() in raw  # the scan sees the data while it is there
        seen = sum(w in raw for w in windows)
        assert seen >= 0.9 * len(windows), f"scan found only {seen}/{len(windows)} windows"

        kept_turns = mm.turns("kept")
        kept_pages = mm.pages("kept")
        assert mm.forget(secret) == 90
        with pytest.raises(UnknownSession):
            mm.turns(secret)
        assert mm.turns("kept") == kept_turns and mm.pages("kept") == kept_pages

        raw = raw_sqlite_bytes(path)  # the manager is still open: forget itself leaves no trace
        assert marker.encode() not in raw
        assert marker.encode("utf-16-le") not in raw
        left = [w for w in windows if w in raw]
        assert not left, f"{len(left)} slices of the session's images or tokens remain"
        assert len(mm.verify(repair=False).problems) == 0

    raw = raw_sqlite_bytes(path)
    assert marker.encode() not in raw and not [w for w in windows if w in raw]


def test_forget_leaves_no_rows_on_postgresql(pg_url: str) -> None:
    marker = f"OMSECRET{uuid.uuid4().hex}"
    secret = f"chat-{marker}"
    encoder = ThumbnailEncoder(marker)
    with MemoryManager(pg_url, encoder=encoder) as mm:
        _fill(mm, "kept", "", n=60)
        _fill(mm, secret, marker, n=60)
        mm.add_turn(secret, "user", "a scan", attachments=[_marked_png(marker, 1)])
        assert not mm.age(now=LATER, sessions=[secret]).errors
        encoder.marker = ""
        assert not mm.age(now=LATER).errors
        with mm.database.engine.connect() as conn:
            sid = conn.execute(
                text("SELECT id FROM om_sessions WHERE key = :k"), {"k": secret}
            ).scalar_one()
            pids = [
                r[0]
                for r in conn.execute(
                    text("SELECT id FROM om_pages WHERE session_id = :s"), {"s": sid}
                )
            ]
        assert pids
        counts = row_counts(mm)
        assert counts["om_page_renditions"] and counts["om_visual_tokens"]
        with mm.database.engine.connect() as conn:
            assert conn.execute(text("SELECT COUNT(*) FROM om_attachments")).scalar_one() == 1
        tables = _om_tables(mm)
        assert set(counts) <= set(tables)
        assert _rows_mentioning(mm, tables, marker) > 0  # the scan sees the data while it is there

        assert mm.forget(secret) == 61
        with mm.database.engine.connect() as conn:
            q = conn.execute
            assert (
                q(
                    text("SELECT COUNT(*) FROM om_sessions WHERE key = :k OR id = :s"),
                    {"k": secret, "s": sid},
                ).scalar_one()
                == 0
            )
            for table in ("om_turns", "om_pages", "om_attachments"):
                assert (
                    q(
                        text(f"SELECT COUNT(*) FROM {table} WHERE session_id = :s"), {"s": sid}
                    ).scalar_one()
                    == 0
                )
            for table in ("om_page_renditions", "om_visual_tokens"):
                n = q(
                    text(f"SELECT COUNT(*) FROM {table} WHERE page_id = ANY(:p)"), {"p": pids}
                ).scalar_one()
                assert n == 0, f"{table} keeps rows of forgotten pages"
        assert _rows_mentioning(mm, tables, marker) == 0
        assert mm.turns("kept") and mm.pages("kept")


def _om_tables(mm: MemoryManager) -> list[str]:
    with mm.database.engine.connect() as conn:
        return [
            r[0]
            for r in conn.execute(
                text(
                    "SELECT table_name FROM information_schema.tables "
                    "WHERE table_schema = current_schema() AND table_name LIKE 'om\\_%'"
                )
            )
        ]


def _rows_mentioning(mm: MemoryManager, tables: list[str], marker: str) -> int:
    """Rows of any om_ table whose text form holds the marker (as text, or hex inside bytea)."""
    hexed = marker.encode().hex()
    total = 0
    with mm.database.engine.connect() as conn:
        for t in tables:
            total += conn.execute(
                text(
                    f"SELECT COUNT(*) FROM {t} AS r WHERE strpos(r::text, :m) > 0 OR strpos(r::text, :h) > 0"
                ),
                {"m": marker, "h": hexed},
            ).scalar_one()
    return total


def test_forget_waits_for_a_reader_then_leaves_no_trace(sqlite_url: str) -> None:
    """A reader holding an old snapshot keeps forgotten pages alive in the WAL; forget's
    checkpoint waits for it (up to the busy timeout) rather than leaving them behind."""
    import sqlite3
    import threading
    import time

    marker = f"OMSECRET{uuid.uuid4().hex}"
    path = Path(make_url(sqlite_url).database)
    with MemoryManager(sqlite_url) as mm:
        mm.add_turns("kept", [("user", "nothing to see " * 20)] * 30)
        mm.add_turns("secret", [("user", f"{marker} " * 20)] * 30)
        reader = sqlite3.connect(path, check_same_thread=False)
        reader.execute("BEGIN")
        assert reader.execute("SELECT COUNT(*) FROM om_turns").fetchone() == (60,)
        threading.Timer(0.5, lambda: reader.execute("COMMIT")).start()
        started = time.monotonic()
        assert mm.forget("secret") == 30
        waited = time.monotonic() - started
        reader.close()
        assert waited >= 0.3, "forget returned while an old snapshot still pinned the data"
        assert marker.encode() not in raw_sqlite_bytes(path)
        assert len(mm.turns("kept")) == 30


def test_forget_leaves_no_copy_that_sqlite_made_while_rebalancing_pages(sqlite_url: str) -> None:
    """Two sessions written turn by turn share their table's pages; as those pages split and
    rebalance, SQLite leaves old copies of rows in their free gaps, which ``secure_delete``
    never zeroes. Forgetting one session must leave none of them (found by a hostile pass:
    one whole turn stayed in the file)."""
    words = [
        "alpha",
        "bravo",
        "charlie",
        "delta",
        "echo",
        "foxtrot",
        "golf",
        "hotel",
        "india",
        "juliet",
        "kilo",
        "lima",
        "mike",
        "november",
        "oscar",
        "papa",
        "quebec",
        "romeo",
        "sierra",
        "tango",
        "uniform",
        "victor",
        "whiskey",
        "xray",
        "yankee",
        "zulu",
    ]
    rng = random.Random(3)
    t0 = datetime(2024, 1, 1, 9, tzinfo=UTC)

    def png(i: int) -> bytes:
        out = io.BytesIO()
        Image.new("RGB", (64, 48), (i, 99, 7)).save(out, format="PNG")
        return out.getvalue()

    with MemoryManager(sqlite_url) as mm:
        for i in range(60):
            mm.add_turn(
                "victim",
                "user" if i % 2 == 0 else "assistant",
                f"zqxsecret{i:03d}word " + " ".join(rng.choice(words) for _ in range(60)),
                t0 + timedelta(minutes=30 * i),
                metadata={"mdsecret": f"zqxmeta{i}"},
                attachments=[png(i)] if i % 10 == 0 else None,
            )
            mm.add_turn(
                "other",
                "user",
                "innocent " + " ".join(rng.choice(words) for _ in range(10)),
                t0 + timedelta(minutes=30 * i),
            )
        mm.forget("victim")
        assert len(mm.turns("other")) == 60
    raw = raw_sqlite_bytes(Path(make_url(sqlite_url).database))
    assert b"zqxsecret" not in raw and b"zqxmeta" not in raw
