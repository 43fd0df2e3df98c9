"""OpenAI-style chat completions: assembled context in, message dicts out (and back).

Works with OpenAI and with OpenAI-compatible servers (vLLM serving DeepSeek-OCR or Qwen2.5-VL,
Ollama, LM Studio): page images travel as ``image_url`` parts with a ``data:`` URL, tool calls
and results keep the chat-completions shape. Nothing here imports the ``openai`` package::

    ctx = memory.assemble(session_id, budget=4096, target="openai")
    messages = to_openai_messages(ctx, system_prompt="You are helpful.")
    reply = client.chat.completions.create(model=..., messages=messages)
    record_openai_messages(memory, session_id, [reply.choices[0].message])

The agent tools come as function-tool schemas, with a handler that answers a call::

    reply = client.chat.completions.create(model=..., messages=messages, tools=memory_tools())
    messages.append(reply.choices[0].message)
    for call in reply.choices[0].message.tool_calls or []:
        messages.append(handle_memory_tool_call(memory, session_id, call))
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import bisect
import json
import re
import threading
import weakref
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from typing import Any, Literal

from optical_memory import AssembledContext, InvalidAttachment, InvalidInput, MemoryManager, Turn

from ._framing import (
    ERROR_HEAD,
    MEMORY_TOOL_NAMES,
    READ_TOOL,
    RECALL_LIMIT,
    RECALL_TOOL,
    TOOLS_HINT,
    FramedMessage,
    MemoryRole,
    SessionLog,
    StartOn,
    ToolCall,
    ToolScope,
    TurnLog,
    align,
    answer_read,
    answer_recall,
    check_tool_scope,
    frame,
    image_digests,
    message_key,
    tool_specs,
)

__all__ = [
    "MEMORY_TOOL_NAMES",
    "TOOLS_HINT",
    "ahandle_memory_tool_call",
    "handle_memory_tool_call",
    "memory_tools",
    "newest_user_text",
    "openai_message_to_turn",
    "record_openai_messages",
    "record_openai_reply",
    "to_openai_messages",
]

Detail = Literal["auto", "low", "high", "original"]
_NAME_OK = re.compile(r"[^a-zA-Z0-9_-]")


def to_openai_messages(
    ctx: AssembledContext,
    *,
    detail: Detail | None = None,
    memory_role: MemoryRole = "user",
    system_prompt: str | None = None,
    tools_hint: str | None = None,
    start_on: StartOn = "user",
    system_first: bool = True,
) -> list[dict[str, Any]]:
    """Chat-completions messages: system prompt, the memory message with the pages, recent turns.

    ``detail``: the ``image_url.detail`` of every page; by default each page's own detail when
    the target defines one (the ``openai`` target shows faint pages at ``low``), else none.
    Chat completions accepts images only in user messages, so ``memory_role="system"`` sends
    the memory as text-only system framing followed by a user message with the images.
    ``tools_hint`` (e.g. :data:`TOOLS_HINT`, when the request offers :func:`memory_tools`): a
    text part after the memory intro; it is not in ``ctx.tokens``, so take
    ``memory.count_tokens("system", TOOLS_HINT)`` off the budget passed to ``assemble``.
    ``start_on="user"`` (default) opens the conversation on a user message and
    ``system_first`` (default) shows stored system turns as labelled user messages, so the
    system prompt stays first and alone (what Anthropic-compatible servers require).

    The newest user turn's images (recorded from its ``image_url`` parts, see
    :func:`record_openai_messages`) go with it as ``image_url`` parts, the bytes exactly as
    sent, and ``ctx.tokens`` counts them; older turns' images appear as labels in their text.
    """
    out: list[dict[str, Any]] = []
    if system_prompt:
        out.append({"role": "system", "content": system_prompt})
    framed = frame(
        ctx, memory_role=memory_role, hint=tools_hint, start_on=start_on, system_first=system_first
    )
    for m in framed:
        if m.is_memory:
            out.extend(_memory_messages(m, detail))
        else:
            out.append(_turn_message(m))
    return out


def _memory_messages(m: FramedMessage, detail: Detail | None) -> list[dict[str, Any]]:
    if all(part.page is None for part in m.parts):  # recalled text only: one plain message
        return [{"role": m.role, "content": "\n\n".join(part.text or "" for part in m.parts)}]
    parts: list[dict[str, Any]] = []
    for part in m.parts:
        if part.page is None:
            parts.append({"type": "text", "text": part.text or ""})
            continue
        image: dict[str, Any] = {"url": part.page.data_url}
        d = detail or part.page.detail
        if d:
            image["detail"] = d
        parts.append({"type": "image_url", "image_url": image})
    if m.role == "user":
        return [{"role": "user", "content": parts}]
    return [
        {"role": "system", "content": m.content},
        {"role": "user", "content": parts[1:]},
    ]


def _turn_message(m: FramedMessage) -> dict[str, Any]:
    msg: dict[str, Any] = {"role": m.role}
    if m.role == "assistant":
        msg["content"] = m.content if (m.content or not m.tool_calls) else None
        if m.tool_calls:
            msg["tool_calls"] = [
                {
                    "id": c.id,
                    "type": "function",
                    "function": {"name": c.name, "arguments": c.arguments_json()},
                }
                for c in m.tool_calls
            ]
    elif m.role == "tool":
        msg["tool_call_id"] = m.tool_call_id or ""
        msg["content"] = m.content
    elif m.images:  # the newest user turn: its images as the user sent them, bytes exact
        parts: list[dict[str, Any]] = [{"type": "text", "text": m.content}] if m.content else []
        parts += [{"type": "image_url", "image_url": {"url": a.data_url}} for a in m.images]
        msg["content"] = parts
    else:
        msg["content"] = m.content
    if m.name and m.role in ("user", "assistant", "system"):
        name = _NAME_OK.sub("_", m.name)[:64]
        if name:
            msg["name"] = name
    return msg


# -- incoming messages -> store ------------------------------------------------------------------


def newest_user_text(messages: Sequence[Mapping[str, Any] | Any]) -> str | None:
    """The text of the newest user message of a chat-completions request: the cue to pass
    to ``assemble`` so that what it recalls from the archive comes back as exact text."""
    for msg in reversed(list(messages)):
        m = _as_dict(msg)
        if m.get("role") == "user":
            text, _, _ = _text_of(m.get("content"))
            return text or None
    return None


def openai_message_to_turn(
    message: Mapping[str, Any] | Any, at: datetime | None = None
) -> dict[str, Any] | None:
    """A chat-completions message (dict or the ``openai`` client's object) as a turn.

    System and developer messages are instructions, not conversation: None. Text parts are
    joined; inline images (``image_url`` parts with a ``data:`` URL) become the turn's
    ``attachments``, stored exactly; other parts (remote image URLs, audio) are not archived,
    their types noted in ``metadata["omitted_blocks"]``.
    """
    msg = _as_dict(message)
    role = msg.get("role")
    if role in ("system", "developer"):
        return None
    if role == "function":
        role = "tool"
    if role not in ("user", "assistant", "tool"):
        raise InvalidInput(
            f"a chat-completions message's role is user, assistant, tool, system or developer; "
            f"got {role!r:.40}"
        )
    content, omitted, images = _text_of(msg.get("content"))
    if not content and role == "assistant" and isinstance(msg.get("refusal"), str):
        content = msg["refusal"]
    for field in ("name", "tool_call_id"):
        _check_text(msg.get(field), f"a message's {field}")
    meta: dict[str, Any] = {}
    if msg.get("name") and role != "tool":
        meta["name"] = str(msg["name"])
    if role == "assistant" and msg.get("tool_calls"):
        if not isinstance(msg["tool_calls"], list | tuple):
            raise InvalidInput("a message's tool_calls must be a list of tool calls")
        meta["tool_calls"] = [
            ToolCall.from_metadata(_checked_call(c)).to_metadata() for c in msg["tool_calls"]
        ]
    if role == "tool":
        meta["tool_call_id"] = str(msg.get("tool_call_id") or msg.get("name") or "")
        if msg.get("name"):
            meta["name"] = str(msg["name"])
    if omitted:
        meta["omitted_blocks"] = omitted
    row: dict[str, Any] = {"role": role, "content": content, "at": at, "metadata": meta}
    if images:
        row["attachments"] = images
    return row


def _check_text(value: object, what: str) -> None:
    if value is not None and not isinstance(value, str):
        raise InvalidInput(f"{what} must be a string, got {type(value).__name__} {value!r:.40}")


def _checked_call(call: Mapping[str, Any] | Any) -> dict[str, Any]:
    """A tool call of a message as a dict, refused (:class:`InvalidInput`) where its id, name
    or arguments are not what chat completions sends (strings; arguments a JSON string)."""
    c = _as_dict(call)
    fn = c.get("function")
    if fn is not None and not isinstance(fn, Mapping):
        raise InvalidInput("a tool call's function must be an object with name and arguments")
    fn = fn or {}
    _check_text(c.get("id"), "a tool call's id")
    _check_text(fn.get("name", c.get("name")), "a tool call's function name")
    arguments = fn.get("arguments", c.get("arguments"))
    if arguments is not None and not isinstance(arguments, str | Mapping):
        raise InvalidInput(
            f"a tool call's arguments must be a JSON string, got {type(arguments).__name__}"
        )
    return c


def record_openai_messages(
    memory: MemoryManager,
    session_id: str,
    messages: Iterable[Mapping[str, Any] | Any],
    *,
    at: datetime | None = None,
) -> list[Turn]:
    """Store the messages of a chat-completions request that are not stored yet.

    Pass the whole conversation each time, as chat-completions clients do, or only the new
    messages (a reply, say). Sending the same conversation again stores nothing. A
    conversation that parts from the stored one (a regenerated reply, an edited message, the
    request of a "regenerate" without the old reply) records a new version: the stored turns
    from where it parts are superseded (kept in the archive, see
    ``MemoryManager.superseded``; out of the prompt) and the rest is stored, in one
    transaction. Aligning is linear in the messages sent (see :func:`~._framing.align`).
    Turns already on a page cannot be replaced: an edit there is stored as new turns. A run
    of one message that meets the stored branch only somewhere in its middle (a one-message
    conversation edited, then regenerated) cannot be told from that message sent again as
    new, and is stored as new: replacing from there could withdraw a whole conversation. System
    and developer messages are not stored. Inline images are stored as the turn's
    attachments; one that is not a decodable image raises ``InvalidAttachment`` and nothing
    is stored. Several processes may record the same conversation at once (two service
    workers): each writes on the condition that the session is as it read it, and reads again
    when it is not, so every message is stored once.
    """
    kept, keys = _kept_and_keys(messages, at)

    def attempt(state: SessionLog) -> list[Turn]:
        known, replace_from = align(state.keys, keys)
        new = [r for r in (openai_message_to_turn(m, at) for m in kept[known:]) if r is not None]
        if not new and replace_from is None:
            return []
        last = state.last_seq  # what this decision was made on (see TurnLog.write)
        try:
            if replace_from is None:
                stored = memory.add_turns(session_id, new, expected_last_turn=last)
            else:
                try:
                    stored = memory.replace_turns(
                        session_id, state.seqs[replace_from], new, expected_last_turn=last
                    )
                except InvalidInput:  # the part replaced is on a page already: append
                    stored = (
                        memory.add_turns(session_id, new, expected_last_turn=last) if new else []
                    )
                else:
                    state.reset()  # the branch changed: read it again on the next request
                    return stored
        except BaseException:
            state.reset()
            raise
        TurnLog.note(state, stored)
        return stored

    return _turn_log(memory).write(session_id, attempt)


def record_openai_reply(
    memory: MemoryManager,
    session_id: str,
    reply: Mapping[str, Any] | Any,
    *,
    answering: int | None = None,
) -> list[Turn]:
    """Store the assistant ``reply`` to a request whose recorded conversation ended at turn
    ``answering`` (its newest turn then), once: for a reply stored after its answer was sent
    (as the service's proxy does), when the client's next request may have recorded it first.

    Stored at the end of the session, unless the turn right after ``answering`` is this very
    reply (the next request carried it, through another process): then nothing is stored.
    Nothing is stored either when turn ``answering`` is no longer live: the session was
    forgotten while the answer was on its way (storing it would bring the session back,
    holding the answer to what its user asked to forget), or that turn was replaced (the
    answer is to a withdrawn version). ``answering`` None: appended at the end in any case.
    Conditional on the session as read, like :func:`record_openai_messages`, so two
    processes never both store it.
    """
    msg = _as_dict(reply)
    turn = openai_message_to_turn({**msg, "role": msg.get("role") or "assistant"})
    if turn is None:
        return []
    key = _key_of_row(turn)

    def attempt(state: SessionLog) -> list[Turn]:
        if answering is not None:
            after = bisect.bisect_right(state.seqs, answering)  # the first turn after it
            if after == 0 or state.seqs[after - 1] != answering:
                return []  # forgotten or replaced since: the answer answers nothing stored
            if after < len(state.keys) and state.keys[after] == key:
                return []  # the next request stored it already
        try:
            stored = memory.add_turns(session_id, [turn], expected_last_turn=state.last_seq)
        except BaseException:
            state.reset()
            raise
        TurnLog.note(state, stored)
        return stored

    return _turn_log(memory).write(session_id, attempt)


_NOT_STORED = frozenset({"system", "developer"})


def _kept_and_keys(messages: Iterable[Any], at: datetime | None) -> tuple[list[Any], list[int]]:
    """The messages that are stored (not system or developer ones) and their keys, in one
    pass. The whole conversation comes with every request, so this runs over every message
    each time: a plain dict of text (nearly all of them) is keyed inline, without the
    abstract ``Mapping`` checks (most of the cost at a thousand messages)."""
    kept: list[Any] = []
    keys: list[int] = []
    for m in messages:
        if type(m) is dict:
            role = m.get("role")
            if type(role) is str and role in _NOT_STORED:
                continue
            content = m.get("content")
            if (
                (role == "user" or role == "assistant")
                and type(content) is str
                and content
                and not m.get("tool_calls")
            ):
                kept.append(m)
                keys.append(message_key(role, content, None, ()))
                continue
        elif isinstance(role := _role_of(m), str) and role in _NOT_STORED:
            continue
        kept.append(m)
        keys.append(_key_of_message(m, at))
    return kept, keys


def _role_of(m: Any) -> object:
    return m.get("role") if isinstance(m, Mapping) else getattr(m, "role", None)


def _key_of_message(m: Any, at: datetime | None) -> int:
    """The message's key (:func:`message_key`) as its turn would have it. A plain text
    message (the common case: the whole conversation is sent again on every request) is
    keyed without building its turn first."""
    if isinstance(m, Mapping) and m.get("role") in ("user", "assistant"):
        content = m.get("content")
        if isinstance(content, str) and content and not m.get("tool_calls"):
            return message_key(m["role"], content, None, ())
    row = openai_message_to_turn(m, at)
    assert row is not None  # system and developer messages are filtered out before
    return _key_of_row(row)


def _key_of_row(r: dict[str, Any]) -> int:
    meta = r["metadata"]
    calls = tuple(c.get("id") for c in meta.get("tool_calls", []))
    images = image_digests(r)
    return message_key(r["role"], r["content"], meta.get("tool_call_id"), calls, images)


_LOGS: weakref.WeakKeyDictionary[MemoryManager, TurnLog] = weakref.WeakKeyDictionary()
_LOGS_GUARD = threading.Lock()


def _turn_log(memory: MemoryManager) -> TurnLog:
    with _LOGS_GUARD:
        log = _LOGS.get(memory)
        if log is None:
            log = _LOGS[memory] = TurnLog(memory)
        return log


def _as_dict(obj: Any) -> dict[str, Any]:
    if isinstance(obj, Mapping):
        return dict(obj)
    dump = getattr(obj, "model_dump", None)  # openai's pydantic objects
    if callable(dump):
        return dict(dump(exclude_none=True))
    raise InvalidInput(
        f"expected a chat-completions message (a JSON object), got {type(obj).__name__} {obj!r:.40}"
    )


def _text_of(content: Any) -> tuple[str, list[str], list[bytes]]:
    """The text parts joined, the types of the parts not archived, the inline images' bytes."""
    if content is None:
        return "", [], []
    if isinstance(content, str):
        return content, [], []
    if not isinstance(content, list | tuple):
        raise InvalidInput(
            "a message's content must be a string or a list of content parts, got "
            f"{type(content).__name__}"
        )
    texts: list[str] = []
    omitted: list[str] = []
    images: list[bytes] = []
    for part in content:
        p = _as_dict(part) if not isinstance(part, str) else {"type": "text", "text": part}
        if p.get("type") == "text":
            text = p.get("text", "")
            if not isinstance(text, str):
                raise InvalidInput(
                    f"a text part's text must be a string, got {type(text).__name__}"
                )
            texts.append(text)
            continue
        data = _inline_image(p) if p.get("type") == "image_url" else None
        if data is not None:
            images.append(data)
        else:
            omitted.append(str(p.get("type", "?")))
    return "\n".join(texts), omitted, images


def _inline_image(part: Mapping[str, Any]) -> bytes | None:
    """The bytes of an ``image_url`` part given as a base64 ``data:`` URL (None: a remote URL)."""
    iu = part.get("image_url")
    url = _as_dict(iu).get("url") if iu is not None and not isinstance(iu, str) else iu
    if not isinstance(url, str) or not url.startswith("data:") or ";base64," not in url:
        return None
    try:
        return base64.b64decode(url.split(";base64,", 1)[1], validate=True)
    except (binascii.Error, ValueError):
        raise InvalidAttachment("an image_url part's data: URL is not valid base64") from None


# -- the agent tools -----------------------------------------------------------------------------


def memory_tools(*, scope: ToolScope = "session") -> list[dict[str, Any]]:
    """``recall_memory(query)`` and ``read_memory(first_turn, last_turn)`` as chat-completions
    function tools, for ``tools=`` of a request; answer their calls with
    :func:`handle_memory_tool_call`. ``scope``: what ``recall_memory`` searches, the session
    (default) or all of the memory's owner's sessions (pass the same to the handler)."""
    return [{"type": "function", "function": spec} for spec in tool_specs(check_tool_scope(scope))]


def handle_memory_tool_call(
    memory: MemoryManager,
    session_id: str,
    tool_call: Mapping[str, Any] | Any,
    *,
    scope: ToolScope = "session",
    limit: int = RECALL_LIMIT,
    max_tokens: int | None = None,
) -> dict[str, Any]:
    """Answer one memory tool call with its ``{"role": "tool", "tool_call_id", "content"}``
    message, ready to append to the conversation.

    ``tool_call``: the ``openai`` client's tool call object or a dict with ``id``,
    ``function.name`` and ``function.arguments`` (a JSON string). Everything a model can get
    wrong (an unknown tool, arguments that are not JSON, a bad span, an unknown session) is
    answered as error text, never raised. Check ``name in MEMORY_TOOL_NAMES`` to route calls.
    ``max_tokens``: the most tokens an answer may take (by ``memory.count_tokens``), e.g. half
    the budget you assemble with, so the answer fits the next prompt; turns past it are named.
    """
    check_tool_scope(scope)
    call_id = ""
    try:
        call = _as_dict(tool_call)
        call_id = str(call.get("id") or call.get("call_id") or "")
        fn = call.get("function")
        fn = _as_dict(fn) if fn is not None else call
    except InvalidInput as exc:
        content = f"{ERROR_HEAD}not a tool call: {exc}"
    else:
        content = _answer(
            memory, session_id, fn.get("name"), fn.get("arguments"), scope, limit, max_tokens
        )
    return {"role": "tool", "tool_call_id": call_id, "content": content}


async def ahandle_memory_tool_call(
    memory: MemoryManager,
    session_id: str,
    tool_call: Mapping[str, Any] | Any,
    *,
    scope: ToolScope = "session",
    limit: int = RECALL_LIMIT,
    max_tokens: int | None = None,
) -> dict[str, Any]:
    """:func:`handle_memory_tool_call` off the event loop."""
    return await asyncio.to_thread(
        handle_memory_tool_call,
        memory,
        session_id,
        tool_call,
        scope=scope,
        limit=limit,
        max_tokens=max_tokens,
    )


def _answer(
    memory: MemoryManager,
    session_id: str,
    name: object,
    arguments: object,
    scope: ToolScope,
    limit: int,
    max_tokens: int | None,
) -> str:
    if name not in MEMORY_TOOL_NAMES:
        return (
            f"{ERROR_HEAD}unknown tool {name!r:.60}; the memory tools are "
            f"{RECALL_TOOL}(query) and {READ_TOOL}(first_turn, last_turn)."
        )
    if isinstance(arguments, Mapping):
        args: object = dict(arguments)
    elif arguments is None or (isinstance(arguments, str) and not arguments.strip()):
        args = {}
    else:
        try:
            args = json.loads(str(arguments))
        except (ValueError, RecursionError):  # not JSON, or nested past what can be read
            args = None
    if not isinstance(args, dict):
        return f"{ERROR_HEAD}the arguments of {name} must be a JSON object, got {arguments!r:.80}."
    size: dict[str, Any] = {"max_tokens": max_tokens, "count": memory.count_tokens}
    if name == RECALL_TOOL:
        query = args.get("query")
        return answer_recall(memory, session_id, query, limit=limit, scope=scope, **size)
    first, last = _turn_number(args.get("first_turn")), _turn_number(args.get("last_turn"))
    return answer_read(memory, session_id, first, last, **size)


def _turn_number(value: object) -> object:
    """A turn number as a model may write it (``12``, ``12.0``, ``"12"``) as an int; anything
    else unchanged, for the answer to name."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    digits = value.strip().lstrip("+-") if isinstance(value, str) else ""
    if digits.isascii() and digits.isdigit() and len(digits) <= 18:  # past that: no such turn
        return int(value.strip())  # type: ignore[union-attr]
    return value
