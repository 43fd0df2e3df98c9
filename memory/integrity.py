"""Checking what the aging pass stored, and rebuilding what is broken from the archive.

Turns are the archive; page images, renditions and cached visual tokens are derived from them.
A derived blob that is damaged (a bad write, a disk error, someone editing the database) is
found here and rebuilt from the turns, through the same transactional code path as a tier change.
"""

from __future__ import annotations

import io
import json
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from PIL import Image
from sqlalchemy import ColumnElement, LargeBinary, Text, cast, delete, select, update
from sqlalchemy.orm import Session

from .errors import UnknownTarget
from .ladder import IMAGE_TIERS, Target, Tier, get_target
from .store import PageRow, RenditionRow, SessionRow, VisualTokenRow, add_visual_tokens

if TYPE_CHECKING:
    from .aging import Aging

log = logging.getLogger("optical_memory.integrity")

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"

# Bytes per element of the safetensors dtypes.
_ITEMSIZE = {
    "BOOL": 1, "U8": 1, "I8": 1, "F8_E4M3": 1, "F8_E5M2": 1,
    "F16": 2, "BF16": 2, "I16": 2, "U16": 2,
    "F32": 4, "I32": 4, "U32": 4,
    "F64": 8, "I64": 8, "U64": 8,
}  # fmt: skip


@dataclass
class VerifyReport:
    """What one check found and, with ``repair``, what it rebuilt."""

    pages_checked: int = 0
    problems: list[str] = field(default_factory=list)
    pages_repaired: int = 0
    visual_tokens_dropped: int = 0
    visual_tokens_rebuilt: int = 0
    pages_skipped: int = 0  # changed by a concurrent aging pass while we looked (fresh anyway)

    @property
    def ok(self) -> bool:
        return not self.problems


def png_problem(data: bytes | None, size: tuple[int, int] | None) -> str | None:
    """Why ``data`` is not a sound PNG of ``size`` (None: it is)."""
    if data is None:
        return "missing image"
    if bytes(data[:8]) != PNG_SIGNATURE:
        return "not a PNG (bad signature)"
    try:
        with Image.open(io.BytesIO(data)) as im:
            im.verify()  # chunk structure and CRCs
        with Image.open(io.BytesIO(data)) as im:
            im.load()  # the compressed pixel stream decodes in full
            if size is not None and im.size != tuple(size):
                return f"image is {im.size[0]}x{im.size[1]}, its tier wants {size[0]}x{size[1]}"
    except Exception as exc:  # Pillow raises many types on broken data
        return f"undecodable PNG ({type(exc).__name__}: {exc})"
    return None


def tokens_problem(data: bytes | None, dtype: str, shape: Sequence[int] | None) -> str | None:
    """Why cached visual tokens are unusable (None: they are usable).

    The cache holds safetensors bytes (the :class:`VisualEncoder` convention): a little-endian
    header length, a JSON header, and tensors that tile the data buffer exactly; one of them
    must have the declared ``shape``.
    """
    if not data:
        return "empty visual-token cache entry"
    if shape is None:
        return "unreadable shape"
    data = bytes(data)
    n = int.from_bytes(data[:8], "little") if len(data) >= 8 else -1
    if not 2 <= n <= len(data) - 8:
        return "not safetensors (bad header length)"
    try:
        header = json.loads(data[8 : 8 + n])
    except (ValueError, UnicodeDecodeError):
        return "not safetensors (unreadable header)"
    if not isinstance(header, dict):
        return "not safetensors (header is not an object)"
    spans: list[tuple[int, int]] = []
    found = False
    for name, t in header.items():
        if name == "__metadata__":
            continue
        try:
            begin, end = (int(x) for x in t["data_offsets"])
            t_shape = [int(d) for d in t["shape"]]
            size = _ITEMSIZE[str(t["dtype"]).upper()]
        except (KeyError, TypeError, ValueError):
            return f"malformed safetensors entry {name!r}"
        if end - begin != math.prod(t_shape) * size:
            return f"tensor {name!r} has the wrong byte length"
        spans.append((begin, end))
        found = found or t_shape == list(shape)
    pos = 0
    for begin, end in sorted(spans):
        if begin != pos:
            return "tensors do not tile the data buffer"
        pos = end
    if pos != len(data) - 8 - n:
        return "data buffer length does not match the tensors"
    return None if found else f"no tensor of shape {list(shape)}"


def _shape(text: str | None) -> list[int] | None:
    try:
        shape = json.loads(text or "")
        return [int(d) for d in shape]
    except (ValueError, TypeError):
        return None


def _target_for(page_target: str, fallback: Target) -> Target:
    try:
        return get_target(page_target)
    except UnknownTarget:
        return fallback


@dataclass
class _Findings:
    """What inspecting one page found: its problems, and what a repair needs to know."""

    page_id: int
    version: int
    tier: Tier
    png: bytes | None
    problems: list[str]
    renditions: list[Any]
    tokens: list[Any]
    bad_tokens: list[Any]
    shown: set[str]

    @property
    def image_broken(self) -> bool:
        return len(self.problems) > len(self.bad_tokens)


def verify_pages(
    aging: Aging,
    scope: ColumnElement[bool] | None = None,
    *,
    repair: bool = True,
    now: datetime | None = None,
) -> VerifyReport:
    """Check every page of the sessions ``scope`` selects (a filter on SessionRow, e.g. one
    owner's sessions by query: one bound parameter, whatever their number; None: all); with
    ``repair``, rebuild broken images and renditions from the turns and drop or re-encode
    broken caches."""
    now = now or datetime.now(UTC)
    report = VerifyReport()
    with aging.db.read() as s:
        q = select(PageRow.id).join(SessionRow, SessionRow.id == PageRow.session_row_id)
        if scope is not None:
            q = q.where(scope)
        page_ids = list(s.scalars(q.order_by(PageRow.id)))
    for page_id in page_ids:
        found = inspect_page(aging, page_id, report)
        if found is None or not found.problems:
            continue
        report.problems.extend(f"page {page_id}: {p}" for p in found.problems)
        if repair:
            repair_page(aging, found, report, now)
            log.warning(
                "page %s was damaged (%s); rebuilt from its turns",
                page_id,
                "; ".join(found.problems),
            )
    return report


def inspect_page(aging: Aging, page_id: int, report: VerifyReport) -> _Findings | None:
    """Read one page's stored blobs in one snapshot and list what is wrong with them.
    None when the page is gone (forgotten meanwhile) or its tier is unknown (reported)."""
    with aging.db.read() as s:
        # Blobs are read through a cast: garbage may not even be a blob any more
        # (SQLite keeps whatever type was written, and fails to decode bad text).
        page = s.execute(
            select(
                PageRow.tier,
                PageRow.version,
                PageRow.width,
                PageRow.height,
                PageRow.target,
                cast(PageRow.png, LargeBinary).label("png"),
            ).where(PageRow.id == page_id)
        ).first()
        if page is None:
            return None
        renditions = s.execute(
            select(
                RenditionRow.tier,
                cast(RenditionRow.png, LargeBinary).label("png"),
                RenditionRow.width,
                RenditionRow.height,
            ).where(RenditionRow.page_id == page_id)
        ).all()
        tokens = s.execute(
            select(
                VisualTokenRow.id,
                VisualTokenRow.tier,
                VisualTokenRow.dtype,
                cast(VisualTokenRow.shape, Text).label("shape"),
                cast(VisualTokenRow.data, LargeBinary).label("data"),
            ).where(VisualTokenRow.page_id == page_id)
        ).all()
    report.pages_checked += 1
    try:
        tier = Tier.parse(page.tier)
    except ValueError:
        report.problems.append(f"page {page_id}: unknown tier {page.tier!r}; not repaired")
        return None
    target = _target_for(page.target, aging.target)
    png, dims = page.png, (page.width, page.height)

    problems: list[str] = []
    if tier is Tier.TEXT:
        if png is not None:
            problems.append("a text-tier page holds a stored image")
        # A sealed text page may have every image tier prepared as renditions.
        expected = {t.label: target.spec(t).size for t in IMAGE_TIERS} if renditions else {}
    else:
        want = target.spec(tier).size
        if (p := png_problem(png, want)) is not None:
            problems.append(f"{tier.label} image: {p}")
        elif dims != want:
            problems.append(f"stored size {dims} does not match the image {want}")
        expected = {t.label: target.spec(t).size for t in IMAGE_TIERS if t > tier}
    seen = set()
    for r in renditions:
        seen.add(r.tier)
        if r.tier not in expected:
            problems.append(f"unexpected {r.tier} rendition")
        elif (p := png_problem(r.png, expected[r.tier])) is not None:
            problems.append(f"{r.tier} rendition: {p}")
        elif (r.width, r.height) != expected[r.tier]:
            problems.append(f"{r.tier} rendition: stored size does not match the image")
    for missing in sorted(set(expected) - seen):
        problems.append(f"{missing} rendition is missing")
    # Tokens may be cached for the stored tier and for each rendition.
    shown = set(expected) | ({tier.label} if tier is not Tier.TEXT else set())
    bad = [
        t
        for t in tokens
        if t.tier not in shown or tokens_problem(t.data, t.dtype, _shape(t.shape)) is not None
    ]
    problems.extend(f"visual-token cache entry {t.id} is broken or stale" for t in bad)
    return _Findings(
        page_id, page.version, tier, png, problems, list(renditions), list(tokens), bad, shown
    )


def repair_page(aging: Aging, found: _Findings, report: VerifyReport, now: datetime) -> None:
    """Rebuild what ``inspect_page`` found broken, each fix in one transaction."""
    db = aging.db
    if found.tier is Tier.TEXT and found.png is not None:

        def clear(s: Session) -> bool:
            done = s.execute(
                update(PageRow)
                .where(PageRow.id == found.page_id, PageRow.version == found.version)
                .values(
                    png=None, width=None, height=None, version=found.version + 1, updated_at=now
                )
            ).rowcount
            if done:
                s.execute(delete(RenditionRow).where(RenditionRow.page_id == found.page_id))
                s.execute(delete(VisualTokenRow).where(VisualTokenRow.page_id == found.page_id))
            return bool(done)

        if db.write(clear):
            report.pages_repaired += 1
            report.visual_tokens_dropped += len(found.tokens)
        else:
            report.pages_skipped += 1
    elif found.image_broken:
        if not aging.rebuild(found.page_id, found.version, found.tier, now):
            report.pages_skipped += 1
            return
        report.pages_repaired += 1
        report.visual_tokens_dropped += len(found.tokens)
        if aging.encoder is not None:  # the stored tier and every rendition
            report.visual_tokens_rebuilt += sum(t >= found.tier for t in IMAGE_TIERS)
    else:
        ids = [t.id for t in found.bad_tokens]
        report.visual_tokens_dropped += len(ids)
        db.write(lambda s: s.execute(delete(VisualTokenRow).where(VisualTokenRow.id.in_(ids))))
        if aging.encoder is not None:
            images = {r.tier: r.png for r in found.renditions}
            if found.png is not None:
                images[found.tier.label] = found.png
            for t in found.bad_tokens:
                if t.tier in found.shown and t.tier in images:
                    report.visual_tokens_rebuilt += _reencode(
                        aging, found.page_id, found.version, Tier.parse(t.tier), images[t.tier], now
                    )


def _reencode(
    aging: Aging, page_id: int, version: int, tier: Tier, png: bytes, now: datetime
) -> int:
    encoder = aging.encoder
    assert encoder is not None
    enc = encoder.encode(png, tier.label)

    def work(s: Session) -> int:
        current = s.scalar(select(PageRow.version).where(PageRow.id == page_id))
        if current != version:
            return 0  # re-rendered meanwhile; that pass encoded it
        exists = s.scalar(
            select(VisualTokenRow.id).where(
                VisualTokenRow.page_id == page_id,
                VisualTokenRow.tier == tier.label,
                VisualTokenRow.encoder_key == encoder.key,
            )
        )
        if exists is not None:
            return 0
        add_visual_tokens(s, page_id, tier.label, encoder.key, enc, now)
        return 1

    return int(aging.db.write(work))
