"""The LangChain adapter: agent middleware, chat message history, image-aware token counting.

A langchain-core fake chat model records exactly what it receives, so the tests check what a
real model would be shown: old turns as page images in one memory message, recent turns as
text, within the budget, with every tool call followed by its results.
"""

from __future__ import annotations

import asyncio
import base64
import io
import re
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from fakes import RecordingChatModel
from helpers import read_png
from langchain.agents import create_agent
from langchain_core.messages import (
    AIMessage,
    BaseMessage,
    HumanMessage,
    SystemMessage,
    ToolMessage,
    trim_messages,
)
from langchain_core.messages.utils import count_tokens_approximately
from langchain_core.runnables.history import RunnableWithMessageHistory
from langchain_core.tools import tool
from langgraph.checkpoint.memory import InMemorySaver
from PIL import Image

from optical_memory import MEMORY_INTRO, AgingPolicy, InvalidContent, MemoryManager
from optical_memory.adapters.langchain import (
    OpticalChatMessageHistory,
    OpticalMemoryMiddleware,
    count_tokens_with_images,
    image_token_counter,
    to_langchain_messages,
)

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
FILLER = "We compared the lighthouse logs with the harbour tide tables once more. " * 5


class Clock:
    def __init__(self) -> None:
        self.t = datetime(2025, 3, 1, 9, 0, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.t

    def advance(self, **kw: float) -> None:
        self.t += timedelta(**kw)


@tool
def add(a: int, b: int) -> int:
    """Add two integers."""
    return a + b


def script(n_turns: int, every_tool: int = 4) -> Iterator[AIMessage]:
    """Replies for n user turns; every few turns the model calls the add tool first."""
    for k in range(n_turns):
        if k % every_tool == 1:
            yield AIMessage(
                content="",
                tool_calls=[
                    {"name": "add", "args": {"a": k, "b": 1}, "id": f"call-{k}-a"},
                    {"name": "add", "args": {"a": k, "b": 2}, "id": f"call-{k}-b"},
                ],
            )
        yield AIMessage(content=f"Reply {k}. {FILLER}")


def memory_at(url: str) -> MemoryManager:
    return MemoryManager(url, policy=AgingPolicy(keep_last_turns=4, min_fill=0))


def assert_tool_pairs_intact(messages: list[BaseMessage]) -> None:
    """Every tool call is answered right after it, and every result has its call."""
    i = 0
    while i < len(messages):
        m = messages[i]
        if isinstance(m, AIMessage) and m.tool_calls:
            ids = {c["id"] for c in m.tool_calls}
            j = i + 1
            answered = set()
            while j < len(messages) and isinstance(messages[j], ToolMessage):
                assert messages[j].tool_call_id in ids, "a result for a call not made here"
                answered.add(messages[j].tool_call_id)
                j += 1
            assert answered == ids, f"calls {ids - answered} have no result"
            i = j
            continue
        assert not isinstance(m, ToolMessage), "a tool result with no call before it"
        i += 1


def image_blocks(message: BaseMessage) -> list[dict[str, Any]]:
    if not isinstance(message.content, list):
        return []
    return [b for b in message.content if isinstance(b, dict) and b.get("type") == "image"]


def run_agent(
    memory: MemoryManager,
    model: RecordingChatModel,
    clock: Clock,
    turns: int,
    *,
    budget: int,
    thread: str = "t1",
    age_every: int = 3,
) -> Any:
    agent = create_agent(
        model,
        tools=[add],
        system_prompt="You are a careful harbour assistant.",
        middleware=[OpticalMemoryMiddleware(memory, budget=budget, now=clock)],
        checkpointer=InMemorySaver(),
    )
    cfg = {"configurable": {"thread_id": thread}}
    for k in range(turns):
        agent.invoke({"messages": [HumanMessage(f"Question {k}: {FILLER}")]}, cfg)
        clock.advance(hours=2)
        if k % age_every == age_every - 1:
            memory.age(now=clock())
    return agent, cfg


# -- the middleware ------------------------------------------------------------------------------


def test_agent_sees_old_turns_as_images_and_recent_as_text(db_url: str) -> None:
    memory = memory_at(db_url)
    clock = Clock()
    n = 12
    model = RecordingChatModel(messages=script(n), received=[])
    budget = 2500
    agent, cfg = run_agent(memory, model, clock, n, budget=budget)

    last = model.received[-1]
    assert isinstance(last[0], SystemMessage) and "harbour assistant" in last[0].text
    mem = last[1]
    assert isinstance(mem, HumanMessage) and mem.id == "optical-memory"
    blocks = mem.content
    assert isinstance(blocks, list) and blocks[0] == {"type": "text", "text": MEMORY_INTRO}
    images = image_blocks(mem)
    assert images, "old turns should reach the model as page images"
    for b in images:
        assert b["mime_type"] == "image/png"
        png = base64.b64decode(b["base64"])
        assert png.startswith(PNG_SIGNATURE)
        assert read_png(png).size[0] >= 256
    texts = [b["text"] for b in blocks[1:] if b["type"] == "text"]
    # the block of turns the newest message recalled comes last, after the pages; the note
    # on the memory tools comes right after the intro
    assert blocks[1]["text"].startswith("To read a page's turns exactly, call read_memory(")
    texts = [t for t in texts if not t.startswith(("Recalled from memory", "Pinned turns"))]
    texts = texts[1:]
    captions = [t for t in texts if t.startswith("Memory page: turns ")]
    assert len(captions) == len(images) and all(" old" in c for c in captions)
    # each caption right before its image; short pages between them as a transcript
    for i, b in enumerate(blocks):
        if b["type"] == "image":
            assert blocks[i - 1]["text"].startswith("Memory page: turns ")
    spans = [tuple(map(int, re.search(r"urns (\d+)–(\d+)", t).groups())) for t in texts]
    assert spans[0][0] == 1, "the memory starts at the first turn"
    assert all(a[1] + 1 == b[0] for a, b in zip(spans, spans[1:], strict=False)), spans
    shown_until = spans[-1][1]

    # recent turns arrive as text, and none of them is also on a shown page
    recent = last[2:]
    assert recent and all(not image_blocks(m) for m in recent)
    turns = {t.metadata["message_id"]: t for t in memory.turns("t1")}
    assert all(turns[m.id].seq > shown_until for m in recent)
    assert recent[-1].text.startswith(f"Question {n - 1}:")

    # within budget, counting images the way the target charges them
    assert count_tokens_with_images(last[1:], target="deepseek-ocr") <= budget
    for request in model.received:
        assert_tool_pairs_intact(request)

    # the archive holds every message exactly once, in order; state keeps only the last
    # exchange (the rest was archived and removed from state) and holds no images
    state = agent.get_state(cfg).values["messages"]
    stored = memory.turns("t1")
    ids = [t.metadata["message_id"] for t in stored]
    replies = list(script(n))
    results = sum(len(r.tool_calls) for r in replies)
    assert len(set(ids)) == len(ids) == len(replies) + n + results
    assert ids[-len(state) :] == [m.id for m in state] and len(state) < len(stored)
    assert [t.content for t in stored[-len(state) :]] == [m.text for m in state]
    assert all(not image_blocks(m) for m in state)
    calls = [t for t in stored if t.metadata.get("tool_calls")]
    assert calls and calls[0].metadata["tool_calls"][0]["args"] == {"a": 1, "b": 1}
    results = [t for t in stored if t.role == "tool"]
    assert {r.metadata["tool_call_id"] for r in results} == {
        c["id"] for t in calls for c in t.metadata["tool_calls"]
    }
    memory.close()


def test_tool_calls_are_restored_as_messages(sqlite_url: str) -> None:
    memory = memory_at(sqlite_url)
    clock = Clock()
    model = RecordingChatModel(messages=script(3, every_tool=2), received=[])
    run_agent(memory, model, clock, 3, budget=4000, age_every=100)
    # the call that follows the tool results shows the call and the results, as messages
    after_tools = next(r for r in model.received if isinstance(r[-1], ToolMessage))
    ai = after_tools[-3]
    assert isinstance(ai, AIMessage)
    assert [c["args"] for c in ai.tool_calls] == [{"a": 1, "b": 1}, {"a": 1, "b": 2}]
    assert [m.content for m in after_tools[-2:]] == ["2", "3"]
    assert [m.name for m in after_tools[-2:]] == ["add", "add"]
    memory.close()


def test_async_agent_uses_awrap_model_call(sqlite_url: str) -> None:
    memory = memory_at(sqlite_url)
    clock = Clock()
    n = 7
    model = RecordingChatModel(messages=script(n), received=[])
    mw = OpticalMemoryMiddleware(memory, budget=1800, now=clock)
    calls: list[str] = []
    original = OpticalMemoryMiddleware.wrap_model_call

    def no_sync(self: Any, *a: Any) -> Any:  # the async path must not fall back to sync
        calls.append("sync")
        return original(self, *a)

    mw.wrap_model_call = no_sync.__get__(mw)  # type: ignore[method-assign]
    agent = create_agent(model, tools=[add], middleware=[mw], checkpointer=InMemorySaver())
    cfg = {"configurable": {"thread_id": "async-thread"}}

    async def go() -> None:
        for k in range(n):
            await agent.ainvoke({"messages": [HumanMessage(f"Question {k}: {FILLER}")]}, cfg)
            clock.advance(hours=3)
            if k % 3 == 2:
                await memory.aage(now=clock())

    asyncio.run(go())
    assert calls == []
    assert any(image_blocks(m) for m in model.received[-1])
    stored = memory.turns("async-thread")
    state = agent.get_state(cfg).values["messages"]  # the last exchange (aafter_agent pruned)
    ids = [t.metadata["message_id"] for t in stored]
    assert ids[-len(state) :] == [m.id for m in state] and len(set(ids)) == len(ids)
    assert state[0].text.startswith(f"Question {n - 1}:")
    memory.close()


def test_session_comes_from_thread_id_or_session_key(sqlite_url: str) -> None:
    memory = memory_at(sqlite_url)
    model = RecordingChatModel(messages=iter(["a", "b", "c", "d"]), received=[])
    agent = create_agent(
        model, middleware=[OpticalMemoryMiddleware(memory)], checkpointer=InMemorySaver()
    )
    agent.invoke({"messages": [HumanMessage("one")]}, {"configurable": {"thread_id": "x"}})
    agent.invoke({"messages": [HumanMessage("two")]}, {"configurable": {"thread_id": "y"}})
    assert [t.content for t in memory.turns("x")] == ["one", "a"]
    assert [t.content for t in memory.turns("y")] == ["two", "b"]

    # no checkpointer, no thread id: a clear error, unless a session key is given
    bare = create_agent(model, middleware=[OpticalMemoryMiddleware(memory)])
    with pytest.raises(ValueError, match="thread_id"):
        bare.invoke({"messages": [HumanMessage("three")]})
    keyed = create_agent(
        model, middleware=[OpticalMemoryMiddleware(memory, session_key=lambda rt: "user-7")]
    )
    keyed.invoke({"messages": [HumanMessage("four")]})
    # the failed run never reached the model, so "c" is the next reply
    assert [t.content for t in memory.turns("user-7")] == ["four", "c"]
    memory.close()


def test_each_message_is_stored_once_across_restarts(sqlite_url: str) -> None:
    """A new middleware (a restarted process) over the same store does not store again."""
    memory = memory_at(sqlite_url)
    saver = InMemorySaver()
    cfg = {"configurable": {"thread_id": "r"}}
    model = RecordingChatModel(messages=iter(["first", "second"]), received=[])
    for text in ("hello", "again"):
        agent = create_agent(
            model, middleware=[OpticalMemoryMiddleware(memory)], checkpointer=saver
        )
        agent.invoke({"messages": [HumanMessage(text)]}, cfg)
    assert [t.content for t in memory.turns("r")] == ["hello", "first", "again", "second"]

    # forgotten meanwhile: the middleware notices and stores what the state still holds (the
    # last exchange: the archived messages before it were pruned from state)
    mw = OpticalMemoryMiddleware(memory)
    model2 = RecordingChatModel(messages=iter(["third", "fourth"]), received=[])
    agent = create_agent(model2, middleware=[mw], checkpointer=saver)
    agent.invoke({"messages": [HumanMessage("x")]}, cfg)
    memory.forget("r")
    agent.invoke({"messages": [HumanMessage("y")]}, cfg)
    contents = [t.content for t in memory.turns("r")]
    assert contents == ["x", "third", "y", "fourth"]
    memory.close()


def test_memory_role_system_and_bad_arguments(sqlite_url: str) -> None:
    memory = memory_at(sqlite_url)
    clock = Clock()
    for k in range(14):
        memory.add_turn("s", "user" if k % 2 == 0 else "assistant", f"{k} {FILLER}", at=clock())
        clock.advance(hours=2)
    memory.age(now=clock())
    ctx = memory.assemble("s", budget=3000, now=clock())
    msgs = to_langchain_messages(ctx, memory_role="system")
    assert isinstance(msgs[0], SystemMessage) and image_blocks(msgs[0])
    with pytest.raises(ValueError, match="memory_role"):
        OpticalMemoryMiddleware(memory, memory_role="assistant")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        OpticalMemoryMiddleware(memory, budget=0)
    memory.close()


# -- chat message history ------------------------------------------------------------------------


@pytest.mark.filterwarnings("ignore:RunnableWithMessageHistory is deprecated")
def test_chat_history_with_runnable_with_message_history(sqlite_url: str) -> None:
    memory = memory_at(sqlite_url)
    clock = Clock()
    model = RecordingChatModel(
        messages=iter([f"Answer {k}. {FILLER}" for k in range(14)]), received=[]
    )
    chain = RunnableWithMessageHistory(
        model,
        lambda sid: OpticalChatMessageHistory(memory, sid, budget=2000, now=clock),
    )
    cfg = {"configurable": {"session_id": "h1"}}
    for k in range(14):
        chain.invoke([HumanMessage(f"Question {k}: {FILLER}")], cfg)
        clock.advance(hours=2)
        if k % 4 == 3:
            memory.age(now=clock())
    turns = memory.turns("h1")
    assert len(turns) == 28 and [t.role for t in turns[:2]] == ["user", "assistant"]
    seen = model.received[-1]
    assert seen[0].id == "optical-memory" and image_blocks(seen[0])
    assert seen[-1].text.startswith("Question 13:")
    assert count_tokens_with_images(seen[:-1]) <= 2000
    memory.close()


def test_chat_history_bulk_add_is_one_transaction_and_clear_forgets(db_url: str) -> None:
    memory = memory_at(db_url)
    history = OpticalChatMessageHistory(memory, "h2")
    assert history.messages == []
    history.add_messages([HumanMessage("hi"), AIMessage("hello")])
    with pytest.raises(InvalidContent):
        history.add_messages([HumanMessage("ok"), AIMessage("bad \ud800 surrogate")])
    assert [t.content for t in memory.turns("h2")] == ["hi", "hello"]
    assert [m.text for m in history.messages] == ["hi", "hello"]
    # our own memory message is never stored back
    history.add_messages(
        [HumanMessage(content=[{"type": "text", "text": "m"}], id="optical-memory")]
    )
    assert len(memory.turns("h2")) == 2
    history.clear()
    assert history.messages == []
    history.clear()  # clearing an empty history is fine
    memory.close()


def test_chat_history_async(sqlite_url: str) -> None:
    memory = memory_at(sqlite_url)
    clock = Clock()
    history = OpticalChatMessageHistory(memory, "h3", budget=1500, now=clock)

    async def go() -> list[BaseMessage]:
        for k in range(12):
            await history.aadd_messages(
                [HumanMessage(f"Q{k} {FILLER}"), AIMessage(f"A{k} {FILLER}")]
            )
            clock.advance(hours=3)
        await memory.aage(now=clock())
        got = await history.aget_messages()
        await history.aclear()
        assert await history.aget_messages() == []
        return got

    got = asyncio.run(go())
    assert got[0].id == "optical-memory" and image_blocks(got[0])
    assert got[-1].text.startswith("A11 ")
    memory.close()


# -- token counting ------------------------------------------------------------------------------


def _png(w: int, h: int) -> str:
    buf = io.BytesIO()
    Image.new("L", (w, h), 255).save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


def test_count_tokens_charges_images_what_the_target_charges() -> None:
    big, small = _png(1024, 1024), _png(512, 512)
    text = HumanMessage("look")
    msgs = [
        HumanMessage(
            content=[
                {"type": "text", "text": "look"},
                {"type": "image", "base64": big, "mime_type": "image/png"},
            ]
        )
    ]
    base = count_tokens_approximately([text])
    assert count_tokens_approximately(msgs) == base + 85  # langchain-core's flat guess
    assert count_tokens_with_images(msgs) == base + 273  # DeepSeek-OCR base mode
    assert count_tokens_with_images(msgs, target="openai") == base + 765
    low = [
        HumanMessage(
            content=[
                {
                    "type": "image_url",
                    "image_url": {"url": f"data:image/png;base64,{big}", "detail": "low"},
                }
            ]
        )
    ]
    assert (
        count_tokens_with_images(low, target="openai")
        - count_tokens_approximately([HumanMessage(content=[])])
        == 85
    )
    tiny = [
        HumanMessage(
            content=[
                {"type": "image", "source_type": "base64", "data": small, "mime_type": "image/png"}
            ]
        )
    ]
    assert (
        count_tokens_with_images(tiny)
        == count_tokens_approximately([HumanMessage(content=[])]) + 73
    )
    # a JPEG is measured through Pillow; a remote image is charged the largest page
    buf = io.BytesIO()
    Image.new("RGB", (640, 400)).save(buf, format="JPEG")
    jpeg = base64.b64encode(buf.getvalue()).decode()
    j = [HumanMessage(content=[{"type": "image", "base64": jpeg, "mime_type": "image/jpeg"}])]
    empty = count_tokens_approximately([HumanMessage(content=[])])
    assert count_tokens_with_images(j) == empty + 111
    remote = [HumanMessage(content=[{"type": "image", "url": "https://example.com/a.png"}])]
    assert count_tokens_with_images(remote) == empty + 421


def test_image_token_counter_drives_trim_messages() -> None:
    page = {"type": "image", "base64": _png(1280, 1280), "mime_type": "image/png"}
    msgs = [
        HumanMessage(content=[{"type": "text", "text": "old"}, page]),
        AIMessage("noted"),
        HumanMessage("what now?"),
    ]
    counter = image_token_counter("deepseek-ocr")
    assert counter(msgs) > 421
    kept = trim_messages(msgs, max_tokens=100, token_counter=counter, strategy="last")
    assert [m.text for m in kept] == ["noted", "what now?"]
    kept = trim_messages(msgs, max_tokens=500, token_counter=counter, strategy="last")
    assert len(kept) == 3


def test_example_shows_help_without_network(capsys: pytest.CaptureFixture[str]) -> None:
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parent.parent / "examples" / "langchain_agent.py"
    spec = importlib.util.spec_from_file_location("example_langchain_agent", path)
    assert spec and spec.loader
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    with pytest.raises(SystemExit) as exc:
        example.main(["--help"])
    assert exc.value.code == 0
    assert "--model" in capsys.readouterr().out
