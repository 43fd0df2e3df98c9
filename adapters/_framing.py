"""What the adapters share: an assembled context as neutral messages, and "what is stored yet".

Every adapter turns an :class:`~optical_memory.AssembledContext` into its own message shape.
The decisions live here once: page images go into one labelled memory message (the memory
intro, then each page's caption before its image), recent turns follow as ordinary messages
with their tool calls and results restored, and a tool call is never shown without its results
(nor a result without its call), because every chat API rejects such a pair.

:class:`TurnLog` answers, cheaply and per session, which incoming messages are already in the
store, so that adapters fed the whole conversation on every request store each message once.

The agent tools (``recall_memory``, ``read_memory``) are described and answered here too, so
that every adapter offers the same two tools with the same words and the same answers.
"""

from __future__ import annotations

import hashlib
import json
import math
import threading
from collections import OrderedDict, deque
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Literal

from optical_memory import (
    MEMORY_INTRO,
    AssembledContext,
    Attachment,
    MemoryManager,
    OpticalMemoryError,
    PageSegment,
    SessionChanged,
    TextSegment,
    Turn,
    UnknownSession,
    approximate_tokens,
)
from optical_memory.errors import InvalidConfiguration
from optical_memory.turn_text import (
    SYSTEM_NOTE_HEAD,
    display_text,
    speaker_of,
    tool_result_head,
    with_image_labels,
)
from optical_memory.turn_text import turn_line as core_turn_line

MemoryRole = Literal["user", "system"]
StartOn = Literal["user", "any"]
MEMORY_MESSAGE_ID = "optical-memory"
"""Id (prefix) of the memory message, so callers can tell it from conversation turns."""


@dataclass(frozen=True)
class ToolCall:
    """A tool call as stored in turn metadata: ``{"id", "name", "args"}``.

    ``arguments`` keeps a raw argument string that was not a JSON object (OpenAI sends
    arguments as a string; a model can emit malformed JSON). It wins over ``args`` when set.
    ``source``: the argument string a call came with that did parse (stored as
    ``"source"``), sent on exactly as it came: parsed and written again, its spacing, its
    number forms and a repeated key would change.
    """

    id: str
    name: str
    args: dict[str, Any] = field(default_factory=dict)
    arguments: str | None = None
    source: str | None = None

    def arguments_json(self) -> str:
        if self.arguments is not None:
            return self.arguments
        return self.source if self.source is not None else json.dumps(self.args)

    def to_metadata(self) -> dict[str, Any]:
        out: dict[str, Any] = {"id": self.id, "name": self.name, "args": self.args}
        if self.arguments is not None:
            out["arguments"] = self.arguments
        if self.source is not None:
            out["source"] = self.source
        return out

    @classmethod
    def from_metadata(cls, raw: Mapping[str, Any]) -> ToolCall:
        """Read the stored shape, and the OpenAI shape (``function.name/arguments``) too."""
        fn = raw.get("function")
        name = raw.get("name") or (fn.get("name") if isinstance(fn, Mapping) else None) or ""
        args = raw.get("args")
        arguments = raw.get("arguments")
        source = raw.get("source") if isinstance(raw.get("source"), str) else None
        if arguments is None and isinstance(fn, Mapping):
            arguments = fn.get("arguments")
        if not isinstance(args, Mapping):
            given = arguments
            args, arguments = _parse_arguments(given)
            if arguments is None and isinstance(given, str) and given.strip():
                source = given
        elif arguments is not None and not isinstance(arguments, str):
            arguments = None
        return cls(str(raw.get("id") or ""), str(name), dict(args), arguments, source)


def _finite(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):  # 1e400: JSON has no infinity to write it back as
        raise ValueError(f"{text} is past what a float holds")
    return value


def _no_constant(name: str) -> float:
    raise ValueError(f"{name} is not JSON")


def _parse_arguments(arguments: object) -> tuple[dict[str, Any], str | None]:
    """OpenAI's argument string as a dict; a string that is not a JSON object (NaN and
    numbers past a float's range included: they could not be written back as JSON) is kept
    raw."""
    if arguments is None or arguments == "":
        return {}, None
    if isinstance(arguments, Mapping):
        return dict(arguments), None
    try:
        parsed = json.loads(str(arguments), parse_float=_finite, parse_constant=_no_constant)
    except (ValueError, RecursionError):
        return {}, str(arguments)
    if isinstance(parsed, dict):
        return parsed, None
    return {}, str(arguments)


@dataclass(frozen=True)
class MemoryPart:
    """One part of the memory message: a text (intro, caption) or a page image."""

    text: str | None = None
    page: PageSegment | None = None


@dataclass(frozen=True)
class FramedMessage:
    """One message in a framework-neutral shape; adapters only translate it."""

    role: str  # user, assistant, system or tool
    content: str
    parts: tuple[MemoryPart, ...] = ()  # the memory message only
    tool_calls: tuple[ToolCall, ...] = ()
    tool_call_id: str | None = None
    name: str | None = None
    turn: Turn | None = None
    images: tuple[Attachment, ...] = ()  # sent as images (the newest user turn's)

    @property
    def is_memory(self) -> bool:
        return bool(self.parts)

    @property
    def message_id(self) -> str | None:
        if self.turn is None:
            return None
        mid = self.turn.metadata.get("message_id")
        return str(mid) if mid else None


def frame(
    ctx: AssembledContext,
    *,
    memory_role: MemoryRole = "user",
    hint: str | None = None,
    start_on: StartOn = "user",
    system_first: bool = True,
) -> list[FramedMessage]:
    """The assembled context as ordered messages: the memory message, then recent turns.

    Everything up to the newest page image goes into the memory message, in order: pages as
    caption + image, and turns between them (pages too short to pay as images) as a plain
    transcript. The turns after the newest image follow as ordinary messages. ``hint`` (e.g.
    :data:`TOOLS_HINT`) is one more text part right after the intro; the caller budgets it.

    Provider rules (Anthropic's among them): with ``start_on="user"`` (default) the view opens
    on a user message: recent turns before the first user turn are left out unless the memory
    message (a user message) comes first, as langchain-core's ``trim_messages(start_on=
    "human")`` does; ``"any"`` keeps them. A tool call is never shown without its results, nor
    a result without its call. With ``system_first`` (default) a stored system turn is shown
    as a user message labelled ``[system]``, so that only the caller's system prompt (and a
    system memory message) come before the conversation.
    """
    check_memory_role(memory_role)
    check_start_on(start_on)
    segments = list(ctx.segments)
    last_page = max((i for i, s in enumerate(segments) if isinstance(s, PageSegment)), default=-1)
    recalled = ctx.recalled
    out: list[FramedMessage] = []
    parts: list[MemoryPart] = []
    if last_page >= 0:
        parts.append(MemoryPart(text=MEMORY_INTRO))
        run: list[Turn] = []
        for seg in segments[: last_page + 1]:
            if isinstance(seg, TextSegment):
                run.append(seg.turn)
                continue
            if not isinstance(seg, PageSegment):
                continue
            if run:
                parts.append(MemoryPart(text=transcript(run)))
                run = []
            parts.append(MemoryPart(text=seg.caption))
            parts.append(MemoryPart(page=seg))
    if recalled is not None:  # after the pages, so their prefix stays byte-stable
        parts.append(MemoryPart(text=recalled.text))
    if parts and hint:
        parts.insert(1 if last_page >= 0 else 0, MemoryPart(text=hint))
    if parts:
        out.append(FramedMessage(memory_role, parts[0].text or "", parts=tuple(parts)))
    recent = [s for s in segments[last_page + 1 :] if isinstance(s, TextSegment)]
    shown = {s.turn.seq for s in recent if s.shows_images}
    msgs = list(_turn_messages([s.turn for s in recent], shown))
    if system_first:
        msgs = [_system_note(m) if m.role == "system" else m for m in msgs]
    if start_on == "user" and not (out and out[0].role == "user"):
        # No user turn at all: nothing to open on (as trim_messages(start_on="human") does).
        first_user = next((i for i, m in enumerate(msgs) if m.role == "user"), len(msgs))
        msgs = msgs[first_user:]
    out.extend(msgs)
    return out


def check_memory_role(memory_role: object) -> MemoryRole:
    """The memory message's role, or :class:`InvalidConfiguration`."""
    if memory_role not in ("user", "system"):
        raise InvalidConfiguration(
            f"memory_role must be 'user' or 'system', got {memory_role!r:.40}"
        )
    return memory_role  # type: ignore[return-value]


def check_start_on(start_on: object) -> StartOn:
    """What a view opens on, or :class:`InvalidConfiguration`."""
    if start_on not in ("user", "any"):
        raise InvalidConfiguration(f"start_on must be 'user' or 'any', got {start_on!r:.40}")
    return start_on  # type: ignore[return-value]


def _system_note(m: FramedMessage) -> FramedMessage:
    return FramedMessage("user", f"{SYSTEM_NOTE_HEAD} {m.content}", name=m.name, turn=m.turn)


def transcript(turns: list[Turn]) -> str:
    """Older turns shown as text inside the memory message, one line per turn."""
    lines = [f"Turns {turns[0].seq}–{turns[-1].seq}, as text:"]
    for t in turns:
        speaker = speaker_of(t.role, t.metadata)
        text = display_text(t.role, t.content, t.metadata, t.attachments)
        lines.append(f"{speaker}: {text}" if text else f"{speaker}:")
    return "\n".join(lines)


def _turn_messages(turns: list[Turn], shown: set[int] | None = None) -> Iterator[FramedMessage]:
    """Turns as messages; a call keeps only the calls answered right after it, and a result
    with no call before it is shown as plain text (what chat APIs accept). The turns in
    ``shown`` carry their images as images; every other turn's images are labels in its text."""
    i = 0
    while i < len(turns):
        t = turns[i]
        name = _str_or_none(t.metadata.get("name"))
        calls = tool_calls_of(t)
        if t.role == "assistant" and calls:
            j = i + 1
            results: list[Turn] = []
            while j < len(turns) and turns[j].role == "tool":
                results.append(turns[j])
                j += 1
            answered = {r.metadata.get("tool_call_id") for r in results}
            kept = tuple(c for c in calls if c.id in answered)
            text = with_image_labels(t.content, t.attachments)
            yield FramedMessage("assistant", text, tool_calls=kept, name=name, turn=t)
            ids = {c.id for c in kept}
            for r in results:
                tcid = _str_or_none(r.metadata.get("tool_call_id"))
                if tcid in ids:
                    yield FramedMessage(
                        "tool",
                        with_image_labels(r.content, r.attachments),
                        tool_call_id=tcid,
                        name=_str_or_none(r.metadata.get("name")),
                        turn=r,
                    )
                else:
                    yield _orphan(r)
            i = j
            continue
        if t.role == "tool":
            yield _orphan(t)
        elif shown and t.seq in shown and t.attachments:
            yield FramedMessage(t.role, t.content, name=name, turn=t, images=t.attachments)
        else:
            yield FramedMessage(
                t.role, with_image_labels(t.content, t.attachments), name=name, turn=t
            )
        i += 1


def _orphan(t: Turn) -> FramedMessage:
    text = with_image_labels(t.content, t.attachments)
    return FramedMessage("user", f"{tool_result_head(t.metadata)}\n{text}", turn=t)


def tool_calls_of(t: Turn) -> tuple[ToolCall, ...]:
    raw = t.metadata.get("tool_calls")
    if t.role != "assistant" or not isinstance(raw, list):
        return ()
    return tuple(ToolCall.from_metadata(c) for c in raw if isinstance(c, Mapping))


def _str_or_none(value: object) -> str | None:
    return str(value) if value not in (None, "") else None


# -- what is stored already ----------------------------------------------------------------------


@dataclass
class SessionLog:
    last_seq: int = 0
    last_turn: Turn | None = None
    ids: set[str] = field(default_factory=set)
    id_seq: dict[str, int] = field(default_factory=dict)  # message id -> its live seq
    tail: deque[Turn] = field(default_factory=lambda: deque(maxlen=64))
    keys: list[int] = field(default_factory=list)  # turn_key of every live turn, in order
    seqs: list[int] = field(default_factory=list)  # their seqs
    lock: threading.Lock = field(default_factory=threading.Lock)

    def stored_version(self, message_id: str) -> tuple[Any, ...] | None:
        """:func:`version_of` the live turn stored for ``message_id``, if it is among the
        newest (the tail) where edits happen; None when not known here."""
        seq = self.id_seq.get(message_id)
        for t in reversed(self.tail):
            if t.seq == seq:
                digests = tuple(a.sha256 for a in t.attachments)
                return version_of(t.role, t.content, t.metadata, digests)
        return None

    def reset(self) -> None:
        self.last_seq, self.last_turn = 0, None
        self.ids.clear()
        self.id_seq.clear()
        self.tail.clear()
        self.keys.clear()
        self.seqs.clear()


def image_digests(row: Mapping[str, Any]) -> tuple[str, ...]:
    """The sha256 of each image of a turn about to be stored (its ``attachments`` bytes), as
    a stored turn names them (``Attachment.sha256``)."""
    return tuple(hashlib.sha256(b).hexdigest() for b in row.get("attachments", ()))


def version_of(
    role: str,
    content: str,
    metadata: Mapping[str, Any],
    image_digests: tuple[str, ...],
) -> tuple[Any, ...]:
    """Everything of a turn that an edit in place can change (a message sent again with
    its id, as LangGraph edits one): its text, tool calls with their arguments, the tool
    call it answers, its images."""
    calls = tuple(
        (
            str(c.get("id") or ""),
            str(c.get("name") or ""),
            json.dumps(c.get("args") or {}, sort_keys=True, default=str),
            c.get("arguments"),
        )
        for c in metadata.get("tool_calls") or ()
        if isinstance(c, Mapping)
    )
    return (role, content, calls, metadata.get("tool_call_id"), image_digests)


def message_key(
    role: str,
    content: str,
    tool_call_id: object,
    call_ids: tuple[object, ...],
    images: tuple[str, ...] = (),
) -> int:
    """What identifies a message that carries no id: role, text, tool call ids, the sha256
    of each image."""
    return hash((role, content, tool_call_id or None, call_ids, images))


def turn_key(t: Turn) -> int:
    calls = tuple(c.id for c in tool_calls_of(t))
    images = tuple(a.sha256 for a in t.attachments)
    return message_key(t.role, t.content, t.metadata.get("tool_call_id"), calls, images)


MAX_ALIGN_CANDIDATES = 16
"""How many places of the incoming first message in the stored branch are tried (latest first)."""


def align(stored: list[int], incoming: list[int]) -> tuple[int, int | None]:
    """Where a conversation sent again meets the stored branch, in time linear in both.

    Returns ``(known, replace_from)``: the first ``known`` incoming messages are stored
    already; ``replace_from`` is None, or the index in ``stored`` from which the stored turns
    are an earlier version (a regenerated reply, an edited message) that the incoming
    messages after ``known`` replace. A run that meets the end of the stored branch continues
    it (the longest such run wins); a run that starts at its first turn, or matches two
    messages or more, and then parts from it replaces the rest; anything else is new.
    """
    if not stored or not incoming:
        return 0, None
    first = incoming[0]
    places = [i for i, k in enumerate(stored) if k == first][-MAX_ALIGN_CANDIDATES:]
    best: tuple[int, int] | None = None
    continued = 0
    for p in reversed(places):
        n = 0
        while n < len(incoming) and p + n < len(stored) and stored[p + n] == incoming[n]:
            n += 1
        if p + n == len(stored):
            continued = max(continued, n)  # the longest run that meets the end wins
        elif (p == 0 or n >= 2) and (best is None or n > best[0]):
            best = (n, p + n)
    if continued:
        return continued, None
    if best is not None:
        return best
    return 0, None


WRITE_ATTEMPTS = 8
"""How many times :meth:`TurnLog.write` reads a session again after another process wrote to
it first (each retry means another writer made progress, so this bounds a burst, not a loss)."""


class TurnLog:
    """Per-session memory of what is stored, kept in step with the store cheaply.

    The first look at a session reads its turns once; later looks read only the turns added
    since (by anyone), and start over when the session was forgotten or replaced meanwhile.
    Ids come from the ``message_id`` turn metadata; the tail keeps the last turns for
    adapters whose messages carry no id.
    """

    def __init__(self, memory: MemoryManager, *, max_sessions: int = 1024) -> None:
        self.memory = memory
        self.max_sessions = max_sessions
        self._logs: OrderedDict[str, SessionLog] = OrderedDict()
        self._guard = threading.Lock()

    def _log(self, session_id: str) -> SessionLog:
        with self._guard:
            log = self._logs.get(session_id)
            if log is None:
                log = self._logs[session_id] = SessionLog()
                while len(self._logs) > self.max_sessions:
                    self._logs.popitem(last=False)
            else:
                self._logs.move_to_end(session_id)
            return log

    @contextmanager
    def session(self, session_id: str) -> Iterator[SessionLog]:
        """Hold one session's log, synced with the store (one writer per session here)."""
        log = self._log(session_id)
        with log.lock:
            self._sync(session_id, log)
            yield log

    def write(self, session_id: str, attempt: Callable[[SessionLog], list[Turn]]) -> list[Turn]:
        """Run ``attempt`` (which decides what is new from the log and writes it with
        ``expected_last_turn=log.last_seq``) under the session's synced log. The lock here
        keeps this process's writers in line; a writer in another process (a second worker,
        a second service) is caught by the conditional write: on :class:`SessionChanged` the
        log is read again and ``attempt`` runs again, so a message sent to two processes at
        once is stored once. Up to WRITE_ATTEMPTS times, then the error is raised."""
        for _ in range(WRITE_ATTEMPTS - 1):
            with self.session(session_id) as log:
                try:
                    return attempt(log)
                except SessionChanged:
                    log.reset()
        with self.session(session_id) as log:
            return attempt(log)

    def _sync(self, session_id: str, log: SessionLog) -> None:
        since = max(0, log.last_seq - 1)
        try:
            fresh = self.memory.turns(session_id, since=since)
        except UnknownSession:
            fresh = []
        if log.last_turn is not None and (not fresh or not _same(fresh[0], log.last_turn)):
            log.reset()  # forgotten or replaced since: read it all again
            try:
                fresh = self.memory.turns(session_id)
            except UnknownSession:
                fresh = []
        elif log.last_turn is not None:
            fresh = fresh[1:]
        self.note(log, fresh)

    @staticmethod
    def note(log: SessionLog, turns: list[Turn]) -> None:
        """Record turns just stored (or just read) in the log."""
        for t in turns:
            mid = t.metadata.get("message_id")
            if mid:
                log.ids.add(str(mid))
                log.id_seq[str(mid)] = t.seq
            log.tail.append(t)
            log.keys.append(turn_key(t))
            log.seqs.append(t.seq)
            log.last_seq = t.seq
            log.last_turn = t


def _same(a: Turn, b: Turn) -> bool:
    return (a.seq, a.role, a.content, a.metadata.get("message_id")) == (
        b.seq,
        b.role,
        b.content,
        b.metadata.get("message_id"),
    )


# -- the agent tools: recall_memory and read_memory ----------------------------------------------

RECALL_TOOL = "recall_memory"
READ_TOOL = "read_memory"
MEMORY_TOOL_NAMES: tuple[str, ...] = (RECALL_TOOL, READ_TOOL)
RECALL_LIMIT = 8
"""How many turns one ``recall_memory`` call answers with, at most."""
MAX_READ_TURNS = 40
"""The longest span one ``read_memory`` call reads; a longer one is refused, asking to narrow it."""
MAX_ANSWER_CHARS = 20_000
"""The most characters one tool answer holds; the turns past it are named, not shown."""
ToolScope = Literal["session", "owner"]
Counter = Callable[[str, str], int]

TOOLS_HINT = (
    "To read a page's turns exactly, call read_memory(first_turn, last_turn) with the numbers "
    "in its caption; recall_memory(query) searches the whole conversation."
)
"""The text part the memory message gets after the intro when the agent has the tools."""
_TOOLS_HINT_OWNER = (
    "To read a page's turns exactly, call read_memory(first_turn, last_turn) with the numbers "
    "in its caption; recall_memory(query) searches all of this user's conversations."
)
QUERY_DESCRIPTION = "Words to look for: names, places, numbers, identifiers, topics."
FIRST_TURN_DESCRIPTION = "Number of the first turn to read (turns are numbered from 1)."
LAST_TURN_DESCRIPTION = "Number of the last turn to read (inclusive)."
READ_DESCRIPTION = (
    "Read turns first_turn..last_turn (inclusive) of this conversation exactly as they were "
    "written, one line each as [turn N, speaker, date] text: e.g. the turns a memory page's "
    f"caption names when the page is too faint to read. At most {MAX_READ_TURNS} turns a call."
)
# Answers start with these, so a later search can tell the tools' own answers from the talk.
RECALL_ANSWER_HEAD = "Memory search for "
READ_ANSWER_HEAD = "Memory turns "
ERROR_HEAD = "Error: "


def tools_hint(scope: ToolScope = "session") -> str:
    """:data:`TOOLS_HINT`, worded for the scope ``recall_memory`` searches."""
    return _TOOLS_HINT_OWNER if scope == "owner" else TOOLS_HINT


def recall_description(scope: ToolScope = "session") -> str:
    where = "all of this user's conversations" if scope == "owner" else "this conversation"
    return (
        f"Search the archive of {where} for earlier turns that use the query's words and get "
        "their exact text, best match first, one line each as [turn N, speaker, date] text. "
        "Use it when a fact from earlier is missing or its memory page is too faint to read."
    )


def tool_specs(scope: ToolScope = "session") -> list[dict[str, Any]]:
    """The two tools as ``{"name", "description", "parameters"}`` (a JSON schema object)."""
    return [
        {
            "name": RECALL_TOOL,
            "description": recall_description(scope),
            "parameters": {
                "type": "object",
                "properties": {"query": {"type": "string", "description": QUERY_DESCRIPTION}},
                "required": ["query"],
                "additionalProperties": False,
            },
        },
        {
            "name": READ_TOOL,
            "description": READ_DESCRIPTION,
            "parameters": {
                "type": "object",
                "properties": {
                    "first_turn": {
                        "type": "integer",
                        "minimum": 1,
                        "description": FIRST_TURN_DESCRIPTION,
                    },
                    "last_turn": {
                        "type": "integer",
                        "minimum": 1,
                        "description": LAST_TURN_DESCRIPTION,
                    },
                },
                "required": ["first_turn", "last_turn"],
                "additionalProperties": False,
            },
        },
    ]


def check_tool_scope(scope: object) -> ToolScope:
    if scope not in ("session", "owner"):
        raise InvalidConfiguration(
            f"the tools' scope must be 'session' or 'owner', got {scope!r:.40}"
        )
    return scope  # type: ignore[return-value]


def turn_line(t: Turn, *, with_session: bool = False) -> str:
    """One archived turn as the tools answer it: ``[turn N, speaker, date] text``."""
    text = display_text(t.role, t.content, t.metadata, t.attachments)
    where = t.session_id if with_session else None
    return core_turn_line(t.seq, speaker_of(t.role, t.metadata), t.at, text, session=where)


def is_tool_answer(t: Turn) -> bool:
    """Whether a turn is an answer of the memory tools themselves (not shown by a search)."""
    if t.role != "tool":
        return False
    return t.metadata.get("name") in MEMORY_TOOL_NAMES or t.content.startswith(
        (RECALL_ANSWER_HEAD, READ_ANSWER_HEAD)
    )


def answer_recall(
    memory: MemoryManager,
    session_id: str,
    query: object,
    *,
    limit: int = RECALL_LIMIT,
    scope: ToolScope = "session",
    max_chars: int = MAX_ANSWER_CHARS,
    max_tokens: int | None = None,
    count: Counter | None = None,
) -> str:
    """``recall_memory(query)`` answered: the matching turns, best first, or why there are none.

    Never raises for what a model can get wrong (the query, an unknown session): the error is
    the answer. Earlier answers of these tools are left out (they quote the turns they found).
    The answer holds at most ``max_chars`` characters and, when given, ``max_tokens`` tokens by
    ``count(role, text)`` (default: the approximate counter): an answer that cannot fit the
    prompt it goes back into is of no use to the model.
    """
    if not isinstance(query, str) or not query.strip():
        return f"{ERROR_HEAD}{RECALL_TOOL} needs a query: the words to look for."
    said = _quoted(query)
    try:
        found = memory.recall(session_id, query, limit=limit, scope=scope)
    except OpticalMemoryError as exc:
        return _error(exc)
    hits = [r for r in found if not is_tool_answer(r.turn)]
    if not hits:
        where = "this conversation" if scope == "session" else "this user's conversations"
        return (
            f"{RECALL_ANSWER_HEAD}{said}: nothing found. No archived turn of {where} uses "
            "those words; try others (a name, a place, a number)."
        )
    lines = [turn_line(r.turn, with_session=r.turn.session_id != session_id) for r in hits]
    n = len(hits)
    head = f"{RECALL_ANSWER_HEAD}{said}: {n} archived turn{'s' if n > 1 else ''}, best first:"
    text, shown = _fit(head, lines, _limit(max_chars, max_tokens, count))
    if shown < n:
        text += f"\n[{n - shown} more matching turns left out: ask for fewer words or read them.]"
    return text


def answer_read(
    memory: MemoryManager,
    session_id: str,
    first_turn: object,
    last_turn: object,
    *,
    max_turns: int = MAX_READ_TURNS,
    max_chars: int = MAX_ANSWER_CHARS,
    max_tokens: int | None = None,
    count: Counter | None = None,
) -> str:
    """``read_memory(first_turn, last_turn)`` answered: the span exactly, or why not (sized as
    :func:`answer_recall`; the turns that do not fit are named, to read with another call)."""
    for name, value in (("first_turn", first_turn), ("last_turn", last_turn)):
        if isinstance(value, bool) or not isinstance(value, int):
            return f"{ERROR_HEAD}{name} must be a turn number (an integer), got {value!r:.40}."
    assert isinstance(first_turn, int) and isinstance(last_turn, int)
    n = last_turn - first_turn + 1
    if first_turn >= 1 and n > max_turns:
        return (
            f"{ERROR_HEAD}turns {first_turn}–{last_turn} are {n} turns; {READ_TOOL} reads at "
            f"most {max_turns} at a time. Narrow the span, e.g. "
            f"{READ_TOOL}({first_turn}, {first_turn + max_turns - 1})."
        )
    try:
        turns = memory.read(session_id, first_turn, last_turn)
    except OpticalMemoryError as exc:
        return _error(exc)
    head = f"{READ_ANSWER_HEAD}{first_turn}–{last_turn}, exactly as archived:"
    fits = _limit(max_chars, max_tokens, count)
    text, shown = _fit(head, [turn_line(t) for t in turns], fits)
    if shown < len(turns):
        rest = turns[shown].seq
        text += (
            f"\n[turns {rest}–{last_turn} left out (answer too long): read them with "
            f"{READ_TOOL}({rest}, {last_turn}).]"
        )
    return text


_NOTE_ROOM = 160  # characters kept free for the note on what was left out


def _limit(max_chars: int, max_tokens: int | None, count: Counter | None) -> Callable[..., bool]:
    """Whether an answer's text fits: characters, then tokens; with ``note`` (the default),
    room is kept for the note on what was left out."""
    counter = count or approximate_tokens
    spare = counter("tool", "x" * _NOTE_ROOM) if max_tokens is not None else 0

    def fits(text: str, note: bool = True) -> bool:
        if len(text) > max_chars - (_NOTE_ROOM if note else 0):
            return False
        extra = spare if note else 0
        return max_tokens is None or counter("tool", text) + extra <= max_tokens

    return fits


def _fit(head: str, lines: list[str], fits: Callable[..., bool]) -> tuple[str, int]:
    """The head and as many whole lines as fit (a first line too long to fit alone is cut
    where it stops fitting, and said so); returns the text and how many lines it shows.
    Everything, when it all fits (no room kept for a note then); never more than fits."""
    whole = "\n".join([head, *lines])
    if fits(whole, note=False):
        return whole, len(lines)
    if lines and not fits(f"{head}\n{lines[0]}"):  # its start, with its cut mark (room
        first = lines[0]  # kept for a note if lines follow)

        def cut(n: int) -> str:
            return f"{head}\n{first[:n]} [… cut here: {len(first) - n} more characters]"

        text, shown = cut(_longest(len(first), lambda n: fits(cut(n), note=len(lines) > 1))), 1
    else:
        text, shown = head, len(lines)
        for i, line in enumerate(lines):
            if not fits(f"{text}\n{line}"):
                shown = i
                break
            text = f"{text}\n{line}"
    if not fits(text, note=False):  # a limit below the head itself: its start, and no
        n = _longest(len(text), lambda n: fits(text[:n] + "…", note=False))  # note (none fits)
        return text[:n] + "…", len(lines)
    return text, shown


def _longest(most: int, fits: Callable[[int], bool]) -> int:
    """The largest ``n`` in ``0..most`` with ``fits(n)`` (true up to some ``n``, then false)."""
    lo, hi = 0, most
    while lo < hi:
        mid = (lo + hi + 1) // 2
        lo, hi = (mid, hi) if fits(mid) else (lo, mid - 1)
    return lo


def _quoted(query: str, limit: int = 80) -> str:
    q = " ".join(query.split())
    return json.dumps(q if len(q) <= limit else q[: limit - 1] + "…", ensure_ascii=False)


def _error(exc: OpticalMemoryError) -> str:
    if isinstance(exc, UnknownSession):
        return f"{ERROR_HEAD}nothing is archived for this conversation yet."
    return f"{ERROR_HEAD}{exc}"
