"""What the adapters share: an assembled context as neutral messages, and "what is stored yet".

Every adapter turns an :class:`~optical_memory.AssembledContext` into its own message shape.
The decisions live here once: page images go into one labelled memory message (the memory
intro, then each page's caption before its image), recent turns follow as ordinary messages
with their tool calls and results restored, and a tool call is never shown without its results
(nor a result without its call), because every chat API rejects such a pair.

:class:`TurnLog` answers, cheaply and per session, which incoming messages are already in the
store, so that adapters fed the whole conversation on every request store each message once.
"""

from __future__ import annotations

import json
import threading
from collections import OrderedDict, deque
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Literal

from optical_memory import (
    MEMORY_INTRO,
    AssembledContext,
    MemoryManager,
    PageSegment,
    TextSegment,
    Turn,
    UnknownSession,
)

MemoryRole = Literal["user", "system"]
MEMORY_MESSAGE_ID = "optical-memory"
"""Id (prefix) of the memory message, so callers can tell it from conversation turns."""


@dataclass(frozen=True)
class ToolCall:
    """A tool call as stored in turn metadata: ``{"id", "name", "args"}``.

    ``arguments`` keeps a raw argument string that was not a JSON object (OpenAI sends
    arguments as a string; a model can emit malformed JSON). It wins over ``args`` when set.
    """

    id: str
    name: str
    args: dict[str, Any] = field(default_factory=dict)
    arguments: str | None = None

    def arguments_json(self) -> str:
        return self.arguments if self.arguments is not None else json.dumps(self.args)

    def to_metadata(self) -> dict[str, Any]:
        out: dict[str, Any] = {"id": self.id, "name": self.name, "args": self.args}
        if self.arguments is not None:
            out["arguments"] = self.arguments
        return out

    @classmethod
    def from_metadata(cls, raw: Mapping[str, Any]) -> ToolCall:
        """Read the stored shape, and the OpenAI shape (``function.name/arguments``) too."""
        fn = raw.get("function")
        name = raw.get("name") or (fn.get("name") if isinstance(fn, Mapping) else None) or ""
        args = raw.get("args")
        arguments = raw.get("arguments")
        if arguments is None and isinstance(fn, Mapping):
            arguments = fn.get("arguments")
        if not isinstance(args, Mapping):
            args, arguments = _parse_arguments(arguments)
        elif arguments is not None and not isinstance(arguments, str):
            arguments = None
        return cls(str(raw.get("id") or ""), str(name), dict(args), arguments)


def _parse_arguments(arguments: object) -> tuple[dict[str, Any], str | None]:
    """OpenAI's argument string as a dict; a string that is not a JSON object is kept raw."""
    if arguments is None or arguments == "":
        return {}, None
    if isinstance(arguments, Mapping):
        return dict(arguments), None
    try:
        parsed = json.loads(str(arguments))
    except ValueError:
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

    @property
    def is_memory(self) -> bool:
        return bool(self.parts)

    @property
    def message_id(self) -> str | None:
        if self.turn is None:
            return None
        mid = self.turn.metadata.get("message_id")
        return str(mid) if mid else None


def frame(ctx: AssembledContext, *, memory_role: MemoryRole = "user") -> list[FramedMessage]:
    """The assembled context as ordered messages: the memory message, then recent turns.

    Everything up to the newest page image goes into the memory message, in order: pages as
    caption + image, and turns between them (pages too short to pay as images) as a plain
    transcript. The turns after the newest image follow as ordinary messages.
    """
    if memory_role not in ("user", "system"):
        raise ValueError(f"memory_role must be 'user' or 'system', got {memory_role!r}")
    segments = list(ctx.segments)
    last_page = max((i for i, s in enumerate(segments) if isinstance(s, PageSegment)), default=-1)
    out: list[FramedMessage] = []
    if last_page >= 0:
        parts = [MemoryPart(text=MEMORY_INTRO)]
        run: list[Turn] = []
        for seg in segments[: last_page + 1]:
            if isinstance(seg, TextSegment):
                run.append(seg.turn)
                continue
            if run:
                parts.append(MemoryPart(text=transcript(run)))
                run = []
            parts.append(MemoryPart(text=seg.caption))
            parts.append(MemoryPart(page=seg))
        out.append(FramedMessage(memory_role, MEMORY_INTRO, parts=tuple(parts)))
    turns = [s.turn for s in segments[last_page + 1 :] if isinstance(s, TextSegment)]
    out.extend(_turn_messages(turns))
    return out


def transcript(turns: list[Turn]) -> str:
    """Older turns shown as text inside the memory message, one line per turn."""
    lines = [f"Turns {turns[0].seq}–{turns[-1].seq}, as text:"]
    for t in turns:
        speaker = _str_or_none(t.metadata.get("name")) or t.role
        line = f"{speaker}: {t.content}" if t.content else f"{speaker}:"
        calls = tool_calls_of(t)
        if calls:
            line += " [calls " + ", ".join(f"{c.name}({c.arguments_json()})" for c in calls) + "]"
        lines.append(line)
    return "\n".join(lines)


def _turn_messages(turns: list[Turn]) -> Iterator[FramedMessage]:
    """Turns as messages; a call keeps only the calls answered right after it, and a result
    with no call before it is shown as plain text (what chat APIs accept)."""
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
            yield FramedMessage("assistant", t.content, tool_calls=kept, name=name, turn=t)
            ids = {c.id for c in kept}
            for r in results:
                tcid = _str_or_none(r.metadata.get("tool_call_id"))
                if tcid in ids:
                    yield FramedMessage(
                        "tool",
                        r.content,
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
        else:
            yield FramedMessage(t.role, t.content, name=name, turn=t)
        i += 1


def _orphan(t: Turn) -> FramedMessage:
    label = _str_or_none(t.metadata.get("name")) or _str_or_none(t.metadata.get("tool_call_id"))
    head = f"[earlier tool result{f' from {label}' if label else ''}]"
    return FramedMessage("user", f"{head}\n{t.content}", turn=t)


def tool_calls_of(t: Turn) -> tuple[ToolCall, ...]:
    raw = t.metadata.get("tool_calls")
    if t.role != "assistant" or not isinstance(raw, list):
        return ()
    return tuple(ToolCall.from_metadata(c) for c in raw if isinstance(c, Mapping))


def _str_or_none(value: object) -> str | None:
    return str(value) if value not in (None, "") else None


# -- what is stored already ----------------------------------------------------------------------


@dataclass
class _SessionLog:
    last_seq: int = 0
    last_turn: Turn | None = None
    ids: set[str] = field(default_factory=set)
    tail: deque[Turn] = field(default_factory=lambda: deque(maxlen=64))
    lock: threading.Lock = field(default_factory=threading.Lock)

    def reset(self) -> None:
        self.last_seq, self.last_turn = 0, None
        self.ids.clear()
        self.tail.clear()


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
        self._logs: OrderedDict[str, _SessionLog] = OrderedDict()
        self._guard = threading.Lock()

    def _log(self, session_id: str) -> _SessionLog:
        with self._guard:
            log = self._logs.get(session_id)
            if log is None:
                log = self._logs[session_id] = _SessionLog()
                while len(self._logs) > self.max_sessions:
                    self._logs.popitem(last=False)
            else:
                self._logs.move_to_end(session_id)
            return log

    @contextmanager
    def session(self, session_id: str) -> Iterator[_SessionLog]:
        """Hold one session's log, synced with the store (one writer per session here)."""
        log = self._log(session_id)
        with log.lock:
            self._sync(session_id, log)
            yield log

    def _sync(self, session_id: str, log: _SessionLog) -> None:
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
    def note(log: _SessionLog, turns: list[Turn]) -> None:
        """Record turns just stored (or just read) in the log."""
        for t in turns:
            mid = t.metadata.get("message_id")
            if mid:
                log.ids.add(str(mid))
            log.tail.append(t)
            log.last_seq = t.seq
            log.last_turn = t


def _same(a: Turn, b: Turn) -> bool:
    return (a.seq, a.role, a.content, a.metadata.get("message_id")) == (
        b.seq,
        b.role,
        b.content,
        b.metadata.get("message_id"),
    )
