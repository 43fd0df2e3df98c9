"""What the LangChain adapter and the agent tools do at their edges, found by a hostile pass:
a message LangGraph edits in place (sent again with its id) reaches the archive and the
model, LangChain's own role names are understood, a tool's answer fits the share of the
budget it may take and shows what fits, and a model's worst arguments are answered, never
raised. Real LangChain agents over a real SQLite store."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip("langchain")

from fakes import RecordingChatModel  # noqa: E402
from langchain.agents import create_agent  # noqa: E402
from langchain_core.messages import AIMessage, ChatMessage, HumanMessage, ToolMessage  # noqa: E402
from langgraph.checkpoint.memory import InMemorySaver  # noqa: E402

from optical_memory import MemoryManager  # noqa: E402
from optical_memory.adapters.langchain import (  # noqa: E402
    OpticalChatMessageHistory,
    OpticalMemoryMiddleware,
    message_to_turn,
)
from optical_memory.adapters.openai import handle_memory_tool_call  # noqa: E402
from optical_memory.errors import InvalidConfiguration  # noqa: E402


@pytest.fixture
def mm(tmp_path: Path):  # type: ignore[no-untyped-def]
    with MemoryManager(f"sqlite:///{tmp_path / 'm.db'}") as m:
        yield m


def _live(mm: MemoryManager, sid: str) -> list[str]:
    return [t.content for t in mm.turns(sid)]


def test_a_message_edited_in_place_reaches_the_archive_and_the_model(mm: MemoryManager) -> None:
    """LangGraph replaces a message sent again with its id: the edit is a new version of the
    turn (the old one superseded, kept in the archive), and the model is shown the edit."""
    model = RecordingChatModel(messages=iter([AIMessage("r1"), AIMessage("r2")]), received=[])
    middleware = OpticalMemoryMiddleware(mm, budget=2000, tools=False)
    agent = create_agent(model, [], middleware=[middleware], checkpointer=InMemorySaver())
    cfg = {"configurable": {"thread_id": "t"}}
    agent.invoke({"messages": [HumanMessage("Book the flight to Lisbon", id="q1")]}, cfg)
    agent.invoke({"messages": [HumanMessage("Book the flight to Porto", id="q1")]}, cfg)
    assert [m.content for m in model.received[-1]] == ["Book the flight to Porto", "r1"]
    assert _live(mm, "t") == ["Book the flight to Porto", "r1", "r2"]
    assert "Book the flight to Lisbon" in [t.content for t in mm.superseded("t")]


def test_an_edited_tool_call_is_stored_as_its_new_version(mm: MemoryManager) -> None:
    """The human-in-the-loop edit: the same call id, other arguments."""
    middleware = OpticalMemoryMiddleware(mm, budget=2000, session_key="s", tools=False)
    ask = HumanMessage("book it", id="q1")

    def call(to: str) -> AIMessage:
        return AIMessage("", id="a1", tool_calls=[{"id": "c1", "name": "book", "args": {"to": to}}])

    middleware.record("s", [ask, call("Lisbon")])
    middleware.record("s", [ask, call("Lisbon")])  # sent again unchanged: nothing stored
    assert len(mm.turns("s")) == 2
    middleware.record("s", [ask, call("Porto"), ToolMessage("booked", tool_call_id="c1", id="t1")])
    turns = mm.turns("s")
    assert [t.role for t in turns] == ["user", "assistant", "tool"]
    assert turns[1].metadata["tool_calls"][0]["args"] == {"to": "Porto"}


def test_a_chat_message_in_langchains_own_role_names_keeps_its_speaker() -> None:
    for role, stored in (("ai", "assistant"), ("human", "user"), ("developer", "system")):
        assert message_to_turn(ChatMessage(role=role, content="x"))["role"] == stored


@pytest.mark.parametrize("budget", [20, 40, 60, 100, 160])
def test_a_tool_answer_never_takes_more_than_half_the_budget(
    mm: MemoryManager, budget: int
) -> None:
    mm.add_turns("s", [("user", "The ferry to Lisbon leaves at 7:40 from pier four."), ("assistant", "Noted.")])  # fmt: skip
    middleware = OpticalMemoryMiddleware(mm, budget=budget, session_key="s")
    whole = OpticalMemoryMiddleware(mm, budget=4096, session_key="s").read_answer(None, 1, 1)
    for answer in (middleware.read_answer(None, 1, 1), middleware.recall_answer(None, "ferry")):
        assert mm.count_tokens("tool", answer) <= budget // 2, (budget, answer)
    if mm.count_tokens("tool", whole) <= budget // 2:  # what fits is shown whole
        assert middleware.read_answer(None, 1, 1) == whole
    elif budget >= 60:  # and a cut answer shows the start of the turn's line
        assert "[turn 1, user" in middleware.read_answer(None, 1, 1)


def test_a_models_worst_tool_arguments_are_answered_not_raised(mm: MemoryManager) -> None:
    mm.add_turn("s", "user", "hello")
    for arguments in (
        '{"first_turn": "' + "9" * 5000 + '", "last_turn": 1}',
        "[" * 100_000 + "]" * 100_000,
        '{"query": ' + "[" * 100_000 + "]" * 100_000 + "}",
    ):
        for name in ("read_memory", "recall_memory"):
            call = {"id": "c1", "function": {"name": name, "arguments": arguments}}
            answer = handle_memory_tool_call(mm, "s", call)
            assert answer["tool_call_id"] == "c1" and answer["content"].startswith("Error: ")


def test_bad_settings_are_refused_when_made_with_a_typed_error(mm: MemoryManager) -> None:
    for kwargs in ({"memory_role": "bogus"}, {"recall_scope": "all"}, {"start_on": "first"}):
        with pytest.raises(InvalidConfiguration):
            OpticalMemoryMiddleware(mm, **kwargs)  # type: ignore[arg-type]
    with pytest.raises(InvalidConfiguration, match="memory_role"):
        OpticalChatMessageHistory(mm, "s", memory_role="bogus")  # type: ignore[arg-type]


def test_a_history_with_no_user_turn_opens_on_nothing(mm: MemoryManager) -> None:
    """``start_on="user"``: a view never opens on an assistant message (Anthropic refuses
    one), as ``trim_messages(start_on="human")`` gives nothing for such a history."""
    history = OpticalChatMessageHistory(mm, "only-ai")
    history.add_ai_message("I speak first")
    assert history.messages == []
    history.add_user_message("hello")
    assert [m.type for m in history.messages] == ["human"]
