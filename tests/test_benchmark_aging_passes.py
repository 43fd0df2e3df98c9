"""Smoke test of ``benchmarks/aging_passes.py``: two aging processes on one PostgreSQL at
once commit what one process alone commits and throw no drawing away. Timings are printed,
never asserted."""

from __future__ import annotations

import re

import pytest

from benchmarks import aging_passes

pytestmark = [pytest.mark.postgres, pytest.mark.slow]


def test_two_processes_commit_what_one_does_and_draw_nothing_for_nothing(
    pg_server_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    aging_passes.main(["--pg-url", pg_server_url, "--sessions", "3", "--turns", "200"])
    out = capsys.readouterr().out
    summary = re.search(r"the pair moved (\d+) pages \(alone (\d+)\), threw away (\d+)", out)
    assert summary, out
    pair, alone, thrown = map(int, summary.groups())
    assert pair == alone > 0 and thrown == 0
    assert "errors []" in out and "errors ['" not in out
