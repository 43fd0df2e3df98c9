"""Conditional writes: a writer that decided what is new from what it read appends only if the
session is still as it read it (``expected_last_turn``), so two processes recording the same
conversation (two service workers, two agent hosts) store each message once."""

from __future__ import annotations

import pickle
import threading
from collections.abc import Callable
from typing import Any

import pytest
from langchain_core.messages import AIMessage, BaseMessage, HumanMessage

from optical_memory import InvalidInput, MemoryManager, SessionChanged
from optical_memory.adapters.langchain import OpticalMemoryMiddleware
from optical_memory.adapters.openai import record_openai_messages


def contents(mm: MemoryManager, sid: str = "s") -> list[str]:
    return [t.content for t in mm.turns(sid)]


def conversation(n: int) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for k in range(n):
        out.append({"role": "user", "content": f"Question {k}: when does ferry {k} leave?"})
        out.append({"role": "assistant", "content": f"Answer {k}: at {k % 12 + 1} pm."})
    return out


def test_an_append_on_the_expected_turn_is_stored_and_a_stale_one_writes_nothing(
    db_url: str,
) -> None:
    with MemoryManager(db_url) as mm:
        assert mm.add_turns("s", [("user", "one")], expected_last_turn=0)[0].seq == 1
        assert mm.add_turn("s", "assistant", "two", expected_last_turn=1).seq == 2
        with pytest.raises(SessionChanged) as caught:
            mm.add_turns("s", [("user", "three"), ("assistant", "four")], expected_last_turn=1)
        err = caught.value
        assert (err.session_id, err.expected, err.actual) == ("s", 1, 2)
        assert "read its turns again and retry" in str(err)
        assert contents(mm) == ["one", "two"]  # nothing of the stale append
        # the reservation was rolled back too: numbering goes on where it was
        assert mm.add_turn("s", "user", "three", expected_last_turn=2).seq == 3
        # a session that does not exist yet has no turns: 0 is its newest
        with pytest.raises(SessionChanged):
            mm.add_turn("new", "user", "x", expected_last_turn=4)
        assert "new" not in {i.session_id for i in mm.sessions()}
        # without the condition, appends are as before
        assert mm.add_turn("s", "assistant", "four").seq == 4


def test_a_conditional_replace_checks_the_newest_live_turn(db_url: str) -> None:
    with MemoryManager(db_url) as mm:
        mm.add_turns("s", [("user", "q"), ("assistant", "a1")])
        with pytest.raises(SessionChanged):
            mm.replace_turns("s", 2, [("assistant", "a2")], expected_last_turn=1)
        assert contents(mm) == ["q", "a1"] and mm.superseded("s") == []
        mm.replace_turns("s", 2, [], expected_last_turn=2)  # the reply withdrawn
        # the newest live turn is now 1 (numbers of superseded turns are not reused), and that
        # is what a reader of turns() expects; an older view is a change
        assert [t.seq for t in mm.turns("s")] == [1]
        with pytest.raises(SessionChanged):
            mm.add_turn("s", "assistant", "late", expected_last_turn=0)
        stored = mm.add_turn("s", "assistant", "a3", expected_last_turn=mm.turns("s")[-1].seq)
        assert contents(mm) == ["q", "a3"] and stored.seq == 3
        with pytest.raises(SessionChanged):
            mm.replace_turns("s", 3, [("assistant", "a4")], expected_last_turn=1)
        assert contents(mm) == ["q", "a3"]


@pytest.mark.parametrize("bad", [-1, True, "3", 1.0, 2**63])
def test_expected_last_turn_must_be_a_turn_number(sqlite_url: str, bad: object) -> None:
    with MemoryManager(sqlite_url) as mm:
        with pytest.raises(InvalidInput, match="expected_last_turn"):
            mm.add_turns("s", [("user", "x")], expected_last_turn=bad)  # type: ignore[arg-type]
        mm.add_turn("s", "user", "x")
        with pytest.raises(InvalidInput, match="expected_last_turn"):
            mm.replace_turns("s", 1, [], expected_last_turn=bad)  # type: ignore[arg-type]
        assert contents(mm) == ["x"]


def test_session_changed_pickles_with_its_numbers() -> None:
    err = pickle.loads(pickle.dumps(SessionChanged("chat", 3, 5)))
    assert (err.session_id, err.expected, err.actual) == ("chat", 3, 5)
    assert str(err) == str(SessionChanged("chat", 3, 5))


def _interleave(mm: MemoryManager, other_writer: Callable[[], Any]) -> None:
    """Let ``other_writer`` (another process's write) land right after ``mm``'s next read of
    a session's turns, before ``mm`` writes what it decided from that read: the race of two
    workers recording one conversation, made deterministic."""
    real = mm.turns
    fired = False

    def turns(*args: Any, **kwargs: Any) -> Any:
        nonlocal fired
        out = real(*args, **kwargs)
        if not fired:
            fired = True
            other_writer()
        return out

    mm.turns = turns  # type: ignore[method-assign]


def test_two_processes_recording_one_conversation_store_each_message_once(db_url: str) -> None:
    """The proxy's recording (record_openai_messages) in two managers over one database."""
    convo = conversation(3)
    with MemoryManager(db_url) as first, MemoryManager(db_url) as second:
        record_openai_messages(first, "s", convo[:2])
        # the client sends the grown conversation to both workers at once
        _interleave(first, lambda: record_openai_messages(second, "s", convo))
        stored = record_openai_messages(first, "s", convo)
        assert stored == []  # the other worker stored them first; nothing twice
        assert contents(first) == [m["content"] for m in convo]
        # and each worker's view stays right afterwards
        grown = [*convo, {"role": "user", "content": "And the last ferry?"}]
        assert [t.content for t in record_openai_messages(second, "s", grown)] == [
            "And the last ferry?"
        ]
        assert record_openai_messages(first, "s", grown) == []
        assert contents(second) == [m["content"] for m in grown]


def test_a_regenerate_racing_an_append_does_not_supersede_the_other_writers_turns(
    db_url: str,
) -> None:
    convo = conversation(2)
    with MemoryManager(db_url) as first, MemoryManager(db_url) as second:
        record_openai_messages(first, "s", convo)
        regenerated = [*convo[:-1], {"role": "assistant", "content": "Answer 1, again: 3 pm."}]
        grown = [*convo, {"role": "user", "content": "Thanks. And tomorrow?"}]
        _interleave(first, lambda: record_openai_messages(second, "s", grown))
        record_openai_messages(first, "s", regenerated)
        # first saw the other worker's turn on its retry: the regenerate supersedes both
        # the old reply and the question after it, as it would have in one process
        assert contents(first) == [m["content"] for m in regenerated]
        assert [t.content for t in first.superseded("s")] == [
            convo[-1]["content"],
            "Thanks. And tomorrow?",
        ]


def test_two_agent_hosts_recording_one_thread_store_each_message_once(db_url: str) -> None:
    """The LangChain middleware's recording, by message id, in two managers."""
    messages: list[BaseMessage] = [
        HumanMessage("Book the 7:40 ferry.", id="h1"),
        AIMessage("Booked: the 7:40 from pier four.", id="a1"),
        HumanMessage("And a table for two?", id="h2"),
        AIMessage("Done: 8 pm at the harbour.", id="a2"),
    ]
    with MemoryManager(db_url) as first, MemoryManager(db_url) as second:
        host_a = OpticalMemoryMiddleware(first, budget=2000, tools=False)
        host_b = OpticalMemoryMiddleware(second, budget=2000, tools=False)
        host_a.record("t", messages[:2])
        _interleave(first, lambda: host_b.record("t", messages))
        assert host_a.record("t", messages) == []
        assert contents(first, "t") == [str(m.content) for m in messages]
        assert [t.metadata["message_id"] for t in first.turns("t")] == ["h1", "a1", "h2", "a2"]


def test_concurrent_writers_in_two_managers_lose_and_double_nothing(db_url: str) -> None:
    """Eight threads over two managers send the same conversation at once, round after round
    as it grows (a client's request delivered to several workers): every message is stored
    exactly once, in order, and nothing is superseded."""
    convo = conversation(10)
    errors: list[BaseException] = []
    with MemoryManager(db_url) as first, MemoryManager(db_url) as second:
        rounds = threading.Barrier(8)

        def client(mm: MemoryManager) -> None:
            try:
                for n in range(1, len(convo) + 1):
                    rounds.wait(timeout=60)  # all send convo[:n] together
                    record_openai_messages(mm, "s", convo[:n])
            except BaseException as exc:  # reported below
                errors.append(exc)
                rounds.abort()

        threads = [threading.Thread(target=client, args=(m,)) for m in [first, second] * 4]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=120)
        assert not errors, errors
        assert contents(first) == [m["content"] for m in convo]
        assert first.superseded("s") == []
