"""Tool calls are paid for and shown: the budget holds with large arguments and parallel calls,
and a paged tool call still shows its tool's name and arguments.

What is sent is counted independently of the library, with langchain-core's
``count_tokens_approximately`` (tool calls, ids, names and all), images charged what the
target charges (``count_tokens_with_images``).
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from fakes import RecordingChatModel
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from langchain.agents import create_agent
from langchain_core.messages import AIMessage, HumanMessage, SystemMessage
from langchain_core.tools import tool
from langgraph.checkpoint.memory import InMemorySaver

from optical_memory import AgingPolicy, MemoryManager
from optical_memory.adapters.langchain import (
    OpticalMemoryMiddleware,
    count_tokens_with_images,
    message_to_turn,
)
from optical_memory.adapters.openai import record_openai_messages, to_openai_messages
from optical_memory.render import PageRenderer, RenderTurn
from optical_memory.tokens import approximate_tokens
from optical_memory.turn_text import PAGE_ARGUMENT_CHARS, cost_text, page_text

T0 = datetime(2025, 5, 1, 8, 0, tzinfo=UTC)
SETTINGS = settings(
    max_examples=12,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)

# Argument text with what makes serialisations differ in length: quotes, backslashes, newlines,
# non-ASCII letters.
arg_text = st.text(
    alphabet=st.sampled_from(list("abc xyz019'\"\\\n{}:,é漢")), min_size=0, max_size=2600
)
call = st.fixed_dictionaries(
    {"name": st.sampled_from(["write_file", "search", "x"]), "text": arg_text}
)
exchange = st.fixed_dictionaries(
    {
        "user": st.text(alphabet="abcdef ghij.", min_size=1, max_size=400),
        "calls": st.lists(call, min_size=0, max_size=4),  # parallel calls in one message
        "result": st.text(alphabet="okay done 0123", min_size=0, max_size=900),
        "reply": st.text(alphabet="sure thing.", min_size=0, max_size=300),
    }
)


def sent_tokens(messages: list[Any], target: str) -> int:
    return count_tokens_with_images(messages, target=target)


def library_cost(messages: list[Any]) -> int:
    """What the library charges for these messages as turns (all their text, tool calls too)."""
    rows = [r for r in (message_to_turn(m) for m in messages) if r is not None]
    return sum(
        approximate_tokens(r["role"], cost_text(r["role"], r["content"], r["metadata"]))
        for r in rows
    )


def openai_messages(ex: dict[str, Any], k: int) -> list[dict[str, Any]]:
    msgs: list[dict[str, Any]] = [{"role": "user", "content": f"{k}: {ex['user']}"}]
    if ex["calls"]:
        calls = [
            {
                "id": f"call_{k}_{i}",
                "type": "function",
                "function": {
                    "name": c["name"],
                    "arguments": json.dumps({"path": f"f{i}.txt", "text": c["text"]}),
                },
            }
            for i, c in enumerate(ex["calls"])
        ]
        msgs.append({"role": "assistant", "content": None, "tool_calls": calls})
        msgs += [
            {"role": "tool", "tool_call_id": c["id"], "content": ex["result"] or "ok"}
            for c in calls
        ]
    msgs.append({"role": "assistant", "content": ex["reply"] or "done"})
    return msgs


@SETTINGS
@given(
    exchanges=st.lists(exchange, min_size=1, max_size=7),
    budget=st.integers(min_value=400, max_value=3000),
    target=st.sampled_from(["openai", "deepseek-ocr", "anthropic"]),
)
def test_openai_adapter_sends_no_more_than_the_budget(
    tmp_path_factory: pytest.TempPathFactory,
    exchanges: list[dict[str, Any]],
    budget: int,
    target: str,
) -> None:
    path = tmp_path_factory.mktemp("budget") / "m.db"
    memory = MemoryManager(f"sqlite:///{path}", policy=AgingPolicy(keep_last_turns=3, min_fill=0))
    conversation: list[dict[str, Any]] = []
    at = T0
    for k, ex in enumerate(exchanges):
        conversation += openai_messages(ex, k)
        record_openai_messages(memory, "s", conversation, at=at)
        at += timedelta(hours=3)
        if k % 2:
            memory.age(now=at)
    question = {"role": "user", "content": "and now?"}
    record_openai_messages(memory, "s", [*conversation, question], at=at)
    ctx = memory.assemble("s", budget=budget, target=target, now=at)
    sent = to_openai_messages(ctx)
    measured = sent_tokens(sent, target)
    assert measured <= ctx.tokens, "the assembled cost must bound what is sent"
    assert ctx.over_budget or measured <= budget


@tool
def write_file(path: str, text: str) -> str:
    """Write text to a file."""
    return "ok"


BIG_PARALLEL = {
    "user": "Save both drafts.",
    "calls": [
        {"name": "write_file", "text": "z" * 2500},
        {"name": "write_file", "text": "y" * 2500},
    ],
    "result": "ok",
    "reply": "done",
}


@SETTINGS
@given(
    exchanges=st.lists(exchange, min_size=1, max_size=5),
    budget=st.integers(min_value=600, max_value=3000),
)
@example(exchanges=[BIG_PARALLEL, BIG_PARALLEL], budget=1500)  # the shape
def test_middleware_sends_no_more_than_the_budget(
    tmp_path_factory: pytest.TempPathFactory, exchanges: list[dict[str, Any]], budget: int
) -> None:
    path = tmp_path_factory.mktemp("mw") / "m.db"
    memory = MemoryManager(f"sqlite:///{path}", policy=AgingPolicy(keep_last_turns=3, min_fill=0))
    replies: list[AIMessage] = []
    for k, ex in enumerate(exchanges):
        if ex["calls"]:
            replies.append(
                AIMessage(
                    content="",
                    tool_calls=[
                        {
                            "name": "write_file",
                            "args": {"path": f"f{i}.txt", "text": c["text"]},
                            "id": f"call_{k}_{i}",
                        }
                        for i, c in enumerate(ex["calls"])
                    ],
                )
            )
        replies.append(AIMessage(content=ex["reply"] or "done"))
    replies.append(AIMessage(content="All saved."))
    model = RecordingChatModel(messages=iter(replies), received=[])
    clock = [T0]
    mw = OpticalMemoryMiddleware(memory, budget=budget, target="openai", now=lambda: clock[0])
    agent = create_agent(model, tools=[write_file], middleware=[mw], checkpointer=InMemorySaver())
    cfg = {"configurable": {"thread_id": "t"}}
    for k, ex in enumerate(exchanges):
        agent.invoke({"messages": [HumanMessage(f"{k}: {ex['user']}")]}, cfg)
        clock[0] += timedelta(hours=3)
        if k % 3 == 2:  # tool calls stay in the recent text between passes
            memory.age(now=clock[0])
    # a plain question after them all: the earlier tool calls must be paid for in full
    agent.invoke({"messages": [HumanMessage("And now?")]}, cfg)
    final = [m for m in model.received[-1] if not isinstance(m, SystemMessage)]
    assert sent_tokens(final, "openai") <= budget
    for request in model.received:
        convo = [m for m in request if not isinstance(m, SystemMessage)]
        measured = sent_tokens(convo, "openai")
        # Over budget only when the newest question and the tool calls made for it are, alone.
        newest = max(i for i, m in enumerate(convo) if isinstance(m, HumanMessage))
        assert measured <= budget or library_cost(convo[newest:]) > budget


# -- pages draw tool calls -----------------------------------------------------------------------


def test_page_text_names_the_tool_and_cuts_long_arguments() -> None:
    meta = {
        "tool_calls": [
            {"id": "c1", "name": "write_file", "args": {"path": "notes.txt", "text": "z" * 900}},
            {"id": "c2", "name": "search", "args": {"query": "tide tables"}},
        ]
    }
    text = page_text("assistant", "Saving it.", meta)
    assert text.startswith("Saving it. [calls write_file(")
    assert 'search({"query": "tide tables"})' in text
    first = text.split("write_file(", 1)[1].split("), search", 1)[0]
    assert len(first) == PAGE_ARGUMENT_CHARS and first.endswith("…")
    plan = PageRenderer().plan([RenderTurn("assistant", T0, text)], (1280, 1280), (1280, 1280))
    drawn = " ".join(plan.text_lines)
    assert "write_file" in drawn and "notes.txt" in drawn and "tide tables" in drawn


def test_a_paged_tool_call_keeps_its_name_and_arguments_on_the_page(sqlite_url: str) -> None:
    """The aging pass draws the call (read back from the layout of the stored page), while the
    archive keeps the arguments whole."""
    memory = MemoryManager(sqlite_url, policy=AgingPolicy(keep_last_turns=2, min_fill=0))
    long_text = "Dear harbour master, " + "the tide gauge needs recalibration. " * 40
    args = json.dumps({"path": "letters/harbour.txt", "text": long_text})
    convo = [
        {"role": "user", "content": "Write the letter to the harbour master, please. " * 3},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "w1",
                    "type": "function",
                    "function": {"name": "write_file", "arguments": args},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "w1", "content": "wrote 1,500 bytes"},
        {"role": "assistant", "content": "Done: the letter is saved. " * 4},
        {"role": "user", "content": "Thanks."},
        {"role": "assistant", "content": "Anytime."},
    ]
    record_openai_messages(memory, "s", convo, at=T0)
    memory.age(now=T0 + timedelta(hours=2))
    pages = memory.pages("s")
    assert pages and pages[0].first_seq <= 2 <= pages[0].last_seq
    # What the page shows of each turn: the same drawing the aging pass makes.
    turns = memory.read("s", pages[0].first_seq, pages[0].last_seq)
    shown = [
        RenderTurn(t.metadata.get("name") or t.role, t.at, page_text(t.role, t.content, t.metadata))
        for t in turns
    ]
    plan = PageRenderer().plan(shown, (1280, 1280), (1280, 1280))
    drawn = " ".join(plan.text_lines)
    assert "write_file" in drawn and "letters/harbour.txt" in drawn and "…" in drawn
    # the archive keeps the arguments whole
    call = memory.turns("s")[1].metadata["tool_calls"][0]
    assert json.loads(call["arguments"] if "arguments" in call else json.dumps(call["args"])) == {
        "path": "letters/harbour.txt",
        "text": long_text,
    }
    assert memory.turns("s")[1].tokens > len(long_text) // 4  # its cost counts the arguments


@pytest.mark.slow
def test_ocr_reads_the_tool_name_on_the_stored_page(sqlite_url: str) -> None:
    pytest.importorskip("rapidocr_onnxruntime")
    import io

    from PIL import Image

    from benchmarks.ocr import rapidocr_read

    memory = MemoryManager(sqlite_url, policy=AgingPolicy(keep_last_turns=2, min_fill=0))
    args = json.dumps({"path": "harbour_letter.txt", "text": "recalibrate the gauge " * 30})
    convo = [
        {"role": "user", "content": "Write the harbour letter now, please. " * 4},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "w1",
                    "type": "function",
                    "function": {"name": "write_file", "arguments": args},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "w1", "content": "wrote it"},
        {"role": "assistant", "content": "Saved the letter for you. " * 20},
        {"role": "user", "content": "Thanks."},
        {"role": "assistant", "content": "Anytime."},
    ]
    record_openai_messages(memory, "s", convo, at=T0)
    memory.age(now=T0 + timedelta(days=1, hours=1))
    page = memory.pages("s")[0]
    assert page.tier != "text"
    img = Image.open(io.BytesIO(memory.page_image("s", page.page_id)))
    read = rapidocr_read(img).replace(" ", "")
    assert "write_file" in read and "harbour_letter" in read
