"""Smoke test of benchmarks/retention.py: one tiny run on a synthetic conversation in the LoCoMo
shape (written here, no third-party text); checks the output's shape, never its values."""

from __future__ import annotations

import argparse
import csv
import json
import shutil
from pathlib import Path

import pytest

from benchmarks import retention

TARGETS = ("deepseek-ocr", "openai")
BUDGETS = ("200", "600", retention.TENTH)

LINES = [
    "Hi! I finally signed up for the pottery class on Thursday evenings.",
    "That's great news. Which studio did you pick in the end?",
    "The little one near the harbour, Clay Corner. The teacher is called Ines.",
    "I have heard good things about it. Did you buy your own tools yet?",
    "Not yet, they lend us tools for the first month, which is handy.",
    "Sounds perfect. Send me a photo of your first bowl, please!",
]


def locomo_like(path: Path) -> Path:
    """Three sessions, weeks apart, and two questions with evidence (one malformed id)."""
    conv: dict[str, object] = {"speaker_a": "Ana", "speaker_b": "Ben"}
    dates = ["10:00 am on 3 March, 2024", "6:30 pm on 20 March, 2024", "9:15 am on 14 April, 2024"]
    for n, date in enumerate(dates, 1):
        conv[f"session_{n}_date_time"] = date
        conv[f"session_{n}"] = [
            {
                "speaker": "Ana" if i % 2 == 0 else "Ben",
                "dia_id": f"D{n}:{i + 1}",
                "text": f"{text} (session {n})",
            }
            for i, text in enumerate(LINES)
        ]
    qa = [
        {
            "question": "Who teaches the class?",
            "answer": "Ines",
            "evidence": ["D1:3"],
            "category": 4,
        },
        {
            "question": "What did they lend?",
            "answer": "tools",
            "evidence": ["D2:5", "D3:4"],
            "category": 1,
        },
        {"question": "Broken evidence", "answer": "x", "evidence": ["D"], "category": 5},
    ]
    path.write_text(json.dumps([{"sample_id": "conv-test", "conversation": conv, "qa": qa}]))
    return path


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("tesseract") is None, reason="needs the tesseract binary")
def test_retention_smoke(tmp_path: Path) -> None:
    data = locomo_like(tmp_path / "locomo.json")
    out = tmp_path / "results" / "retention.csv"
    details = tmp_path / "results" / "details.csv"
    cfg = retention.parse_args(
        [
            "--quick",  # then the flags below narrow it to the synthetic file
            "--locomo",
            str(data),
            "--longmemeval",
            "none",
            "--budgets",
            ",".join(map(str, BUDGETS)),
            "--targets",
            ",".join(TARGETS),
            "--readers",
            "tesseract",
            "--crop-check",
            "2",
            "--keep-last-turns",
            "4",
            "--out",
            str(out),
            "--details",
            str(details),
            "--quiet",
        ]
    )
    rows, text = retention.run(cfg)

    # every target and policy with and without the cue, and the window (no cue)
    arms = len(BUDGETS) * (len(TARGETS) * len(retention.POLICIES) * 2 + 1)
    assert len(rows) == arms
    with out.open(newline="") as f:
        reader = csv.DictReader(f)
        assert tuple(reader.fieldnames or ()) == retention.CSV_COLUMNS
        written = list(reader)
    assert len(written) == arms
    assert {(r["target"], r["policy"]) for r in written} == {
        *((t, p) for t in TARGETS for p in retention.POLICIES),
        (retention.WINDOW_TARGET, retention.WINDOW),
    }
    assert {r["budget"] for r in written} == set(BUDGETS)
    assert {(r["policy"], r["cue"]) for r in written} == {
        *((p, c) for p in retention.POLICIES for c in ("yes", "no")),
        (retention.WINDOW, "no"),
    }
    convs = list(csv.DictReader(retention.conversations_path(out).open(newline="")))
    assert [c["conversation"] for c in convs] == ["conv-test"]
    text_tokens = int(convs[0]["text_tokens"])
    assert text_tokens > 0 and int(convs[0]["tenth"]) == max(1, text_tokens // 10)
    for r in written:
        assert r["dataset"] == "LoCoMo"
        assert int(r["qa_items"]) == 2  # the question with no usable evidence is left out
        assert int(r["evidence"]) == 3
        counts = int(r["as_text"]) + int(r["absent"])
        counts += sum(int(r[f"in_{t}"]) for t in retention.IMAGE_TIER_LABELS)
        assert counts == 3
        assert 0.0 <= float(r["legible_pct"]) <= float(r["present_pct"]) <= 100.0
        assert r["legible_pct_rapidocr"] == ""  # not run here
        assert r["ocr_scope"] in ("turn", "page")
        if r["budget"] == retention.TENTH:
            assert float(r["budget_tokens_mean"]) == int(convs[0]["tenth"])
        at = [float(r[f"recall_at_{k}_pct"]) for k in retention.RECALL_K]
        assert 0.0 <= at[0] <= at[1] <= at[2] <= 100.0

    with details.open(newline="") as f:
        detail = list(csv.DictReader(f))
    assert len(detail) == arms * 3
    assert {d["cue"] for d in detail} == {"yes", "no"}
    assert out.with_suffix(".md").read_text().startswith("# Retention")
    assert "## Targets" in text and "LoCoMo" in text
    assert "Crop check" in text and "Recall quality" in text and "1/10" in text


def test_subsets_are_spread_evenly() -> None:
    assert retention.evenly(range(10), 3) == [1, 5, 8]
    assert retention.evenly(range(4), 4) == [0, 1, 2, 3]
    assert retention.evenly(range(4), None) == [0, 1, 2, 3]
    assert retention.evenly(range(4), 9) == [0, 1, 2, 3]
    assert retention.evenly(range(100), 1) == [50]
    assert retention.crop_check_plan(4, 2) == [0, 1, 0, 1]
    assert retention.crop_check_plan(2, 5) == [3, 3]
    assert retention.crop_check_plan(3, 0) == [0, 0, 0]


def test_budgets_take_a_tenth_of_the_text() -> None:
    assert retention.parse_budgets("1024, tenth,1024") == (1024, retention.TENTH)
    assert retention.budget_tokens(retention.TENTH, 18_345) == 1_834
    assert retention.budget_tokens(2048, 18_345) == 2048
    with pytest.raises(argparse.ArgumentTypeError):
        retention.parse_budgets("half")


def test_window_accuracy_finds_the_turn_inside_page_text() -> None:
    page = "Ben 10:00: Hello there | Ana 10:01: The teacher is ca1led Ines. | Ben 10:02: ok"
    assert retention.window_accuracy("The teacher is called Ines.", page) > 0.9
    assert retention.window_accuracy("Something else entirely", page) < 0.6
    assert retention.search_distance("abc", "xxabcxx") == 0
    assert retention.search_distance("abc", "") == 3


def test_missing_data_is_skipped(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = retention.main(["--data", str(tmp_path / "nowhere"), "--out", str(tmp_path / "r.csv")])
    assert code == 0
    assert "skipped" in capsys.readouterr().err
    assert not (tmp_path / "r.csv").exists()


def test_question_turn_leaves_the_session_as_it_was(tmp_path: Path) -> None:
    """The question is the newest user turn while assembling, then superseded: turns, pages,
    live count, prompts and search are what they were before it."""
    from datetime import UTC, datetime, timedelta

    from optical_memory import AgingPolicy, MemoryManager

    start = datetime(2024, 3, 3, 10, tzinfo=UTC)
    turns = [
        {"role": "user" if i % 2 == 0 else "assistant", "content": f"{text} ({n})", "at": at}
        for n in range(3)
        for i, text in enumerate(LINES)
        if (at := start + timedelta(days=7 * n, minutes=i))
    ]
    asked = start + timedelta(days=30)
    question = "Which studio near the harbour did you pick for pottery?"
    with MemoryManager(
        f"sqlite:///{tmp_path / 'm.db'}",
        target="deepseek-ocr",
        policy=AgingPolicy(keep_last_turns=4),
    ) as mm:
        mm.add_turns(retention.SESSION, turns)
        mm.age(now=asked)
        pages = mm.pages(retention.SESSION)
        assert pages  # some turns are on pages: the replace must not touch them

        def snapshot() -> tuple:
            ctx = mm.assemble(retention.SESSION, budget=600, now=asked, cue=question)
            return (
                mm.turns(retention.SESSION),
                mm.pages(retention.SESSION),
                retention.live_turns(mm),
                ctx.tokens,
                [type(s).__name__ + repr(getattr(s, "turn", None)) for s in ctx.segments],
            )

        def found() -> set[tuple[int, str]]:  # every match: a recall rehearses, ranks may move
            hits = mm.recall(retention.SESSION, question, limit=100)
            return {(r.turn.seq, r.turn.content) for r in hits}

        before, matches = snapshot(), found()
        for _ in range(2):  # the next question sees the same memory
            with retention.question_turn(mm, question, asked) as seq:
                newest = mm.turns(retention.SESSION)[-1]
                assert (newest.seq, newest.role, newest.content) == (seq, "user", question)
                assert retention.live_turns(mm) == before[2] + 1
                ctx = mm.assemble(retention.SESSION, budget=600, now=asked, cue=question)
                shown = [s.turn.seq for s in ctx.segments if hasattr(s, "turn")]
                assert seq in shown  # the protected text is the question
            assert snapshot() == before
            assert found() == matches  # out of search
            assert all(t.content != question for t in mm.turns(retention.SESSION))
            assert [t.content for t in mm.superseded(retention.SESSION)][-1] == question


@pytest.mark.skipif(shutil.which("tesseract") is None, reason="needs the tesseract binary")
def test_retention_question_turn_runs(tmp_path: Path) -> None:
    data = locomo_like(tmp_path / "locomo.json")
    out = tmp_path / "retention.csv"
    cfg = retention.parse_args(
        [
            *("--locomo", str(data), "--longmemeval", "none", "--budgets", "600"),
            *("--targets", "deepseek-ocr", "--readers", "tesseract", "--ocr-scope", "page"),
            *("--crop-check", "0", "--keep-last-turns", "4", "--question-turn"),
            *("--out", str(out), "--quiet"),
        ]
    )
    assert cfg.question_turn
    rows, text = retention.run(cfg)
    assert len(rows) == len(retention.POLICIES) * 2 + 1  # and the window
    for r in rows:
        assert int(r["qa_items"]) == 2 and int(r["evidence"]) == 3  # the question is not evidence
        counts = int(r["as_text"]) + int(r["absent"])
        counts += sum(int(r[f"in_{t}"]) for t in retention.IMAGE_TIER_LABELS)
        assert counts == 3
        assert 0.0 <= float(r["legible_pct"]) <= float(r["present_pct"]) <= 100.0
    assert "--question-turn" in text
