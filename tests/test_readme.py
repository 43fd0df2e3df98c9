"""The README's quick start shows both the library and the service, and its service block
runs as written: a key, a real ``serve`` process, one turn stored and the context read back."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks.service import free_port

README = (Path(__file__).resolve().parent.parent / "README.md").read_text()
QUICK_START = README.split("## Quick start", 1)[1].split("\n## ", 1)[0]
BLOCKS = re.findall(r"```bash\n(.*?)```", QUICK_START, re.S)


def test_the_quick_start_shows_the_library_and_the_service() -> None:
    demo = [b for b in BLOCKS if "optical-memory demo" in b]
    service = [b for b in BLOCKS if "optical-memory serve" in b]
    assert demo and "pip install -q ." in demo[0]
    assert service and "keys create" in service[0] and "/context?" in service[0]
    assert any("python -m pytest" in b for b in BLOCKS)  # and how to run the tests


@pytest.mark.slow
def test_the_quick_starts_service_block_runs_as_written(tmp_path: Path) -> None:
    pytest.importorskip("fastapi")
    [block] = [b for b in BLOCKS if "optical-memory serve" in b]
    port = free_port()
    lines = [line for line in block.splitlines() if "pip install" not in line]  # installed
    script = "\n".join(lines).replace(".venv/bin/", f"{Path(sys.executable).parent}/")
    script = script.replace("8000", str(port))
    done = subprocess.run(
        ["bash", "-c", f"trap 'kill $(jobs -p) 2>/dev/null' EXIT\nset -e\n{script}"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert '"seq":1' in out.replace(" ", "")  # the turn stored
    assert out.count("Book the Lisbon flight for the 15th.") == 2  # and in the context
    assert '"role":"user"' in out.replace(" ", "")
