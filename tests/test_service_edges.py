"""What the service answers at its edges, found by a hostile pass: every error is JSON in the
library's shape (the framework's own 400/404/405 too), a malformed chat-completions message
is a 422 that writes nothing, a session id with ``/`` or past ASCII is the same session on
every path, text the store keeps exactly (a lone surrogate in metadata) is served as valid
JSON, and a stream that splits a character or breaks never breaks the client or stores half
an answer as a whole one. The app runs in a real uvicorn server on loopback, in this process.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import httpx
import pytest

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")

from service_helpers import ScriptedUpstream, delta, serving, sse  # noqa: E402

from optical_memory import MemoryManager  # noqa: E402
from optical_memory.adapters.service import ServiceConfig, create_key  # noqa: E402
from optical_memory.adapters.service.app import SESSION_COOKIE  # noqa: E402


class Env:
    def __init__(self, url: str, key: str, mm: MemoryManager, upstream: ScriptedUpstream):
        self.url, self.key, self.mm, self.upstream = url, key, mm.scoped("ana"), upstream

    def client(self) -> httpx.Client:
        headers = {"authorization": f"Bearer {self.key}"}
        return httpx.Client(base_url=self.url, headers=headers, timeout=30)


@pytest.fixture
def env(tmp_path: Path) -> Iterator[Env]:
    file = tmp_path / "memory.db"
    mm = MemoryManager(f"sqlite:///{file}")
    key, _ = create_key(mm, "ana")
    try:
        with ScriptedUpstream() as upstream:
            config = ServiceConfig(db=str(file), upstream_url=upstream.url, age_every=0)
            with serving(mm, config) as url:
                yield Env(url, key, mm, upstream)
    finally:
        mm.close()


def _sid() -> str:
    return f"chat-{uuid.uuid4().hex[:8]}"


def _error(r: httpx.Response, status: int, name: str) -> str:
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/json"), r.headers
    body = r.json()["error"]
    assert body["type"] == name and body["message"], body
    return str(body["message"])


def test_what_the_framework_answers_itself_is_json_in_the_librarys_shape(env: Env) -> None:
    with env.client() as c:
        _error(c.get("/v1/no/such/endpoint"), 404, "NotFound")
        _error(c.put("/v1/sessions"), 405, "MethodNotAllowed")
        for body in (b"[" * 100_000 + b"]" * 100_000, b'{"role": "user", "content": "\xff"}'):
            r = c.post(
                f"/v1/sessions/{_sid()}/turns",
                content=body,
                headers={"content-type": "application/json"},
            )
            assert r.status_code in (400, 422), r.text
            assert r.json()["error"]["type"] == "InvalidInput"
        assert c.get("/v1/sessions").json()["sessions"] == []


@pytest.mark.parametrize(
    "messages",
    [
        [1],
        [None],
        [{"role": "bogus", "content": "x"}],
        [{"content": "x"}],
        [{"role": ["user"], "content": "x"}],
        [{"role": "user", "content": 5}],
        [{"role": "assistant", "content": "x", "tool_calls": 5}],
        [{"role": "user", "content": "ok"}, 7],
    ],
)
def test_a_malformed_chat_message_is_a_422_and_nothing_is_stored(
    env: Env, messages: list[object]
) -> None:
    sid = _sid()
    with env.client() as c:
        r = c.post("/v1/chat/completions", json={"model": "m", "messages": messages, "user": sid})
        _error(r, 422, "InvalidInput")
        assert c.get(f"/v1/sessions/{sid}/turns").status_code == 404


def test_a_proxy_body_nested_too_deeply_is_a_422(env: Env) -> None:
    deep = b'{"messages": [{"role": "user", "content": "hi"}], "user": "deep", "x": '
    deep += b"[" * 100_000 + b"]" * 100_000 + b"}"
    with env.client() as c:
        r = c.post(
            "/v1/chat/completions", content=deep, headers={"content-type": "application/json"}
        )
        assert "nested too deeply" in _error(r, 422, "InvalidInput")


def test_a_lone_surrogate_in_metadata_is_kept_exactly_and_served_as_valid_json(env: Env) -> None:
    """The store keeps metadata exactly, a lone surrogate included (JSON can escape one);
    every endpoint that returns it answers valid JSON that reads back to the same string."""
    sid = _sid()
    meta = {"k": "\udfff", "\ud800": "key", "note": "café"}
    turn = {"role": "user", "content": "ok", "metadata": meta}
    body = json.dumps(turn).encode()  # ASCII, the surrogates escaped
    with env.client() as c:
        r = c.post(
            f"/v1/sessions/{sid}/turns", content=body, headers={"content-type": "application/json"}
        )
        assert r.status_code == 201, r.text
        for path in ("turns", "span?first_turn=1&last_turn=1"):
            r = c.get(f"/v1/sessions/{sid}/{path}")
            assert r.status_code == 200, r.text
            assert json.loads(r.content)["turns"][0]["metadata"] == meta
        assert c.get(f"/v1/sessions/{sid}/context").status_code == 200
    assert env.mm.turns(sid)[0].metadata == meta


def test_a_session_id_with_a_slash_is_reachable_on_every_path_and_can_be_forgotten(
    env: Env,
) -> None:
    sid = f"team/{uuid.uuid4().hex[:6]}/chat"
    ask = {"model": "m", "messages": [{"role": "user", "content": "hello"}], "user": sid}
    with env.client() as c:
        assert c.post("/v1/chat/completions", json=ask).status_code == 200
        for path in (quote(sid, safe=""), sid):  # %2F or a plain slash: the same session
            turns = c.get(f"/v1/sessions/{path}/turns").json()["turns"]
            assert [t["content"] for t in turns] == ["hello", "hi"]
            assert c.get(f"/v1/sessions/{path}/context").status_code == 200
            assert c.get(f"/v1/sessions/{path}/pages").json()["pages"] == []
        web = httpx.Client(base_url=env.url, cookies={SESSION_COOKIE: env.key}, timeout=30)
        with web:
            listing = web.get("/web")
            assert listing.status_code == 200 and quote(sid, safe="") in listing.text
            page = web.get(f"/web/sessions/{quote(sid, safe='')}")
            assert page.status_code == 200 and "Not found" not in page.text
            r = web.get(f"/web/sessions/{quote(sid, safe='')}/pages/999999")
            assert r.status_code == 404
        assert c.delete(f"/v1/sessions/{quote(sid, safe='')}").status_code == 200
        _error(c.get(f"/v1/sessions/{sid}/turns"), 404, "UnknownSession")


def test_a_path_that_is_not_utf8_once_decoded_is_a_400_and_names_no_session(env: Env) -> None:
    """``%FF`` and ``%FE`` would both read as U+FFFD: two ids, one session."""
    with env.client() as c:
        for path in ("/v1/sessions/a%FF/turns", "/v1/sessions/a%FE/turns", "/web/sessions/%C3"):
            r = c.post(path, json={"role": "user", "content": "x"})
            assert "not UTF-8" in _error(r, 400, "InvalidInput")
        assert c.get("/v1/sessions").json()["sessions"] == []
        ok = c.post(f"/v1/sessions/{quote('a€')}/turns", json={"role": "user", "content": "x"})
        assert ok.status_code == 201 and c.get("/v1/sessions/a%E2%82%AC/turns").status_code == 200


def test_the_web_view_opens_each_session_whatever_its_id_ends_with(env: Env) -> None:
    """Ids that end like one of the web view's own paths (``/prompt``, ``/pages/1``) open
    their own session from the links it makes, not a page of a shorter id."""
    ids = ["notes", "notes/prompt", "a/pages/1", "t/pages/1/image", "plain"]
    with env.client() as c:
        for sid in ids:
            r = c.post(
                f"/v1/sessions/{quote(sid, safe='')}/turns",
                json={"role": "user", "content": f"in {sid}"},
            )
            assert r.status_code == 201, r.text
    with httpx.Client(base_url=env.url, cookies={SESSION_COOKIE: env.key}, timeout=30) as web:
        listing = web.get("/web").text
        for sid in ids:
            link = f"/web/sessions/{quote(sid, safe='')}"
            assert f"href='{link}'" in listing
            page = web.get(link)
            assert page.status_code == 200 and f"<h1>Session {sid}</h1>" in page.text, sid
            prompt = web.get(f"{link}/prompt", params={"budget": 2000})
            assert prompt.status_code == 200 and f"in {sid}<" in prompt.text, sid
        assert web.get("/web/sessions/plain/nothing/here").status_code == 404


def test_a_session_named_in_the_header_past_ascii_is_the_same_session_everywhere(
    env: Env,
) -> None:
    sid = f"café-{uuid.uuid4().hex[:6]}"
    first = [{"role": "user", "content": "one"}]
    with env.client() as c:
        r = c.post(
            "/v1/chat/completions",
            json={"model": "m", "messages": first},
            headers={"x-memory-session": sid.encode()},  # UTF-8 bytes, as HTTP carries them
        )
        assert r.status_code == 200, r.text
        r = c.post(
            "/v1/chat/completions",
            json={
                "model": "m",
                "user": sid,
                "messages": [
                    *first,
                    r.json()["choices"][0]["message"],
                    {"role": "user", "content": "two"},
                ],
            },
        )
        assert r.status_code == 200, r.text
        assert [s["session_id"] for s in c.get("/v1/sessions").json()["sessions"]] == [sid]
        r = c.post(
            "/v1/chat/completions",
            json={"model": "m", "messages": first},
            headers={"x-memory-session": b"\xff\xfe"},
        )
        assert "UTF-8" in _error(r, 422, "InvalidInput")


def _stream(env: Env, sid: str, content: str) -> tuple[int, bytes]:
    """A streamed completion through the proxy: its status and every byte the client got
    (a broken stream ends where it broke)."""
    with env.client() as c:
        body = {
            "model": "m",
            "messages": [{"role": "user", "content": content}],
            "user": sid,
            "stream": True,
        }
        got = b""
        with c.stream("POST", "/v1/chat/completions", json=body) as r:
            try:
                for chunk in r.iter_raw():
                    got += chunk
            except httpx.HTTPError:
                pass  # the stream broke: what came before it stays
            return r.status_code, got


def _stored(env: Env, sid: str) -> list[tuple[str, str]]:
    with env.client() as c:
        c.get(f"/v1/sessions/{sid}/turns")  # waits for a reply still being stored
    return [(t.role, t.content) for t in env.mm.turns(sid)]


def test_a_character_split_between_two_events_is_relayed_and_stored_whole(env: Env) -> None:
    """Python's ``json`` writes 😀 as two escaped surrogates; an upstream may split them
    between two events. The client gets the stream unchanged, to its [DONE], and the reply
    is stored as the one character."""
    sid = _sid()
    env.upstream.script = sse(delta("smile "), delta("\ud83d"), delta("\ude00", "stop"), "[DONE]")
    status, got = _stream(env, sid, "show me a smile")
    assert status == 200 and got == b"".join(env.upstream.script)
    assert _stored(env, sid) == [("user", "show me a smile"), ("assistant", "smile 😀")]


def test_a_reply_that_is_not_text_is_not_stored_and_the_stream_still_ends(env: Env) -> None:
    sid = _sid()
    env.upstream.script = sse(delta("broken \ud800 text", "stop"), "[DONE]")
    status, got = _stream(env, sid, "say something odd")
    assert status == 200 and got.rstrip().endswith(b"data: [DONE]")
    assert _stored(env, sid) == [("user", "say something odd")]


def test_a_stream_cut_before_its_answer_finished_stores_no_reply(env: Env) -> None:
    """The client's next request carries what it kept of the answer: the memory does not
    guess, and stores no half answer as a whole one."""
    sid = _sid()
    env.upstream.script = sse(delta("the first half of"))
    env.upstream.cut = True
    status, got = _stream(env, sid, "tell me everything")
    assert status == 200 and b"the first half of" in got and b"[DONE]" not in got
    assert _stored(env, sid) == [("user", "tell me everything")]


def test_a_finished_answer_whose_done_never_came_is_stored(env: Env) -> None:
    sid = _sid()
    env.upstream.script = sse(delta("all of "), delta("it", "stop"))
    status, got = _stream(env, sid, "tell me everything")
    assert status == 200 and b"[DONE]" not in got
    assert _stored(env, sid) == [("user", "tell me everything"), ("assistant", "all of it")]
