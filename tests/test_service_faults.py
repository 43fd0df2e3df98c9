"""What the service answers when something below it fails or is slow: a forget that cannot
purge yet (503 with Retry-After, and the next write finishes it), an upstream that does not
answer (502 JSON, the conversation stored once), an upstream that compresses (passed on
decoded), a reply still being stored after its answer (what uses the session next waits for
it) or not stored at all (the next request stores it). The app runs in a real uvicorn server
on loopback, in this process, so the manager can be given a short ``busy_timeout`` and the
reply's store can be slowed down."""

from __future__ import annotations

import sqlite3
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

pytest.importorskip("fastapi")
uvicorn = pytest.importorskip("uvicorn")

from helpers import raw_sqlite_bytes  # noqa: E402
from service_helpers import serving  # noqa: E402

from benchmarks.service import free_port  # noqa: E402
from optical_memory import MemoryManager  # noqa: E402
from optical_memory.adapters.service import ServiceConfig, create_key  # noqa: E402


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


# -- the reply is stored beside the answer, not before it -------------------------------------


@pytest.fixture
def proxied(tmp_path: Path) -> Iterator[tuple[MemoryManager, str, Path]]:
    """A manager on a SQLite file with a key for "ana", and a fake upstream's URL."""
    from benchmarks.service import FakeUpstream

    file = tmp_path / "memory.db"
    mm = MemoryManager(f"sqlite:///{file}")
    key, _ = create_key(mm, "ana")
    try:
        with FakeUpstream() as upstream:
            yield mm, key, upstream
    finally:
        mm.close()


def _slow_store(monkeypatch: pytest.MonkeyPatch, seconds: float) -> list[str]:
    """Make the proxy's reply store take ``seconds`` first; the replies stored are listed."""
    from optical_memory.adapters.service import proxy

    real, stored = proxy.store_reply, []

    def slow(memory, session_id, reply, **kw):  # type: ignore[no-untyped-def]
        time.sleep(seconds)
        real(memory, session_id, reply, **kw)
        stored.append(reply["content"])

    monkeypatch.setattr(proxy, "store_reply", slow)
    return stored


def _ask(c: httpx.Client, key: str, sid: str, messages: list[dict[str, str]]) -> httpx.Response:
    r = c.post(
        "/v1/chat/completions",
        json={"model": "m", "messages": messages, "user": sid},
        headers={"authorization": f"Bearer {key}"},
    )
    assert r.status_code == 200, r.text
    return r


def test_a_read_right_after_the_answer_waits_for_its_reply(
    proxied: tuple[MemoryManager, str, object], monkeypatch: pytest.MonkeyPatch
) -> None:
    mm, key, upstream = proxied
    stored = _slow_store(monkeypatch, 0.5)
    config = ServiceConfig(db=mm.url, upstream_url=upstream.url, age_every=0)
    question = [{"role": "user", "content": "Who keeps the lighthouse?"}]
    with serving(mm, config) as url, httpx.Client(base_url=url, timeout=30) as c:
        _ask(c, key, "s", question)
        assert stored == []  # answered while the reply is still being stored
        turns = c.get("/v1/sessions/s/turns", headers={"authorization": f"Bearer {key}"})
        assert [t["role"] for t in turns.json()["turns"]] == ["user", "assistant"]


def test_a_regenerate_sent_at_once_still_finds_the_reply_it_replaces(
    proxied: tuple[MemoryManager, str, object], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The same conversation again (a "regenerate"), sent before the first reply is stored:
    the request waits for it, so the first reply is kept as an earlier version, as it would
    be had it been stored before the answer."""
    mm, key, upstream = proxied
    _slow_store(monkeypatch, 0.5)
    config = ServiceConfig(db=mm.url, upstream_url=upstream.url, age_every=0)
    question = [{"role": "user", "content": "Who keeps the lighthouse?"}]
    with serving(mm, config) as url, httpx.Client(base_url=url, timeout=30) as c:
        _ask(c, key, "s", question)
        _ask(c, key, "s", question)
    ana = mm.scoped("ana")
    assert [(t.role, t.seq) for t in ana.turns("s")] == [("user", 1), ("assistant", 3)]
    assert [t.seq for t in ana.superseded("s")] == [2]


def test_a_reply_still_being_stored_at_shutdown_is_stored(
    proxied: tuple[MemoryManager, str, object], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Shutting down (the app closes its manager, as ``serve``'s does) waits for it."""
    mm, key, upstream = proxied
    stored = _slow_store(monkeypatch, 1.0)
    config = ServiceConfig(db=mm.url, upstream_url=upstream.url, age_every=0)
    with serving(mm, config, own_memory=True) as url, httpx.Client(base_url=url, timeout=30) as c:
        _ask(c, key, "s", [{"role": "user", "content": "Who keeps the lighthouse?"}])
        assert stored == []
    assert stored == [upstream.reply]
    with MemoryManager(mm.url, owner="ana") as after:
        assert [t.role for t in after.turns("s")] == ["user", "assistant"]


def test_a_reply_that_could_not_be_stored_is_stored_by_the_next_request(
    proxied: tuple[MemoryManager, str, object], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The store fails after the answer: the client still has its answer (200), and its
    next request, which carries the reply, stores it once."""
    from optical_memory.adapters.service import proxy
    from optical_memory.errors import StoreBusy

    mm, key, upstream = proxied
    real = proxy.store_reply
    calls: list[int] = []

    def failing_once(*args, **kw):  # type: ignore[no-untyped-def]
        calls.append(1)
        if len(calls) == 1:
            raise StoreBusy("the database stayed locked (simulated)")
        real(*args, **kw)

    monkeypatch.setattr(proxy, "store_reply", failing_once)
    config = ServiceConfig(db=mm.url, upstream_url=upstream.url, age_every=0)
    messages = [{"role": "user", "content": "Who keeps the lighthouse?"}]
    with serving(mm, config) as url, httpx.Client(base_url=url, timeout=30) as c:
        first = _ask(c, key, "s", messages).json()["choices"][0]["message"]
        assert first["content"] == upstream.reply
        messages += [first, {"role": "user", "content": "And who rows the ferry?"}]
        _ask(c, key, "s", messages)
    assert [(t.role, t.content) for t in mm.scoped("ana").turns("s")] == [
        ("user", "Who keeps the lighthouse?"),
        ("assistant", upstream.reply),
        ("user", "And who rows the ferry?"),
        ("assistant", upstream.reply),
    ]


def test_the_web_view_and_mcp_tools_wait_for_a_reply_being_stored(
    proxied: tuple[MemoryManager, str, object], monkeypatch: pytest.MonkeyPatch
) -> None:
    import asyncio

    import httpx2
    from mcp import Client
    from mcp.client.streamable_http import streamable_http_client

    mm, key, upstream = proxied
    stored = _slow_store(monkeypatch, 0.5)
    config = ServiceConfig(db=mm.url, upstream_url=upstream.url, age_every=0)
    question = [{"role": "user", "content": "Who keeps the lighthouse?"}]

    async def context_over_mcp(url: str) -> str:
        http = httpx2.AsyncClient(headers={"authorization": f"Bearer {key}"})
        async with Client(streamable_http_client(url + "/mcp/", http_client=http)) as client:
            r = await client.call_tool("get_context", {"session_id": "s"})
            return " ".join(getattr(c, "text", "") for c in r.content)

    with serving(mm, config) as url, httpx.Client(base_url=url, timeout=30) as c:
        _ask(c, key, "s", question)
        assert stored == []
        with httpx.Client(base_url=url, timeout=30, cookies={"om_key": key}) as web:
            page = web.get("/web/sessions/s/prompt")
        assert page.status_code == 200 and upstream.reply in page.text
        _ask(c, key, "s", [*question, {"role": "assistant", "content": upstream.reply}])
        assert len(stored) == 1  # the second reply is being stored now
        assert asyncio.run(context_over_mcp(url)).count(upstream.reply) == 2
