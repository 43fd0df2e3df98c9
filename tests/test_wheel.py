"""The built wheel works on its own: migrations, fonts and the package layout ship inside it,
and its ``service`` extra is all the service needs."""

from __future__ import annotations

import subprocess
import sys
import venv
from pathlib import Path

import pytest

from optical_memory.migrations import head_revision

REPO = Path(__file__).resolve().parent.parent

SCRIPT = """
import io, sys
from datetime import datetime, timedelta, timezone
import optical_memory, optical_memory.adapters, optical_memory.migrations
assert "site-packages" in optical_memory.__file__, optical_memory.__file__
from optical_memory import MemoryManager, AgingPolicy
from PIL import Image
url = sys.argv[1]
start = datetime(2023, 1, 1, tzinfo=timezone.utc)
with MemoryManager(url, policy=AgingPolicy(keep_last_turns=2)) as mm:
    mm.add_turns("w", [("user" if i % 2 == 0 else "assistant", "wheel turn %d " % i * 30,
                        start + timedelta(minutes=i)) for i in range(60)])
    report = mm.age(now=start + timedelta(days=3))
    page = mm.pages("w")[0]
    assert page.tier == "base", page
    assert Image.open(io.BytesIO(mm.page_image("w", page.page_id))).size == (1024, 1024)
with MemoryManager(url) as mm:
    assert len(mm.turns("w")) == 60
print("WHEEL-OK", optical_memory.migrations.head_revision())
"""

SERVICE_SCRIPT = """
import sys
from optical_memory import MemoryManager
from optical_memory.adapters.service import create_app
from optical_memory.adapters.service import mcp_server, proxy, web  # noqa: F401
app = create_app(MemoryManager(sys.argv[1]))
assert any(getattr(r, "path", "") == "/v1/chat/completions" for r in app.routes)
print("SERVICE-OK")
"""


@pytest.mark.slow
def test_wheel_installs_in_a_fresh_venv_and_migrates_a_database(tmp_path: Path) -> None:
    dist = tmp_path / "dist"
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(dist), str(REPO)],
        check=True,
        timeout=600,
    )
    wheel = next(dist.glob("optical_memory-*.whl"))
    env_dir = tmp_path / "venv"
    venv.EnvBuilder(with_pip=True).create(env_dir)
    py = env_dir / "bin" / "python"
    subprocess.run([str(py), "-m", "pip", "install", "-q", str(wheel)], check=True, timeout=900)
    db = tmp_path / "wheel.db"
    out = subprocess.run(
        [str(py), "-c", SCRIPT, f"sqlite:///{db}"],
        cwd=tmp_path,  # not the checkout: only the installed wheel can be imported
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr
    # every revision of the checkout ships inside the wheel
    assert f"WHEEL-OK {head_revision()}" in out.stdout
    cli = subprocess.run(
        [str(env_dir / "bin" / "optical-memory"), "db", "upgrade", "--db", f"sqlite:///{db}"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert cli.returncode == 0, cli.stderr
    # The service extra alone brings everything the service imports: its app, proxy, MCP
    # server and web view (the dev extra, which the tests run with, brings more).
    subprocess.run(
        [str(py), "-m", "pip", "install", "-q", f"{wheel}[service]"], check=True, timeout=900
    )
    service = subprocess.run(
        [str(py), "-c", SERVICE_SCRIPT, f"sqlite:///{tmp_path / 'service.db'}"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert service.returncode == 0 and "SERVICE-OK" in service.stdout, service.stderr
