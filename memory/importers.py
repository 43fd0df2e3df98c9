"""Conversation files -> turns, ready for :meth:`MemoryManager.add_sessions`.

Pure functions: they read a file and return ``{session_id: [turn, ...]}``, each turn a dict with
``role``, ``content``, ``at`` (an aware datetime or None) and ``metadata``. Nothing here touches a
database, so a file is parsed and checked in full before anything is written.

Formats:

- ``jsonl``: one turn per line, ``{"session_id"?, "role", "content", "at"?, "metadata"?, "name"?}``;
  ``at`` is ISO 8601 (naive means UTC) or Unix seconds.
- ``openai``: a JSON list of chat-completions messages, or an object with ``messages``.
- ``locomo``: LoCoMo (Maharana et al., 2024) conversations; see :func:`load_locomo`.
- ``longmemeval``: LongMemEval (Wu et al., 2025) questions; see :func:`load_longmemeval`.

Turn seq numbers (``evidence_seqs`` in :func:`locomo_qa` and :func:`longmemeval_qa`) are the
1-based positions in the lists that the loaders return, which are the seq numbers the turns get
when a conversation is imported into a new, empty session.
"""

from __future__ import annotations

import json
import math
import os
import re
import sys
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from .errors import InvalidInput
from .records import ROLES
from .validation import check_content, check_metadata

__all__ = [
    "FORMATS",
    "LOCOMO_TURN_SPACING",
    "Conversations",
    "ImportFormatError",
    "LocomoQA",
    "LongMemEvalQuestion",
    "detect_format",
    "load_conversations",
    "load_jsonl",
    "load_locomo",
    "load_longmemeval",
    "load_openai",
    "locomo_qa",
    "longmemeval_qa",
    "parse_locomo_date",
    "parse_longmemeval_date",
]

FORMATS: tuple[str, ...] = ("jsonl", "locomo", "longmemeval", "openai")

LOCOMO_TURN_SPACING = timedelta(seconds=10)
"""LoCoMo and LongMemEval date a session, not its turns: turn ``i`` is stamped ``date + i·10 s``."""

Conversations = dict[str, list[dict[str, Any]]]
"""``{session_id: [{"role", "content", "at", "metadata"}, ...]}``, in the order to import."""

_ROLE_ALIASES = {"developer": "system", "function": "tool", "human": "user", "ai": "assistant"}


class ImportFormatError(InvalidInput):
    """A file cannot be read in the format asked for; the message says where. Nothing written."""


# -- entry points -----------------------------------------------------------------------------


def load_conversations(
    path: str | os.PathLike[str], format: str = "auto", session: str | None = None
) -> Conversations:
    """Read a conversation file in any supported format (``auto`` detects it).

    ``session``: the session id to import into. Files holding one conversation go into it; for
    files holding several, it becomes a prefix (``ID:conv-26``). Default: each conversation's
    own id, or the file name without its extension.
    """
    p = Path(path)
    fmt = detect_format(p) if format == "auto" else format
    if fmt not in FORMATS:
        raise ImportFormatError(f"unknown format {format!r}; use auto, {', '.join(FORMATS)}")
    if fmt == "jsonl":
        convs = load_jsonl(p, session=session)
    elif fmt == "openai":
        convs = load_openai(p, session=session)
    else:
        convs = load_locomo(p) if fmt == "locomo" else load_longmemeval(p)
        if session is not None:
            convs = _rename(convs, session)
    if not any(convs.values()):
        raise ImportFormatError(f"{p}: no turns found")
    return convs


def detect_format(path: str | os.PathLike[str]) -> str:
    """Guess a file's format from its name and the shape of its content."""
    p = Path(path)
    if p.suffix.lower() in (".jsonl", ".ndjson"):
        _check_readable(p)
        return "jsonl"
    text = _read_text(p)
    try:
        data = _loads(text, str(p))
    except _ExtraData:  # several JSON values: one per line
        return "jsonl"
    first = data[0] if isinstance(data, list) and data else data
    if isinstance(first, Mapping):
        if "conversation" in first:
            return "locomo"
        if "haystack_sessions" in first:
            return "longmemeval"
        if isinstance(data, Mapping) and isinstance(data.get("messages"), list):
            return "openai"
        if "role" in first:
            return "openai" if isinstance(data, list) else "jsonl"
    raise ImportFormatError(
        f"{p}: cannot tell the format (expected JSON Lines of turns, an OpenAI message list, "
        f"LoCoMo or LongMemEval); pass --format {{{','.join(FORMATS)}}}"
    )


# -- JSON Lines and OpenAI messages -------------------------------------------------------------


def load_jsonl(path: str | os.PathLike[str], session: str | None = None) -> Conversations:
    """One turn per line: ``{"session_id"?, "role", "content", "at"?, "metadata"?, "name"?}``.

    ``session`` overrides every line's ``session_id``; lines without one default to the file
    name without its extension. Blank lines are skipped.
    """
    p = Path(path)
    default = session or _stem(p)
    out: Conversations = {}
    # Lines end at "\n" only: U+2028, U+2029, U+0085 and the other characters that
    # str.splitlines() also breaks at may stand inside a JSON string.
    for lineno, line in enumerate(_read_text(p).split("\n"), start=1):
        if not line.strip():
            continue
        where = f"{p}, line {lineno}"
        row = _loads(line, where, lines=False)
        if not isinstance(row, Mapping):
            raise ImportFormatError(f"{where}: expected a JSON object, got {_kind(row)}")
        given = row.get("session_id")
        if given is not None and (not isinstance(given, str) or not given):
            raise ImportFormatError(
                f"{where}: session_id must be a non-empty string, got {given!r:.40}"
            )
        sid = session or given or default
        out.setdefault(sid, []).append(_message(row, where, with_time=True))
    return out


def load_openai(path: str | os.PathLike[str], session: str | None = None) -> Conversations:
    """A JSON list of OpenAI chat-completions messages (or ``{"messages": [...]}``), as one session.

    Content parts are joined as text (images become ``[image]``); ``name``, ``tool_calls`` and
    ``tool_call_id`` go to metadata; ``developer`` counts as ``system``.
    """
    p = Path(path)
    data = _load_json(p)
    if isinstance(data, Mapping) and "messages" in data:
        data = data["messages"]
    if not isinstance(data, list):
        raise ImportFormatError(f"{p}: expected a JSON list of messages, got {_kind(data)}")
    turns = [_message(m, f"{p}, message {i}", with_time=True) for i, m in enumerate(data)]
    return {session or _stem(p): turns}


def _message(row: Any, where: str, *, with_time: bool) -> dict[str, Any]:
    """One chat message as a turn, with errors that say where."""
    if not isinstance(row, Mapping):
        raise ImportFormatError(
            f"{where}: expected an object with role and content, got {_kind(row)}"
        )
    role = row.get("role")
    role = _ROLE_ALIASES.get(role, role) if isinstance(role, str) else role
    if role not in ROLES:
        raise ImportFormatError(
            f"{where}: role must be one of {', '.join(ROLES)}; got {role!r:.40}"
        )
    content = _content_text(row.get("content"), where, allow_none="tool_calls" in row)
    meta = row.get("metadata")
    meta = {} if meta is None else meta  # (false, 0 or "" is not an object either)
    if not isinstance(meta, Mapping):
        raise ImportFormatError(f"{where}: metadata must be an object, got {_kind(meta)}")
    meta = dict(meta)
    for key in ("name", "tool_calls", "tool_call_id"):
        if row.get(key) is not None:
            meta[key] = row[key]
    meta = _as_stored(content, meta, where)
    at = _parse_at(row.get("at"), where) if with_time else None
    return {"role": role, "content": content, "at": at, "metadata": meta}


def _as_stored(content: str, meta: dict[str, Any], where: str) -> dict[str, Any]:
    """The store's own checks of a turn's text and metadata, run here where the error can
    name the line (the store would name only the turn's place in its session); the size
    limit is the store's to apply."""
    try:
        check_content(content, sys.maxsize)
        return check_metadata(meta)
    except InvalidInput as exc:
        raise type(exc)(f"{where}: {exc}") from None


def _content_text(content: Any, where: str, allow_none: bool = False) -> str:
    if isinstance(content, str):
        return content
    if content is None and allow_none:
        return ""
    if isinstance(content, list):  # OpenAI content parts
        texts = []
        for part in content:
            if isinstance(part, str):
                texts.append(part)
            elif isinstance(part, Mapping) and isinstance(part.get("text"), str):
                texts.append(part["text"])
            elif isinstance(part, Mapping) and str(part.get("type", "")).startswith(
                ("image", "input_image")
            ):
                texts.append("[image]")
            else:
                raise ImportFormatError(f"{where}: content part {part!r:.60} has no text")
        return "\n".join(texts)
    raise ImportFormatError(f"{where}: content must be a string, got {_kind(content)}")


def _parse_at(value: Any, where: str) -> datetime | None:
    if value is None:
        return None
    if isinstance(value, bool):
        raise ImportFormatError(f"{where}: at must be an ISO 8601 string or Unix seconds")
    if isinstance(value, int | float):
        try:
            return datetime.fromtimestamp(value, UTC)
        except (OverflowError, OSError, ValueError):
            raise ImportFormatError(f"{where}: at={value!r} is out of range") from None
    if isinstance(value, str):
        try:
            dt = datetime.fromisoformat(value.strip())
        except ValueError:
            raise ImportFormatError(
                f"{where}: at={value!r:.40} is not an ISO 8601 time (e.g. 2025-01-06T19:05:00Z)"
            ) from None
        return dt if dt.tzinfo is not None else dt.replace(tzinfo=UTC)
    raise ImportFormatError(f"{where}: at must be an ISO 8601 string or Unix seconds")


# -- LoCoMo -----------------------------------------------------------------------------------

_LOCOMO_DATE = re.compile(
    r"\s*(\d{1,2}):(\d{2})\s*([ap]m)\s+on\s+(\d{1,2})\s+([A-Za-z]+),?\s+(\d{4})\s*", re.IGNORECASE
)
_MONTHS = {
    m: i
    for i, names in enumerate(
        (
            ("jan", "january"),
            ("feb", "february"),
            ("mar", "march"),
            ("apr", "april"),
            ("may",),
            ("jun", "june"),
            ("jul", "july"),
            ("aug", "august"),
            ("sep", "sept", "september"),
            ("oct", "october"),
            ("nov", "november"),
            ("dec", "december"),
        ),
        start=1,
    )
    for m in names
}
_SESSION_KEY = re.compile(r"session_(\d+)")
_EVIDENCE = re.compile(r"D:?(\d+):(\d+)")


def parse_locomo_date(text: str) -> datetime:
    """``"1:56 pm on 8 May, 2023"`` -> 2023-05-08 13:56 UTC."""
    m = _LOCOMO_DATE.fullmatch(text) if isinstance(text, str) else None
    month = _MONTHS.get(m.group(5).lower()) if m else None
    if m is None or month is None:
        raise ValueError(
            f"not a LoCoMo date: {text!r:.60} (expected e.g. '1:56 pm on 8 May, 2023')"
        )
    hour12, minute = int(m.group(1)), int(m.group(2))
    if not 1 <= hour12 <= 12:
        raise ValueError(f"not a LoCoMo date: {text!r:.60} (hour {hour12} on a 12-hour clock)")
    hour = hour12 % 12 + (12 if m.group(3).lower() == "pm" else 0)
    try:
        return datetime(int(m.group(6)), month, int(m.group(4)), hour, minute, tzinfo=UTC)
    except ValueError as exc:
        raise ValueError(f"not a LoCoMo date: {text!r:.60} ({exc})") from None


def load_locomo(path: str | os.PathLike[str], *, image_captions: bool = True) -> Conversations:
    """LoCoMo conversations, one session each, keyed by ``sample_id`` (e.g. ``conv-26``).

    The file is a list of samples with ``conversation`` (``speaker_a``, ``speaker_b``,
    ``session_N`` lists of ``{speaker, dia_id, text}`` and ``session_N_date_time``) and ``qa``.
    Sessions are concatenated in order; ``speaker_a`` becomes ``user``, ``speaker_b``
    ``assistant``, and the speaker's name and ``dia_id`` (plus ``session``) go to metadata.
    Turn ``i`` of a session is stamped at the session's date + ``i`` × 10 s; a session without a
    date (or dated before the previous one ended) follows the previous one, so times never go
    backwards. With ``image_captions``, a turn that shares a photo gets its
    caption appended as ``[shares a photo: …]`` (the caption and URL also go to metadata).
    """
    return {sid: turns for sid, turns, _ in _locomo(path, image_captions)}


@dataclass(frozen=True)
class LocomoQA:
    """One LoCoMo question about a conversation, with its evidence mapped to turn seqs."""

    conversation_id: str
    question: str
    answer: str | None  # None for adversarial questions (category 5), which have no answer
    category: int  # 1 multi-hop, 2 temporal, 3 open-domain, 4 single-hop, 5 adversarial
    evidence: tuple[str, ...]  # the dia ids as written in the file, split when several
    evidence_seqs: tuple[int, ...]  # seqs of the turns the evidence names, in order
    unmatched_evidence: tuple[str, ...]  # ids that are malformed or name no turn
    adversarial_answer: str | None = None


def locomo_qa(path: str | os.PathLike[str]) -> dict[str, list[LocomoQA]]:
    """The QA items of each LoCoMo conversation, keyed like :func:`load_locomo`.

    Evidence ids ``D<session>:<turn>`` are mapped to the seqs of the turns they name. Malformed
    ids are tolerated: ``"D8:6; D9:17"`` is split into two, ``"D:11:26"`` read as ``D11:26``;
    ids that still name no turn (``"D"``) are kept in ``unmatched_evidence``. Integer answers
    become strings.
    """
    out: dict[str, list[LocomoQA]] = {}
    for sid, turns, sample in _locomo(path, image_captions=False):
        seq_of = {t["metadata"]["dia_id"]: i for i, t in enumerate(turns, start=1)}
        items = []
        for qa in sample.get("qa") or []:
            if not isinstance(qa, Mapping):
                continue
            raw = qa.get("evidence") or []
            ids = [p for e in (raw if isinstance(raw, list) else [raw]) for p in _split_ids(e)]
            seqs, unmatched = [], []
            for e in ids:
                m = _EVIDENCE.fullmatch(e)
                key = f"D{int(m.group(1))}:{int(m.group(2))}" if m else None
                if key in seq_of:
                    seqs.append(seq_of[key])
                else:
                    unmatched.append(e)
            answer = qa.get("answer")
            adversarial = qa.get("adversarial_answer")
            category = qa.get("category", 0) or 0
            if isinstance(category, bool) or not isinstance(category, int | str):
                category = None
            try:
                category = int(category) if category is not None else None
            except ValueError:
                category = None
            if category is None:
                raise ImportFormatError(
                    f"{path}, {sid}: a question's category must be a number, got "
                    f"{qa.get('category')!r:.40}"
                )
            items.append(
                LocomoQA(
                    conversation_id=sid,
                    question=str(qa.get("question", "")),
                    answer=None if answer is None else str(answer),
                    category=category,
                    evidence=tuple(ids),
                    evidence_seqs=tuple(seqs),
                    unmatched_evidence=tuple(unmatched),
                    adversarial_answer=None if adversarial is None else str(adversarial),
                )
            )
        out[sid] = items
    return out


def _split_ids(value: Any) -> list[str]:
    return [p for p in re.split(r"[;,\s]+", str(value)) if p]


def _locomo(
    path: str | os.PathLike[str], image_captions: bool
) -> Iterator[tuple[str, list[dict[str, Any]], Mapping[str, Any]]]:
    p = Path(path)
    samples = _load_json_list(p, "LoCoMo samples")
    seen: set[str] = set()
    for n, sample in enumerate(samples):
        where = f"{p}, sample {n}"
        if not isinstance(sample, Mapping) or not isinstance(sample.get("conversation"), Mapping):
            raise ImportFormatError(f"{where}: expected an object with a 'conversation'")
        sid = _item_id(sample.get("sample_id"), f"locomo-{n}", where, "sample_id")
        if sid in seen:
            raise ImportFormatError(f"{where}: sample_id {sid!r:.60} appears twice; ids are unique")
        seen.add(sid)
        where = f"{p}, {sid}"
        conv = sample["conversation"]
        speakers: dict[str, str] = {}
        for key, role in (("speaker_a", "user"), ("speaker_b", "assistant")):
            name = conv.get(key)
            if name is not None and not isinstance(name, str):
                raise ImportFormatError(f"{where}: {key} must be a name (a string)")
            if name is not None:
                speakers.setdefault(name, role)
        keys: dict[int, str] = {}  # session number -> its key as written (session_1, session_01)
        for k, v in conv.items():
            m = _SESSION_KEY.fullmatch(k)
            if m is None:
                continue
            if not isinstance(v, list):
                raise ImportFormatError(f"{where}, {k}: expected a list of turns, got {_kind(v)}")
            number = int(m.group(1))
            if number in keys:
                raise ImportFormatError(
                    f"{where}: {keys[number]} and {k} are both session {number}; keep one"
                )
            keys[number] = k
        turns: list[dict[str, Any]] = []
        clock: datetime | None = None
        for number in sorted(keys):
            key = keys[number]
            date = conv.get(f"{key}_date_time")
            if date is None and key != f"session_{number}":
                date = conv.get(f"session_{number}_date_time")
            last = clock
            if date is not None:
                try:
                    clock = parse_locomo_date(date)
                except ValueError as exc:
                    raise ImportFormatError(f"{where}, {key}_date_time: {exc}") from None
            if last is not None and clock is not None and (date is None or clock <= last):
                clock = _later(last, LOCOMO_TURN_SPACING, where)  # undated, or dated too early
            for i, t in enumerate(conv[key]):
                tw = f"{where}, {key} turn {i}"
                if not isinstance(t, Mapping) or not isinstance(t.get("text"), str):
                    raise ImportFormatError(f"{tw}: expected an object with a 'text' string")
                speaker = t.get("speaker")
                role = speakers.get(speaker) if isinstance(speaker, str) else None
                if role is None:
                    raise ImportFormatError(
                        f"{tw}: speaker {speaker!r:.40} is neither speaker_a nor speaker_b"
                    )
                meta: dict[str, Any] = {
                    "name": speaker,
                    "dia_id": str(t.get("dia_id", f"D{number}:{i + 1}")),
                    "session": number,
                }
                text = t["text"]
                caption = t.get("blip_caption")
                if isinstance(caption, str) and caption:
                    meta["image_caption"] = caption
                    if isinstance(t.get("img_url"), list | str):
                        meta["image_url"] = t["img_url"]
                    if image_captions:
                        text = f"{text} [shares a photo: {caption}]"
                at = _later(clock, i * LOCOMO_TURN_SPACING, tw) if clock is not None else None
                meta = _as_stored(text, meta, tw)
                turns.append({"role": role, "content": text, "at": at, "metadata": meta})
            if turns and clock is not None:
                clock = turns[-1]["at"]
        yield sid, turns, sample


# -- LongMemEval ------------------------------------------------------------------------------

_LME_DATE = re.compile(
    r"\s*(\d{4})/(\d{1,2})/(\d{1,2})\s*(?:\([A-Za-z]+\))?\s*(\d{1,2}):(\d{2})\s*"
)


def parse_longmemeval_date(text: str) -> datetime:
    """``"2023/05/28 (Sun) 19:47"`` -> 2023-05-28 19:47 UTC."""
    m = _LME_DATE.fullmatch(text) if isinstance(text, str) else None
    if m is None:
        raise ValueError(
            f"not a LongMemEval date: {text!r:.60} (expected e.g. '2023/05/28 (Sun) 19:47')"
        )
    y, mo, d, h, mi = (int(g) for g in m.groups())
    try:
        return datetime(y, mo, d, h, mi, tzinfo=UTC)
    except ValueError as exc:
        raise ValueError(f"not a LongMemEval date: {text!r:.60} ({exc})") from None


def load_longmemeval(path: str | os.PathLike[str]) -> Conversations:
    """LongMemEval questions, one session each (a user's whole chat history), keyed by
    ``question_id``.

    Each question's ``haystack_sessions`` are put in date order (``haystack_dates``; ties keep
    the file's order) and concatenated. Turn ``i`` of a haystack session is stamped at its date
    + ``i`` × 10 s (a session dated in the same minute as the previous one starts after it).
    Metadata: ``haystack_session_id``, ``haystack_index`` (position in the file) and
    ``has_answer`` where the file marks it.
    """
    return {sid: turns for sid, turns, _ in _longmemeval(path)}


@dataclass(frozen=True)
class LongMemEvalQuestion:
    """One LongMemEval question about its session, with the turns that hold the answer."""

    question_id: str
    question_type: str
    question: str
    question_date: datetime | None
    answer: str
    answer_session_ids: tuple[str, ...]
    evidence_seqs: tuple[int, ...]  # seqs of the turns marked has_answer


def longmemeval_qa(path: str | os.PathLike[str]) -> dict[str, LongMemEvalQuestion]:
    """Each LongMemEval question, keyed by ``question_id`` like :func:`load_longmemeval`."""
    out: dict[str, LongMemEvalQuestion] = {}
    for sid, turns, item in _longmemeval(path):
        qdate = item.get("question_date")
        try:
            when = parse_longmemeval_date(qdate) if qdate is not None else None
        except ValueError as exc:
            raise ImportFormatError(f"{path}, {sid}, question_date: {exc}") from None
        out[sid] = LongMemEvalQuestion(
            question_id=sid,
            question_type=str(item.get("question_type", "")),
            question=str(item.get("question", "")),
            question_date=when,
            answer=str(item.get("answer", "")),
            answer_session_ids=tuple(str(s) for s in item.get("answer_session_ids") or ()),
            evidence_seqs=tuple(
                i for i, t in enumerate(turns, start=1) if t["metadata"].get("has_answer")
            ),
        )
    return out


def _longmemeval(
    path: str | os.PathLike[str],
) -> Iterator[tuple[str, list[dict[str, Any]], Mapping[str, Any]]]:
    p = Path(path)
    items = _load_json_list(p, "LongMemEval questions")
    seen: set[str] = set()
    for n, item in enumerate(items):
        if not isinstance(item, Mapping) or not isinstance(item.get("haystack_sessions"), list):
            raise ImportFormatError(
                f"{p}, question {n}: expected an object with 'haystack_sessions'"
            )
        sid = _item_id(
            item.get("question_id"), f"longmemeval-{n}", f"{p}, question {n}", "question_id"
        )
        where = f"{p}, {sid}"
        if sid in seen:
            raise ImportFormatError(f"{where}: question_id appears twice; ids are unique")
        seen.add(sid)
        sessions = item["haystack_sessions"]
        for field in ("haystack_dates", "haystack_session_ids", "answer_session_ids"):
            if item.get(field) is not None and not isinstance(item[field], list):
                raise ImportFormatError(
                    f"{where}: {field} must be a list, got {_kind(item[field])}"
                )
        if item.get("question_date") is not None and not isinstance(item["question_date"], str):
            raise ImportFormatError(
                f"{where}: question_date: not a LongMemEval date: {item['question_date']!r:.40} "
                "(expected e.g. '2023/05/28 (Sun) 19:47')"
            )
        for field in ("question", "answer", "question_type"):
            value = item.get(field)
            if value is not None and not isinstance(value, str | int | float):
                raise ImportFormatError(f"{where}: {field} must be a string, got {_kind(value)}")
        dates = item.get("haystack_dates") or [None] * len(sessions)
        ids = item.get("haystack_session_ids") or [None] * len(sessions)
        if len(dates) != len(sessions) or len(ids) != len(sessions):
            raise ImportFormatError(
                f"{where}: {len(sessions)} haystack_sessions but {len(dates)} haystack_dates "
                f"and {len(ids)} haystack_session_ids"
            )
        stamped = []
        for k, date in enumerate(dates):
            try:
                when = parse_longmemeval_date(date) if date is not None else None
            except ValueError as exc:
                raise ImportFormatError(f"{where}, haystack_dates[{k}]: {exc}") from None
            stamped.append((when, k))
        order = sorted(
            stamped, key=lambda x: (x[0] is None, x[0] or datetime.min.replace(tzinfo=UTC), x[1])
        )
        turns: list[dict[str, Any]] = []
        for when, k in order:
            session = sessions[k]
            if not isinstance(session, list):
                raise ImportFormatError(
                    f"{where}, haystack_sessions[{k}]: expected a list of turns"
                )
            if when is not None and turns and turns[-1]["at"] is not None:
                # same-minute sessions
                when = max(when, _later(turns[-1]["at"], LOCOMO_TURN_SPACING, where))
            for i, t in enumerate(session):
                tw = f"{where}, haystack_sessions[{k}][{i}]"
                turn = _message(t, tw, with_time=False)
                turn["metadata"] = {"haystack_session_id": ids[k], "haystack_index": k}
                if isinstance(t, Mapping) and "has_answer" in t:
                    if not isinstance(t["has_answer"], bool):  # bool("false") is True
                        raise ImportFormatError(
                            f"{tw}: has_answer must be true or false, got {t['has_answer']!r:.40}"
                        )
                    turn["metadata"]["has_answer"] = t["has_answer"]
                turn["at"] = _later(when, i * LOCOMO_TURN_SPACING, tw) if when is not None else None
                turns.append(turn)
        yield sid, turns, item


# -- helpers ----------------------------------------------------------------------------------


def _check_readable(p: Path) -> None:
    try:
        exists, is_dir = p.exists(), p.is_dir()
    except (OSError, ValueError) as exc:  # a NUL in the name, a name too long, ...
        raise ImportFormatError(f"{str(p)!r:.80}: not a usable file name ({exc})") from None
    if not exists:
        raise ImportFormatError(f"{p}: no such file")
    if is_dir:
        raise ImportFormatError(f"{p}: is a directory, not a file")


def _read_text(p: Path) -> str:
    _check_readable(p)
    try:
        return p.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as exc:
        raise ImportFormatError(f"{p}: not UTF-8 text (byte {exc.start})") from None
    except OSError as exc:
        raise ImportFormatError(f"{p}: cannot read: {exc.strerror or exc}") from None


class _ExtraData(ImportFormatError):
    """Several JSON values in one text (JSON Lines read as one document)."""


def _loads(text: str, where: str, *, lines: bool = True) -> Any:
    """Parse JSON with every failure as an :class:`ImportFormatError` that says where."""
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        if exc.msg == "Extra data":
            raise _ExtraData(_json_message(where, exc, lines)) from None
        raise ImportFormatError(_json_message(where, exc, lines)) from None
    except RecursionError:
        raise ImportFormatError(f"{where}: JSON nested too deeply; flatten the file") from None
    except ValueError as exc:  # e.g. an integer of more than 4,300 digits
        raise ImportFormatError(f"{where}: not valid JSON: {exc}") from None


def _json_message(where: str, exc: json.JSONDecodeError, lines: bool) -> str:
    at = f"line {exc.lineno}, column {exc.colno}" if lines else f"column {exc.colno}"
    return f"{where}: not valid JSON at {at}: {exc.msg}"


def _load_json(p: Path) -> Any:
    return _loads(_read_text(p), str(p))


def _load_json_list(p: Path, what: str) -> list[Any]:
    """A JSON list of items (a single object counts as a list of one)."""
    data = _load_json(p)
    items = [data] if isinstance(data, Mapping) else data
    if not isinstance(items, list):
        raise ImportFormatError(f"{p}: expected a list of {what}, got {_kind(data)}")
    return items


def _later(at: datetime, delta: timedelta, where: str) -> datetime:
    try:
        return at + delta
    except OverflowError:
        raise ImportFormatError(f"{where}: the times run past the year 9999") from None


def _item_id(value: Any, default: str, where: str, what: str) -> str:
    """A conversation's id from the file: a string or a number; the default when missing."""
    if value is None or value == "":
        return default
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        raise ImportFormatError(f"{where}: {what} must be a string, got {_kind(value)}")
    if isinstance(value, float) and not math.isfinite(value):  # NaN would name "nan"
        raise ImportFormatError(f"{where}: {what} must be a string, got {value}")
    return str(value)


def _stem(p: Path) -> str:
    return p.stem or "imported"


def _kind(value: Any) -> str:
    return {dict: "an object", list: "a list", str: "a string", type(None): "null"}.get(
        type(value), type(value).__name__
    )


def _rename(convs: Conversations, session: str) -> Conversations:
    if len(convs) == 1:
        return {session: next(iter(convs.values()))}
    return {f"{session}:{sid}": turns for sid, turns in convs.items()}
