"""What the service answers when something below it fails: a forget that cannot purge yet
(503 with Retry-After, and the next write finishes it), an upstream that does not answer
(502 JSON, the conversation stored once), an upstream that compresses (passed on decoded). The app runs in a real uvicorn server on loopback,
in this process, so the manager can be given a short ``busy_timeout``."""

from __future__ import annotations

import sqlite3
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

pytest.importorskip("fastapi")
uvicorn = pytest.importorskip("uvicorn")

from helpers import raw_sqlite_bytes  # noqa: E402

from benchmarks.service import free_port  # noqa: E402
from optical_memory import MemoryManager  # noqa: E402
from optical_memory.adapters.service import ServiceConfig, create_app, create_key  # noqa: E402


@contextmanager
def serving(memory: MemoryManager, config: ServiceConfig) -> Iterator[str]:
    """The service's app over ``memory`` in a uvicorn server on a free loopback port."""
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(create_app(memory, config), host="127.0.0.1", port=port, log_level="error")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)


@pytest.fixture
def service(tmp_path: Path) -> Iterator[tuple[str, str, Path, MemoryManager]]:
    """A service on a SQLite file whose proxy points at a closed port; (url, key, file, mm)."""
    file = tmp_path / "memory.db"
    mm = MemoryManager(f"sqlite:///{file}", busy_timeout=0.5)
    key, _ = create_key(mm, "ana")
    closed = f"http://127.0.0.1:{free_port()}/v1"  # nothing listens there
    config = ServiceConfig(db=str(file), upstream_url=closed, age_every=0)
    try:
        with serving(mm, config) as url:
            yield url, key, file, mm
    finally:
        mm.close()


def _pending_notes(file: Path) -> int:
    with sqlite3.connect(file) as conn:
        return conn.execute("SELECT COUNT(*) FROM om_pending_purges").fetchone()[0]


def test_a_forget_that_cannot_purge_yet_is_503_and_the_next_write_finishes_it(
    service: tuple[str, str, Path, MemoryManager],
) -> None:
    url, key, file, _ = service
    marker = f"OMSECRET{uuid.uuid4().hex}"
    headers = {"authorization": f"Bearer {key}"}
    with httpx.Client(base_url=url, headers=headers, timeout=30) as c:
        for sid, text in (("kept", "nothing to see here"), ("secret", marker)):
            turns = [{"role": "user", "content": f"{text} " * 20}] * 20
            assert c.post(f"/v1/sessions/{sid}/turns", json={"turns": turns}).status_code == 201
        reader = sqlite3.connect(file, isolation_level=None, check_same_thread=False)
        reader.execute("BEGIN")
        reader.execute("SELECT COUNT(*) FROM om_turns").fetchone()  # an old snapshot, held
        try:
            r = c.delete("/v1/sessions/secret")
            assert r.status_code == 503, r.text
            assert r.headers["retry-after"].isdigit()
            error = r.json()["error"]
            assert error["type"] == "ForgetIncomplete"
            assert (
                "next write" in error["message"]
                and "a DELETE again answers 404" in (error["message"])
            )
            assert marker.encode() in raw_sqlite_bytes(file)  # as it says: not purged yet
            assert _pending_notes(file) == 1
            assert c.get("/v1/sessions/secret/turns").status_code == 404  # but deleted
            again = c.delete("/v1/sessions/secret")
            assert again.status_code == 404 and again.json()["error"]["type"] == "UnknownSession"
        finally:
            reader.execute("COMMIT")
            reader.close()
        r = c.post("/v1/sessions/kept/turns", json={"role": "user", "content": "a later write"})
        assert r.status_code == 201
    assert marker.encode() not in raw_sqlite_bytes(file)
    assert _pending_notes(file) == 0


def test_an_upstream_that_does_not_answer_is_502_json_and_the_turns_are_stored_once(
    service: tuple[str, str, Path, MemoryManager],
) -> None:
    url, key, _, _ = service
    sid = f"chat-{uuid.uuid4().hex[:8]}"
    headers = {"authorization": f"Bearer {key}", "x-memory-session": sid}
    messages = [{"role": "user", "content": "Is anyone there?"}]
    with httpx.Client(base_url=url, headers=headers, timeout=30) as c:
        for stream in (False, True, False):  # the client tries again: nothing stored twice
            r = c.post(
                "/v1/chat/completions", json={"model": "m", "messages": messages, "stream": stream}
            )
            assert r.status_code == 502, r.text
            assert r.headers["content-type"].startswith("application/json")
            error = r.json()["error"]
            assert error["type"] == "UpstreamUnavailable" and "127.0.0.1" in error["message"]
        turns = c.get(f"/v1/sessions/{sid}/turns").json()["turns"]
    assert [(t["role"], t["content"]) for t in turns] == [("user", "Is anyone there?")]


def test_a_compressing_upstream_is_relayed_decoded_and_its_replies_recorded(
    tmp_path: Path,
) -> None:
    """An upstream that gzips its answers (many do, for clients that accept it): the proxy
    passes the answer on decoded, without the ``content-encoding`` it no longer has, streamed
    or not, and records each reply once."""
    from benchmarks.service import FakeUpstream

    file = tmp_path / "memory.db"
    mm = MemoryManager(f"sqlite:///{file}")
    key, _ = create_key(mm, "ana")
    sid = f"chat-{uuid.uuid4().hex[:8]}"
    headers = {"authorization": f"Bearer {key}", "x-memory-session": sid}
    try:
        with FakeUpstream(gzip=True) as upstream:
            config = ServiceConfig(db=str(file), upstream_url=upstream.url, age_every=0)
            with serving(mm, config) as url, httpx.Client(base_url=url, timeout=30) as c:
                messages = [{"role": "user", "content": "Who keeps the lighthouse?"}]
                with c.stream(
                    "POST",
                    "/v1/chat/completions",
                    json={"model": "m", "messages": messages, "stream": True},
                    headers=headers,
                ) as r:
                    assert r.status_code == 200 and "content-encoding" not in r.headers
                    raw = b"".join(r.iter_raw())
                assert raw.startswith(b"data: ") and raw.rstrip().endswith(b"data: [DONE]")
                messages += [
                    {"role": "assistant", "content": upstream.reply},
                    {"role": "user", "content": "And who rows the ferry?"},
                ]
                r = c.post(
                    "/v1/chat/completions",
                    json={"model": "m", "messages": messages},
                    headers={**headers, "accept-encoding": "identity"},
                )
                assert "content-encoding" not in r.headers
                assert r.json()["choices"][0]["message"]["content"] == upstream.reply
        assert [(t.role, t.content) for t in mm.scoped("ana").turns(sid)] == [
            ("user", "Who keeps the lighthouse?"),
            ("assistant", upstream.reply),
            ("user", "And who rows the ferry?"),
            ("assistant", upstream.reply),
        ]
    finally:
        mm.close()
