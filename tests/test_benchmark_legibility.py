"""Smoke test of benchmarks/legibility.py: one tiny run in-process; checks the output's shape only.

A small throwaway target (256/192/128 px canvases, tiny falling back to small) keeps Tesseract
fast; accuracies are never asserted here (tests/test_legibility.py checks legibility itself).
"""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

from benchmarks import legibility
from benchmarks.ocr import tesseract_available
from optical_memory import ladder
from optical_memory.ladder import IMAGE_TIERS, Target, Tier, TierSpec

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not tesseract_available(), reason="needs the tesseract binary"),
]

NAME = "bench-legibility-smoke"


@pytest.fixture
def small_target():
    target = Target(
        NAME,
        {
            Tier.LARGE: TierSpec(256, 256),
            Tier.BASE: TierSpec(192, 192),
            Tier.SMALL: TierSpec(128, 128),
        },
        lambda w, h, detail: max(1, w * h // 784),
        "smoke-test target",
    )
    ladder.register_target(target, replace=True)
    yield target
    ladder.unregister_target(NAME)


def test_quick_run_shape(small_target, tmp_path: Path, capsys):
    out = tmp_path / "results" / "legibility.csv"
    argv = ["--quick", "--targets", NAME, "--readers", "tesseract", "--out", str(out)]
    rows = legibility.run(legibility.parse_args(argv))
    printed = capsys.readouterr().out

    # one row per (tier, renderer)
    assert len(rows) == len(IMAGE_TIERS) * len(legibility.RENDERERS)
    assert {(r["tier"], r["renderer"]) for r in rows} == {
        (t.label, name) for t in IMAGE_TIERS for name in legibility.RENDERERS
    }
    for r in rows:
        assert r["target"] == NAME
        assert r["chars"] > 0 and r["image_tokens"] > 0
        assert 0.0 <= r["tesseract"] <= 1.0
        assert r["rapidocr"] is None  # not asked for
        assert r["legible_per_token_tesseract"] >= 0
    tiny = [r for r in rows if r["tier"] == "tiny"]
    assert {r["canvas_tier"] for r in tiny} == {"small"}  # falls back to the sharper canvas

    # the CSV: the documented columns, the same rows
    with out.open(newline="") as fh:
        reader = csv.DictReader(fh)
        assert tuple(reader.fieldnames or ()) == legibility.CSV_COLUMNS
        written = list(reader)
    assert len(written) == len(rows)
    assert all(w["rapidocr"] == "" for w in written)

    # the printed report: one table for the target, a summary table and the verdict
    assert f"### {NAME}" in printed
    assert "### Summary" in printed
    table = [ln for ln in printed.splitlines() if ln.startswith(f"| {NAME} |")]
    assert len(table) == len(IMAGE_TIERS)  # one summary row per tier
    assert "(target, tier) pairs" in printed
