"""Conversation files -> turns: every format, its timestamps, its metadata and its errors."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from optical_memory import MemoryManager
from optical_memory.importers import (
    LOCOMO_TURN_SPACING,
    ImportFormatError,
    detect_format,
    load_conversations,
    load_jsonl,
    load_locomo,
    load_longmemeval,
    load_openai,
    locomo_qa,
    longmemeval_qa,
    parse_locomo_date,
    parse_longmemeval_date,
)

DATA = Path(__file__).parent / "data" / "import"
SHARED = Path("/work/shared/data")
SAMPLE = Path(__file__).resolve().parent.parent / "memory" / "sample" / "conversation.jsonl"


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)


# -- dates ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("1:56 pm on 8 May, 2023", utc(2023, 5, 8, 13, 56)),
        ("12:09 am on 13 September, 2023", utc(2023, 9, 13, 0, 9)),
        ("12:30 pm on 1 Jan, 2024", utc(2024, 1, 1, 12, 30)),
        ("10:37 AM on 27 June 2023", utc(2023, 6, 27, 10, 37)),
    ],
)
def test_locomo_dates(text: str, expected: datetime) -> None:
    assert parse_locomo_date(text) == expected


@pytest.mark.parametrize(
    "text", ["8 May 2023", "1:56 pm on 8 Maybe, 2023", "", "25:00 pm on 1 May, 2023"]
)
def test_bad_locomo_dates(text: str) -> None:
    with pytest.raises(ValueError):
        parse_locomo_date(text)


def test_longmemeval_dates() -> None:
    assert parse_longmemeval_date("2023/05/28 (Sun) 19:47") == utc(2023, 5, 28, 19, 47)
    assert parse_longmemeval_date("2023/5/2 07:05") == utc(2023, 5, 2, 7, 5)
    for bad in ("2023-05-28 19:47", "2023/13/01 (Sun) 10:00", "yesterday"):
        with pytest.raises(ValueError):
            parse_longmemeval_date(bad)


# -- detection --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "fmt"),
    [
        ("turns.jsonl", "jsonl"),
        ("openai_messages.json", "openai"),
        ("locomo_tiny.json", "locomo"),
        ("longmemeval_tiny.json", "longmemeval"),
    ],
)
def test_detect_format(name: str, fmt: str) -> None:
    assert detect_format(DATA / name) == fmt


def test_detect_jsonl_without_the_extension(tmp_path: Path) -> None:
    path = tmp_path / "chat.txt"
    path.write_text((DATA / "turns.jsonl").read_text())
    assert detect_format(path) == "jsonl"
    convs = load_conversations(path)
    assert list(convs) == ["garden", "trip", "chat"]  # lines without a session: the file's name


def test_detect_refuses_unknown_shapes() -> None:
    with pytest.raises(ImportFormatError, match="cannot tell the format"):
        detect_format(DATA / "unknown_shape.json")


# -- JSON Lines -------------------------------------------------------------------------------


def test_jsonl_sessions_times_and_metadata() -> None:
    convs = load_jsonl(DATA / "turns.jsonl")
    assert list(convs) == ["garden", "trip", "turns"]  # first appearance order
    garden = convs["garden"]
    assert [t["content"] for t in garden] == [
        "I sowed 12 pepper cells on 20 February.",
        "Keep them on the heat mat at 25 degrees until they sprout.",
        "Ten of twelve came up.",  # content parts joined as text
    ]
    assert garden[0]["at"] == utc(2025, 2, 20, 18, 30)
    assert garden[1]["metadata"] == {"source": "test"}
    trip = convs["trip"]
    assert trip[0]["at"] == utc(2025, 1, 12, 10, 15)  # naive ISO means UTC
    assert trip[1]["at"] == datetime.fromtimestamp(1736677020, UTC)  # Unix seconds
    (orphan,) = convs["turns"]  # no session_id: the file's own name
    assert orphan["at"] is None and orphan["metadata"] == {"name": "Maya"}


def test_jsonl_session_option_overrides_every_line() -> None:
    convs = load_jsonl(DATA / "turns.jsonl", session="all-in-one")
    assert list(convs) == ["all-in-one"] and len(convs["all-in-one"]) == 6


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("bad_line.jsonl", r"bad_line\.jsonl, line 3: not valid JSON"),
        ("bad_role.jsonl", r"bad_role\.jsonl, line 2: role must be one of"),
        ("bad_time.jsonl", r"bad_time\.jsonl, line 2: at='yesterday at noon' is not an ISO 8601"),
        ("bad_json.json", r"bad_json\.json: not valid JSON at line 4, column 1"),
    ],
)
def test_errors_say_where(name: str, message: str) -> None:
    with pytest.raises(ImportFormatError, match=message):
        load_conversations(DATA / name)


def test_missing_file_and_directory(tmp_path: Path) -> None:
    with pytest.raises(ImportFormatError, match="no such file"):
        load_conversations(tmp_path / "nope.jsonl")
    with pytest.raises(ImportFormatError, match="is a directory"):
        load_conversations(tmp_path, format="openai")


def test_empty_file_has_no_turns(tmp_path: Path) -> None:
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n\n")
    with pytest.raises(ImportFormatError, match="no turns found"):
        load_conversations(empty)


def test_unknown_format_named() -> None:
    with pytest.raises(ImportFormatError, match="unknown format 'xml'"):
        load_conversations(DATA / "turns.jsonl", format="xml")


# -- OpenAI messages --------------------------------------------------------------------------


def test_openai_messages() -> None:
    (turns,) = load_openai(DATA / "openai_messages.json").values()
    assert [t["role"] for t in turns] == ["system", "user", "assistant", "tool", "assistant"]
    assert turns[1]["content"] == "What is the weather in Kyoto?\n[image]"
    assert turns[2]["content"] == "" and turns[2]["metadata"]["tool_calls"][0]["id"] == "call_1"
    assert turns[3]["metadata"] == {"tool_call_id": "call_1"}
    assert turns[4]["metadata"] == {"name": "planner"}
    assert load_openai(DATA / "openai_messages.json", session="x").keys() == {"x"}


def test_openai_request_body(tmp_path: Path) -> None:
    path = tmp_path / "request.json"
    path.write_text(json.dumps({"model": "m", "messages": [{"role": "user", "content": "hi"}]}))
    assert detect_format(path) == "openai"
    assert load_conversations(path) == {
        "request": [{"role": "user", "content": "hi", "at": None, "metadata": {}}]
    }


# -- LoCoMo -----------------------------------------------------------------------------------


def test_locomo_turns() -> None:
    convs = load_locomo(DATA / "locomo_tiny.json")
    assert list(convs) == ["conv-t1", "conv-t2"]
    t1 = convs["conv-t1"]
    assert [t["role"] for t in t1] == ["user", "assistant", "user", "assistant", "user"]
    assert t1[0]["metadata"] == {"name": "Ana", "dia_id": "D1:1", "session": 1}
    # each turn gets its own time: the session's date plus 10 s per turn
    assert [t["at"] for t in t1[:3]] == [
        utc(2023, 5, 8, 13, 56) + i * LOCOMO_TURN_SPACING for i in range(3)
    ]
    assert t1[3]["at"] == utc(2023, 6, 12, 9, 5)
    # a shared photo keeps its caption in the text and in metadata
    assert (
        t1[2]["content"]
        == "Orange, like a tangerine. [shares a photo: a photo of an orange cat on a sofa]"
    )
    assert t1[2]["metadata"]["image_caption"] == "a photo of an orange cat on a sofa"
    assert load_locomo(DATA / "locomo_tiny.json", image_captions=False)["conv-t1"][2][
        "content"
    ] == ("Orange, like a tangerine.")
    # a session without a date follows the previous one, in order
    t2 = convs["conv-t2"]
    assert t2[0]["at"] == utc(2024, 1, 3, 0, 30)
    assert t2[2]["at"] > t2[1]["at"]


def test_locomo_qa_maps_evidence_to_seqs() -> None:
    qa = locomo_qa(DATA / "locomo_tiny.json")
    assert qa["conv-t2"] == []
    name, when, count, adversarial = qa["conv-t1"]
    assert (name.answer, name.category, name.evidence_seqs) == ("Miso", 4, (1,))
    assert when.evidence == ("D1:1", "D2:2") and when.evidence_seqs == (1, 5)  # "D1:1; D2:2"
    assert count.answer == "1"  # integer answers become strings
    assert count.evidence_seqs == (3,) and count.unmatched_evidence == ("D",)  # "D:1:3" -> D1:3
    assert adversarial.answer is None and adversarial.adversarial_answer == "Rex"
    assert adversarial.evidence_seqs == () and adversarial.unmatched_evidence == ("D9:9",)


def test_locomo_seqs_match_the_store(tmp_path: Path) -> None:
    """Evidence seqs are the seqs the turns get when imported into a new session."""
    with MemoryManager(tmp_path / "m.db") as mm:
        mm.add_sessions(load_locomo(DATA / "locomo_tiny.json"))
        turns = {t.seq: t for t in mm.turns("conv-t1")}
    for item in locomo_qa(DATA / "locomo_tiny.json")["conv-t1"]:
        for e, seq in zip(item.evidence, item.evidence_seqs, strict=False):
            assert turns[seq].metadata["dia_id"] == e.replace("D:", "D")


def test_locomo_unknown_speaker_fails_whole_file() -> None:
    with pytest.raises(ImportFormatError, match=r"bad, session_1 turn 1: speaker 'Zed'"):
        load_locomo(DATA / "locomo_bad_speaker.json")


def test_locomo_session_prefix() -> None:
    convs = load_conversations(DATA / "locomo_tiny.json", session="bench")
    assert list(convs) == ["bench:conv-t1", "bench:conv-t2"]


# -- LongMemEval ------------------------------------------------------------------------------


def test_longmemeval_turns_in_date_order() -> None:
    convs = load_longmemeval(DATA / "longmemeval_tiny.json")
    cat = convs["q-cat"]
    # the answer session is older, so it comes first although the file lists it second
    assert [t["metadata"]["haystack_session_id"] for t in cat] == ["answer_1"] * 3 + [
        "later_session"
    ] * 2
    assert [t["at"] for t in cat[:3]] == [
        utc(2023, 5, 20, 1, 45) + i * LOCOMO_TURN_SPACING for i in range(3)
    ]
    assert cat[3]["at"] == utc(2023, 5, 25, 9, 0)
    assert cat[0]["metadata"] == {
        "haystack_session_id": "answer_1",
        "haystack_index": 1,
        "has_answer": True,
    }
    assert "has_answer" not in cat[2]["metadata"]


def test_longmemeval_questions() -> None:
    qs = longmemeval_qa(DATA / "longmemeval_tiny.json")
    cat = qs["q-cat"]
    assert cat.question == "What is the name of my cat?" and cat.answer == "Luna"
    assert cat.question_date == utc(2023, 5, 30, 12, 18)
    assert cat.evidence_seqs == (1,)  # only the turn marked has_answer: true
    assert qs["q-count"].answer == "3" and qs["q-count"].evidence_seqs == (1,)
    turns = load_longmemeval(DATA / "longmemeval_tiny.json")["q-cat"]
    assert "Luna" in turns[cat.evidence_seqs[0] - 1]["content"]


def test_longmemeval_mismatched_lengths(tmp_path: Path) -> None:
    data = json.loads((DATA / "longmemeval_tiny.json").read_text())
    data[1]["haystack_dates"].append("2023/06/01 (Thu) 09:00")
    path = tmp_path / "lme.json"
    path.write_text(json.dumps(data))
    with pytest.raises(
        ImportFormatError, match="q-count: 1 haystack_sessions but 2 haystack_dates"
    ):
        load_longmemeval(path)


# -- the sample that ships with the package ---------------------------------------------------


def test_sample_conversation() -> None:
    (turns,) = load_conversations(SAMPLE).values()
    assert 300 <= len(turns) <= 400
    assert [t["role"] for t in turns] == ["user", "assistant"] * (len(turns) // 2)
    times = [t["at"] for t in turns]
    assert times == sorted(times) and all(t.tzinfo is not None for t in times)
    assert times[-1] - times[0] > timedelta(days=90)  # several months
    text = " ".join(t["content"] for t in turns)
    for fact in ("Yumoto Sansou", "118,000", "Jimmy Nardello", "1:53:41", "Rustlings"):
        assert fact in text


# -- the real benchmark files, where this machine has them -------------------------------------


@pytest.mark.skipif(not (SHARED / "locomo" / "locomo_dev.json").exists(), reason="no shared LoCoMo")
def test_real_locomo() -> None:
    path = SHARED / "locomo" / "locomo_dev.json"
    convs = load_locomo(path)
    assert {k: len(v) for k, v in convs.items()} == {"conv-26": 419, "conv-30": 369}
    qa = locomo_qa(path)
    items = [q for qs in qa.values() for q in qs]
    assert items and all(q.evidence_seqs or q.unmatched_evidence or not q.evidence for q in items)
    split = [q for q in items if "D8:6" in q.evidence and "D9:17" in q.evidence]
    assert split and all(len(q.evidence_seqs) == 2 for q in split)  # "D8:6; D9:17"
    for sid, qs in qa.items():
        for q in qs:
            for seq in q.evidence_seqs:
                assert convs[sid][seq - 1]["metadata"]["dia_id"] in q.evidence


@pytest.mark.skipif(
    not (SHARED / "longmemeval" / "longmemeval_s_dev.json").exists(), reason="no shared LongMemEval"
)
def test_real_longmemeval() -> None:
    path = SHARED / "longmemeval" / "longmemeval_s_dev.json"
    convs = load_longmemeval(path)
    qs = longmemeval_qa(path)
    assert len(convs) == len(qs) == 24
    for qid, q in qs.items():
        times = [t["at"] for t in convs[qid]]
        assert times == sorted(times)
        assert q.question_date is not None
        answer_sessions = {
            convs[qid][s - 1]["metadata"]["haystack_session_id"] for s in q.evidence_seqs
        }
        assert answer_sessions <= set(q.answer_session_ids)
