"""Smoke test of ``benchmarks/aging_passes.py``: two aging processes on one database at once
commit what one process alone commits and throw no drawing away. Timings are printed, never
asserted."""

from __future__ import annotations

import re

import pytest

from benchmarks import aging_passes

pytestmark = pytest.mark.slow


def _summary(out: str) -> tuple[int, int, int]:
    found = re.search(r"the pair moved (\d+) pages \(alone (\d+)\), threw away (\d+)", out)
    assert found, out
    assert "errors []" in out and "errors ['" not in out, out
    pair, alone, thrown = map(int, found.groups())
    return pair, alone, thrown


@pytest.mark.postgres
def test_two_processes_on_postgresql_commit_what_one_does_and_draw_nothing_for_nothing(
    pg_server_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    aging_passes.main(["--pg-url", pg_server_url, "--sessions", "3", "--turns", "200"])
    pair, alone, thrown = _summary(capsys.readouterr().out)
    assert pair == alone > 0 and thrown == 0


def test_two_processes_on_sqlite_commit_what_one_does_and_draw_nothing_for_nothing(
    capsys: pytest.CaptureFixture[str],
) -> None:
    aging_passes.main(["--sqlite", "--sessions", "3", "--turns", "200"])
    pair, alone, thrown = _summary(capsys.readouterr().out)
    assert pair == alone > 0 and thrown == 0
