"""The MCP server through the official SDK's client: over stdio (``optical-memory mcp`` as a
real subprocess) and over streamable HTTP (``/mcp`` of a real ``optical-memory serve``),
scoped by owner (configuration) and by API key (HTTP)."""

from __future__ import annotations

import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

pytest.importorskip("mcp")
pytest.importorskip("fastapi")

from mcp import Client  # noqa: E402
from mcp.client.stdio import StdioServerParameters  # noqa: E402

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
    """Needs owner namespaces (issue 18, point 1) in the store."""
    db = f"sqlite:///{tmp_path / 'mcp.db'}"
    async with Client(_stdio(db, "alice")) as alice, Client(_stdio(db, "bob")) as bob:
        clients = {"alice": alice, "bob": bob}
        for owner, client in clients.items():
            args = {"session_id": "chat-1", "role": "user", "content": f"I am {owner}."}
            r = await client.call_tool("remember", args)
            assert not r.is_error, _texts(r)
        for (owner, client), other in zip(clients.items(), ("bob", "alice"), strict=True):
            r = await client.call_tool("get_context", {"session_id": "chat-1"})
            assert _texts(r) == [f"user: I am {owner}."]
            r = await client.call_tool("recall", {"session_id": "chat-1", "query": other})
            assert f"I am {other}" not in _texts(r)[0]


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
    async with _http(url, "om_wrong") as stranger:
        r = await stranger.call_tool("get_context", {"session_id": sid})
        assert r.is_error and "NotSignedIn" in _texts(r)[0]
