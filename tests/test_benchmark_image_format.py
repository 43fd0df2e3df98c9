"""Smoke test of benchmarks/image_format.py: one real page per tier; checks the report's shape
and that every candidate format gives the page's pixels back (never a timing)."""

from __future__ import annotations

import pytest

from benchmarks import image_format

pytestmark = pytest.mark.slow


def test_one_page_per_tier(capsys: pytest.CaptureFixture[str]) -> None:
    assert image_format.main(["--pages", "1"]) == 0
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| ")]
    body = [r.split(" | ") for r in rows[1:]]
    assert {r[0].strip("| ") for r in body} == {"large", "base", "small", "tiny"}
    assert len(body) == 16  # 4 tiers × (PNG today, WebP m0, WebP m4, palette PNG)
    assert all(r[6] == "True" for r in body)  # pixels equal
