"""The OpenAI-style adapter: chat-completions messages out, incoming messages stored once.

The messages are checked against the ``openai`` package's own request types, strictly (no key
the type does not declare), and posted with the real ``openai`` client to a local HTTP server
that checks them again and answers with a valid chat completion.
"""

from __future__ import annotations

import asyncio
import base64
import types
import typing
from collections.abc import Iterable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import openai
import pytest
import typing_extensions
from chat_server import RecordingChatServer
from openai.types.chat import ChatCompletionMessageParam
from pydantic import TypeAdapter

from optical_memory import MEMORY_INTRO, AgingPolicy, MemoryManager, UnknownSession
from optical_memory.adapters.openai import (
    openai_message_to_turn,
    record_openai_messages,
    to_openai_messages,
)

FILLER = "The survey team logged the river gauge at dawn and again at dusk. " * 5
MESSAGE = TypeAdapter(ChatCompletionMessageParam)


# -- strict checks against openai's request types ------------------------------------------------


def conforms(value: Any, tp: Any) -> bool:
    """``value`` fits ``tp`` exactly: TypedDicts without undeclared keys, all required present."""
    origin = typing.get_origin(tp)
    if tp is Any:
        return True
    if origin in (typing.Union, types.UnionType, typing_extensions.Union):
        return any(conforms(value, a) for a in typing.get_args(tp))
    if origin in (typing.Literal, typing_extensions.Literal):
        return value in typing.get_args(tp)
    if typing_extensions.is_typeddict(tp):
        if not isinstance(value, dict):
            return False
        hints = typing_extensions.get_type_hints(tp)
        return (
            set(value) <= set(hints)
            and tp.__required_keys__ <= set(value)
            and all(conforms(v, _strip(hints[k])) for k, v in value.items())
        )
    if origin in (list, Iterable, typing.Iterable) or tp is list:
        (item,) = typing.get_args(tp) or (Any,)
        return isinstance(value, list) and all(conforms(v, item) for v in value)
    if origin is dict or tp is dict:
        return isinstance(value, dict)
    if tp is type(None):
        return value is None
    if isinstance(tp, type):
        return isinstance(value, tp)
    return conforms(value, _strip(tp))


def _strip(tp: Any) -> Any:
    """Required[X] / NotRequired[X] / Annotated[X, ...] -> X."""
    while typing.get_origin(tp) in (typing.Required, typing.NotRequired, typing.Annotated):
        tp = typing.get_args(tp)[0]
    return tp


def check_messages(messages: list[dict[str, Any]]) -> None:
    for m in messages:
        assert conforms(m, ChatCompletionMessageParam), m
        validated = MESSAGE.validate_python(m)
        for key in ("content", "tool_calls"):  # pydantic validates Iterable fields lazily
            if isinstance(validated.get(key), Iterator):
                list(validated[key])
    # every tool call answered right after it, every result after its call
    i = 0
    while i < len(messages):
        m = messages[i]
        if m["role"] == "assistant" and m.get("tool_calls"):
            ids = {c["id"] for c in m["tool_calls"]}
            j = i + 1
            while j < len(messages) and messages[j]["role"] == "tool":
                assert messages[j]["tool_call_id"] in ids
                ids.discard(messages[j]["tool_call_id"])
                j += 1
            assert not ids, f"unanswered tool calls {ids}"
            i = j
            continue
        assert m["role"] != "tool", "a tool result with no call before it"
        i += 1


# -- a local chat-completions server -------------------------------------------------------------


class FakeServer(RecordingChatServer):
    """Checks each request's messages and answers; scripted tool calls on chosen turns. Its
    ``requests`` are the bodies of the requests that passed the checks."""

    def __init__(self) -> None:
        super().__init__()
        self.requests: list[dict[str, Any]] = []  # type: ignore[assignment]
        self.errors: list[str] = []
        self.tool_call_on: set[int] = set()

    def answer(self, path: str, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        try:
            assert path == "/v1/chat/completions", path
            check_messages(body["messages"])
        except AssertionError as exc:
            self.errors.append(str(exc))
            return 400, {"error": {"message": str(exc), "type": "invalid_request_error"}}
        n = len(self.requests)
        self.requests.append(body)
        message: dict[str, Any] = {"role": "assistant", "content": f"Answer {n}. {FILLER}"}
        if n in self.tool_call_on:
            message = {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {
                        "id": f"call_{n}",
                        "type": "function",
                        "function": {"name": "gauge", "arguments": '{"site": "B7"}'},
                    }
                ],
            }
        return 200, {
            "id": f"chatcmpl-{n}",
            "object": "chat.completion",
            "created": 1_700_000_000,
            "model": body["model"],
            "choices": [
                {
                    "index": 0,
                    "message": message,
                    "finish_reason": "tool_calls" if "tool_calls" in message else "stop",
                }
            ],
            "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
        }


@pytest.fixture
def server() -> Iterator[FakeServer]:
    with FakeServer() as s:
        yield s


def aged_memory(url: str, *, turns: int = 14, tools: bool = True) -> tuple[MemoryManager, datetime]:
    mm = MemoryManager(url, policy=AgingPolicy(keep_last_turns=4, min_fill=0))
    t = datetime(2025, 2, 1, 8, 0, tzinfo=UTC)
    for k in range(turns):
        if tools and k == turns - 3:
            mm.add_turn(
                "s",
                "assistant",
                "",
                at=t,
                metadata={
                    "tool_calls": [
                        {"id": "call_a", "name": "gauge", "args": {"site": "B7"}},
                        {"id": "call_b", "name": "gauge", "args": {"site": "C2"}},
                    ]
                },
            )
            mm.add_turn(
                "s", "tool", "2.31 m", at=t, metadata={"tool_call_id": "call_a", "name": "gauge"}
            )
            mm.add_turn(
                "s", "tool", "1.87 m", at=t, metadata={"tool_call_id": "call_b", "name": "gauge"}
            )
            continue
        role = "user" if k % 2 == 0 else "assistant"
        mm.add_turn(
            "s",
            role,
            f"{k} {FILLER}",
            at=t,
            metadata={"name": "Ana Lopez"} if role == "user" else None,
        )
        t += timedelta(hours=3)
    mm.age(now=t + timedelta(days=2))
    return mm, t + timedelta(days=2)


# -- to_openai_messages --------------------------------------------------------------------------


def test_messages_match_openai_request_types(db_url: str) -> None:
    mm, now = aged_memory(db_url)
    ctx = mm.assemble("s", budget=3000, target="openai", now=now)
    msgs = to_openai_messages(ctx, system_prompt="You are a hydrologist.")
    check_messages(msgs)
    assert msgs[0] == {"role": "system", "content": "You are a hydrologist."}
    memory = msgs[1]
    assert memory["role"] == "user" and memory["content"][0] == {
        "type": "text",
        "text": MEMORY_INTRO,
    }
    images = [p for p in memory["content"] if p["type"] == "image_url"]
    assert len(images) == len(ctx.pages) >= 1
    for part, page in zip(images, ctx.pages, strict=True):
        assert part["image_url"]["url"] == page.data_url
        assert base64.b64decode(part["image_url"]["url"].split(",", 1)[1]) == page.png
        assert part["image_url"]["detail"] == page.detail  # the openai target's own detail
    # recent turns: text, names made API-safe, tool calls in the OpenAI shape
    call = next(m for m in msgs if m.get("tool_calls"))
    assert call["content"] is None
    assert [c["function"]["arguments"] for c in call["tool_calls"]] == [
        '{"site": "B7"}',
        '{"site": "C2"}',
    ]
    i = msgs.index(call)
    assert msgs[i + 1] == {"role": "tool", "tool_call_id": "call_a", "content": "2.31 m"}
    assert msgs[i + 2]["tool_call_id"] == "call_b"
    users = [m for m in msgs[2:] if m["role"] == "user"]
    assert users and all(m["name"] == "Ana_Lopez" for m in users)
    mm.close()


def test_detail_override_and_system_memory_role(sqlite_url: str) -> None:
    mm, now = aged_memory(sqlite_url, tools=False)
    ctx = mm.assemble("s", budget=3000, now=now)  # deepseek-ocr: no detail of its own
    plain = to_openai_messages(ctx)
    assert all(
        "detail" not in p["image_url"] for p in plain[0]["content"] if p["type"] == "image_url"
    )
    low = to_openai_messages(ctx, detail="low")
    assert {p["image_url"]["detail"] for p in low[0]["content"] if p["type"] == "image_url"} == {
        "low"
    }
    sysmem = to_openai_messages(ctx, memory_role="system")
    check_messages(sysmem)
    # chat completions takes images only from users: text framing as system, images as user
    assert sysmem[0] == {"role": "system", "content": MEMORY_INTRO}
    assert sysmem[1]["role"] == "user" and any(
        p["type"] == "image_url" for p in sysmem[1]["content"]
    )
    mm.close()


def test_no_pages_no_memory_message(sqlite_url: str) -> None:
    mm = MemoryManager(sqlite_url)
    mm.add_turn("s", "user", "hi")
    msgs = to_openai_messages(mm.assemble("s"))
    assert msgs == [{"role": "user", "content": "hi"}]
    mm.close()


# -- record_openai_messages ----------------------------------------------------------------------


def test_record_stores_each_message_once_when_the_whole_chat_is_resent(db_url: str) -> None:
    mm = MemoryManager(db_url)
    convo: list[dict[str, Any]] = [{"role": "system", "content": "Be brief."}]
    for k in range(4):
        convo.append({"role": "user", "content": "ok"})  # same text each time, on purpose
        record_openai_messages(mm, "c", convo)
        convo.append({"role": "assistant", "content": f"answer {k}"})
    record_openai_messages(mm, "c", convo)
    record_openai_messages(mm, "c", convo)  # nothing new: nothing stored
    turns = mm.turns("c")
    assert [(t.role, t.content) for t in turns] == [
        x for k in range(4) for x in (("user", "ok"), ("assistant", f"answer {k}"))
    ]
    # a client that keeps only the last few messages adds only what is new
    record_openai_messages(mm, "c", convo[-3:] + [{"role": "user", "content": "more"}])
    assert [t.content for t in mm.turns("c")][-3:] == ["ok", "answer 3", "more"]
    # forgotten meanwhile: stored again from scratch
    mm.forget("c")
    record_openai_messages(mm, "c", convo[:3])
    assert [t.content for t in mm.turns("c")] == ["ok", "answer 0"]
    mm.close()


def test_a_conversation_resent_as_other_message_types_is_recognised(sqlite_url: str) -> None:
    """Plain dicts are keyed on a fast path; the same messages as read-only mappings or the
    SDK's objects take the general one. Both agree: resending the conversation in another
    form stores only what is new."""
    mm = MemoryManager(sqlite_url)
    convo: list[Any] = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Who keeps the lighthouse?"},
        {"role": "assistant", "content": "Ada does."},
        {"role": "user", "content": [{"type": "text", "text": "And the ferry?"}]},
        {"role": "assistant", "content": "Bo rows it."},
    ]
    record_openai_messages(mm, "c", convo)
    as_mappings = [types.MappingProxyType(m) for m in convo]
    assert record_openai_messages(mm, "c", as_mappings) == []
    sdk = openai.types.chat.ChatCompletionMessage(role="assistant", content="Bo rows it.")
    again = [*convo[:-1], sdk, {"role": "user", "content": "Thanks."}]
    assert [t.content for t in record_openai_messages(mm, "c", again)] == ["Thanks."]
    assert len(mm.turns("c")) == 5
    mm.close()


def test_a_reply_stored_after_its_answer_is_stored_once(sqlite_url: str) -> None:
    """``record_openai_reply``: the reply to the request that ended at turn ``answering``.
    If the client's next request got to another process first, carrying the reply, it is
    not stored again; if another request's turn came in between, it goes at the end."""
    from optical_memory.adapters.openai import record_openai_reply

    here, there = MemoryManager(sqlite_url), MemoryManager(sqlite_url)  # two processes' logs
    q1 = {"role": "user", "content": "Who keeps the lighthouse?"}
    a1 = {"role": "assistant", "content": "Ada does."}
    q2 = {"role": "user", "content": "And the ferry?"}
    [asked] = record_openai_messages(here, "c", [q1])
    record_openai_messages(there, "c", [q1, a1, q2])  # the next request, elsewhere, first
    assert record_openai_reply(here, "c", a1, answering=asked.seq) == []
    assert [t.content for t in here.turns("c")] == [q1["content"], a1["content"], q2["content"]]

    a2 = {"role": "assistant", "content": "Bo rows it."}
    q3 = {"role": "user", "content": "Is it open on Sundays?"}
    [asked] = [t for t in here.turns("c") if t.content == q2["content"]]
    record_openai_messages(there, "c", [q1, a1, q2, q3])  # a second request, at the same time
    [late] = record_openai_reply(here, "c", a2, answering=asked.seq)
    assert [t.content for t in here.turns("c")][-2:] == [q3["content"], a2["content"]]
    assert late.seq == here.turns("c")[-1].seq
    assert len(record_openai_reply(here, "c", {"content": "And more."})) == 1  # no position
    assert here.turns("c")[-1].role == "assistant"
    here.close()
    there.close()


def test_record_tool_calls_round_trip(sqlite_url: str) -> None:
    mm = MemoryManager(sqlite_url)
    sent = [
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "level at B7?"},
                {"type": "image_url", "image_url": {"url": "https://example.com/b7.png"}},
            ],
        },
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "c1",
                    "type": "function",
                    "function": {"name": "gauge", "arguments": '{"site": "B7"}'},
                },
                {
                    "id": "c2",
                    "type": "function",
                    "function": {"name": "gauge", "arguments": "{not json"},
                },
            ],
        },
        {"role": "tool", "tool_call_id": "c1", "content": "2.31 m"},
        {"role": "tool", "tool_call_id": "c2", "content": "error: bad arguments"},
        {"role": "assistant", "content": "2.31 m at B7."},
    ]
    record_openai_messages(mm, "t", sent)
    turns = mm.turns("t")
    assert turns[0].content == "level at B7?"
    assert turns[0].metadata["omitted_blocks"] == ["image_url"]  # a remote image: not archived
    assert turns[1].metadata["tool_calls"][0] == {
        "id": "c1",
        "name": "gauge",
        "args": {"site": "B7"},
        "source": '{"site": "B7"}',  # the string it came as, sent on exactly
    }
    back = to_openai_messages(mm.assemble("t"))
    check_messages(back)
    assert back[1]["tool_calls"] == sent[1]["tool_calls"]  # malformed arguments kept verbatim
    assert back[2:] == sent[2:]
    assert openai_message_to_turn({"role": "developer", "content": "x"}) is None
    with pytest.raises(ValueError):
        openai_message_to_turn({"role": "robot", "content": "x"})
    mm.close()


# -- with the real openai client -----------------------------------------------------------------


def test_conversation_through_the_openai_client(server: FakeServer, db_url: str) -> None:
    server.tool_call_on = {3, 9}
    mm = MemoryManager(db_url, policy=AgingPolicy(keep_last_turns=4, min_fill=0))
    client = openai.OpenAI(
        base_url=server.base_url,
        api_key="test",
        max_retries=0,
        timeout=10,
        http_client=httpx.Client(trust_env=False),
    )
    now = datetime(2025, 2, 1, 8, 0, tzinfo=UTC)
    for k in range(12):
        record_openai_messages(mm, "river", [{"role": "user", "content": f"Q{k} {FILLER}"}], at=now)
        while True:
            ctx = mm.assemble("river", budget=2500, target="openai", now=now)
            reply = (
                client.chat.completions.create(
                    model="gpt-4o", messages=to_openai_messages(ctx, system_prompt="Be exact.")
                )
                .choices[0]
                .message
            )
            record_openai_messages(mm, "river", [reply], at=now)
            if not reply.tool_calls:
                break
            results = [
                {"role": "tool", "tool_call_id": c.id, "content": "2.31 m"}
                for c in reply.tool_calls
            ]
            record_openai_messages(mm, "river", results, at=now)
        now += timedelta(hours=4)
        if k % 4 == 3:
            mm.age(now=now)
    client.close()

    assert server.errors == []
    last = server.requests[-1]["messages"]
    assert last[0] == {"role": "system", "content": "Be exact."}
    parts = last[1]["content"]
    assert any(
        p["type"] == "image_url"
        and p["image_url"]["url"].startswith("data:image/png;base64,iVBORw0KGgo")
        for p in parts
    )
    turns = mm.turns("river")
    assert len(turns) == 12 * 2 + 2 * 2  # questions, answers, two calls with their results
    calls = [t for t in turns if t.metadata.get("tool_calls")]
    assert [c.metadata["tool_calls"][0]["args"] for c in calls] == [{"site": "B7"}] * 2
    mm.close()


def test_async_openai_client(server: FakeServer, sqlite_url: str) -> None:
    mm, now = aged_memory(sqlite_url)

    async def go() -> str:
        async with openai.AsyncOpenAI(
            base_url=server.base_url,
            api_key="test",
            max_retries=0,
            timeout=10,
            http_client=httpx.AsyncClient(trust_env=False),
        ) as client:
            ctx = await mm.aassemble("s", budget=3000, target="openai", now=now)
            out = await client.chat.completions.create(
                model="local", messages=to_openai_messages(ctx)
            )
            return out.choices[0].message.content or ""

    assert asyncio.run(go()).startswith("Answer 0.")
    assert server.errors == [] and len(server.requests) == 1
    mm.close()


# -- the example script --------------------------------------------------------------------------


def _load_example(name: str) -> types.ModuleType:
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parent.parent / "examples" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"example_{name}", path)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_example_shows_help_without_network(capsys: pytest.CaptureFixture[str]) -> None:
    example = _load_example("openai_backend")
    with pytest.raises(SystemExit) as exc:
        example.main(["--help"])
    assert exc.value.code == 0
    assert "OPENAI_BASE_URL" in capsys.readouterr().out


def test_example_chats_with_a_local_server(
    server: FakeServer,
    sqlite_url: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    import io

    example = _load_example("openai_backend")
    monkeypatch.setenv("OPENAI_BASE_URL", server.base_url)
    monkeypatch.setenv("OPENAI_API_KEY", "test")
    monkeypatch.setattr("sys.stdin", io.StringIO("first question\nsecond question\n\n"))
    args = ["--db", sqlite_url, "--session", "ex", "--age-every", "3600", "--model", "local-model"]
    assert example.main(args) == 0
    assert capsys.readouterr().out.count("assistant> Answer") == 2
    assert [r["model"] for r in server.requests] == ["local-model"] * 2
    assert server.requests[1]["messages"][-1] == {"role": "user", "content": "second question"}
    with MemoryManager(sqlite_url) as mm:
        assert [t.role for t in mm.turns("ex")] == ["user", "assistant"] * 2


def test_broken_tool_pairs_are_repaired_in_the_view_only(sqlite_url: str) -> None:
    """Chat APIs reject a call without its results and a result without its call."""
    mm = MemoryManager(sqlite_url)
    call = {"tool_calls": [{"id": "a", "name": "gauge", "args": {}},
                           {"id": "b", "name": "gauge", "args": {}}]}  # fmt: skip
    mm.add_turns("p", [
        {"role": "tool", "content": "stray", "metadata": {"tool_call_id": "z"}},
        {"role": "user", "content": "levels?"},
        {"role": "assistant", "content": "checking", "metadata": call},
        {"role": "tool", "content": "1.0 m", "metadata": {"tool_call_id": "a"}},
        {"role": "user", "content": "and?"},
        {"role": "tool", "content": "late", "metadata": {"tool_call_id": "b", "name": "gauge"}},
    ])  # fmt: skip
    msgs = to_openai_messages(mm.assemble("p"))
    check_messages(msgs)
    assert msgs[0] == {"role": "user", "content": "levels?"}  # assembly leaves "stray" out
    assert [c["id"] for c in msgs[1]["tool_calls"]] == ["a"]
    assert msgs[2] == {"role": "tool", "tool_call_id": "a", "content": "1.0 m"}
    assert msgs[4] == {"role": "user", "content": "[earlier tool result from gauge]\nlate"}
    assert len(mm.turns("p")[2].metadata["tool_calls"]) == 2  # the archive is untouched
    mm.close()


def test_tool_call_arguments_go_back_exactly_as_they_came(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """Parsed and written again, spacing, number forms and a repeated key would change, and a
    number past a float's range would come back as Infinity, which is not JSON."""
    from langchain_core.messages import AIMessage

    from optical_memory.adapters.langchain import to_langchain_messages

    odd = '{"amount":19.990000000000002, "big":1e400,"dup":1,"dup":2}'
    plain = '{"site":"B7"}'
    calls = [
        {"id": f"c{i}", "type": "function", "function": {"name": "pay", "arguments": a}}
        for i, a in enumerate((odd, plain))
    ]
    sent = [
        {"role": "user", "content": "pay it"},
        {"role": "assistant", "content": None, "tool_calls": calls},
        {"role": "tool", "tool_call_id": "c0", "content": "paid"},
        {"role": "tool", "tool_call_id": "c1", "content": "ok"},
    ]
    with MemoryManager(f"sqlite:///{tmp_path / 'm.db'}") as mm:
        record_openai_messages(mm, "t", sent)
        back = to_openai_messages(mm.assemble("t"))
        assert [c["function"]["arguments"] for c in back[1]["tool_calls"]] == [odd, plain]
        (ai,) = [m for m in to_langchain_messages(mm.assemble("t")) if isinstance(m, AIMessage)]
        assert [c["args"] for c in ai.tool_calls] == [{"site": "B7"}]
        assert [c["args"] for c in ai.invalid_tool_calls] == [odd]  # no float holds 1e400


def test_a_reply_to_a_turn_forgotten_or_replaced_meanwhile_is_not_stored(sqlite_url: str) -> None:
    from optical_memory.adapters.openai import record_openai_reply

    mm = MemoryManager(sqlite_url)
    q = {"role": "user", "content": "My secret is 4711."}
    a = {"role": "assistant", "content": "Noted."}
    [asked] = record_openai_messages(mm, "c", [q])
    mm.forget("c")
    assert record_openai_reply(mm, "c", a, answering=asked.seq) == []
    with pytest.raises(UnknownSession):
        mm.turns("c")  # not brought back by the answer to what was forgotten

    first = [{"role": "user", "content": "Hi."}, {"role": "assistant", "content": "Hello."}]
    *_, asked = record_openai_messages(mm, "d", [*first, q])
    edited = record_openai_messages(mm, "d", [*first, {"role": "user", "content": "It is 4712."}])
    assert record_openai_reply(mm, "d", a, answering=asked.seq) == []  # a withdrawn version's
    assert [t.content for t in mm.turns("d")] == ["Hi.", "Hello.", "It is 4712."]
    [later] = record_openai_reply(mm, "d", a, answering=edited[0].seq)
    assert later.content == "Noted."
    mm.close()
