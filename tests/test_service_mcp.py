"""The MCP server through the official SDK's client: over stdio (``optical-memory mcp`` as a
real subprocess) and over streamable HTTP (``/mcp`` of a real ``optical-memory serve``),
scoped by owner (configuration) and by API key (HTTP)."""

from __future__ import annotations

import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

pytest.importorskip("mcp")
pytest.importorskip("fastapi")

from mcp import Client  # noqa: E402
from mcp.client.stdio import StdioServerParameters  # noqa: E402
from service_helpers import MCP_INITIALIZE  # noqa: E402

from benchmarks.service import ServiceProcess  # noqa: E402
from optical_memory import MemoryManager  # noqa: E402
from optical_memory.adapters.service import create_key  # noqa: E402

pytestmark = pytest.mark.slow


def _stdio(db: str, owner: str) -> StdioServerParameters:
    code = "from optical_memory.cli import main; main()"
    return StdioServerParameters(
        command=sys.executable, args=["-c", code, "mcp", "--db", db, "--owner", owner]
    )


def _texts(result) -> list[str]:  # type: ignore[no-untyped-def]
    return [c.text for c in result.content if getattr(c, "type", "") == "text"]


async def test_stdio_tools_remember_recall_read_assemble_and_forget(tmp_path: Path) -> None:
    db = f"sqlite:///{tmp_path / 'mcp.db'}"
    async with Client(_stdio(db, "alice")) as client, Client(_stdio(db, "bob")) as bob:
        names = {t.name for t in (await client.list_tools()).tools}
        assert names == {"remember", "recall", "read_span", "get_context", "forget"}
        for role, text in [
            ("user", "My sister Ines lives in Porto."),
            ("assistant", "Noted: Ines, Porto."),
        ]:
            args = {"session_id": "chat-1", "role": role, "content": text}
            assert not (await client.call_tool("remember", args)).is_error
        r = await client.call_tool("recall", {"session_id": "chat-1", "query": "Porto sister"})
        assert "Ines lives in Porto" in _texts(r)[0]
        span = {"session_id": "chat-1", "first_turn": 2, "last_turn": 2}
        assert "Noted: Ines, Porto." in _texts(await client.call_tool("read_span", span))[0]
        r = await client.call_tool("get_context", {"session_id": "chat-1", "budget": 1000})
        assert _texts(r) == [
            "user: My sister Ines lives in Porto.",
            "assistant: Noted: Ines, Porto.",
        ]
        span = {"session_id": "chat-9", "first_turn": 1, "last_turn": 1}
        assert "nothing is archived" in _texts(await client.call_tool("read_span", span))[0]
        bad = {"session_id": "chat-1", "role": "wizard", "content": "x"}
        r = await client.call_tool("remember", bad)
        assert r.is_error and "InvalidRole" in _texts(r)[0]
        # another owner (its own process): alice's chat-1 is not there to forget or read
        r = await bob.call_tool("forget", {"session_id": "chat-1"})
        assert r.is_error and "UnknownSession" in _texts(r)[0]
        r = await bob.call_tool("get_context", {"session_id": "chat-1"})
        assert r.is_error and "UnknownSession" in _texts(r)[0]
        with MemoryManager(db) as mm:
            assert len(mm.scoped("alice").turns("chat-1")) == 2
        r = await client.call_tool("forget", {"session_id": "chat-1"})
        assert _texts(r) == ["forgot session chat-1: 2 turns"]


async def test_stdio_two_owners_with_the_same_session_id_stay_apart(tmp_path: Path) -> None:
    """Each of the five tools, called by two owners on the same session id, acts on that
    owner's session only; forgetting one leaves the other whole."""
    db = f"sqlite:///{tmp_path / 'mcp.db'}"
    async with Client(_stdio(db, "alice")) as alice, Client(_stdio(db, "bob")) as bob:
        clients = {"alice": alice, "bob": bob}
        said = {"alice": ["I am alice.", "alice rows"], "bob": ["I am bob.", "bob sails", "ok"]}
        for owner, client in clients.items():
            for text in said[owner]:
                args = {"session_id": "chat-1", "role": "user", "content": text}
                r = await client.call_tool("remember", args)
                assert not r.is_error, _texts(r)
        for (owner, client), other in zip(clients.items(), ("bob", "alice"), strict=True):
            r = await client.call_tool("get_context", {"session_id": "chat-1"})
            assert _texts(r) == [f"user: {t}" for t in said[owner]]
            r = await client.call_tool("recall", {"session_id": "chat-1", "query": other})
            assert "nothing found" in _texts(r)[0] and f"I am {other}" not in _texts(r)[0]
            r = await client.call_tool("recall", {"session_id": "chat-1", "query": owner})
            assert f"I am {owner}." in _texts(r)[0]
            span = {"session_id": "chat-1", "first_turn": 1, "last_turn": len(said[owner])}
            text = _texts(await client.call_tool("read_span", span))[0]
            assert all(t in text for t in said[owner]) and other not in text
        r = await alice.call_tool("forget", {"session_id": "chat-1"})
        assert _texts(r) == ["forgot session chat-1: 2 turns"]
        r = await alice.call_tool("get_context", {"session_id": "chat-1"})
        assert r.is_error and "UnknownSession" in _texts(r)[0]
        r = await bob.call_tool("get_context", {"session_id": "chat-1"})
        assert _texts(r) == [f"user: {t}" for t in said["bob"]]
    with MemoryManager(db) as mm:
        assert [t.content for t in mm.scoped("bob").turns("chat-1")] == said["bob"]


@pytest.fixture(scope="module")
def http_service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, dict[str, str]]]:
    db = f"sqlite:///{tmp_path_factory.mktemp('mcp-http') / 'memory.db'}"
    with MemoryManager(db) as mm:
        keys = {o: create_key(mm, o)[0] for o in ("alice", "bob")}
    with ServiceProcess(db, "--age-every", "0") as proc:
        yield proc.url, keys


def _http(url: str, key: str | None) -> Client:
    import httpx2
    from mcp.client.streamable_http import streamable_http_client

    headers = {"authorization": f"Bearer {key}"} if key else {}
    return Client(
        streamable_http_client(url + "/mcp/", http_client=httpx2.AsyncClient(headers=headers))
    )


async def test_streamable_http_tools_act_for_the_keys_owner(
    http_service: tuple[str, dict[str, str]],
) -> None:
    url, keys = http_service
    sid = f"chat-{uuid.uuid4().hex[:6]}"
    async with _http(url, keys["alice"]) as alice:
        r = await alice.call_tool(
            "remember", {"session_id": sid, "role": "user", "content": "Alice's code is 4417."}
        )
        assert not r.is_error, _texts(r)
        r = await alice.call_tool("recall", {"session_id": sid, "query": "code"})
        assert "4417" in _texts(r)[0]
    async with _http(url, keys["bob"]) as bob:
        r = await bob.call_tool("get_context", {"session_id": sid})
        assert r.is_error and "UnknownSession" in _texts(r)[0]
        args = {"session_id": sid, "role": "user", "content": "Bob's code is 9021."}
        assert not (await bob.call_tool("remember", args)).is_error  # the same id, his own
        r = await bob.call_tool("get_context", {"session_id": sid})
        assert _texts(r) == ["user: Bob's code is 9021."]
        r = await bob.call_tool("recall", {"session_id": sid, "query": "code"})
        assert "9021" in _texts(r)[0] and "4417" not in _texts(r)[0]
    async with _http(url, keys["alice"]) as alice:
        r = await alice.call_tool("get_context", {"session_id": sid})
        assert _texts(r) == ["user: Alice's code is 4417."]


def test_streamable_http_refuses_a_request_without_a_valid_key_before_anything_else(
    http_service: tuple[str, dict[str, str]],
) -> None:
    """401 as the MCP authorization spec asks: no session opened, no tools listed."""
    url, keys = http_service
    hello = MCP_INITIALIZE
    accept = {"accept": "application/json, text/event-stream"}
    for auth in ({}, {"authorization": "Bearer om_wrong"}):
        for body in (hello, {"jsonrpc": "2.0", "id": 2, "method": "tools/list"}):
            r = httpx.post(url + "/mcp/", json=body, headers={**accept, **auth})
            assert r.status_code == 401, (auth, body, r.text)
            assert r.json()["error"]["type"] == "NotSignedIn"
            assert r.headers["www-authenticate"] == "Bearer"
            assert "result" not in r.json()  # nothing of the server said
    r = httpx.post(
        url + "/mcp/", json=hello, headers={**accept, "authorization": f"Bearer {keys['alice']}"}
    )
    assert r.status_code == 200 and r.json()["result"]["serverInfo"]["name"]
