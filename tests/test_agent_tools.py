"""The agent tools: ``recall_memory(query)`` and ``read_memory(first_turn, last_turn)``.

LangChain: a real ``create_agent`` agent with the middleware, driven by langchain-core's fake
chat model scripted to call ``recall_memory``, then ``read_memory`` with the numbers of the
first page caption it was shown, then answer. The tool results must hold the archived turns
exactly, from the thread's own session, inside the memory's owner, and bad spans must come
back as error text. OpenAI: the same tools as function-tool schemas, and a handler that
answers a call (dict or SDK object) with a tool message, errors as text.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace
from typing import Any

import pytest
from fakes import RecordingChatModel
from helpers import make_history
from langchain.agents import create_agent
from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, ToolMessage
from langchain_core.tools import tool
from langgraph.checkpoint.memory import InMemorySaver
from openai.types.chat import (
    ChatCompletionFunctionToolParam,
    ChatCompletionMessageParam,
    ChatCompletionMessageToolCall,
)
from pydantic import TypeAdapter

from optical_memory import MEMORY_INTRO, AgingPolicy, MemoryManager, Turn
from optical_memory.adapters.langchain import (
    OpticalMemoryMiddleware,
    count_tokens_with_images,
    to_langchain_messages,
)
from optical_memory.adapters.openai import (
    MEMORY_TOOL_NAMES,
    TOOLS_HINT,
    handle_memory_tool_call,
    memory_tools,
    to_openai_messages,
)

START = datetime(2025, 1, 6, 9, 0, tzinfo=UTC)
NOW = START + timedelta(days=40)
FACT = "My locker code at the harbour gym is 4417-QX, and my sister Ansel lives in Tromsø."
OTHER_FACT = "My locker code at the harbour gym is 9981-ZZ; nobody else knows it."
FILLER = "We compared the lighthouse logs with the harbour tide tables once more today. " * 4
FACT_TURN = 3


def content(i: int) -> str:
    if i == FACT_TURN - 1:
        return FACT
    return f"{'Question' if i % 2 == 0 else 'Reply'} {i}: {FILLER}"


def memory_at(url: str) -> MemoryManager:
    return MemoryManager(url, policy=AgingPolicy(keep_last_turns=4, min_fill=0))


def seed(memory: MemoryManager, session: str, n: int = 30, fact: str = FACT) -> list[Turn]:
    """``n`` old turns (``fact`` at turn 3), aged into pages as of :data:`NOW`."""

    def say(i: int) -> str:
        return fact if i == FACT_TURN - 1 else content(i)

    memory.add_turns(session, make_history(n, say, START))
    memory.age(now=NOW)
    return memory.turns(session)


def line(t: Turn, *, session: bool = False) -> str:
    """What the tools answer for one turn (the documented ``[turn N, speaker, date] text``)."""
    where = f"session {t.session_id}, " if session else ""
    return f"[{where}turn {t.seq}, {t.role}, {t.at:%Y-%m-%d %H:%M}] {t.content}"


class ToolModel(RecordingChatModel):
    """The recording fake, also keeping the names of the tools the agent bound to it."""

    bound: list[list[str]] = []

    def bind_tools(self, tools: Any, **kwargs: Any) -> ToolModel:
        self.bound.append([getattr(t, "name", None) or t["function"]["name"] for t in tools])
        return self


def call(name: str, call_id: str, **args: Any) -> AIMessage:
    return AIMessage("", tool_calls=[{"name": name, "args": args, "id": call_id}])


def caption_span(request: list[BaseMessage]) -> tuple[int, int]:
    """The turn numbers of the first page caption in the memory message of a request."""
    memory_message = next(m for m in request if m.id == "optical-memory")
    for block in memory_message.content:
        if isinstance(block, dict) and block.get("type") == "text":
            found = re.match(r"Memory page: turns (\d+)–(\d+)", block["text"])
            if found:
                return int(found[1]), int(found[2])
    raise AssertionError("no page caption in the memory message")


def recall_then_read(model: list[ToolModel], query: str) -> Iterator[AIMessage]:
    """Call recall_memory, then read_memory on the first caption the model was shown, then
    answer (the generator runs lazily, so it sees what the model received so far)."""
    yield call("recall_memory", "r1", query=query)
    first, last = caption_span(model[0].received[-1])
    yield call("read_memory", "r2", first_turn=first, last_turn=min(last, first + 39))
    yield AIMessage("Your locker code is 4417-QX.")


def tool_results(state: dict[str, Any]) -> dict[str, ToolMessage]:
    return {m.tool_call_id: m for m in state["messages"] if isinstance(m, ToolMessage)}


# -- LangChain -----------------------------------------------------------------------------------


def test_agent_recalls_and_reads_old_turns_exactly(db_url: str) -> None:
    memory = memory_at(db_url)
    turns = seed(memory, "t1")
    assert memory.pages("t1"), "the old turns should be on pages"
    holder: list[ToolModel] = []
    model = ToolModel(messages=recall_then_read(holder, "locker code"), received=[], bound=[])
    holder.append(model)
    budget = 2000
    mw = OpticalMemoryMiddleware(memory, budget=budget, now=lambda: NOW)
    agent = create_agent(
        model,
        system_prompt="You are a careful harbour assistant.",
        middleware=[mw],
        checkpointer=InMemorySaver(),
    )
    cfg = {"configurable": {"thread_id": "t1"}}
    state = agent.invoke({"messages": [HumanMessage("Which number did I give you?")]}, cfg)

    # the middleware's tools reach the model (create_agent reads ``middleware.tools``)
    assert [t.name for t in mw.tools] == ["recall_memory", "read_memory"]
    assert model.bound and all(set(b) == set(MEMORY_TOOL_NAMES) for b in model.bound)

    results = tool_results(state)
    recalled = results["r1"].content
    assert results["r1"].name == "recall_memory" and results["r1"].status == "success"
    assert recalled.startswith('Memory search for "locker code": ')
    lines = recalled.splitlines()[1:]
    assert lines[0] == line(turns[FACT_TURN - 1]), "best match first, exact text"

    # read_memory on the caption's numbers returns that span exactly, in order
    first, last = caption_span(model.received[1])
    last = min(last, first + 39)
    read = results["r2"].content
    head, *rest = read.splitlines()
    assert head == f"Memory turns {first}–{last}, exactly as archived:"
    shown = [x for x in rest if x.startswith("[turn ")]
    assert shown and shown == [line(t) for t in turns[first - 1 : first - 1 + len(shown)]]
    # an answer takes at most half the budget; the turns past it are named, to read next
    assert memory.count_tokens("tool", read) <= budget // 2
    if len(shown) < last - first + 1:
        k = first + len(shown)
        assert rest[-1] == (
            f"[turns {k}–{last} left out (answer too long): read them with read_memory({k}, {last}).]"
        )
    assert state["messages"][-1].content == "Your locker code is 4417-QX."

    # the memory message tells the model about the tools, right after the intro, and every
    # request stays within the budget with that note counted
    for request in model.received:
        memory_message = next(m for m in request if m.id == "optical-memory")
        texts = [b["text"] for b in memory_message.content if b["type"] == "text"]
        assert texts[:2] == [MEMORY_INTRO, TOOLS_HINT]
        assert count_tokens_with_images(request[1:], target=memory.target) <= budget

    # the tool answers are archived like any tool result, but a later search does not
    # return them (they quote the turns they found)
    stored = memory.turns("t1")
    assert [t.content for t in stored if t.role == "tool"] == [recalled, read]
    again = mw.recall_answer(SimpleNamespace(config=cfg), "locker code")
    found = again.splitlines()[1:]
    assert line(turns[FACT_TURN - 1]) in found
    assert not any(", recall_memory, " in x or ", read_memory, " in x for x in found)
    assert "Memory search for" not in "\n".join(found) and "Memory turns" not in again
    memory.close()


def test_the_thread_id_selects_the_session(db_url: str) -> None:
    memory = memory_at(db_url)
    seed(memory, "thread-a", n=8, fact=OTHER_FACT)
    b_turns = seed(memory, "thread-b", n=8)
    memory.add_turns("fixed", make_history(2, lambda i: [FACT, "Noted."][i], START))
    for saver in (InMemorySaver(), None):  # with a checkpointer and with the config alone
        model = ToolModel(
            messages=iter([call("recall_memory", "c1", query="locker code"), AIMessage("ok")]),
            received=[],
            bound=[],
        )
        agent = create_agent(
            model, middleware=[OpticalMemoryMiddleware(memory, now=lambda: NOW)], checkpointer=saver
        )
        state = agent.invoke(
            {"messages": [HumanMessage("Which number?")]},
            {"configurable": {"thread_id": "thread-b"}},
        )
        answer = tool_results(state)["c1"].content
        assert line(b_turns[FACT_TURN - 1]) in answer
        assert "9981-ZZ" not in answer and "session " not in answer

    # a fixed session_key wins, with or without a thread id
    model = ToolModel(
        messages=iter([call("read_memory", "c2", first_turn=1, last_turn=2), AIMessage("ok")]),
        received=[],
        bound=[],
    )
    agent = create_agent(model, middleware=[OpticalMemoryMiddleware(memory, session_key="fixed")])
    state = agent.invoke({"messages": [HumanMessage("Read the start back.")]})
    fixed = memory.turns("fixed")
    assert tool_results(state)["c2"].content.splitlines()[1:] == [line(t) for t in fixed[:2]]
    memory.close()


def test_an_owner_scoped_memory_never_shows_another_owners_turns(db_url: str) -> None:
    root = memory_at(db_url)
    alice, bob = root.scoped("alice"), root.scoped("bob")
    alice_turns = seed(alice, "alice-old", n=8)
    seed(bob, "bob-old", n=8, fact=OTHER_FACT)

    def ask(mw: OpticalMemoryMiddleware, thread: str, *calls: AIMessage) -> dict[str, ToolMessage]:
        model = ToolModel(messages=iter([*calls, AIMessage("ok")]), received=[], bound=[])
        agent = create_agent(model, middleware=[mw], checkpointer=InMemorySaver())
        question = HumanMessage("What number did I give you?")
        return tool_results(
            agent.invoke({"messages": [question]}, {"configurable": {"thread_id": thread}})
        )

    # recall across the owner's sessions finds alice's other chat, never bob's
    wide = OpticalMemoryMiddleware(alice, now=lambda: NOW, recall_scope="owner")
    got = ask(wide, "alice-new", call("recall_memory", "c1", query="locker code"))
    answer = got["c1"].content
    assert line(alice_turns[FACT_TURN - 1], session=True) in answer
    assert "9981" not in answer and "bob" not in answer
    # the session scope (the default) stays inside the thread's own conversation
    narrow = OpticalMemoryMiddleware(alice, now=lambda: NOW)
    got = ask(
        narrow,
        "alice-new",
        call("recall_memory", "c1", query="locker code"),
        call("read_memory", "c2", first_turn=1, last_turn=1),
    )
    assert "nothing found" in got["c1"].content and "4417" not in got["c1"].content
    assert got["c2"].content.splitlines()[1:] == [line(alice.turns("alice-new")[0])]
    # bob's thread through alice's memory: an error text, nothing of bob's
    bobs_thread = SimpleNamespace(config={"configurable": {"thread_id": "bob-old"}})
    for answer in (
        wide.recall_answer(bobs_thread, "locker code"),
        wide.read_answer(bobs_thread, 1, 8),
    ):
        assert answer.startswith("Error: ") and "9981" not in answer
    root.close()


def test_bad_spans_and_queries_answer_with_an_error(db_url: str) -> None:
    memory = memory_at(db_url)
    seed(memory, "t1", n=60)
    calls = [
        call("read_memory", "reversed", first_turn=5, last_turn=2),
        call("read_memory", "zero", first_turn=0, last_turn=3),
        call("read_memory", "too-long", first_turn=1, last_turn=55),
        call("read_memory", "past-end", first_turn=50, last_turn=80),
        call("read_memory", "not-a-number", first_turn="first", last_turn=3),
        call("recall_memory", "nothing", query="xylophone quasar"),
        call("recall_memory", "syntax", query='"locker" OR NEAR(code*) column:content'),
    ]
    model = ToolModel(messages=iter([*calls, AIMessage("done")]), received=[], bound=[])
    agent = create_agent(
        model,
        middleware=[OpticalMemoryMiddleware(memory, now=lambda: NOW)],
        checkpointer=InMemorySaver(),
    )
    state = agent.invoke(
        {"messages": [HumanMessage("Read some turns back.")]},
        {"configurable": {"thread_id": "t1"}},
    )
    assert state["messages"][-1].content == "done", "the agent ran to its answer"
    got = {k: m.content for k, m in tool_results(state).items()}
    assert got["reversed"].startswith("Error: ") and "5..2" in got["reversed"]
    assert got["zero"].startswith("Error: ") and "0..3" in got["zero"]
    assert got["too-long"].startswith("Error: ") and "at most 40" in got["too-long"]
    assert "read_memory(1, 40)" in got["too-long"], "says how to narrow the span"
    assert got["past-end"].startswith("Error: ") and "past its end" in got["past-end"]
    assert "first_turn" in got["not-a-number"] and "integer" in got["not-a-number"]
    assert "nothing found" in got["nothing"]
    assert got["syntax"].splitlines()[1] == line(memory.turns("t1")[FACT_TURN - 1])
    memory.close()


def test_tools_off(sqlite_url: str) -> None:
    memory = memory_at(sqlite_url)
    seed(memory, "t1")

    @tool
    def add(a: int, b: int) -> int:
        """Add two integers."""
        return a + b

    budget = 1500
    off = OpticalMemoryMiddleware(memory, budget=budget, now=lambda: NOW, tools=False)
    on = OpticalMemoryMiddleware(memory, budget=budget, now=lambda: NOW)
    assert off.tools == []
    model = ToolModel(messages=iter(["ok"]), received=[], bound=[])
    agent = create_agent(model, tools=[add], middleware=[off], checkpointer=InMemorySaver())
    agent.invoke(
        {"messages": [HumanMessage("Hello again.")]}, {"configurable": {"thread_id": "t1"}}
    )
    assert model.bound == [["add"]]

    # without tools the view is the plain assembly at the whole budget, with no note; with
    # them the note follows the intro and its tokens come out of the budget
    plain = to_langchain_messages(memory.assemble("t1", budget, now=NOW))
    assert off.view("t1") == plain
    assert TOOLS_HINT not in str(plain[0].content)
    with_tools = on.view("t1")
    assert with_tools[0].content[1] == {"type": "text", "text": TOOLS_HINT}
    assert count_tokens_with_images(with_tools, target=memory.target) <= budget
    reserved = budget - memory.count_tokens("system", TOOLS_HINT)
    assert (
        with_tools[0].content[2:]
        == to_langchain_messages(memory.assemble("t1", reserved, now=NOW))[0].content[1:]
    )
    with pytest.raises(ValueError, match="scope"):
        OpticalMemoryMiddleware(memory, recall_scope="everyone")  # type: ignore[arg-type]
    memory.close()


def test_async_agent_tools(sqlite_url: str) -> None:
    memory = memory_at(sqlite_url)
    turns = seed(memory, "t1")
    model = ToolModel(
        messages=iter(
            [
                call("recall_memory", "c1", query="Tromsø sister"),
                call("read_memory", "c2", first_turn=2, last_turn=4),
                AIMessage("ok"),
            ]
        ),
        received=[],
        bound=[],
    )
    mw = OpticalMemoryMiddleware(memory, now=lambda: NOW)
    agent = create_agent(model, middleware=[mw], checkpointer=InMemorySaver())
    state = asyncio.run(
        agent.ainvoke(
            {"messages": [HumanMessage("Where does she live?")]},
            {"configurable": {"thread_id": "t1"}},
        )
    )
    got = tool_results(state)
    assert got["c1"].content.splitlines()[1] == line(turns[FACT_TURN - 1])
    assert got["c2"].content.splitlines()[1:] == [line(t) for t in turns[1:4]]
    memory.close()


# -- OpenAI-style backends -----------------------------------------------------------------------

JSON_TYPES = {"object", "string", "integer", "number", "boolean", "array", "null"}


def check_schema(schema: dict[str, Any]) -> None:
    """A JSON schema object of the shape function tools take, well formed."""
    assert schema["type"] == "object" and set(schema) <= {
        "type",
        "properties",
        "required",
        "additionalProperties",
    }
    props = schema["properties"]
    assert isinstance(props, dict) and props
    for spec in props.values():
        assert spec["type"] in JSON_TYPES and isinstance(spec["description"], str)
        assert set(spec) <= {"type", "description", "minimum"}
    assert isinstance(schema["required"], list) and set(schema["required"]) <= set(props)
    assert schema["additionalProperties"] is False


def test_memory_tools_are_function_tool_schemas(sqlite_url: str) -> None:
    tools = memory_tools()
    assert json.loads(json.dumps(tools)) == tools, "plain JSON"
    assert [t["function"]["name"] for t in tools] == list(MEMORY_TOOL_NAMES)
    adapter = TypeAdapter(ChatCompletionFunctionToolParam)
    for t in tools:
        adapter.validate_python(t)
        assert set(t) == {"type", "function"} and t["type"] == "function"
        assert set(t["function"]) == {"name", "description", "parameters"}
        assert len(t["function"]["description"]) > 40
        check_schema(t["function"]["parameters"])
    recall, read = (t["function"]["parameters"] for t in tools)
    assert recall["required"] == ["query"] and recall["properties"]["query"]["type"] == "string"
    assert read["required"] == ["first_turn", "last_turn"]
    assert {p["type"] for p in read["properties"].values()} == {"integer"}

    # the LangChain tools describe the same parameters
    with memory_at(sqlite_url) as memory:
        lc = {
            t.name: t.tool_call_schema.model_json_schema()
            for t in OpticalMemoryMiddleware(memory).tools
        }
    for t in tools:
        fn = t["function"]
        schema = lc[fn["name"]]
        assert schema["required"] == fn["parameters"]["required"]
        assert {k: v["type"] for k, v in schema["properties"].items()} == {
            k: v["type"] for k, v in fn["parameters"]["properties"].items()
        }
    assert "this user's conversations" in memory_tools(scope="owner")[0]["function"]["description"]
    with pytest.raises(ValueError):
        memory_tools(scope="all")  # type: ignore[arg-type]


def test_handler_answers_recall_and_read_calls(db_url: str) -> None:
    memory = memory_at(db_url)
    turns = seed(memory, "s1")
    as_dict = {
        "id": "call_1",
        "type": "function",
        "function": {"name": "recall_memory", "arguments": json.dumps({"query": "locker code"})},
    }
    reply = handle_memory_tool_call(memory, "s1", as_dict)
    assert set(reply) == {"role", "tool_call_id", "content"}
    assert reply["role"] == "tool" and reply["tool_call_id"] == "call_1"
    assert reply["content"].splitlines()[1] == line(turns[FACT_TURN - 1])
    TypeAdapter(ChatCompletionMessageParam).validate_python(reply)

    sdk = ChatCompletionMessageToolCall(
        id="call_2",
        type="function",
        function={"name": "read_memory", "arguments": '{"first_turn": 2, "last_turn": 5}'},
    )
    reply = handle_memory_tool_call(memory, "s1", sdk)
    assert reply["tool_call_id"] == "call_2"
    assert reply["content"].splitlines()[1:] == [line(t) for t in turns[1:5]]
    # numbers as a model may write them
    loose = {
        "id": "c",
        "function": {"name": "read_memory", "arguments": '{"first_turn": "2", "last_turn": 5.0}'},
    }
    assert handle_memory_tool_call(memory, "s1", loose)["content"] == reply["content"]

    # the note for the memory message, when a request offers the tools
    ctx = memory.assemble("s1", 1500 - memory.count_tokens("system", TOOLS_HINT), now=NOW)
    parts = to_openai_messages(ctx, tools_hint=TOOLS_HINT)[0]["content"]
    assert [p["text"] for p in parts[:2]] == [MEMORY_INTRO, TOOLS_HINT]
    memory.close()


def test_handler_errors_are_text(db_url: str) -> None:
    root = memory_at(db_url)
    alice, bob = root.scoped("alice"), root.scoped("bob")
    seed(alice, "a1", n=6)
    seed(alice, "a2", n=6, fact="We talked about the ferry timetable only.")
    seed(bob, "b1", n=6, fact=OTHER_FACT)

    def answer(
        name: Any, arguments: Any, session: str = "a1", memory: MemoryManager = alice
    ) -> str:
        reply = handle_memory_tool_call(
            memory, session, {"id": "x", "function": {"name": name, "arguments": arguments}}
        )
        assert reply["role"] == "tool" and reply["tool_call_id"] == "x"
        assert isinstance(reply["content"], str)
        return reply["content"]

    bad = [
        answer("forget_everything", "{}"),
        answer("read_memory", "{first_turn: 1"),
        answer("read_memory", "[1, 2]"),
        answer("read_memory", '{"first_turn": 4, "last_turn": 1}'),
        answer("read_memory", '{"first_turn": 1, "last_turn": 500}'),
        answer("read_memory", '{"first_turn": 1}'),
        answer("read_memory", '{"first_turn": true, "last_turn": 2}'),
        answer("recall_memory", "{}"),
        answer("recall_memory", '{"query": 42}'),
        answer("recall_memory", '{"query": "locker"}', session="nobody-yet"),
        answer("recall_memory", '{"query": "locker"}', session="b1"),
        answer("read_memory", '{"first_turn": 1, "last_turn": 2}', session="b1"),
        answer(None, None),
    ]
    for text in bad:
        assert text.startswith("Error: "), text
        assert "9981" not in text
    assert "recall_memory(query) and read_memory(first_turn, last_turn)" in bad[0]
    assert "nothing is archived" in bad[9]
    not_a_call = handle_memory_tool_call(alice, "a1", 42)
    assert not_a_call["role"] == "tool" and not_a_call["content"].startswith("Error: ")

    # owner scope: alice's other chat, never bob's
    wide = handle_memory_tool_call(
        alice,
        "a2",
        {"id": "y", "function": {"name": "recall_memory", "arguments": '{"query": "locker code"}'}},
        scope="owner",
    )["content"]
    assert "session a1, turn 3" in wide and "4417-QX" in wide and "9981" not in wide
    root.close()
