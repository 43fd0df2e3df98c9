"""What the service answers at its edges, found by a hostile pass: every error is JSON in the
library's shape (the framework's own 400/404/405 too), a malformed chat-completions message
is a 422 that writes nothing, a session id with ``/`` or past ASCII is the same session on
every path, text the store keeps exactly (a lone surrogate in metadata) is served as valid
JSON, and a stream that splits a character or breaks never breaks the client or stores half
an answer as a whole one. The app runs in a real uvicorn server on loopback, in this process.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import httpx
import pytest

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")

from service_helpers import MCP_INITIALIZE, ScriptedUpstream, delta, serving, sse  # noqa: E402

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


def _call(call: dict[str, object]) -> dict[str, object]:
    return {"role": "assistant", "content": None, "tool_calls": [call]}


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
        [{"role": "user", "content": [{"type": "text", "text": {"a": 1}}]}],
        [{"role": "user", "content": "x", "name": 5}],
        [{"role": "tool", "tool_call_id": 5, "content": "r"}],
        [_call({"id": {"a": 1}, "type": "function", "function": {"name": "f", "arguments": "{}"}})],
        [_call({"id": "c1", "type": "function", "function": {"name": ["x"], "arguments": "{}"}})],
        [_call({"id": "c1", "type": "function", "function": {"name": "f", "arguments": 5}})],
        [_call({"id": "c1", "type": "function", "function": "f"})],
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


def test_a_proxy_body_that_cannot_be_read_is_a_400_as_on_every_route(env: Env) -> None:
    deep = b'{"messages": [{"role": "user", "content": "hi"}], "user": "deep", "x": '
    deep += b"[" * 100_000 + b"]" * 100_000 + b"}"
    with env.client() as c:
        for body, says in ((deep, "nested too deeply"), (b"{not json", "not valid JSON")):
            r = c.post(
                "/v1/chat/completions", content=body, headers={"content-type": "application/json"}
            )
            assert says in _error(r, 400, "InvalidInput")
        json_type = {"content-type": "application/json"}
        r = c.post(f"/v1/sessions/{_sid()}/turns", content=b"{not json", headers=json_type)
        _error(r, 400, "InvalidInput")
        turn = json.dumps({"role": "user", "content": "hi"})
        r = c.post(
            f"/v1/sessions/{_sid()}/turns", content=turn, headers={"content-type": "text/plain"}
        )
        assert "Content-Type: application/json" in _error(r, 400, "InvalidInput")
        assert c.get("/v1/sessions").json()["sessions"] == []


def test_an_unknown_target_header_is_refused_before_anything_is_stored(env: Env) -> None:
    sid = _sid()
    with env.client() as c:
        body = {"model": "m", "messages": [{"role": "user", "content": "q1"}], "user": sid}
        r = c.post("/v1/chat/completions", json=body, headers={"x-memory-target": "no-such"})
        _error(r, 422, "UnknownTarget")
        assert c.get(f"/v1/sessions/{sid}/turns").status_code == 404
        assert env.upstream.requests == []


@pytest.mark.parametrize("stream", [False, True])
def test_the_upstreams_headers_come_back_with_its_answer(env: Env, stream: bool) -> None:
    """Rate limits, request ids and ``Retry-After`` reach the client (the ``openai`` client
    backs off by them), whether the upstream answered or refused."""
    env.upstream.headers = {"x-request-id": "req-7", "x-ratelimit-remaining-requests": "41"}
    with env.client() as c:
        for status in (200, 429):
            env.upstream.status = status
            if status == 429:
                env.upstream.headers["retry-after"] = "7"
            env.upstream.script = sse(delta("ok", "stop"), "[DONE]")
            body = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "user": _sid()}
            r = c.post("/v1/chat/completions", json={**body, "stream": stream})
            assert r.status_code == status
            if stream and status == 200:
                continue  # the scripted stream sends no extra headers
            assert r.headers["x-request-id"] == "req-7", r.headers
            assert r.headers["x-ratelimit-remaining-requests"] == "41"
            assert r.headers.get("retry-after") == ("7" if status == 429 else None)
            assert len(r.headers.get_list("date")) == 1  # the service's own, not the upstream's


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


def test_events_of_other_shapes_pass_unchanged_and_the_reply_is_still_stored(env: Env) -> None:
    """An upstream may send keep-alives, comments, events for other choices or shapes the
    proxy does not know: the stream passes byte for byte, and what it can read is stored."""
    sid = _sid()
    env.upstream.script = [
        *sse(delta("a "), "[1,2]", '"ping"', "42", {"choices": ["x"]}, {"choices": {"a": 1}}),
        b": a comment\n\n",
        *sse(
            {"choices": [{"index": 0, "delta": "hi"}]},
            {
                "choices": [
                    {"index": 0, "delta": {"tool_calls": [{"index": None, "function": "f"}]}}
                ]
            },
            {"choices": [{"index": 0, "delta": {"tool_calls": ["x", {"function": {"name": 5}}]}}]},
            delta("b", "stop"),
            "[DONE]",
        ),
    ]
    status, got = _stream(env, sid, "go on")
    assert status == 200 and got == b"".join(env.upstream.script)
    assert _stored(env, sid) == [("user", "go on"), ("assistant", "a b")]


def test_a_stream_whose_lines_end_in_carriage_returns_is_stored(env: Env) -> None:
    """SSE lines may end in CR, LF or CRLF."""
    for end in (b"\r", b"\r\n"):
        sid = _sid()
        env.upstream.script = [
            e.replace(b"\n\n", end + end) for e in sse(delta("x"), delta("y", "stop"), "[DONE]")
        ]
        status, got = _stream(env, sid, "which ending?")
        assert status == 200 and got == b"".join(env.upstream.script)
        assert _stored(env, sid) == [("user", "which ending?"), ("assistant", "xy")]


def test_a_streamed_refusal_is_stored_as_the_whole_answer_would_be(env: Env) -> None:
    sid = _sid()
    refusal = {"index": 0, "delta": {"refusal": "I can't help with that."}, "finish_reason": None}
    env.upstream.script = sse({"choices": [refusal]}, delta("", "stop"), "[DONE]")
    status, _ = _stream(env, sid, "do something bad")
    assert status == 200
    assert _stored(env, sid) == [
        ("user", "do something bad"),
        ("assistant", "I can't help with that."),
    ]


def test_a_service_without_keys_answers_only_requests_for_a_loopback_host(
    tmp_path: Path,
) -> None:
    """DNS rebinding: a web page the user opens may point a name of its own at 127.0.0.1;
    its requests name that host (and its origin), and get 421 on every path."""
    file = tmp_path / "open.db"
    with MemoryManager(f"sqlite:///{file}") as mm:
        mm.scoped("ana").add_turn("diary", "user", "my bank PIN is 4417")
        config = ServiceConfig(db=str(file), auth=False, owner="ana", age_every=0)
        with serving(mm, config) as url, httpx.Client(base_url=url, timeout=30) as c:
            port = url.rsplit(":", 1)[1]
            assert c.get("/v1/sessions/diary/turns").status_code == 200
            for host in (f"localhost:{port}", f"[::1]:{port}", "127.0.0.1"):
                assert c.get("/v1/sessions", headers={"host": host}).status_code == 200, host
            ok_origin = {"origin": f"http://localhost:{port}"}
            assert c.get("/v1/sessions", headers=ok_origin).status_code == 200
            evil_host = {"host": f"evil.example:{port}"}
            evil_origin = {"origin": f"http://evil.example:{port}"}
            for headers in (evil_host, evil_origin, {**evil_host, **evil_origin}):
                for method, path in (
                    ("GET", "/v1/sessions/diary/turns"),
                    ("GET", "/web/sessions/diary"),
                    ("POST", "/mcp/"),
                    ("DELETE", "/v1/sessions/diary"),
                ):
                    r = c.request(method, path, headers=headers)
                    _error(r, 421, "MisdirectedRequest")
            assert [t.content for t in mm.scoped("ana").turns("diary")] == ["my bank PIN is 4417"]


def test_mcp_over_http_answers_for_any_host_name_when_keys_guard_it(env: Env) -> None:
    """Behind a reverse proxy the public host name is forwarded: with keys on, MCP answers
    for it as /v1 does (the MCP SDK's loopback-only Host list refused it with 421)."""
    init = MCP_INITIALIZE
    headers = {"host": "memory.example.com", "accept": "application/json, text/event-stream"}
    with env.client() as c:
        assert c.get("/v1/sessions", headers=headers).status_code == 200
        r = c.post("/mcp/", json=init, headers=headers)
        assert r.status_code == 200, r.text
        assert r.json()["result"]["serverInfo"]["name"] == "optical-memory"


def test_the_web_view_reads_its_own_prefix_as_sent_and_names_a_bad_budget(env: Env) -> None:
    env.mm.add_turn("b1", "user", "hello")
    with env.client() as c:
        c.cookies.set(SESSION_COOKIE, env.key)
        assert c.get("/web/sessions/b1").status_code == 200
        for path in ("/web/sessions%2Fb1", "/web/%73essions/b1"):
            assert c.get(path).status_code == 404, path
        for budget in ("abc", "1e3", "4096.0", "9" * 5000, "-5"):
            r = c.get("/web/sessions/b1/prompt", params={"budget": budget})
            assert r.status_code == 422 and f"got &#x27;{budget[:20]}" in r.text, (budget, r.text)


def test_the_web_view_opens_sessions_named_with_dots_only(env: Env) -> None:
    """A browser resolves ``.`` and ``..`` (and ``%2E``) path segments away: the links to
    such sessions must still reach them, as a browser follows them."""
    import re
    from urllib.parse import urljoin

    for sid in (".", "..", "..."):
        env.mm.add_turn(sid, "user", f"hello from {sid}")
    with httpx.Client(base_url=env.url, cookies={SESSION_COOKIE: env.key}, timeout=30) as c:
        listing = c.get("/web")
        hrefs = re.findall(r"class='session' href='([^']+)'", listing.text)
        assert len(hrefs) == 3, listing.text
        for href in hrefs:
            url = urljoin(env.url + "/web", href)  # as a browser resolves it
            page = c.get(url)
            assert page.status_code == 200, (href, page.text[:200])
            (form,) = re.findall(r"action='([^']+)'", page.text)
            prompt = c.get(urljoin(url, form), params={"budget": "2000"})
            assert prompt.status_code == 200 and "hello from" in prompt.text, href


@pytest.mark.parametrize("stream", [False, True])
def test_a_session_forgotten_while_its_answer_is_on_the_way_stays_forgotten(
    env: Env, stream: bool
) -> None:
    """The answer to a forgotten conversation is not stored: storing it would bring the
    session back, holding the answer to what its user asked to forget."""
    sid = _sid()
    env.upstream.hold = threading.Event()
    env.upstream.script = sse(delta("your secret is ", None), delta("4711", "stop"), "[DONE]")
    seen = len(env.upstream.requests)
    got: dict[str, int] = {}

    def ask() -> None:
        body = {"model": "m", "messages": [{"role": "user", "content": "my secret is 4711"}]}
        with env.client() as c:
            r = c.post("/v1/chat/completions", json={**body, "user": sid, "stream": stream})
            got["status"] = r.status_code

    asking = threading.Thread(target=ask)
    asking.start()
    try:
        deadline = time.monotonic() + 30
        while len(env.upstream.requests) == seen:  # the question is stored and forwarded
            assert time.monotonic() < deadline
            time.sleep(0.01)
        with env.client() as c:
            r = c.delete(f"/v1/sessions/{sid}")
            assert r.status_code == 200 and r.json()["turns_deleted"] == 1
    finally:
        env.upstream.hold.set()
        asking.join(30)
    assert got["status"] == 200  # the client still gets its answer
    with env.client() as c:
        assert c.get(f"/v1/sessions/{sid}/turns").status_code == 404
        assert sid not in [s["session_id"] for s in c.get("/v1/sessions").json()["sessions"]]
