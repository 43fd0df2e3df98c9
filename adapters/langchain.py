"""LangChain: agent middleware, a chat message history, and an image-aware token counter.

* :class:`OpticalMemoryMiddleware` plugs into ``langchain.agents.create_agent``. On every
  model call it stores the conversation's new messages once, then hands the model the
  assembled view instead of the full history: one labelled memory message with the page
  images, then the recent turns as ordinary messages. The images exist only in the request
  passed to the model; graph state and checkpoints keep plain text. It also gives the agent
  two tools, ``recall_memory(query)`` and ``read_memory(first_turn, last_turn)``, that answer
  from the lossless archive of the run's own session (the thread id) inside the memory's owner.
* :class:`OpticalChatMessageHistory` is the same memory for ``RunnableWithMessageHistory``.
* :func:`count_tokens_with_images` counts a message list the way the target model charges
  images (langchain-core's approximate counter charges every image a flat 85 tokens).

Images are LangChain v1 standard content blocks:
``{"type": "image", "base64": ..., "mime_type": "image/png"}``.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import hashlib
import io
import uuid
from collections.abc import Callable, Iterable, Sequence
from datetime import datetime
from functools import partial
from typing import Annotated, Any

from optical_memory import (
    AssembledContext,
    InvalidAttachment,
    InvalidBudget,
    InvalidInput,
    MemoryManager,
    Target,
    Tier,
    Turn,
    UnknownSession,
    get_target,
)
from optical_memory.errors import InvalidConfiguration, MissingExtra
from optical_memory.tokens import make_counter
from optical_memory.turn_text import cost_text

try:
    from langchain.agents.middleware import AgentMiddleware, ModelRequest, ModelResponse
    from langchain.tools import ToolRuntime
    from langchain_core.chat_history import BaseChatMessageHistory
    from langchain_core.messages import (
        AIMessage,
        BaseMessage,
        HumanMessage,
        RemoveMessage,
        SystemMessage,
        ToolMessage,
        messages_to_dict,
    )
    from langchain_core.messages.utils import convert_to_messages, count_tokens_approximately
    from langchain_core.runnables.history import RunnableWithMessageHistory
    from langchain_core.tools import BaseTool, StructuredTool
    from pydantic import Field
except ImportError as exc:
    raise MissingExtra("optical_memory.adapters.langchain", "langchain", exc.name) from exc

from ._framing import (
    FIRST_TURN_DESCRIPTION,
    LAST_TURN_DESCRIPTION,
    MEMORY_MESSAGE_ID,
    QUERY_DESCRIPTION,
    READ_TOOL,
    RECALL_TOOL,
    FramedMessage,
    MemoryRole,
    SessionLog,
    StartOn,
    ToolScope,
    TurnLog,
    answer_read,
    answer_recall,
    check_memory_role,
    check_start_on,
    check_tool_scope,
    frame,
    image_digests,
    tool_specs,
    tools_hint,
    version_of,
)

__all__ = [
    "OpticalChatMessageHistory",
    "OpticalMemoryMiddleware",
    "OpticalRunnableWithMessageHistory",
    "count_tokens_with_images",
    "image_token_counter",
    "message_to_turn",
    "newest_user_text",
    "to_langchain_messages",
]

Clock = Callable[[], datetime]
SessionKey = str | Callable[[Any], str]
_ROLES = {
    "human": "user",
    "ai": "assistant",
    "system": "system",
    "tool": "tool",
    "function": "tool",
}


# -- LangChain messages -> turns -----------------------------------------------------------------


def message_to_turn(message: BaseMessage, at: datetime | None = None) -> dict[str, Any] | None:
    """A message as a turn for ``MemoryManager.add_turns`` (None for what is not a turn).

    Text is stored as is; tool calls, the tool call id, the speaker name and the message id go
    into metadata. Inline images (base64 ``image`` blocks in any common shape, ``image_url``
    blocks with a ``data:`` URL) become the turn's ``attachments``, stored exactly; other
    non-text blocks (remote image URLs, audio) are not archived, their types noted in
    ``metadata["omitted_blocks"]``.
    """
    if message.type == "remove" or _is_memory_message(message):
        return None
    role = _ROLES.get(message.type)
    if role is None:
        raw = getattr(message, "role", "user")  # a ChatMessage: LangChain's names or the API's
        raw = _ROLES.get(raw, "system" if raw == "developer" else raw)
        role = raw if raw in ("user", "assistant", "system", "tool") else "user"
    meta: dict[str, Any] = {}
    if message.id:
        meta["message_id"] = str(message.id)
    if message.name:
        meta["name"] = message.name
    if isinstance(message, AIMessage):
        calls = [
            {"id": c.get("id") or "", "name": c["name"], "args": dict(c.get("args") or {})}
            for c in message.tool_calls
        ]
        calls += [
            {
                "id": c.get("id") or "",
                "name": c.get("name") or "",
                "args": {},
                "arguments": c.get("args") or "",
            }
            for c in message.invalid_tool_calls
        ]
        if calls:
            meta["tool_calls"] = calls
    if isinstance(message, ToolMessage):
        meta["tool_call_id"] = message.tool_call_id
        if message.status == "error":
            meta["status"] = "error"
    images: list[bytes] = []
    if isinstance(message.content, list):
        omitted = []
        for b in message.content:
            if isinstance(b, str) or (isinstance(b, dict) and b.get("type") == "text"):
                continue
            data = _inline_image(b) if isinstance(b, dict) else None
            if data is not None:
                images.append(data)
            else:
                omitted.append(b.get("type", "?") if isinstance(b, dict) else "?")
        omitted = [t for t in omitted if t not in ("tool_use", "tool_call")]  # kept as tool_calls
        if omitted:
            meta["omitted_blocks"] = omitted
    row: dict[str, Any] = {"role": role, "content": str(message.text), "at": at, "metadata": meta}
    if images:
        row["attachments"] = images
    return row


def _inline_image(block: dict[str, Any]) -> bytes | None:
    """The bytes of an image block given inline (base64), None for anything else."""
    if block.get("type") not in ("image", "image_url"):
        return None
    data, _ = _image_source(block)
    if data is None:
        return None
    try:
        return base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        raise InvalidAttachment("an image block's base64 data is not valid base64") from None


def _is_memory_message(message: BaseMessage) -> bool:
    return bool(message.id) and str(message.id).startswith(MEMORY_MESSAGE_ID)


# -- assembled context -> LangChain messages -----------------------------------------------------


def to_langchain_messages(
    ctx: AssembledContext,
    *,
    memory_role: MemoryRole = "user",
    hint: str | None = None,
    start_on: StartOn = "user",
    system_first: bool = True,
) -> list[BaseMessage]:
    """The assembled context as LangChain messages: the memory message, then recent turns.

    ``hint``: one more text part after the memory intro (the middleware's note on its tools);
    its tokens are not in ``ctx.tokens``, so budget them when assembling. ``start_on`` and
    ``system_first``: the provider rules of :func:`~optical_memory.adapters._framing.frame`
    (open on a user message; stored system turns as labelled user messages).

    A page the target prices by ``detail`` (the OpenAI targets) is an OpenAI ``image_url``
    block with its ``detail``, which ``ChatOpenAI`` passes through as is (langchain-core's
    converter drops a standard block's ``detail``, and the page would be billed at high
    detail); other pages are standard ``image`` blocks. The newest user turn's images go with
    it as standard ``image`` blocks (bytes exact); older turns' images are labels in their text.
    """
    framed = frame(
        ctx, memory_role=memory_role, hint=hint, start_on=start_on, system_first=system_first
    )
    return [_to_message(m) for m in framed]


def to_langchain_dicts(ctx: AssembledContext) -> list[dict[str, Any]]:
    """The assembled context as LangChain's serialised messages (``messages_to_dict``)."""
    return messages_to_dict(to_langchain_messages(ctx))


def _to_message(m: FramedMessage) -> BaseMessage:
    if m.is_memory:
        blocks: list[str | dict[str, Any]] = []
        for part in m.parts:
            if part.page is None:
                blocks.append({"type": "text", "text": part.text or ""})
                continue
            if part.page.detail:
                url = {"url": part.page.data_url, "detail": part.page.detail}
                blocks.append({"type": "image_url", "image_url": url})
                continue
            blocks.append(
                {"type": "image", "base64": part.page.base64, "mime_type": part.page.mime_type}
            )
        cls = SystemMessage if m.role == "system" else HumanMessage
        return cls(content=blocks, id=MEMORY_MESSAGE_ID)
    mid = m.message_id
    if m.role == "assistant":
        calls = [c for c in m.tool_calls if c.arguments is None]
        bad = [c for c in m.tool_calls if c.arguments is not None]
        return AIMessage(
            content=m.content,
            id=mid,
            name=m.name,
            tool_calls=[
                {"type": "tool_call", "id": c.id, "name": c.name, "args": c.args} for c in calls
            ],
            invalid_tool_calls=[
                {
                    "type": "invalid_tool_call",
                    "id": c.id,
                    "name": c.name,
                    "args": c.arguments,
                    "error": None,
                }
                for c in bad
            ],
        )
    if m.role == "tool":
        status = "error" if m.turn and m.turn.metadata.get("status") == "error" else "success"
        return ToolMessage(
            content=m.content,
            tool_call_id=m.tool_call_id or "",
            name=m.name,
            id=mid,
            status=status,
        )
    if m.role == "system":
        return SystemMessage(content=m.content, id=mid, name=m.name)
    if m.images:
        parts: list[str | dict[str, Any]] = (
            [{"type": "text", "text": m.content}] if m.content else []
        )
        parts += [
            {"type": "image", "base64": a.base64, "mime_type": a.media_type} for a in m.images
        ]
        return HumanMessage(content=parts, id=mid, name=m.name)
    return HumanMessage(content=m.content, id=mid, name=m.name)


# -- token counting ------------------------------------------------------------------------------


def count_tokens_with_images(
    messages: Iterable[Any], *, target: Target | str = "deepseek-ocr", **kwargs: Any
) -> int:
    """Approximate tokens of ``messages``, each image charged what ``target`` charges for it.

    Text is counted by langchain-core's ``count_tokens_approximately`` (extra keyword
    arguments go to it). An image's size is read from its header; an image given only by a
    remote URL is charged the target's largest page. Use with ``trim_messages`` through
    :func:`image_token_counter` or ``functools.partial``.
    """
    msgs = convert_to_messages(list(messages))
    total = count_tokens_approximately(msgs, tokens_per_image=0, **kwargs)
    tgt = get_target(target)
    for m in msgs:
        if isinstance(m.content, list):
            for block in m.content:
                if isinstance(block, dict) and block.get("type") in ("image", "image_url"):
                    total += _image_cost(block, tgt)
    return total


def image_token_counter(
    target: Target | str = "deepseek-ocr", **kwargs: Any
) -> Callable[[Sequence[BaseMessage]], int]:
    """``count_tokens_with_images`` bound to one target, for ``trim_messages(token_counter=)``."""
    get_target(target)  # fail early on an unknown name
    return partial(count_tokens_with_images, target=target, **kwargs)


def _image_blocks(message: BaseMessage) -> list[dict[str, Any]]:
    if not isinstance(message.content, list):
        return []
    return [
        b
        for b in message.content
        if isinstance(b, dict) and b.get("type") in ("image", "image_url")
    ]


def _image_cost(block: dict[str, Any], target: Target) -> int:
    data, detail = _image_source(block)
    size = _image_size(data) if data is not None else None
    if size is None:
        return target.tier_cost(Tier.LARGE)
    return target.image_cost(size[0], size[1], detail)


def _image_source(block: dict[str, Any]) -> tuple[str | None, str | None]:
    """(base64 data or None, detail) of an image block in any common shape."""
    extras = block.get("extras") if isinstance(block.get("extras"), dict) else {}
    detail = block.get("detail") or extras.get("detail")
    if block.get("type") == "image_url":
        iu = block.get("image_url")
        url = iu.get("url") if isinstance(iu, dict) else iu
        if isinstance(iu, dict):
            detail = iu.get("detail") or detail
        return _from_data_url(url), detail
    if isinstance(block.get("base64"), str):
        return block["base64"], detail
    if block.get("source_type") == "base64" and isinstance(block.get("data"), str):
        return block["data"], detail
    src = block.get("source")
    if isinstance(src, dict) and src.get("type") == "base64":  # Anthropic's shape
        return src.get("data"), detail
    return _from_data_url(block.get("url")), detail


def _from_data_url(url: object) -> str | None:
    if isinstance(url, str) and url.startswith("data:") and ";base64," in url:
        return url.split(";base64,", 1)[1]
    return None


def _image_size(b64: str) -> tuple[int, int] | None:
    """Width and height from the PNG header (32 base64 characters); other formats via Pillow."""
    try:
        head = base64.b64decode(b64[:32])
    except (binascii.Error, ValueError):
        return None
    if head[:8] == b"\x89PNG\r\n\x1a\n" and head[12:16] == b"IHDR":
        return int.from_bytes(head[16:20], "big"), int.from_bytes(head[20:24], "big")
    try:
        from PIL import Image

        with Image.open(io.BytesIO(base64.b64decode(b64))) as im:
            return im.size
    except Exception:
        return None


# -- agent middleware ----------------------------------------------------------------------------


class OpticalMemoryMiddleware(AgentMiddleware):
    """Agent memory for ``create_agent``: store each message once, show the model aged pages.

    Args:
        memory: the store.
        budget: tokens for the conversation part of each prompt (system prompt and tool
            schemas not included).
        target: the model that reads the prompt (default: the memory's target).
        session_key: the session: a fixed string, or ``f(runtime) -> str``. Default: the
            LangGraph thread id (``config["configurable"]["thread_id"]``).
        memory_role: role of the memory message; ``"user"`` works everywhere, ``"system"``
            only with providers that accept images in system messages.
        now: clock for turn timestamps and page captions (default: the wall clock).
        token_counter: text token counter for assembly (default: the memory's stored counts).
        cue: pass the newest user message to ``assemble`` as the cue, so the turns it recalls
            from the archive come back as exact text (default True).
        tools: give the agent ``recall_memory(query)`` and ``read_memory(first_turn,
            last_turn)`` (default True), through the middleware's ``tools``, and tell the model
            in the memory message that it can read a page's turns by number (that note's tokens
            come out of ``budget``). Both answer from the archive of the run's session (the same
            ``session_key`` or thread id, read from the tool's runtime), inside the memory's
            owner; a bad span or query is answered with its error, never raised. An answer
            holds at most half of ``budget`` (it goes back into the next prompt); turns past
            that are named, to read with another call.
        recall_scope: what ``recall_memory`` searches: ``"session"`` (the thread's own
            conversation, default) or ``"owner"`` (all of the owner's sessions).
        start_on: ``"user"`` (default): the conversation shown opens on a user message (what
            Anthropic requires); ``"any"``: as assembled.
        system_first: show stored system turns as labelled user messages, so the agent's
            system prompt stays the only system message before the conversation (default True).
        prune_state: at the end of each run, remove the archived messages before the run's
            last question from the graph state (``RemoveMessage``), so state and checkpoints
            stay small however long the thread (default True). The archive keeps them all;
            read them with ``memory.turns(thread_id)``.

    It records the messages of each model request (so put it last in ``middleware=`` if
    another middleware edits messages) and the model's reply, by message id.
    """

    def __init__(
        self,
        memory: MemoryManager,
        *,
        budget: int = 4096,
        target: Target | str | None = None,
        session_key: SessionKey | None = None,
        memory_role: MemoryRole = "user",
        now: Clock | None = None,
        token_counter: Any = None,
        cue: bool = True,
        tools: bool = True,
        recall_scope: ToolScope = "session",
        start_on: StartOn = "user",
        system_first: bool = True,
        prune_state: bool = True,
    ) -> None:
        super().__init__()
        if isinstance(budget, bool) or not isinstance(budget, int) or budget <= 0:
            raise InvalidBudget(f"budget must be a positive int of tokens, got {budget!r}")
        check_memory_role(memory_role)
        self.memory = memory
        self.budget = budget
        self.target = get_target(target) if target is not None else None
        self.session_key = session_key
        self.memory_role: MemoryRole = memory_role
        self.now = now
        self.token_counter = token_counter
        self.cue = cue
        self.recall_scope: ToolScope = check_tool_scope(recall_scope)
        self.start_on: StartOn = check_start_on(start_on)  # (not at the first model call)
        self.system_first = system_first
        self.prune_state = prune_state
        self._log = TurnLog(memory)
        # What create_agent registers (it reads ``middleware.tools``), and the note about them.
        self.tools: list[BaseTool] = self._memory_tools() if tools else []
        self._hint = tools_hint(self.recall_scope) if tools else None
        count = make_counter(token_counter) if token_counter is not None else memory.count_tokens
        self._count = count
        self._hint_tokens = int(count("system", self._hint)) if self._hint else 0

    # -- the hooks ----------------------------------------------------------------------------

    def wrap_model_call(
        self,
        request: ModelRequest,
        handler: Callable[[ModelRequest], ModelResponse],
    ) -> Any:
        sid = self.session_id(request.runtime)
        view = self._prepare(sid, request.messages)
        response = handler(request.override(messages=view))
        self.record(sid, _response_messages(response))
        return response

    async def awrap_model_call(self, request: ModelRequest, handler: Callable[..., Any]) -> Any:
        sid = self.session_id(request.runtime)
        view = await asyncio.to_thread(self._prepare, sid, request.messages)
        response = await handler(request.override(messages=view))
        await asyncio.to_thread(self.record, sid, _response_messages(response))
        return response

    def after_agent(self, state: Any, runtime: Any) -> dict[str, Any] | None:
        """Store what came after the last model call (e.g. a ``return_direct`` tool result),
        then (``prune_state``) remove the archived messages from the graph state."""
        messages = state.get("messages", [])
        sid = self.session_id(runtime)
        self.record(sid, messages)
        return self._prune(sid, messages)

    async def aafter_agent(self, state: Any, runtime: Any) -> dict[str, Any] | None:
        messages = state.get("messages", [])
        sid = self.session_id(runtime)
        await asyncio.to_thread(self.record, sid, messages)
        return self._prune(sid, messages)

    def _prune(self, session_id: str, messages: Sequence[Any]) -> dict[str, Any] | None:
        """``RemoveMessage`` for every archived message before the run's last question: the
        archive holds them and the model is shown the assembled view, so state and
        checkpoints keep only the last exchange."""
        if not self.prune_state:
            return None
        last_human = max(
            (i for i, m in enumerate(messages) if isinstance(m, HumanMessage)), default=0
        )
        with self._log.session(session_id) as log:
            stored = log.ids
            gone = [
                RemoveMessage(id=str(m.id))
                for m in messages[:last_human]
                if isinstance(m, BaseMessage) and m.id and str(m.id) in stored
            ]
        return {"messages": gone} if gone else None

    # -- the work -----------------------------------------------------------------------------

    def session_id(self, runtime: Any) -> str:
        """The session of this run: ``session_key``, else the LangGraph thread id."""
        if isinstance(self.session_key, str):
            return self.session_key
        if callable(self.session_key):
            return str(self.session_key(runtime))
        info = getattr(runtime, "execution_info", None)
        tid = getattr(info, "thread_id", None)
        config = getattr(runtime, "config", None)  # a tool's ToolRuntime carries its config
        if tid is None and isinstance(config, dict):
            tid = (config.get("configurable") or {}).get("thread_id")
        if tid is None:
            try:
                from langgraph.config import get_config

                tid = get_config().get("configurable", {}).get("thread_id")
            except RuntimeError:
                tid = None
        if tid is None:
            raise InvalidConfiguration(
                "OpticalMemoryMiddleware needs a session: run the agent with "
                "config={'configurable': {'thread_id': ...}} (and a checkpointer), or pass "
                "session_key='...' or session_key=lambda runtime: ..."
            )
        return str(tid)

    def record(self, session_id: str, messages: Sequence[BaseMessage]) -> list[Turn]:
        """Store the messages not stored yet (by message id), in order, in one transaction.
        A message recorded meanwhile by another process is stored once (see
        ``TurnLog.write``)."""
        at = self.now() if self.now is not None else None

        def attempt(log: SessionLog) -> list[Turn]:
            rows: list[dict[str, Any]] = []
            after: str | None = None  # the last stored message before the first new one
            edited: int | None = None  # the turn a message sent again with its id changed
            seen: set[str] = set()
            for i, m in enumerate(messages):
                if not isinstance(m, BaseMessage):
                    continue
                key = str(m.id) if m.id else _content_key(m, i)
                if key in seen:
                    continue
                row = None
                if key in log.ids and edited is None:
                    if rows:
                        continue  # stored already
                    row = message_to_turn(m, at)
                    if row is None or not _edits(log, key, row):
                        after = key
                        continue
                    # Edited in place (LangGraph replaces a message sent again with its id):
                    # a new version of the turn and of every turn after it.
                    edited = log.id_seq[key]
                row = row if row is not None else message_to_turn(m, at)
                if row is None:
                    continue
                row["metadata"]["message_id"] = key
                seen.add(key)
                rows.append(row)
            if not rows:
                return []
            last = log.last_seq  # what this decision was made on
            if edited is not None:
                try:
                    stored = self.memory.replace_turns(
                        session_id, edited, rows, expected_last_turn=last
                    )
                except InvalidInput:  # on a page already: stored as new turns (as forks are)
                    after, edited = None, None
                except BaseException:
                    log.reset()
                    raise
                else:
                    log.reset()  # the branch changed: read it again next time
                    return stored
            # A graph forked or replayed from an earlier checkpoint: the stored turns after
            # the message the new ones follow are the abandoned branch, superseded.
            fork = log.id_seq.get(after) if after is not None else None
            try:
                if fork is not None and fork < last:
                    try:
                        stored = self.memory.replace_turns(
                            session_id, fork + 1, rows, expected_last_turn=last
                        )
                    except InvalidInput:  # the abandoned part is on a page already: append
                        stored = self.memory.add_turns(session_id, rows, expected_last_turn=last)
                    else:
                        log.reset()  # the branch changed: read it again next time
                        return stored
                else:
                    stored = self.memory.add_turns(session_id, rows, expected_last_turn=last)
            except BaseException:
                log.reset()  # re-read from the store next time
                raise
            TurnLog.note(log, stored)
            return stored

        return self._log.write(session_id, attempt)

    def view(
        self, session_id: str, cue: str | None = None, *, reserve: int = 0
    ) -> list[BaseMessage]:
        """What the model is shown for this session now (``cue``: what to recall for;
        ``reserve``: tokens of the budget kept for what is sent besides, e.g. the newest
        message's images)."""
        budget, hint = max(1, self.budget - reserve), None
        if self._hint and self._hint_tokens < budget:  # the tools' note, paid from budget
            budget, hint = budget - self._hint_tokens, self._hint
        ctx = self.memory.assemble(
            session_id,
            budget,
            self.target,
            self.now() if self.now is not None else None,
            token_counter=self.token_counter,
            cue=cue,
        )
        return to_langchain_messages(
            ctx,
            memory_role=self.memory_role,
            hint=hint,
            start_on=self.start_on,
            system_first=self.system_first,
        )

    def _prepare(self, session_id: str, messages: Sequence[BaseMessage]) -> list[BaseMessage]:
        """Record, then the view; the newest user message's images reach the model unchanged
        (the message itself replaces its turn in the view). Inline images are stored with the
        turn and counted by ``assemble``; the cost of the others (remote URLs) is taken off
        the budget."""
        self.record(session_id, messages)
        newest = next((m for m in reversed(messages) if isinstance(m, HumanMessage)), None)
        images = _image_blocks(newest) if newest is not None and newest.id else []
        target = self.target or get_target(self.memory.target)
        reserve = sum(_image_cost(b, target) for b in images if _inline_image(b) is None)
        view = self.view(
            session_id, newest_user_text(messages) if self.cue else None, reserve=reserve
        )
        if images and newest is not None:
            view = [newest if m.id == newest.id else m for m in view]
        return view

    # -- the tools ----------------------------------------------------------------------------

    def recall_answer(self, runtime: Any, query: str) -> str:
        """What ``recall_memory(query)`` answers in the run of ``runtime``."""
        try:
            sid = self.session_id(runtime)
        except ValueError as exc:
            return f"Error: {exc}"
        return answer_recall(
            self.memory,
            sid,
            query,
            scope=self.recall_scope,
            max_tokens=self.budget // 2,
            count=self._count,
        )

    def read_answer(self, runtime: Any, first_turn: int, last_turn: int) -> str:
        """What ``read_memory(first_turn, last_turn)`` answers in the run of ``runtime``."""
        try:
            sid = self.session_id(runtime)
        except ValueError as exc:
            return f"Error: {exc}"
        return answer_read(
            self.memory, sid, first_turn, last_turn, max_tokens=self.budget // 2, count=self._count
        )

    def _memory_tools(self) -> list[BaseTool]:
        """``recall_memory`` and ``read_memory``; LangGraph's ToolNode injects ``runtime`` (a
        ``ToolRuntime``: the run's config, thread id and context), which the model never sees."""
        mw = self

        def recall_memory(
            query: Annotated[str, Field(description=QUERY_DESCRIPTION)], runtime: ToolRuntime
        ) -> str:
            return mw.recall_answer(runtime, query)

        async def arecall_memory(
            query: Annotated[str, Field(description=QUERY_DESCRIPTION)], runtime: ToolRuntime
        ) -> str:
            return await asyncio.to_thread(mw.recall_answer, runtime, query)

        def read_memory(
            first_turn: Annotated[int, Field(description=FIRST_TURN_DESCRIPTION)],
            last_turn: Annotated[int, Field(description=LAST_TURN_DESCRIPTION)],
            runtime: ToolRuntime,
        ) -> str:
            return mw.read_answer(runtime, first_turn, last_turn)

        async def aread_memory(
            first_turn: Annotated[int, Field(description=FIRST_TURN_DESCRIPTION)],
            last_turn: Annotated[int, Field(description=LAST_TURN_DESCRIPTION)],
            runtime: ToolRuntime,
        ) -> str:
            return await asyncio.to_thread(mw.read_answer, runtime, first_turn, last_turn)

        desc = {spec["name"]: spec["description"] for spec in tool_specs(self.recall_scope)}
        return [
            StructuredTool.from_function(
                recall_memory,
                coroutine=arecall_memory,
                name=RECALL_TOOL,
                description=desc[RECALL_TOOL],
            ),
            StructuredTool.from_function(
                read_memory, coroutine=aread_memory, name=READ_TOOL, description=desc[READ_TOOL]
            ),
        ]


def newest_user_text(messages: Sequence[BaseMessage]) -> str | None:
    """The text of the newest human message (the cue for recall), or None."""
    for m in reversed(messages):
        if isinstance(m, HumanMessage) and m.id != MEMORY_MESSAGE_ID:
            text = m.text if isinstance(m.text, str) else str(m.text)
            return text or None
    return None


def _response_messages(response: Any) -> list[BaseMessage]:
    """The messages a model call adds to state; each gets an id so it is stored once."""
    if isinstance(response, AIMessage):
        msgs: list[Any] = [response]
    elif hasattr(response, "model_response"):  # ExtendedModelResponse
        msgs = list(response.model_response.result)
    else:
        msgs = list(getattr(response, "result", []) or [])
    for m in msgs:
        if isinstance(m, BaseMessage) and not m.id:
            m.id = str(uuid.uuid4())
    return msgs


def _edits(log: SessionLog, message_id: str, row: dict[str, Any]) -> bool:
    """Whether ``row`` (a message whose id is stored) differs from the stored turn."""
    stored = log.stored_version(message_id)
    if stored is None:
        return False  # older than the log's tail: not an edit of the conversation's end
    return version_of(row["role"], row["content"], row["metadata"], image_digests(row)) != stored


def _content_key(m: BaseMessage, position: int) -> str:
    """A stand-in id for a message that has none: its place and content."""
    h = hashlib.sha256(f"{position}\0{m.type}\0{m.text}".encode()).hexdigest()[:32]
    return f"h:{h}"


# -- chat message history ------------------------------------------------------------------------


class OpticalChatMessageHistory(BaseChatMessageHistory):
    """``BaseChatMessageHistory`` for ``RunnableWithMessageHistory``.

    ``messages`` is the assembled view (a memory message with page images, then the recent
    turns), not the raw log: read :meth:`MemoryManager.turns` for that.
    """

    def __init__(
        self,
        memory: MemoryManager,
        session_id: str,
        *,
        budget: int = 4096,
        target: Target | str | None = None,
        memory_role: MemoryRole = "user",
        now: Clock | None = None,
        token_counter: Any = None,
    ) -> None:
        if isinstance(budget, bool) or not isinstance(budget, int) or budget <= 0:
            raise InvalidBudget(f"budget must be a positive int of tokens, got {budget!r}")
        check_memory_role(memory_role)
        self.memory = memory
        self.session_id = session_id
        self.budget = budget
        self.target = get_target(target) if target is not None else None
        self.memory_role: MemoryRole = memory_role
        self.now = now
        self.token_counter = token_counter

    @property
    def messages(self) -> list[BaseMessage]:  # type: ignore[override]
        return self.messages_for([])

    def messages_for(self, new: Sequence[BaseMessage]) -> list[BaseMessage]:
        """The view that leaves room in ``budget`` for ``new`` (the messages about to be sent
        after it), so history and input together stay within the budget."""
        budget = self.budget - self.cost_of(new)
        if budget <= 0:
            return []
        try:
            ctx = self.memory.assemble(
                self.session_id, budget, self.target, self._now(),
                token_counter=self.token_counter, newest_images=False,
            )  # fmt: skip
        except UnknownSession:
            return []
        return to_langchain_messages(ctx, memory_role=self.memory_role)

    def cost_of(self, messages: Sequence[BaseMessage]) -> int:
        """What the memory charges for these messages (text, tool calls, names, images)."""
        count = make_counter(self.token_counter) if self.token_counter else self.memory.count_tokens
        tgt = self.target or get_target(self.memory.target)
        total = 0
        for m in messages:
            row = message_to_turn(m)
            if row is None:
                continue
            total += int(
                count(row["role"], cost_text(row["role"], row["content"], row["metadata"]))
            )
            if isinstance(m.content, list):
                total += sum(
                    _image_cost(b, tgt)
                    for b in m.content
                    if isinstance(b, dict) and b.get("type") in ("image", "image_url")
                )
        return total

    async def aget_messages(self) -> list[BaseMessage]:
        return await asyncio.to_thread(lambda: self.messages)

    def add_messages(self, messages: Sequence[BaseMessage]) -> None:
        """Store all of them in one transaction (the memory message is skipped)."""
        rows = self._rows(messages)
        if rows:
            self.memory.add_turns(self.session_id, rows)

    async def aadd_messages(self, messages: Sequence[BaseMessage]) -> None:
        rows = self._rows(messages)
        if rows:
            await self.memory.aadd_turns(self.session_id, rows)

    def clear(self) -> None:
        """Forget the session: its turns, pages and images."""
        with contextlib.suppress(UnknownSession):
            self.memory.forget(self.session_id)

    async def aclear(self) -> None:
        with contextlib.suppress(UnknownSession):
            await self.memory.aforget(self.session_id)

    def _now(self) -> datetime | None:
        return self.now() if self.now is not None else None

    def _rows(self, messages: Sequence[BaseMessage]) -> list[dict[str, Any]]:
        at = self._now()
        return [r for r in (message_to_turn(m, at) for m in messages) if r is not None]


class OpticalRunnableWithMessageHistory(RunnableWithMessageHistory):
    """``RunnableWithMessageHistory`` that keeps history and the new input within the budget.

    With an :class:`OpticalChatMessageHistory`, the history is assembled for what the budget
    leaves after the input messages (the plain class reads the history first and appends the
    input after it, so the input comes on top of the budget). Any other history is read as
    the plain class reads it. Same arguments as ``RunnableWithMessageHistory``.
    """

    def _enter_history(self, value: Any, config: Any) -> list[BaseMessage]:
        hist = config["configurable"]["message_history"]
        if not isinstance(hist, OpticalChatMessageHistory):
            return super()._enter_history(value, config)
        return self._budgeted(hist, value, hist.messages_for)

    async def _aenter_history(self, value: Any, config: Any) -> list[BaseMessage]:
        hist = config["configurable"]["message_history"]
        if not isinstance(hist, OpticalChatMessageHistory):
            return await super()._aenter_history(value, config)
        return await asyncio.to_thread(self._budgeted, hist, value, hist.messages_for)

    def _budgeted(
        self,
        hist: OpticalChatMessageHistory,
        value: Any,
        view: Callable[[Sequence[BaseMessage]], list[BaseMessage]],
    ) -> list[BaseMessage]:
        input_val = value if not self.input_messages_key else value[self.input_messages_key]
        new = self._get_input_messages(input_val)
        messages = view(new)
        return messages if self.history_messages_key else [*messages, *new]
