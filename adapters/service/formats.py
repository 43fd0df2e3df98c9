"""An assembled context in the shapes the service answers with: JSON segments, OpenAI
chat-completions messages, Anthropic Messages.

JSON comes from :func:`optical_memory.export.context_dict` and OpenAI messages from
:func:`optical_memory.adapters.openai.to_openai_messages`; the Anthropic shape translates the
same neutral framing (:func:`optical_memory.adapters._framing.frame`), so the memory message,
captions and tool-call pairing are decided once for every shape.
"""

from __future__ import annotations

from typing import Any, Literal

from optical_memory import AssembledContext, InvalidInput
from optical_memory.export import context_dict

from .._framing import FramedMessage, frame
from ..openai import to_openai_messages

__all__ = ["CONTEXT_FORMATS", "ContextFormat", "context_as", "to_anthropic_messages"]

ContextFormat = Literal["json", "openai", "anthropic"]
CONTEXT_FORMATS: tuple[str, ...] = ("json", "openai", "anthropic")


def context_as(ctx: AssembledContext, format: str, system_prompt: str | None = None) -> Any:
    """The context as JSON-ready data in ``format`` (one of :data:`CONTEXT_FORMATS`)."""
    if format == "json":
        return context_dict(ctx, lambda _i, seg: {"image_base64": seg.base64})
    if format == "openai":
        return {"messages": to_openai_messages(ctx, system_prompt=system_prompt)}
    if format == "anthropic":
        return to_anthropic_messages(ctx, system_prompt=system_prompt)
    raise InvalidInput(f"unknown format {format!r}; use one of {', '.join(CONTEXT_FORMATS)}")


def to_anthropic_messages(
    ctx: AssembledContext, *, system_prompt: str | None = None
) -> dict[str, Any]:
    """``{"system", "messages"}`` for Anthropic's Messages API: the memory message's pages as
    base64 image blocks after their captions, tool calls as ``tool_use`` blocks and their
    results as ``tool_result`` blocks in the next user message; consecutive messages of one
    role are merged, as the API wants the roles to alternate."""
    system: list[str] = [system_prompt] if system_prompt else []
    messages: list[dict[str, Any]] = []
    for m in frame(ctx, memory_role="user"):
        role, blocks = _blocks(m)
        if role == "system":
            system.append(m.content)
            continue
        if messages and messages[-1]["role"] == role:
            messages[-1]["content"].extend(blocks)
        else:
            messages.append({"role": role, "content": blocks})
    return {"system": "\n\n".join(system), "messages": messages}


def _blocks(m: FramedMessage) -> tuple[str, list[dict[str, Any]]]:
    if m.is_memory:
        blocks: list[dict[str, Any]] = []
        for part in m.parts:
            if part.page is None:
                blocks.append({"type": "text", "text": part.text or ""})
            else:
                source = {"type": "base64", "media_type": part.page.mime_type}
                blocks.append({"type": "image", "source": {**source, "data": part.page.base64}})
        return "user", blocks
    if m.role == "tool":
        result = {"type": "tool_result", "tool_use_id": m.tool_call_id or "", "content": m.content}
        return "user", [result]
    if m.role == "assistant":
        blocks = [{"type": "text", "text": m.content}] if m.content else []
        blocks += [
            {"type": "tool_use", "id": c.id, "name": c.name, "input": c.args} for c in m.tool_calls
        ]
        return "assistant", blocks or [{"type": "text", "text": ""}]
    if m.role == "system":
        return "system", []
    user: list[dict[str, Any]] = [{"type": "text", "text": m.content}] if m.content else []
    for a in m.images:  # the newest user turn's images, bytes exact
        source = {"type": "base64", "media_type": a.media_type, "data": a.base64}
        user.append({"type": "image", "source": source})
    return "user", user or [{"type": "text", "text": ""}]
