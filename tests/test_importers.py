"""Conversation files -> turns: every format, its timestamps, its metadata and its errors."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from typer.testing import CliRunner

from optical_memory import InvalidContent, MemoryManager, MetadataTooLarge
from optical_memory.cli import app
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


# -- hostile files: typed errors, nothing lost, nothing imported twice --------------------------


def _write_json(path: Path, data: object) -> Path:
    path.write_text(json.dumps(data), encoding="utf-8")
    return path


def _locomo_sample(conversation: dict[str, object]) -> list[dict[str, object]]:
    return [
        {"sample_id": "c", "conversation": {"speaker_a": "A", "speaker_b": "B", **conversation}}
    ]


def test_locomo_zero_padded_session_keys_are_read_once_in_order(tmp_path: Path) -> None:
    path = _write_json(
        tmp_path / "padded.json",
        _locomo_sample(
            {
                "session_10": [{"speaker": "A", "text": "ten"}],
                "session_01_date_time": "1:56 pm on 8 May, 2023",
                "session_01": [{"speaker": "A", "text": "one"}, {"speaker": "B", "text": "one b"}],
                "session_2": [{"speaker": "B", "text": "two"}],
            }
        ),
    )
    turns = load_locomo(path)["c"]
    assert [t["content"] for t in turns] == ["one", "one b", "two", "ten"]
    assert turns[0]["at"] == utc(2023, 5, 8, 13, 56)  # the padded key's date is found
    assert [t["metadata"]["session"] for t in turns] == [1, 1, 2, 10]


def test_locomo_session_given_twice_is_refused(tmp_path: Path) -> None:
    path = _write_json(
        tmp_path / "twice.json",
        _locomo_sample(
            {
                "session_1": [{"speaker": "A", "text": "one"}],
                "session_01": [{"speaker": "A", "text": "one again"}],
            }
        ),
    )
    with pytest.raises(ImportFormatError, match="session_1 and session_01 are both session 1"):
        load_locomo(path)


def test_duplicate_conversation_ids_are_refused(tmp_path: Path) -> None:
    sample = _locomo_sample({"session_1": [{"speaker": "A", "text": "hi"}]})[0]
    with pytest.raises(ImportFormatError, match="appears twice"):
        load_locomo(_write_json(tmp_path / "dup.json", [sample, sample]))
    item = {"question_id": "q", "haystack_sessions": [[{"role": "user", "content": "x"}]]}
    with pytest.raises(ImportFormatError, match="appears twice"):
        load_longmemeval(_write_json(tmp_path / "dup-lme.json", [item, item]))


@pytest.mark.parametrize("suffix", [".json", ".jsonl"])
def test_deeply_nested_json_is_a_typed_error(tmp_path: Path, suffix: str) -> None:
    path = tmp_path / f"deep{suffix}"
    path.write_text(
        '{"role": "user", "content": "x", "metadata": ' + "[" * 50_000 + "]" * 50_000 + "}"
    )
    with pytest.raises(ImportFormatError, match="nested too deeply"):
        load_conversations(path)


@pytest.mark.parametrize(
    ("field", "value", "pattern"),
    [
        ("haystack_dates", "2023/05/25 (Thu) 09:00", "haystack_dates must be a list"),
        ("haystack_dates", 5, "haystack_dates must be a list"),
        ("haystack_dates", {"0": "2023/05/25 (Thu) 09:00"}, "haystack_dates must be a list"),
        ("haystack_session_ids", 7, "haystack_session_ids must be a list"),
        ("haystack_session_ids", {"0": "a"}, "haystack_session_ids must be a list"),
        ("answer_session_ids", 3, "answer_session_ids must be a list"),
        ("question", ["what"], "question must be a string"),
        ("question_date", 20230525, "not a LongMemEval date"),
        ("question_id", {"id": 1}, "question_id must be a string"),
        ("haystack_sessions", [{"role": "user"}], r"haystack_sessions\[0\]: expected a list"),
        ("haystack_sessions", [[{"role": "user", "content": 5}]], "content must be a string"),
        ("haystack_dates", [7], "not a LongMemEval date"),
        (
            "haystack_sessions",
            [[{"role": "user", "content": "x", "has_answer": "false"}]],
            "has_answer must be true or false",
        ),
    ],
)
def test_longmemeval_fields_of_the_wrong_type_are_typed(
    tmp_path: Path, field: str, value: object, pattern: str
) -> None:
    item: dict[str, object] = {
        "question_id": "q",
        "question_date": "2023/05/30 (Tue) 12:18",
        "haystack_session_ids": ["a"],
        "haystack_dates": ["2023/05/25 (Thu) 09:00"],
        "haystack_sessions": [[{"role": "user", "content": "hello"}]],
        field: value,
    }
    path = _write_json(tmp_path / "lme.json", [item])
    with pytest.raises(ImportFormatError, match=pattern):
        load_longmemeval(path)
        longmemeval_qa(path)
    from typer.testing import CliRunner

    from optical_memory.cli import app

    db = tmp_path / "m.db"
    result = CliRunner().invoke(app, ["import", str(path), "--db", str(db)], env={"COLUMNS": "200"})
    assert result.exit_code == 2 and "Traceback" not in result.output + result.stderr
    line = result.stderr.strip()
    assert len(line.splitlines()) == 1 and re.search(pattern, line), line
    assert line != "error: 0"
    assert not db.exists()


def test_times_past_the_year_9999_are_typed(tmp_path: Path) -> None:
    path = _write_json(
        tmp_path / "late.json",
        _locomo_sample(
            {
                "session_1_date_time": "11:59 pm on 31 December, 9999",
                "session_1": [{"speaker": "A", "text": f"t{i}"} for i in range(10)],
            }
        ),
    )
    with pytest.raises(ImportFormatError, match="year 9999"):
        load_locomo(path)


def test_locomo_bad_speaker_names_and_categories_are_typed(tmp_path: Path) -> None:
    path = _write_json(
        tmp_path / "spk.json", [{"conversation": {"speaker_a": ["A"], "session_1": []}}]
    )
    with pytest.raises(ImportFormatError, match="speaker_a must be a name"):
        load_locomo(path)
    sample = _locomo_sample({"session_1": [{"speaker": ["A"], "text": "hi"}]})
    with pytest.raises(ImportFormatError, match="neither speaker_a nor speaker_b"):
        load_locomo(_write_json(tmp_path / "spk2.json", sample))
    sample = _locomo_sample({"session_1": [{"speaker": "A", "text": "hi"}]})
    sample[0]["qa"] = [{"question": "?", "category": "multi-hop"}]
    with pytest.raises(ImportFormatError, match="category must be a number"):
        locomo_qa(_write_json(tmp_path / "cat.json", sample))


def test_a_file_name_with_a_nul_is_typed() -> None:
    for name in ("conv\x00.jsonl", "conv\x00.json", "x" * 5000 + ".json"):
        with pytest.raises(ImportFormatError):
            load_conversations(name)


@pytest.mark.parametrize(
    ("row", "pattern"),
    [
        ({"session_id": 0}, "session_id must be a non-empty string"),
        ({"session_id": ""}, "session_id must be a non-empty string"),
        ({"session_id": 5}, "session_id must be a non-empty string"),
        ({"metadata": False}, "metadata must be an object"),
        ({"metadata": 0}, "metadata must be an object"),
    ],
)
def test_jsonl_values_that_are_not_what_they_name_are_refused_not_coerced(
    tmp_path: Path, row: dict[str, object], pattern: str
) -> None:
    path = tmp_path / "chat.jsonl"
    path.write_text(json.dumps({"role": "user", "content": "hi", **row}))
    with pytest.raises(ImportFormatError, match=pattern):
        load_jsonl(path)


def test_a_locomo_id_that_is_not_a_number_is_refused(tmp_path: Path) -> None:
    sample = _locomo_sample({"session_1": [{"speaker": "A", "text": "hi"}]})[0]
    path = tmp_path / "nan.json"
    path.write_text(json.dumps([{**sample, "sample_id": float("nan")}]))  # json writes NaN
    with pytest.raises(ImportFormatError, match="sample_id must be a string"):
        load_locomo(path)


@pytest.mark.parametrize(
    ("line", "error", "pattern"),
    [
        ('{"role": "user", "content": "a\\ud800"}', InvalidContent, "unpaired surrogate"),
        ('{"role": "user", "content": "a", "metadata": {"x": 1e400}}', InvalidContent, "JSON"),
        (
            json.dumps({"role": "user", "content": "a", "metadata": {"x": "y" * 70_000}}),
            MetadataTooLarge,
            "over the limit",
        ),
    ],
)
def test_a_turn_the_store_would_refuse_is_refused_at_its_line(
    tmp_path: Path, line: str, error: type[Exception], pattern: str
) -> None:
    """The store names a bad turn by its place in the session; the importer names the line."""
    path = tmp_path / "chat.jsonl"
    path.write_text('{"role": "user", "content": "fine"}\n\n' + line + "\n")
    with pytest.raises(error, match=rf"chat\.jsonl, line 3: .*{pattern}"):
        load_jsonl(path)


def test_a_locomo_text_the_store_would_refuse_names_its_turn(tmp_path: Path) -> None:
    sample = _locomo_sample({"session_1": [{"speaker": "A", "text": "hi"}, {"speaker": "B"}]})
    sample[0]["conversation"]["session_1"][1]["text"] = "x\ud800"  # type: ignore[index]
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(sample))  # (json escapes the lone surrogate)
    with pytest.raises(InvalidContent, match="session_1 turn 1: content holds unpaired"):
        load_locomo(path)


def test_import_names_the_line_of_a_turn_the_store_refuses(tmp_path: Path) -> None:
    path = tmp_path / "chat.jsonl"
    path.write_text('{"role": "user", "content": "ok"}\n{"role": "user", "content": "a\\udc00"}\n')
    done = CliRunner().invoke(app, ["import", str(path), "--db", f"sqlite:///{tmp_path / 'm.db'}"])
    assert done.exit_code == 2  # (the CLI's status for input it refuses)
    assert "chat.jsonl, line 2: content holds unpaired surrogate" in done.output
    with MemoryManager(f"sqlite:///{tmp_path / 'm.db'}") as mm:
        assert mm.sessions() == []  # nothing written
