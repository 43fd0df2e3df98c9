"""The command line, in-process with typer's CliRunner, plus one run of the installed script."""

from __future__ import annotations

import base64
import io
import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from PIL import Image
from typer.testing import CliRunner, Result

from optical_memory import MemoryManager
from optical_memory.cli import app
from optical_memory.database import URL_ENV
from optical_memory.export import safe_name

DATA = Path(__file__).parent / "data" / "import"
SAMPLE = Path(__file__).resolve().parent.parent / "memory" / "sample" / "conversation.jsonl"
SHARED = Path("/work/shared/data")
TIERS = ("text", "large", "base", "small", "tiny")

runner = CliRunner()


def cli(
    *args: str | Path, input: str | None = None, env: dict[str, str | None] | None = None
) -> Result:
    """Run the CLI in-process with a wide terminal and no ambient database URL."""
    full_env: dict[str, str | None] = {"COLUMNS": "200", URL_ENV: None, **(env or {})}
    return runner.invoke(app, [str(a) for a in args], input=input, env=full_env)


def snapshot(url: str) -> list[Any]:
    """Everything a command could change: sessions, turns and pages."""
    with MemoryManager(url) as mm:
        return [
            (
                s.session_id,
                s.turns,
                [(t.seq, t.role, t.content, t.at, t.metadata) for t in mm.turns(s.session_id)],
                [(p.page_id, p.tier, p.version, p.token_cost) for p in mm.pages(s.session_id)],
            )
            for s in mm.sessions()
        ]


def assert_error(result: Result, pattern: str) -> None:
    """Exit status 2, one clear line on stderr, no traceback."""
    assert result.exit_code == 2, (result.exit_code, result.output, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ")
    assert re.search(pattern, lines[0]), lines[0]
    assert "Traceback" not in result.output + result.stderr


_ROW = re.compile(
    r"^[│|]\s*(recent \(unpaged\)|text|large|base|small|tiny|total)\s*[│|]\s*(\d+)\s*[│|]"
    r"\s*(\d+)\s*[│|]\s*([\d,]+)\s*[│|]\s*([\d,]+|-)\s*[│|]",
    re.MULTILINE,
)


def parse_tier_table(output: str) -> dict[str, tuple[int, int, int, int]]:
    """{tier: (pages, turns, text tokens, image tokens)} from the first tier table printed."""
    rows: dict[str, tuple[int, int, int, int]] = {}
    for m in _ROW.finditer(output):
        name = m.group(1).split()[0]
        if name in rows:
            break
        image = 0 if m.group(5) == "-" else int(m.group(5).replace(",", ""))
        rows[name] = (int(m.group(2)), int(m.group(3)), int(m.group(4).replace(",", "")), image)
    return rows


def expected_tier_table(url: str, session_id: str) -> dict[str, tuple[int, int, int, int]]:
    """The same table, recomputed from mm.pages() and mm.turns()."""
    with MemoryManager(url) as mm:
        pages = mm.pages(session_id)
        turns = mm.turns(session_id)
    paged = max((p.last_seq for p in pages), default=0)
    recent = [t for t in turns if t.seq > paged]
    rows = {"recent": (0, len(recent), sum(t.tokens for t in recent), 0)}
    for tier in TIERS:
        group = [p for p in pages if p.tier == tier]
        rows[tier] = (
            len(group),
            sum(p.last_seq - p.first_seq + 1 for p in group),
            sum(p.text_tokens for p in group),
            0 if tier == "text" else sum(p.token_cost for p in group),
        )
    rows["total"] = (
        len(pages),
        len(turns),
        sum(t.tokens for t in turns),
        sum(p.token_cost for p in pages if p.tier != "text"),
    )
    return rows


@pytest.fixture
def url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'cli.db'}"


@pytest.fixture
def seeded(db_url: str) -> str:
    """A database (SQLite, and PostgreSQL where configured) holding the small JSONL fixture."""
    assert cli("import", DATA / "turns.jsonl", "--db", db_url).exit_code == 0
    return db_url


@pytest.fixture(scope="module")
def aged(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The sample conversation imported and aged by one pass a month after its end."""
    path = tmp_path_factory.mktemp("aged") / "aged.db"
    url = f"sqlite:///{path}"
    assert cli("import", SAMPLE, "--db", url).exit_code == 0
    result = cli("age", "--now", "2025-06-30T12:00:00Z", "--db", url)
    assert result.exit_code == 0, result.output
    yield url


# -- import -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "args", "expected"),
    [
        ("turns.jsonl", [], {"garden": 3, "trip": 2, "turns": 1}),
        ("openai_messages.json", ["--session", "chat-7"], {"chat-7": 5}),
        ("locomo_tiny.json", ["--format", "locomo"], {"conv-t1": 5, "conv-t2": 3}),
        ("longmemeval_tiny.json", [], {"q-cat": 5, "q-count": 2}),
    ],
)
def test_import_each_format(
    db_url: str, name: str, args: list[str], expected: dict[str, int]
) -> None:
    result = cli("import", DATA / name, *args, "--db", db_url)
    assert result.exit_code == 0, result.output + result.stderr
    assert f"{sum(expected.values())} turns in {len(expected)} sessions" in result.output
    assert {s[0]: s[1] for s in snapshot(db_url)} == expected


def test_a_large_import_refreshes_the_planners_statistics(
    db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """PostgreSQL plans a table it has no statistics for as if it were empty; a large import
    runs ANALYZE before the first read (the threshold lowered so the fixture counts)."""
    import sqlalchemy as sa

    import optical_memory.manager as manager_module
    from optical_memory.database import normalise_url

    monkeypatch.setattr(manager_module, "ANALYZE_AFTER_TURNS", 3)
    result = cli("import", DATA / "turns.jsonl", "--db", db_url)
    assert result.exit_code == 0, result.output
    engine = sa.create_engine(normalise_url(db_url))
    with engine.connect() as conn:
        if engine.dialect.name == "postgresql":
            analyzed = conn.execute(
                sa.text("SELECT last_analyze FROM pg_stat_user_tables WHERE relname = 'om_turns'")
            ).scalar()
            assert analyzed is not None
        else:  # SQLite plans from its indexes: no statistics table is made
            names = conn.execute(sa.text("SELECT name FROM sqlite_master")).scalars().all()
            assert "sqlite_stat1" not in names
    engine.dispose()


def test_import_keeps_times_and_metadata(url: str) -> None:
    assert cli("import", DATA / "locomo_tiny.json", "--db", url).exit_code == 0
    with MemoryManager(url) as mm:
        turns = mm.turns("conv-t1")
    assert turns[0].at == datetime(2023, 5, 8, 13, 56, tzinfo=UTC)
    assert turns[1].at == turns[0].at + timedelta(seconds=10)
    assert turns[0].metadata == {"name": "Ana", "dia_id": "D1:1", "session": 1}
    assert turns[1].role == "assistant" and turns[1].metadata["name"] == "Ben"


def test_import_appends_to_existing_sessions(seeded: str) -> None:
    assert cli("import", DATA / "turns.jsonl", "--db", seeded).exit_code == 0
    with MemoryManager(seeded) as mm:
        garden = mm.turns("garden")
    assert [t.seq for t in garden] == list(range(1, 7))
    assert [t.content for t in garden[:3]] == [t.content for t in garden[3:]]


def test_db_from_environment(seeded: str) -> None:
    result = cli("sessions", env={URL_ENV: seeded})
    assert result.exit_code == 0
    assert all(s in result.output for s in ("garden", "trip", "turns"))


@pytest.mark.slow
@pytest.mark.skipif(not SHARED.exists(), reason="no shared benchmark data on this machine")
def test_import_real_shared_files(url: str) -> None:
    from optical_memory.importers import locomo_qa, longmemeval_qa

    locomo = SHARED / "locomo" / "locomo_dev.json"
    lme = SHARED / "longmemeval" / "longmemeval_s_dev.json"
    for path in (locomo, lme):
        result = cli("import", path, "--db", url)
        assert result.exit_code == 0, result.stderr
    counts = {s[0]: s[1] for s in snapshot(url)}
    assert counts["conv-26"] == 419 and counts["conv-30"] == 369
    assert len(counts) == 26 and sum(counts.values()) == 788 + 11_550
    with MemoryManager(url) as mm:
        turns = {t.seq: t for t in mm.turns("conv-26")}
        for item in locomo_qa(locomo)["conv-26"]:
            assert all(turns[s].metadata["dia_id"] in item.evidence for s in item.evidence_seqs)
        for qid, q in longmemeval_qa(lme).items():
            stored = mm.turns(qid)
            assert all(stored[s - 1].metadata.get("has_answer") for s in q.evidence_seqs)


# -- errors: one line, exit 2, nothing written ----------------------------------------------------


@pytest.mark.parametrize(
    ("args", "pattern"),
    [
        (["import", str(DATA / "missing.jsonl")], r"missing\.jsonl: no such file"),
        (["import", str(DATA / "bad_line.jsonl")], r"bad_line\.jsonl, line 3: not valid JSON"),
        (["import", str(DATA / "bad_json.json")], r"not valid JSON at line 4, column 1"),
        (["import", str(DATA / "bad_role.jsonl")], r"line 2: role must be one of"),
        (["import", str(DATA / "turns.jsonl"), "--format", "xml"], r"unknown format 'xml'"),
        (["import", str(DATA / "unknown_shape.json")], r"cannot tell the format"),
        (["import", str(DATA / "locomo_bad_speaker.json")], r"speaker 'Zed'"),
        (["assemble", "garden", "--target", "gpt-9"], r"unknown target 'gpt-9'"),
        (["assemble", "garden", "--format", "yaml"], r"unknown format 'yaml'"),
        (["assemble", "garden", "--budget", "0"], r"budget must be a positive"),
        (["assemble", "nobody"], r"no session 'nobody'"),
        (["show", "nobody"], r"no session 'nobody'"),
        (["forget", "nobody", "--yes"], r"no session 'nobody'"),
        (["render", "nobody", "--out", "OUT"], r"no session 'nobody'"),
        (["age", "--now", "next tuesday"], r"--now='next tuesday' is not an ISO 8601 time"),
    ],
)
def test_errors_leave_the_database_unchanged(
    seeded: str, tmp_path: Path, args: list[str], pattern: str
) -> None:
    before = snapshot(seeded)
    args = [str(tmp_path / "out") if a == "OUT" else a for a in args]
    assert_error(cli(*args, "--db", seeded), pattern)
    assert snapshot(seeded) == before
    assert not (tmp_path / "out").exists()


def test_nothing_half_imported_across_sessions(seeded: str, tmp_path: Path) -> None:
    """The first session is valid, the second is not: neither is imported."""
    path = tmp_path / "two.jsonl"
    rows = [
        {"session_id": "fine", "role": "user", "content": "valid"},
        {"session_id": "fine", "role": "assistant", "content": "also valid"},
        {"session_id": "bad\u0000id", "role": "user", "content": "a NUL in the session id"},
    ]
    path.write_text("\n".join(json.dumps(r) for r in rows))
    before = snapshot(seeded)
    assert_error(cli("import", path, "--db", seeded), r"NUL")
    assert snapshot(seeded) == before


def test_add_sessions_is_one_transaction(db_url: str) -> None:
    """A failure while writing the second session rolls back the first (the import path).
    The database itself refuses the second session's turn (a trigger), as a constraint would."""
    from sqlalchemy import text
    from sqlalchemy.exc import DBAPIError

    with MemoryManager(db_url, owner="bob") as bob:
        bob.add_turn("bobs", "user", "mine")
        with bob.database.engine.begin() as conn:
            if bob.database.dialect == "sqlite":
                conn.execute(
                    text(
                        "CREATE TRIGGER refuse BEFORE INSERT ON om_turns "
                        "WHEN NEW.content = 'intrusion' BEGIN SELECT RAISE(ABORT, 'refused'); END"
                    )
                )
            else:
                conn.execute(
                    text(
                        "CREATE FUNCTION refuse() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
                        "IF NEW.content = 'intrusion' THEN RAISE EXCEPTION 'refused'; END IF; "
                        "RETURN NEW; END $$"
                    )
                )
                conn.execute(
                    text(
                        "CREATE TRIGGER refuse BEFORE INSERT ON om_turns "
                        "FOR EACH ROW EXECUTE FUNCTION refuse()"
                    )
                )
    with MemoryManager(db_url, owner="bob") as bob, pytest.raises(DBAPIError, match="refused"):
        bob.add_sessions({"new": [("user", "hello")], "bobs": [("user", "intrusion")]})
    with MemoryManager(db_url, owner="bob") as bob:
        assert [(s.session_id, s.turns) for s in bob.sessions()] == [("bobs", 1)]
        assert [t.content for t in bob.turns("bobs")] == ["mine"]


def test_demo_unknown_target_writes_nothing(tmp_path: Path) -> None:
    out = tmp_path / "demo"
    assert_error(cli("demo", "--dir", out, "--target", "nope"), r"unknown target 'nope'")
    assert not out.exists()


def test_demo_malformed_file_writes_nothing(tmp_path: Path) -> None:
    out = tmp_path / "demo"
    assert_error(cli("demo", "--dir", out, "--file", DATA / "bad_line.jsonl"), r"line 3")
    assert not out.exists()


# -- reading commands -----------------------------------------------------------------------------


def test_show_matches_the_database(aged: str) -> None:
    result = cli("show", "maya-spring-2025", "--db", aged)
    assert result.exit_code == 0, result.stderr
    table = parse_tier_table(result.output)
    assert table == expected_tier_table(aged, "maya-spring-2025")
    assert table["tiny"][0] > 0 and table["total"][1] == 336
    with MemoryManager(aged) as mm:
        for p in mm.pages("maya-spring-2025"):  # the pages table lists every page
            assert re.search(
                rf"│\s*{p.page_id}\s*│\s*{p.tier}\s*│\s*{p.first_seq}-{p.last_seq}\s*│",
                result.output,
            )


def test_sessions_lists_turns_and_pages(aged: str) -> None:
    result = cli("sessions", "--db", aged)
    assert result.exit_code == 0
    with MemoryManager(aged) as mm:
        n_pages = len(mm.pages("maya-spring-2025"))
    assert re.search(rf"maya-spring-2025\s*│\s*336\s*│\s*{n_pages}\s*│", result.output)


def test_age_reports_the_pass(url: str, tmp_path: Path) -> None:
    assert cli("import", _small_conversation(tmp_path / "small.jsonl"), "--db", url).exit_code == 0
    result = cli("age", "--now", "2025-06-01T00:00:00", "--db", url)  # naive: UTC
    assert result.exit_code == 0, result.stderr
    with MemoryManager(url) as mm:
        pages = mm.pages("small")
    assert pages
    assert (
        f"aging pass at 2025-06-01 00:00 UTC: 1 sessions, {len(pages)} pages created"
        in result.output
    )
    moved = {t: sum(1 for p in pages if p.tier == t) for t in TIERS if t != "text"}
    for tier, n in moved.items():
        if n:
            assert f"{n} to {tier}" in result.output


def test_assemble_json_matches_assemble(aged: str) -> None:
    now = "2025-06-30T12:00:00+00:00"
    result = cli("assemble", "maya-spring-2025", "--budget", "3000", "--now", now, "--db", aged)
    assert result.exit_code == 0, result.stderr
    data = json.loads(result.output)
    with MemoryManager(aged) as mm:
        ctx = mm.assemble("maya-spring-2025", budget=3000, now=datetime.fromisoformat(now))
    assert data["tokens"] == ctx.tokens <= 3000
    assert data["fingerprint"] == ctx.fingerprint()
    pages = [s for s in data["segments"] if s["kind"] == "page"]
    assert len(pages) == len(ctx.pages) > 0
    png = base64.b64decode(pages[0]["image_base64"])
    assert png == ctx.pages[0].png
    assert Image.open(io.BytesIO(png)).size == (pages[0]["width"], pages[0]["height"])
    texts = [s for s in data["segments"] if s["kind"] == "text"]
    assert texts[-1]["seq"] == 336 and texts[-1]["content"] == ctx.texts[-1].turn.content


def test_assemble_openai_and_langchain(aged: str) -> None:
    result = cli("assemble", "maya-spring-2025", "--format", "openai", "--db", aged)
    assert result.exit_code == 0, result.stderr
    messages = json.loads(result.output)
    urls = [
        part["image_url"]["url"]
        for m in messages
        if isinstance(m["content"], list)
        for part in m["content"]
        if part.get("type") == "image_url"
    ]
    assert urls and all(u.startswith("data:image/png;base64,") for u in urls)
    assert messages[-1]["role"] == "assistant" and messages[-1]["content"].startswith(
        "It was a remarkable"
    )

    result = cli("assemble", "maya-spring-2025", "--format", "langchain", "--db", aged)
    assert result.exit_code == 0, result.stderr
    lc = json.loads(result.output)
    assert {m["type"] for m in lc} >= {"human", "ai"}
    assert lc[-1]["data"]["content"].startswith("It was a remarkable")


def test_assemble_to_directory(aged: str, tmp_path: Path) -> None:
    out = tmp_path / "prompt-out"
    result = cli("assemble", "maya-spring-2025", "--out", out, "--db", aged)
    assert result.exit_code == 0, result.stderr
    data = json.loads((out / "prompt.json").read_text())
    images = [s["image"] for s in data["segments"] if s["kind"] == "page"]
    assert images
    for rel in images:
        path = (out / rel).resolve()
        assert out.resolve() in path.parents and path.read_bytes().startswith(b"\x89PNG")


def test_render_writes_pages_and_contact_sheet(aged: str, tmp_path: Path) -> None:
    out = tmp_path / "render"
    result = cli("render", "maya-spring-2025", "--out", out, "--db", aged)
    assert result.exit_code == 0, result.stderr
    with MemoryManager(aged) as mm:
        pages = [p for p in mm.pages("maya-spring-2025") if p.tier != "text"]
        prefix = safe_name("maya-spring-2025")
        for p in pages:
            stored = out / f"{prefix}-page-{p.page_id:05d}-{p.tier}.png"
            assert stored.read_bytes() == mm.page_image("maya-spring-2025", p.page_id)
    sheet = Image.open(out / f"{prefix}-contact-sheet.png")
    assert sheet.width >= min(len(pages), 10) * 512 * 0.2  # one thumbnail per page, side by side
    assert len(list(out.iterdir())) >= len(pages) + 1


def _png(size: tuple[int, int], shade: int) -> bytes:
    buf = io.BytesIO()
    Image.new("L", size, shade).save(buf, format="PNG")
    return buf.getvalue()


def test_contact_sheet_layout() -> None:
    from optical_memory.contact_sheet import Tile, contact_sheet

    big, small = _png((1000, 1000), 0), _png((500, 500), 0)
    rows = [
        ("big", [Tile(big, "b1"), Tile(big, "b2")]),
        ("empty", []),
        ("small", [Tile(small, "s1")] * 7),
    ]
    png = contact_sheet(rows, scale=0.1, max_width=400, title="t")
    assert png == contact_sheet(rows, scale=0.1, max_width=400, title="t")  # deterministic
    sheet = Image.open(io.BytesIO(png)).convert("L")
    assert sheet.width <= 400
    dark = sum(sheet.histogram()[:20])
    # two 100² and seven 50² black thumbnails (the labels add a little more ink)
    assert 2 * 100 * 100 + 7 * 50 * 50 <= dark < 2 * 100 * 100 + 7 * 50 * 50 + 6000
    # the small row wraps: 110-px cells, 10-px gaps -> 3 per line -> 3 lines
    single = Image.open(io.BytesIO(contact_sheet([("s", [Tile(small, "s")])], scale=0.1)))
    assert sheet.height > single.height * 2
    with pytest.raises(ValueError):
        contact_sheet(rows, scale=0)
    empty = Image.open(io.BytesIO(contact_sheet([])))
    assert empty.width > 0


def test_render_never_leaves_the_output_directory(url: str, tmp_path: Path) -> None:
    evil = "../../escape/..\\x y"
    path = tmp_path / "evil.jsonl"
    start = datetime(2025, 1, 1, tzinfo=UTC)
    rows = [
        {
            "session_id": evil,
            "role": "user" if i % 2 == 0 else "assistant",
            "content": f"turn {i}: " + "a fairly long sentence about the garden beds. " * 12,
            "at": (start + timedelta(hours=i)).isoformat(),
        }
        for i in range(40)
    ]
    path.write_text("\n".join(json.dumps(r) for r in rows))
    assert cli("import", path, "--db", url).exit_code == 0
    assert cli("age", "--now", "2025-03-01T00:00:00Z", "--db", url).exit_code == 0
    out = tmp_path / "a" / "b" / "out"
    result = cli("render", evil, "--out", out, "--db", url)
    assert result.exit_code == 0, result.stderr
    written = list(out.iterdir())
    assert len(written) >= 2
    for f in written:
        assert f.parent == out and ".." not in f.name and "\\" not in f.name
    outside = {p.name for p in tmp_path.rglob("*") if p.is_file() and out not in p.parents}
    assert outside <= {"cli.db", "cli.db-wal", "cli.db-shm", "evil.jsonl"}


def test_safe_name() -> None:
    assert safe_name("maya-spring-2025").startswith("maya-spring-2025-")
    assert safe_name("a/b") != safe_name("a_b")  # the hash keeps them apart
    for sid in ("..", "../..", "/etc/passwd", "a\\b", ".hidden", "\u00e9t\u00e9", " "):
        name = safe_name(sid)
        assert re.fullmatch(r"[A-Za-z0-9_-]+", name), name


# -- forget and db ------------------------------------------------------------------------------


def test_forget_asks_first(seeded: str) -> None:
    before = snapshot(seeded)
    result = cli("forget", "garden", "--db", seeded, input="n\n")
    assert result.exit_code == 1 and "nothing was deleted" in result.stderr
    assert snapshot(seeded) == before
    result = cli("forget", "garden", "--db", seeded, input="y\n")
    assert result.exit_code == 0 and "3 turns" in result.output
    assert [s[0] for s in snapshot(seeded)] == ["trip", "turns"]
    assert cli("forget", "trip", "--yes", "--db", seeded).exit_code == 0
    assert [s[0] for s in snapshot(seeded)] == ["turns"]


def test_db_upgrade(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'fresh.db'}"
    first = cli("db", "upgrade", "--db", url)
    assert first.exit_code == 0 and "upgraded empty ->" in first.output
    second = cli("db", "upgrade", "--db", url)
    assert second.exit_code == 0 and "already at" in second.output
    assert snapshot(url) == []


# -- demo ---------------------------------------------------------------------------------------


def _small_conversation(path: Path, days: int = 8, per_day: int = 6) -> Path:
    """A few turns a day for a week: pages at several tiers, quick to render."""
    start = datetime(2025, 3, 1, 9, 0, tzinfo=UTC)
    rows = []
    for i in range(days * per_day):
        at = start + timedelta(days=i // per_day, minutes=10 * (i % per_day))
        rows.append(
            {
                "session_id": "small",
                "role": "user" if i % 2 == 0 else "assistant",
                "content": f"Turn {i}: the tomato seedlings are {i + 3} cm tall and we watered "
                f"tray {i % 4 + 1} with {100 + 5 * i} ml. " * 5,
                "at": at.isoformat(),
            }
        )
    path.write_text("\n".join(json.dumps(r) for r in rows))
    return path


def check_demo_outputs(out: Path, url: str, session_id: str) -> None:
    prefix = safe_name(session_id)
    sheet = out / f"{prefix}-contact-sheet.png"
    assert Image.open(sheet).format == "PNG"
    prompt = json.loads((out / "prompt.json").read_text())
    assert prompt["session_id"] == session_id and prompt["tokens"] <= prompt["budget"]
    for seg in prompt["segments"]:
        if seg["kind"] == "page":
            image = (out / seg["image"]).resolve()
            assert out.resolve() in image.parents and image.read_bytes().startswith(b"\x89PNG")
    with MemoryManager(url) as mm:
        for p in mm.pages(session_id):
            if p.tier != "text":
                assert (out / f"{prefix}-page-{p.page_id:05d}-{p.tier}.png").exists()


def test_demo_with_a_file(tmp_path: Path) -> None:
    out = tmp_path / "demo"
    source = _small_conversation(tmp_path / "small.jsonl", days=12)
    result = cli("demo", "--dir", out, "--file", source, "--budget", "2000", "--step-hours", "12")
    assert result.exit_code == 0, result.output + result.stderr
    url = f"sqlite:///{out / 'optical-memory-demo.db'}"
    assert parse_tier_table(result.output) == expected_tier_table(url, "small")
    assert "assembled prompt for small" in result.output
    check_demo_outputs(out, url, "small")
    with MemoryManager(url) as mm:
        assert len({p.tier for p in mm.pages("small")}) >= 2  # faded to different tiers
    # a second run in the same directory starts afresh
    again = cli("demo", "--dir", out, "--file", DATA / "locomo_tiny.json", "--session", "conv-t2")
    assert again.exit_code == 0, again.stderr
    assert [(s[0], s[1]) for s in snapshot(url)] == [("conv-t1", 5), ("conv-t2", 3)]
    assert "assembled prompt for conv-t2" in again.output


@pytest.mark.slow
def test_installed_demo_script(tmp_path: Path) -> None:
    """The console script replays the bundled sample, and its table matches the database."""
    exe = shutil.which("optical-memory") or str(Path(sys.executable).parent / "optical-memory")
    out = tmp_path / "demo"
    env = {k: v for k, v in os.environ.items() if k != URL_ENV} | {"COLUMNS": "200"}
    started = time.perf_counter()
    proc = subprocess.run(
        [exe, "demo", "--dir", str(out)], capture_output=True, text=True, env=env, timeout=300
    )
    elapsed = time.perf_counter() - started
    assert proc.returncode == 0, proc.stderr
    print(f"installed demo took {elapsed:.1f} s")  # reported, never asserted (shared machines)
    url = f"sqlite:///{out / 'optical-memory-demo.db'}"
    table = parse_tier_table(proc.stdout)
    assert table == expected_tier_table(url, "maya-spring-2025")
    assert table["total"][1] == 336
    assert sum(1 for t in ("large", "base", "small", "tiny") if table[t][0]) >= 3  # faded by age
    check_demo_outputs(out, url, "maya-spring-2025")
    assert "contact sheet:" in proc.stdout and "done in" in proc.stdout


def test_verify_finds_and_rebuilds_a_damaged_page(aged: str, tmp_path: Path) -> None:
    import shutil
    import sqlite3

    copy = tmp_path / "copy.db"
    shutil.copy(aged.removeprefix("sqlite:///"), copy)
    url = f"sqlite:///{copy}"
    assert cli("verify", "--check", "--db", url).exit_code == 0
    with sqlite3.connect(copy) as conn:
        page_id, good = conn.execute(
            "SELECT id, png FROM om_pages WHERE png IS NOT NULL ORDER BY id LIMIT 1"
        ).fetchone()
        conn.execute("UPDATE om_pages SET png = ? WHERE id = ?", (b"not a png", page_id))
    checked = cli("verify", "--check", "--db", url)
    assert checked.exit_code == 1 and f"page {page_id}" in checked.stderr
    repaired = cli("verify", "--db", url)
    assert repaired.exit_code == 0, repaired.stderr
    assert "1 pages rebuilt, 0 left" in repaired.output
    with sqlite3.connect(copy) as conn:
        assert (
            conn.execute("SELECT png FROM om_pages WHERE id = ?", (page_id,)).fetchone()[0] == good
        )
    assert cli("verify", "--check", "--db", url).exit_code == 0


# -- missing extras: one line naming the extra, exit 2 ---------------------------------------------

# Run in a fresh interpreter where the named top-level packages cannot be imported, the way a
# core-only install (`pip install optical-memory`, no extras) sees them.
_BLOCKER = """
import sys

BLOCKED = set(sys.argv.pop(1).split(","))
assert not BLOCKED & {name.partition(".")[0] for name in sys.modules}, "already imported"


class Blocker:
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in BLOCKED:
            raise ModuleNotFoundError(f"No module named {name!r} (blocked)", name=name)
        return None


sys.meta_path.insert(0, Blocker())
"""

_RUN_CLI = _BLOCKER + "from optical_memory.cli import main\nmain()\n"

_IMPORT = (
    _BLOCKER
    + """
import importlib, json
from optical_memory.errors import MissingExtra
try:
    importlib.import_module(sys.argv[1])
except MissingExtra as exc:
    print(json.dumps([str(exc), isinstance(exc, ImportError), exc.extra]))
else:
    print("imported")
"""
)


def _blocked(code: str, blocked: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != URL_ENV} | {"COLUMNS": "200"}
    return subprocess.run(
        [sys.executable, "-c", code, blocked, *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )


@pytest.mark.parametrize(
    ("blocked", "out"),
    [("langchain", False), ("langchain,langchain_core,langgraph", True)],  # core install; none
)
def test_missing_langchain_extra_is_one_line(
    aged: str, tmp_path: Path, blocked: str, out: bool
) -> None:
    """`assemble --format langchain` without the langchain extra: one line, exit 2, no file."""
    where = ["--out", str(tmp_path / "out")] if out else []
    args = ["assemble", "maya-spring-2025", "--format", "langchain", *where, "--db", aged]
    proc = _blocked(_RUN_CLI, blocked, *args)
    assert proc.returncode == 2, (proc.returncode, proc.stdout, proc.stderr)
    assert proc.stderr.splitlines() == [
        "error: the langchain format needs the langchain extra: "
        "pip install 'optical-memory[langchain]'"
    ]
    assert "Traceback" not in proc.stdout + proc.stderr and proc.stdout == ""
    assert not (tmp_path / "out").exists()
    # the other formats do not need it
    proc = _blocked(_RUN_CLI, blocked, "assemble", "maya-spring-2025", "-f", "openai", "--db", aged)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)[-1]["role"] == "assistant"


def test_missing_postgres_extra_is_one_line() -> None:
    """A postgresql:// URL without the postgres extra (SQLAlchemy imports the driver itself)."""
    db = "postgresql://nobody:secret@127.0.0.1:9/none"
    proc = _blocked(_RUN_CLI, "psycopg,psycopg2", "sessions", "--db", db)
    assert proc.returncode == 2, (proc.returncode, proc.stdout, proc.stderr)
    assert proc.stderr.splitlines() == [
        "error: a PostgreSQL database needs the postgres extra: "
        "pip install 'optical-memory[postgres]'"
    ]
    assert "Traceback" not in proc.stdout + proc.stderr


@pytest.mark.slow
@pytest.mark.parametrize(
    ("module", "blocked", "extra"),
    [
        ("langchain", "langchain", "langchain"),
        ("langchain", "langchain_core", "langchain"),
        ("transformers", "torch", "hf"),
        ("transformers_assembler", "torch", "hf"),
        ("transformers_encoder", "torch", "hf"),
        ("transformers_encoder", "safetensors", "hf"),
        ("transformers_prefix", "torch", "hf"),
    ],
)
def test_adapter_without_its_extra_names_it(module: str, blocked: str, extra: str) -> None:
    proc = _blocked(_IMPORT, blocked, f"optical_memory.adapters.{module}")
    assert proc.returncode == 0, proc.stderr
    message, is_import_error, named = json.loads(proc.stdout)
    assert message == (
        f"optical_memory.adapters.{module} needs the {extra} extra: "
        f"pip install 'optical-memory[{extra}]'"
    )
    assert is_import_error and named == extra
