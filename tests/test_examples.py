"""Every example runs offline by default (a recording fake model, a simulated clock) and shows
old turns reaching the model as page images."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
LINE = (
    "Question {i}: we went over the harbour tide tables and the lighthouse logs, and the ferry "
    "schedule for pier {i}; the 7:40 now leaves from pier four, the 9:10 from pier two, the "
    "fees went up by a third and the harbour master wants a letter about the tide gauge."
)


def run_example(name: str, tmp_path: Path, *args: str, lines: int = 16) -> str:
    text = "\n".join(LINE.format(i=i) for i in range(lines)) + "\n"
    env = {k: v for k, v in os.environ.items() if not k.startswith("OPENAI_")}
    env["OPENAI_API_KEY"] = "must-not-be-used"
    env["OPENAI_BASE_URL"] = "http://127.0.0.1:9/v1"  # nothing listens: a real call would fail
    done = subprocess.run(
        [sys.executable, str(REPO / "examples" / f"{name}.py"), "--db",
         str(tmp_path / f"{name}.db"), *args],
        input=text, capture_output=True, text=True, timeout=240, env=env, cwd=tmp_path,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


def pages_shown(out: str, marker: str) -> int:
    last = [line for line in out.splitlines() if "(offline model)" in line][-1]
    return int(last.split(marker)[0].split()[-1])


def test_openai_backend_runs_offline(tmp_path: Path) -> None:
    out = run_example("openai_backend", tmp_path, "--target", "deepseek-ocr", "--budget", "900")
    assert out.count("assistant> (offline model)") == 16
    assert pages_shown(out, " page images") > 0


@pytest.mark.slow
def test_langchain_agent_runs_offline(tmp_path: Path) -> None:
    # 16 lines at 1,500 fit as text, which comes first when everything fits: 1,000 needs pages.
    out = run_example("langchain_agent", tmp_path, "--target", "deepseek-ocr", "--budget", "1000")
    assert out.count("assistant> (offline model)") == 16
    assert pages_shown(out, " page images") > 0


def test_local_vlm_runs_offline(tmp_path: Path) -> None:
    out = run_example("local_vlm", tmp_path, "--budget", "700", "--keep-last-turns", "4")
    assert out.count("model> (offline model)") == 16
    assert pages_shown(out, " page images and") > 0
