"""What the command line does at its edges, found by a hostile pass: text the store keeps
exactly is exported as valid JSON, an export never deletes what it did not write nor leaves a
half-written file, a driver the store does not run on and a read-only store are one line and
a status, calendars' edges replay, and output lines are never broken for a pipe."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

from test_cli import assert_error, cli

from optical_memory import MemoryManager


def _store(tmp_path: Path, turns: list[dict]) -> str:
    url = f"sqlite:///{tmp_path / 'm.db'}"
    with MemoryManager(url) as mm:
        mm.add_turns("chat", turns)
    return url


def _long(n: int = 120) -> list[dict]:
    return [
        {
            "role": "user" if i % 2 == 0 else "assistant",
            "content": f"message {i} about trains " * 40,
            "at": datetime(2024, 1, 1, tzinfo=UTC) + timedelta(minutes=i),
        }
        for i in range(n)
    ]


def test_metadata_utf8_cannot_hold_is_exported_as_valid_json(tmp_path: Path) -> None:
    url = _store(tmp_path, [{"role": "user", "content": "hello", "metadata": {"x": "\ud800"}}])
    shown = cli("assemble", "chat", "--db", url)
    assert shown.exit_code == 0, shown.output
    (seg,) = json.loads(shown.stdout)["segments"]
    assert seg["metadata"] == {"x": "\ud800"}  # escaped in the text, the same string read back
    wrote = cli("assemble", "chat", "--db", url, "--out", tmp_path / "out")
    assert wrote.exit_code == 0, wrote.output
    data = json.loads((tmp_path / "out" / "prompt.json").read_text(encoding="utf-8"))
    assert data["segments"][0]["metadata"] == {"x": "\ud800"}


def test_an_export_never_deletes_what_it_did_not_write(tmp_path: Path) -> None:
    url = _store(tmp_path, _long())
    assert cli("age", "--now", "2024-03-01T00:00:00Z", "--db", url).exit_code == 0
    out = tmp_path / "out"
    first = cli("assemble", "chat", "--db", url, "--budget", "3000", "--out", out)
    assert first.exit_code == 0, first.output
    pngs = sorted(p.name for p in (out / "prompt").iterdir())
    (out / "prompt" / "1001-page-123456-tiny.png").write_bytes(b"")  # a big store's names
    assert pngs and cli("assemble", "chat", "--db", url, "--out", out).exit_code == 0  # again
    assert sorted(p.name for p in (out / "prompt").iterdir()) == pngs
    notes = out / "prompt" / "src" / "notes.txt"
    notes.parent.mkdir()
    notes.write_text("mine")
    assert_error(cli("assemble", "chat", "--db", url, "--out", out), "files no export wrote")
    assert notes.read_text() == "mine"


def test_a_driver_the_store_does_not_run_on_is_one_line(tmp_path: Path) -> None:
    for url in (
        "postgresql+asyncpg://postgres@127.0.0.1:5432/x",
        "postgresql+psycopg_async://postgres@127.0.0.1:5432/x",
        "postgresql+pg8000://postgres@127.0.0.1:5432/x",
        f"sqlite+aiosqlite:///{tmp_path / 'a.db'}",
        f"sqlite+pysqlcipher:///{tmp_path / 'b.db'}",
    ):
        assert_error(cli("sessions", "--db", url), "driver .* is not supported")
    assert not list(tmp_path.iterdir())


def test_aging_a_read_only_store_names_each_failure_and_exits_1(tmp_path: Path) -> None:
    _store(tmp_path, _long())
    ro = f"sqlite:///file:{tmp_path / 'm.db'}?mode=ro&uri=true"
    result = cli("age", "--now", "2024-03-01T00:00:00Z", "--db", ro)
    assert result.exit_code == 1, result.output
    assert "StoreReadOnly" in result.stderr and "Traceback" not in result.stderr
    assert result.stderr.count("StoreReadOnly") == 1  # said once, not logged again
    assert "session 'chat': StoreReadOnly" in result.stderr  # its id, not the store's row


def test_conversations_dated_at_the_edges_of_the_calendar_replay(tmp_path: Path) -> None:
    files = {
        "future.jsonl": [
            {"role": "user", "content": "far future", "at": "9999-12-31T23:59:59+00:00"},
            {"role": "assistant", "content": "ok"},
        ],
        "past.jsonl": [
            {"role": "user", "content": "far past"},
            {"role": "assistant", "content": "ok", "at": "0001-01-01T00:00:00Z"},
        ],
    }
    for name, rows in files.items():
        path = tmp_path / name
        path.write_text("\n".join(json.dumps(r) for r in rows))
        result = cli("demo", "--dir", tmp_path / f"out-{name}", "--file", path)
        assert result.exit_code == 0, (name, result.output)
    url = _store(tmp_path, _long(4))
    early = cli("age", "--now", "0001-01-01T00:00:00Z", "--db", url)
    assert early.exit_code == 0 and "aging pass at 0001-01-01 00:00 UTC" in early.stdout


def test_output_lines_are_never_broken_for_a_pipe(tmp_path: Path) -> None:
    url = _store(tmp_path, _long())
    result = cli("age", "--now", "2024-03-01T00:00:00Z", "--db", url, env={"COLUMNS": None})
    (line,) = [x for x in result.stdout.splitlines() if x.startswith("aging pass at")]
    assert line.endswith(" s"), result.stdout  # the whole summary on its one line


def test_sqlite_uri_arguments_outside_a_file_uri_are_refused(tmp_path: Path) -> None:
    """SQLAlchemy ignores ``mode=ro`` without ``uri=true`` (the store would be written), and
    with it but no ``file:`` opens a new file named ``m.db?mode=ro``."""
    url = _store(tmp_path, _long(4))
    before = sorted(p.name for p in tmp_path.iterdir())
    for wrong in (f"{url}?mode=ro", f"{url}?mode=ro&uri=true", f"{url}?immutable=1"):
        assert_error(cli("age", "--db", wrong), "file: URI")
    assert sorted(p.name for p in tmp_path.iterdir()) == before


def test_an_import_refused_by_a_check_names_the_line(tmp_path: Path) -> None:
    deep: dict = {}
    for _ in range(40):
        deep = {"x": deep}
    rows = [{"role": "user", "content": "fine"}, {"role": "user", "content": "x", "metadata": deep}]
    path = tmp_path / "chat.jsonl"
    path.write_text("\n".join(json.dumps({**r, "session_id": "s1"}) for r in rows))
    url = f"sqlite:///{tmp_path / 'm.db'}"
    assert_error(cli("import", path, "--db", url), r"chat\.jsonl, line 2: metadata is nested")
    with MemoryManager(url) as mm:
        assert mm.sessions() == []  # all or nothing


def test_db_vacuum_leaves_no_trace_of_a_forgotten_session(tmp_path: Path) -> None:
    url = _store(tmp_path, [{"role": "user", "content": "the vault code is 7741-PLUM " * 50}])
    assert cli("forget", "chat", "--yes", "--db", url).exit_code == 0
    result = cli("db", "vacuum", "--db", url)
    assert result.exit_code == 0 and "vacuumed" in result.stdout, result.output
    files = [p for p in tmp_path.iterdir() if p.name.startswith("m.db")]
    assert files and not any(b"7741-PLUM" in p.read_bytes() for p in files)
    assert_error(cli("db", "vacuum", "--db", f"sqlite:///{tmp_path / 'none.db'}"), "")
