"""Prompts and pages out: an assembled context as JSON or chat messages, and page images as files.

Everything written lands inside the output directory given (a name that would resolve outside it
is refused); session ids are sanitised by :func:`safe_name` before they become part of a file
name. The ``openai`` and ``langchain`` formats are built by their adapters, imported only when
asked for, so the core never imports a framework; a missing extra raises :class:`MissingExtra`.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .assemble import AssembledContext, PageSegment, RecalledSegment, TextSegment
from .captions import MEMORY_INTRO
from .contact_sheet import Tile, contact_sheet
from .errors import InvalidInput, MissingExtra
from .ladder import IMAGE_TIERS, Tier
from .records import Turn

if TYPE_CHECKING:
    from .manager import MemoryManager

__all__ = [
    "EXPORT_FORMATS",
    "context_dict",
    "export_context",
    "formatter",
    "inside",
    "json_text",
    "safe_name",
    "write_context",
    "write_page_images",
    "write_prompt",
]

EXPORT_FORMATS = ("json", "openai", "langchain")
"""``json``: the context with its PNGs inline (base64); ``openai``: chat-completions message
dicts; ``langchain``: LangChain's serialised messages (``messages_to_dict``)."""

Formatter = Callable[[AssembledContext], Any]
ImageField = Callable[[int, PageSegment], dict[str, Any]]


def safe_name(session_id: str) -> str:
    """A file-name-safe, collision-free stand-in for an opaque session id.

    Letters, digits, ``_`` and ``-`` are kept (at most 48), everything else becomes ``_``, and a
    short hash of the full id is appended; the result never holds a dot or a slash.
    """
    stem = re.sub(r"[^A-Za-z0-9_-]+", "_", session_id).strip("_-")[:48] or "session"
    digest = hashlib.sha256(session_id.encode("utf-8", "surrogatepass")).hexdigest()[:8]
    return f"{stem}-{digest}"


def inside(root: Path, name: str) -> Path:
    """``root / name``, refusing (:class:`InvalidInput`) anything that would land outside ``root``."""
    path = (root / name).resolve()
    if root.resolve() not in path.parents:
        raise InvalidInput(f"refusing to write {name!r} outside {root}")
    return path


# -- an assembled context as data ----------------------------------------------------------------


def context_dict(ctx: AssembledContext, image: ImageField) -> dict[str, Any]:
    """An assembled context as plain JSON; ``image`` says how each page's PNG is given."""
    segments: list[dict[str, Any]] = []
    for i, seg in enumerate(ctx.segments):
        if isinstance(seg, PageSegment):
            segments.append(
                {
                    "kind": "page",
                    "page_id": seg.page_id,
                    "tier": seg.tier,
                    "stored_tier": seg.stored_tier,
                    **image(i, seg),
                    "mime_type": seg.mime_type,
                    "width": seg.width,
                    "height": seg.height,
                    "detail": seg.detail,
                    "tokens": seg.tokens,
                    "image_tokens": seg.image_tokens,
                    "text_tokens": seg.text_tokens,
                    "first_seq": seg.first_seq,
                    "last_seq": seg.last_seq,
                    "first_at": seg.first_at.isoformat(),
                    "last_at": seg.last_at.isoformat(),
                    "caption": seg.caption,
                }
            )
        elif isinstance(seg, RecalledSegment):
            segments.append(
                {
                    "kind": "recalled",
                    "text": seg.text,
                    "tokens": seg.tokens,
                    "pinned": list(seg.pinned),
                    "turns": [_turn_dict(t) for t in seg.turns],
                }
            )
        else:
            assert isinstance(seg, TextSegment)
            segments.append({"kind": "text", **_turn_dict(seg.turn, tokens=seg.tokens)})
    return {
        "session_id": ctx.session_id,
        "target": ctx.target,
        "budget": ctx.budget,
        "tokens": ctx.tokens,
        "image_tokens": ctx.image_tokens,
        "text_tokens_replaced": ctx.text_tokens_replaced,
        "compression": round(ctx.compression, 3),
        "omitted_turns": ctx.omitted_turns,
        "over_budget": ctx.over_budget,
        "intro": MEMORY_INTRO if ctx.intro_tokens else None,
        "fingerprint": ctx.fingerprint(),
        "segments": segments,
    }


def _turn_dict(t: Turn, **extra: Any) -> dict[str, Any]:
    """A turn as plain JSON (``extra``, such as its cost in the prompt, before its metadata)."""
    return {
        "seq": t.seq,
        "role": t.role,
        "content": t.content,
        "at": t.at.isoformat(),
        **extra,
        "metadata": t.metadata,
    }


def _base64_image(i: int, seg: PageSegment) -> dict[str, Any]:
    return {"image_base64": seg.base64}


def _json(ctx: AssembledContext) -> dict[str, Any]:
    return context_dict(ctx, _base64_image)


def _openai() -> Formatter:
    from optical_memory.adapters.openai import to_openai_messages

    return to_openai_messages


def _langchain() -> Formatter:
    try:
        from optical_memory.adapters.langchain import to_langchain_dicts
    except MissingExtra as exc:
        raise MissingExtra("the langchain format", exc.extra, exc.name) from exc
    return to_langchain_dicts


def formatter(format: str) -> Formatter:
    """The function that turns an assembled context into ``format`` (one of
    :data:`EXPORT_FORMATS`). Imports the adapter it needs now, so that a missing extra
    (:class:`MissingExtra`) shows before any work is done."""
    if format == "json":
        return _json
    if format == "openai":
        return _openai()
    if format == "langchain":
        return _langchain()
    raise InvalidInput(f"unknown format {format!r}; use one of {', '.join(EXPORT_FORMATS)}")


def export_context(ctx: AssembledContext, format: str = "json") -> Any:
    """The context as JSON-ready data in ``format`` (see :data:`EXPORT_FORMATS`)."""
    return formatter(format)(ctx)


# -- files ---------------------------------------------------------------------------------------


_PROMPT_PNG = re.compile(r"\d{3,}-page-\d{5,}-[a-z]+\.png")  # (widths are minimums)
"""The names :func:`write_prompt` gives the PNGs of a prompt (what it may replace)."""


def json_text(data: Any) -> str:
    """``data`` as indented JSON text, UTF-8 where it can be: text the store keeps exactly
    but UTF-8 cannot hold (a lone surrogate in metadata) is written escaped, which JSON
    allows and every reader decodes back to the same string."""
    text = json.dumps(data, indent=2, ensure_ascii=False, allow_nan=False)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        text = json.dumps(data, indent=2, ensure_ascii=True, allow_nan=False)
    return text + "\n"


def _write_whole(path: Path, text: str) -> None:
    """``text`` into ``path`` whole or not at all (a temporary file renamed over it)."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)


def write_prompt(ctx: AssembledContext, out: Path, name: str = "prompt") -> Path:
    """``name.json`` with the page PNGs beside it in ``name/``, referenced by relative path.

    A ``name/`` folder left by an earlier export is reused: the PNGs an export names are
    replaced, anything else in it is refused (:class:`InvalidInput`), never deleted. The
    JSON is built before anything is written, and written whole."""
    images = inside(out, name)
    if images.exists():
        if not images.is_dir():
            raise InvalidInput(f"{images} is a file, not the folder of a prompt's images")
        other = [p.name for p in images.iterdir() if not _PROMPT_PNG.fullmatch(p.name)]
        if other:
            raise InvalidInput(
                f"{images} holds files no export wrote ({', '.join(sorted(other)[:3])}); "
                "choose another --out folder"
            )
    pngs: dict[str, bytes] = {}

    def image(i: int, seg: PageSegment) -> dict[str, Any]:
        file = f"{i + 1:03d}-page-{seg.page_id:05d}-{seg.tier}.png"
        pngs[file] = seg.png
        return {"image": f"{name}/{file}"}

    text = json_text(context_dict(ctx, image))
    images.mkdir(parents=True, exist_ok=True)
    for old in images.iterdir():  # an earlier export's pages (checked above)
        old.unlink()
    for file, png in pngs.items():
        inside(images, file).write_bytes(png)
    path = inside(out, f"{name}.json")
    _write_whole(path, text)
    return path


def write_context(ctx: AssembledContext, out: Path, format: str = "json") -> Path:
    """The context written into ``out``: ``prompt.json`` with its PNGs as files (see
    :func:`write_prompt`) for ``json``, else ``prompt-FORMAT.json`` holding the messages."""
    if format == "json":
        return write_prompt(ctx, out)
    text = json_text(export_context(ctx, format))
    out.mkdir(parents=True, exist_ok=True)
    path = inside(out, f"prompt-{format}.json")
    _write_whole(path, text)
    return path


def write_page_images(
    mm: MemoryManager, session_id: str, out: Path, *, scale: float = 0.2
) -> tuple[list[Path], Path]:
    """Each page's stored image and its fainter renditions as PNGs, plus a contact sheet."""
    pages = mm.pages(session_id)  # an unknown session fails before anything is created
    out.mkdir(parents=True, exist_ok=True)
    prefix = safe_name(session_id)
    written: list[Path] = []
    stored: dict[str, list[Tile]] = {t.label: [] for t in IMAGE_TIERS}
    renditions: dict[str, list[Tile]] = {t.label: [] for t in IMAGE_TIERS}
    for p in pages:
        if p.tier == Tier.TEXT.label:
            continue
        span = f"#{p.page_id} t{p.first_seq}-{p.last_seq}"
        png = mm.page_image(session_id, p.page_id)
        path = inside(out, f"{prefix}-page-{p.page_id:05d}-{p.tier}.png")
        path.write_bytes(png)
        written.append(path)
        stored[p.tier].append(Tile(png, span))
        for tier in IMAGE_TIERS:
            if tier <= Tier.parse(p.tier):
                continue
            try:
                faint = mm.page_image(session_id, p.page_id, tier=tier.label)
            except LookupError:
                continue
            path = inside(out, f"{prefix}-page-{p.page_id:05d}-{tier.label}.png")
            path.write_bytes(faint)
            written.append(path)
            renditions[tier.label].append(Tile(faint, span))
    rows = [
        (f"stored at {label}: {len(tiles)} pages ({_sizes(tiles)})", tiles)
        for label, tiles in stored.items()
    ] + [
        (f"{label} renditions of younger pages, for tight budgets", tiles)
        for label, tiles in renditions.items()
    ]
    sheet = inside(out, f"{prefix}-contact-sheet.png")
    sheet.write_bytes(contact_sheet(rows, scale=scale, title=f"{session_id}: pages by tier"))
    return written, sheet


def _sizes(tiles: Sequence[Tile]) -> str:
    sizes = {
        (int.from_bytes(t.png[16:20], "big"), int.from_bytes(t.png[20:24], "big")) for t in tiles
    }
    return f"{'x'.join(map(str, sizes.pop()))} px each" if len(sizes) == 1 else "mixed sizes"
