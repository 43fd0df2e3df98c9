"""A turn as text: what the model is sent of it (to count), and how text and pages show it.

A turn is more than its ``content``: an assistant turn may carry tool calls (names and
arguments, in ``metadata["tool_calls"]``), a tool result its call's id and the tool's name.
Everything the model is sent of a turn is counted (:func:`cost_text`), and every place that
shows a turn as text (the recalled block, the agent tools' answers, transcripts) or draws it
on a page (:func:`page_text`) shows its tool calls too, from this one module.

Pages draw a call compactly: ``[calls name(arguments)]``, the arguments cut with ``…`` past
:data:`PAGE_ARGUMENT_CHARS` characters. The archive keeps them whole: ``turns()``, ``read`` and
recall return the turn exactly as it was added.

A turn's images (``Turn.attachments``) are shown as text as a labelled placeholder,
``[image 640×480 png]`` (:func:`image_label`), wherever the turn is shown as text: on pages,
in transcripts, the recalled block and older recent turns. Only the newest user turn's
images are sent as images (see ``assemble``). Pages draw the label always and, beside it, a
small greyscale thumbnail where one pays: at least ``MIN_THUMB_PX`` on its short side in the
image the model is sent (the large tier, and fainter ones downsampled from it; abridged faint
tiers show the label alone; see :mod:`.thumbnails`). The archive keeps every image exactly,
and ``read``/recall return it.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

SYSTEM_NOTE_HEAD = "[system]"
"""The label of a stored system turn shown inside the conversation (as a user message)."""
PAGE_ARGUMENT_CHARS = 120
"""The most characters of one tool call's arguments a page draws; longer ones end with ``…``."""


Images = Sequence[Any]
"""A turn's images as text functions take them: ``Attachment`` records or their stored
descriptors (mappings with ``media_type``, ``width`` and ``height``)."""


def image_label(media_type: str, width: int, height: int) -> str:
    """An image shown as text: ``[image 640×480 png]``."""
    kind = media_type.split("/", 1)[-1] if media_type else "?"
    return f"[image {width}×{height} {kind}]"


def image_labels(images: Images | None) -> str:
    """The labels of a turn's images, one after another (empty for none)."""
    labels = []
    for a in images or ():
        if isinstance(a, Mapping):
            labels.append(image_label(str(a.get("media_type", "")), a["width"], a["height"]))
        else:
            labels.append(image_label(a.media_type, a.width, a.height))
    return " ".join(labels)


def with_image_labels(content: str, images: Images | None) -> str:
    """The content followed by its images' labels (the content alone when it has none)."""
    labels = image_labels(images)
    if not labels:
        return content
    return f"{content} {labels}" if content else labels


@dataclass(frozen=True)
class CallText:
    """One tool call as text: its id, the tool's name, its arguments as a JSON string."""

    id: str
    name: str
    arguments: str


def calls_of(role: str, meta: Mapping[str, Any] | None) -> tuple[CallText, ...]:
    """The tool calls of an assistant turn, from its metadata (stored or OpenAI shape)."""
    raw = meta.get("tool_calls") if isinstance(meta, Mapping) else None
    if role != "assistant" or not isinstance(raw, list):
        return ()
    out = []
    for c in raw:
        if not isinstance(c, Mapping):
            continue
        fn = c.get("function") if isinstance(c.get("function"), Mapping) else {}
        name = c.get("name") or fn.get("name") or ""
        arguments = c.get("arguments")
        if arguments is None:
            arguments = fn.get("arguments")
        if not isinstance(arguments, str):
            args = c.get("args")
            arguments = json.dumps(args if isinstance(args, Mapping) else (arguments or {}))
        out.append(CallText(str(c.get("id") or ""), str(name), arguments))
    return tuple(out)


def speaker_of(role: str, meta: Mapping[str, Any] | None) -> str:
    """Who a turn is shown as: its ``name`` (a person, a tool), else its role."""
    name = meta.get("name") if isinstance(meta, Mapping) else None
    return str(name) if name not in (None, "") else role


def tool_result_head(meta: Mapping[str, Any] | None) -> str:
    """The label of a tool result shown as plain text (its call is not in the prompt)."""
    m = meta if isinstance(meta, Mapping) else {}
    label = m.get("name") or m.get("tool_call_id") or ""
    return f"[earlier tool result{f' from {label}' if label else ''}]"


def _listed(calls: tuple[CallText, ...], limit: int | None) -> str:
    def args(a: str) -> str:
        return a if limit is None or len(a) <= limit else a[: max(0, limit - 1)] + "…"

    return "[calls " + ", ".join(f"{c.name}({args(c.arguments)})" for c in calls) + "]"


def display_text(
    role: str, content: str, meta: Mapping[str, Any] | None, images: Images | None = None
) -> str:
    """A turn as one text: its content, its images' labels, then its tool calls whole
    (``[calls name(args)]``)."""
    return _with_calls(role, content, meta, images, None)


def page_text(
    role: str, content: str, meta: Mapping[str, Any] | None, images: Images | None = None
) -> str:
    """A turn as a page draws it: :func:`display_text` with each call's arguments cut with
    ``…`` past :data:`PAGE_ARGUMENT_CHARS` characters."""
    return _with_calls(role, content, meta, images, PAGE_ARGUMENT_CHARS)


def _with_calls(
    role: str,
    content: str,
    meta: Mapping[str, Any] | None,
    images: Images | None,
    cut: int | None,
) -> str:
    """The content, its images' labels and its tool calls (arguments cut past ``cut``)."""
    content = with_image_labels(content, images)
    calls = calls_of(role, meta)
    if not calls:
        return content
    listed = _listed(calls, cut)
    return f"{content} {listed}" if content else listed


def cost_text(
    role: str, content: str, meta: Mapping[str, Any] | None, images: Images | None = None
) -> str:
    """Everything a chat API is sent of a turn as text, as one string to count: the content,
    its images' labels, the speaker's name, the tool calls in their wire form (id, name, the
    arguments as a JSON string) and a tool result's label and call id. It bounds every text
    form the adapters send (a message with its tool calls, a labelled result, a transcript
    line) from above; images sent as images are counted by the target (see ``assemble``)."""
    m = meta if isinstance(meta, Mapping) else {}
    content = with_image_labels(content, images)
    parts = [content]
    name = m.get("name")
    if role == "tool":
        parts.insert(0, f"{tool_result_head(m)} {m.get('tool_call_id') or ''} {name or ''}")
    elif name:
        parts.insert(0, f"{name}:")
    if role == "system":  # may be shown as a labelled user message
        parts.insert(0, SYSTEM_NOTE_HEAD)
    calls = calls_of(role, m)
    if calls:  # the arguments as the JSON text the model reads, not escaped once more
        wire = (
            f'{{"id": {json.dumps(c.id)}, "type": "function", "function": '
            f'{{"name": {json.dumps(c.name)}, "arguments": {c.arguments}}}}}'
            for c in calls
        )
        parts.append("[" + ", ".join(wire) + "]")
    return "\n".join(parts) if len(parts) > 1 else content


def turn_line(
    seq: int, speaker: str, at: datetime, text: str, *, session: str | None = None
) -> str:
    """One archived turn on one line, as the recalled block and the memory tools show it:
    ``[turn N, speaker, date] text`` (``session``: named when it is another session's)."""
    where = f"session {session}, " if session is not None else ""
    head = f"[{where}turn {seq}, {speaker}, {at:%Y-%m-%d %H:%M}]"
    return f"{head} {text}" if text else head
