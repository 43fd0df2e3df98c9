"""Smoke test of the aging rows of benchmarks/speed.py (``--aging-only``): one tiny run; checks
that every row is there and finite. Timings are never asserted."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from benchmarks import speed

pytestmark = pytest.mark.slow


def test_aging_only_run_has_every_aging_row(tmp_path: Path) -> None:
    out = tmp_path / "speed.csv"
    cfg = speed.parse_args(
        [
            "--quick",
            "--no-pg",
            "--aging-only",
            "--aging-turns",
            "60",
            "--aging-contention",
            "20",
            "--aging-idle",
            "--out",
            str(out),
        ]
    )
    assert cfg.contention_samples == 20 and cfg.idle_pass and cfg.idle_sessions == 101
    rows, text = speed.run(cfg)
    by = {(r.section, r.metric, r.tier): r.value for r in rows}
    for metric in ("add_alone_p99", "add_agers_p99", "p99_ratio", "ager_passes"):
        assert math.isfinite(by[("contention", metric, "")]), metric
    assert by[("contention", "add_alone_failed", "")] == 0
    assert by[("idle_pass", "write_transactions", "")] == 0  # nothing due: no write at all
    assert by[("idle_pass", "statements", "")] <= 3
    assert by[("idle_pass", "sessions_visited", "")] == 0
    for tier in ("large", "base", "small", "tiny"):
        assert by[("png", "pixels_equal", tier)] == 1.0
        assert by[("aging", "ms_per_page", tier)] > 0
    for title in ("## aging throughput", "## add_turn beside aging workers", "## aging pass with"):
        assert title in text
    assert "## add_turn latency" not in text  # --aging-only: no sizes
