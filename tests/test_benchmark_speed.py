"""Smoke test of benchmarks/speed.py: one tiny run in-process; checks the output's shape only.

Timings are never asserted: they belong to the machine, not to the code.
"""

from __future__ import annotations

import csv
import math
from pathlib import Path

import pytest

from benchmarks import speed

SIZES = (20, 60)
AGING_TURNS = 120
TIERS = ("large", "base", "small", "tiny")

pytestmark = pytest.mark.slow


def run_quick(tmp_path: Path, *extra: str) -> tuple[Path, list[dict[str, str]], str]:
    out = tmp_path / "results" / "speed.csv"
    argv = [
        "--quick",
        "--out",
        str(out),
        "--sizes",
        ",".join(map(str, SIZES)),
        "--aging-turns",
        str(AGING_TURNS),
        "--add-samples",
        "10",
        "--assemble-samples",
        "3",
        *extra,
    ]
    cfg = speed.parse_args(argv)
    rows, text = speed.run(cfg)
    assert out.exists()
    with out.open(newline="") as f:
        reader = csv.DictReader(f)
        assert tuple(reader.fieldnames or ()) == speed.CSV_COLUMNS
        written = list(reader)
    assert len(written) == len(rows)
    assert out.with_suffix(".md").read_text().strip() == text.strip()
    return out, written, text


def value(rows: list[dict[str, str]], **key: str) -> float:
    found = [r for r in rows if all(r[k] == str(v) for k, v in key.items())]
    assert len(found) == 1, f"expected one row for {key}, got {len(found)}"
    return float(found[0]["value"])


def check_backend(rows: list[dict[str, str]], backend: str) -> None:
    for n in SIZES:
        for system in (speed.OM, speed.LC):
            for metric in ("add_p50", "add_p99"):
                v = value(
                    rows, section="add", backend=backend, system=system, turns=n, metric=metric
                )
                assert math.isfinite(v) and v > 0
            for metric in ("read_p50", "read_p99", "context_tokens", "turns_covered"):
                v = value(
                    rows, section="assemble", backend=backend, system=system, turns=n, metric=metric
                )
                assert math.isfinite(v) and v > 0
            growth = [
                r
                for r in rows
                if r["section"] == "add_growth"
                and r["backend"] == backend
                and r["system"] == system
                and r["turns"] == str(n)
            ]
            assert len(growth) == speed.GROWTH_POINTS
        om_tokens = value(
            rows,
            section="assemble",
            backend=backend,
            system=speed.OM,
            turns=n,
            metric="context_tokens",
        )
        assert om_tokens <= speed.BUDGET
        pages = sum(
            value(
                rows,
                section="prep",
                backend=backend,
                system=speed.OM,
                turns=n,
                metric="pages_at_tier",
                tier=tier,
            )
            for tier in ("text", *TIERS)
        )
        assert pages == value(
            rows, section="prep", backend=backend, system=speed.OM, turns=n, metric="pages"
        )
        for metric in ("bytes_per_10k_text_only", "bytes_per_10k_aged"):
            assert (
                value(
                    rows, section="bytes", backend=backend, system=speed.OM, turns=n, metric=metric
                )
                > 0
            )
        assert (
            value(
                rows,
                section="bytes",
                backend=backend,
                system=speed.LC,
                turns=n,
                metric="bytes_per_10k",
            )
            > 0
        )
    # the store's hot paths beside their floor (the same SQL on the bare driver), same run
    for system in (speed.OM, speed.RAW, speed.LC):
        for metric in ("add_p50", "add_cpu"):
            found = [
                r
                for r in rows
                if (r["section"], r["backend"], r["system"], r["metric"])
                == ("add_floor", backend, system, metric)
            ]
            assert len(found) == 1 and float(found[0]["value"]) > 0, (system, metric)
    for n in SIZES:
        for system in (speed.OM, speed.RAW):
            v = value(
                rows,
                section="assemble_floor",
                backend=backend,
                system=system,
                turns=n,
                metric="read_p50",
            )
            assert math.isfinite(v) and v > 0
    for tier in TIERS:
        moved = value(
            rows, section="aging", backend=backend, turns=AGING_TURNS, tier=tier, metric="pages"
        )
        assert moved >= 1  # every page went down the whole ladder
        assert (
            value(
                rows,
                section="aging",
                backend=backend,
                turns=AGING_TURNS,
                tier=tier,
                metric="ms_per_page",
            )
            > 0
        )


def test_quick_run_sqlite(tmp_path: Path) -> None:
    _out, rows, text = run_quick(tmp_path, "--no-pg")
    assert {r["backend"] for r in rows} == {"sqlite", "-"}
    check_backend(rows, "sqlite")
    for n in SIZES:  # the baseline on the same file with WAL
        assert (
            value(
                rows,
                section="add",
                backend="sqlite",
                system=speed.LC_WAL,
                turns=n,
                metric="add_p50",
            )
            > 0
        )
    for tier in TIERS:
        assert value(rows, section="render", tier=tier, metric="render_ms") > 0
    for title in (
        "## add_turn latency",
        "## assemble vs history length",
        "## aging throughput",
        "## database bytes per 10,000 turns",
        "## store hot paths against their floors",
    ):
        assert title in text
    assert text.count("|---|") >= 5  # the markdown tables
    assert "ratio" in text


@pytest.mark.postgres
def test_quick_run_postgres(tmp_path: Path, pg_server_url: str) -> None:
    from sqlalchemy import create_engine, text

    def scratch() -> set[str]:
        engine = create_engine(pg_server_url)
        try:
            with engine.connect() as conn:
                return set(
                    conn.execute(
                        text("SELECT datname FROM pg_database WHERE datname LIKE 'om_bench_%'")
                    ).scalars()
                )
        finally:
            engine.dispose()

    before = scratch()
    _out, rows, report = run_quick(tmp_path, "--pg-url", pg_server_url)
    check_backend(rows, "sqlite")
    check_backend(rows, "postgresql")
    assert "| postgresql |" in report
    assert scratch() <= before  # its scratch databases were dropped


def test_help_and_arguments(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        speed.parse_args(["--help"])
    assert exc.value.code == 0
    assert "--pg-url" in capsys.readouterr().out
    cfg = speed.parse_args(["--no-pg"])
    assert cfg.sizes == speed.DEFAULT_SIZES and cfg.pg_url is None
    assert speed.parse_args(["--quick", "--no-pg"]).sizes == speed.QUICK_SIZES
    assert speed.parse_args(["--sizes", "1_000,100", "--no-pg"]).sizes == (100, 1000)
    with pytest.raises(SystemExit):
        speed.parse_args(["--sizes", "5"])


def test_percentile() -> None:
    assert speed.percentile([3.0, 1.0, 2.0], 50) == 2.0
    assert speed.percentile([1.0, 2.0], 99) == pytest.approx(1.99)
    assert math.isnan(speed.percentile([], 50))
