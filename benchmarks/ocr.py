"""Shared helpers for legibility measurements: OCR readers, character accuracy, synthetic chat.

Not part of the library: the readers need the ``tesseract`` binary and ``rapidocr-onnxruntime``
(a dev extra). Tesseract is run as a subprocess with ``OMP_THREAD_LIMIT=1``.
"""

from __future__ import annotations

import os
import random
import shutil
import subprocess
import tempfile
from datetime import UTC, datetime, timedelta
from functools import lru_cache
from pathlib import Path

from PIL import Image

__all__ = [
    "char_accuracy",
    "edit_distance",
    "full_page",
    "rapidocr_read",
    "synthetic_chat",
    "tesseract_available",
    "tesseract_read",
]


# --------------------------------------------------------------------------------------------------
# Accuracy


def _myers(pattern: str, text: str, *, anywhere: bool) -> int:
    """Myers/Hyyro bit-parallel edit distance of ``pattern`` (non-empty) against ``text``:
    against all of it, or (``anywhere``) against its best-matching substring."""
    m = len(pattern)
    peq: dict[str, int] = {}
    for i, ch in enumerate(pattern):
        peq[ch] = peq.get(ch, 0) | (1 << i)
    mask = (1 << m) - 1
    high = 1 << (m - 1)
    carry = 0 if anywhere else 1  # no carry in: a match may start at any text position
    pv, mv, score = mask, 0, m
    best = m
    for ch in text:
        eq = peq.get(ch, 0)
        xv = eq | mv
        xh = (((eq & pv) + pv) ^ pv) | eq
        ph = mv | (~(xh | pv) & mask)
        mh = pv & xh
        if ph & high:
            score += 1
        elif mh & high:
            score -= 1
        ph = ((ph << 1) | carry) & mask
        mh = (mh << 1) & mask
        pv = mh | (~(xv | ph) & mask)
        mv = ph & xv
        best = min(best, score)
    return best if anywhere else score


def edit_distance(a: str, b: str) -> int:
    """Levenshtein distance (unit costs), bit-parallel: fast on page-sized texts."""
    if len(a) < len(b):
        a, b = b, a
    return _myers(b, a, anywhere=False) if b else len(a)


def search_distance(pattern: str, text: str) -> int:
    """Fewest edits turning ``pattern`` into some substring of ``text``."""
    return _myers(pattern, text, anywhere=True) if pattern else 0


def _normalise(text: str, ignore_spaces: bool) -> str:
    return "".join(text.split()) if ignore_spaces else " ".join(text.split())


def char_accuracy(expected: str, got: str, *, ignore_spaces: bool = False) -> float:
    """1 - Levenshtein(expected, got) / len(expected), on whitespace-normalised text, floored at 0.

    Whitespace runs become one space (or vanish with ``ignore_spaces``, for readers such as
    RapidOCR that drop spaces).
    """
    exp = _normalise(expected, ignore_spaces)
    out = _normalise(got, ignore_spaces)
    if not exp:
        return 1.0 if not out else 0.0
    return max(0.0, 1.0 - edit_distance(exp, out) / len(exp))


# --------------------------------------------------------------------------------------------------
# Readers


def tesseract_available() -> bool:
    return shutil.which("tesseract") is not None


def tesseract_read(
    img: Image.Image, *, psm: int = 6, upscale: int = 2, lang: str = "eng", pad: int = 16
) -> str:
    """Read an image with the tesseract binary: greyscale, upscaled (Lanczos), white border added."""
    img = img.convert("L")
    if upscale != 1:
        img = img.resize((img.width * upscale, img.height * upscale), Image.Resampling.LANCZOS)
    if pad:
        framed = Image.new("L", (img.width + 2 * pad, img.height + 2 * pad), 255)
        framed.paste(img, (pad, pad))
        img = framed
    env = dict(os.environ, OMP_THREAD_LIMIT="1")
    with tempfile.TemporaryDirectory(prefix="om-ocr-") as tmp:
        path = Path(tmp) / "page.png"
        img.save(path, compress_level=1)
        proc = subprocess.run(
            ["tesseract", str(path), "stdout", "--psm", str(psm), "-l", lang],
            capture_output=True,
            env=env,
            check=True,
        )
    return proc.stdout.decode("utf-8", "replace")


@lru_cache(maxsize=1)
def _rapidocr():
    from rapidocr_onnxruntime import RapidOCR

    return RapidOCR()


def rapidocr_read(img: Image.Image) -> str:
    """Read an image with RapidOCR (no angle classifier); boxes joined in reading order.

    RapidOCR drops spaces in large text: compare with ``char_accuracy(..., ignore_spaces=True)``.
    """
    import numpy as np

    result, _ = _rapidocr()(np.asarray(img.convert("RGB")), use_cls=False)
    if not result:
        return ""
    boxes = []
    for box, text, _score in result:
        ys = [p[1] for p in box]
        xs = [p[0] for p in box]
        boxes.append((min(ys), max(ys), min(xs), text))
    boxes.sort()
    lines: list[list[tuple[float, str]]] = []
    line_bottom = None
    for top, bottom, left, text in boxes:
        mid = (top + bottom) / 2
        if line_bottom is not None and mid < line_bottom:
            lines[-1].append((left, text))
            line_bottom = max(line_bottom, mid)
        else:
            lines.append([(left, text)])
            line_bottom = bottom
    return "\n".join(" ".join(t for _, t in sorted(line)) for line in lines)


# --------------------------------------------------------------------------------------------------
# Synthetic chat (generated here, no third-party text)

_NAMES = ["Caroline", "Melanie", "Dev", "Priya", "Tom", "Jonas", "Aiko", "Marcus"]
_PLACES = ["Lisbon", "the office", "Denver", "the lake house", "Kyoto", "Berlin", "the gym"]
_THINGS = [
    "budget review",
    "release notes",
    "pottery class",
    "marathon plan",
    "database migration",
    "birthday dinner",
    "grant proposal",
    "garden project",
    "job interview",
    "book club",
]
_DAYS = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"]
_FOODS = ["ramen", "tacos", "a big salad", "pancakes", "curry", "sourdough"]
_TEMPLATES = [
    "Did you finish the {thing} yet?",
    "I think the {thing} is mostly done, maybe {n}% left.",
    "We moved the {thing} to {day} at {time}, does that still work for you?",
    "Honestly, I'm exhausted after the trip to {place}.",
    "Can you send me the link again? I lost it somewhere in my inbox.",
    "Sure! It's at https://example.org/{word}/{n} if you want to check.",
    "My sister says hi, by the way. She's visiting {place} next week.",
    "That reminds me: we still owe {name} ${n} for the tickets.",
    "Sounds great, let's do it.",
    "I tried making {food} last night and it was a disaster, lol.",
    "Wait, was the deadline the {ord} or the {ord2}?",
    "I'll call you after {time}; I have back-to-back meetings until then.",
    "The numbers look off: revenue went from {n}k to {n2}k in two weeks.",
    "Thanks so much for helping with the {thing}, it means a lot.",
    "Do you remember what {name} said about {place}?",
    "No worries, take your time. We can pick it up on {day}.",
    "I ran {n2} km this morning, new personal best!",
    "Quick question: should the {thing} include last year's data too?",
    "Ha, that's exactly what I told {name} yesterday.",
    "I'm not sure. Let me check my notes and get back to you tonight.",
    "We booked a table for {n3} at {time}, near {place}.",
    "Version {n3}.{n4} fixed the crash, but the export is still slow.",
    "Could you review my draft of the {thing} before {day}?",
    "It's raining again here in {place}, so the hike is off.",
    "I feel like we should ask {name}; she knows more about this than we do.",
    "OK, final answer: {food} on {day}, my treat.",
    "Ugh, my laptop died in the middle of the {thing}. Restarting now...",
    "Yes, and bring the charger (the USB-C one, not the old one).",
    "What time does the train leave? I think it's {time} but I'm not sure.",
    "Great news: the {thing} got approved!",
]
_WORDS = ["notes", "plan", "docs", "share", "files", "draft", "photos"]


def _sentence(rng: random.Random) -> str:
    n = rng.randint(2, 99)
    return rng.choice(_TEMPLATES).format(
        thing=rng.choice(_THINGS),
        place=rng.choice(_PLACES),
        name=rng.choice(_NAMES),
        food=rng.choice(_FOODS),
        day=rng.choice(_DAYS),
        time=f"{rng.randint(1, 12)}:{rng.choice(['00', '15', '30', '45'])} {rng.choice(['am', 'pm'])}",
        n=n,
        n2=n + rng.randint(1, 40),
        n3=rng.randint(2, 9),
        n4=rng.randint(0, 20),
        word=rng.choice(_WORDS),
        ord=f"{rng.randint(4, 20)}th",
        ord2=f"{rng.randint(21, 28)}th",
    )


def synthetic_chat(seed: int = 0, *, start: datetime | None = None):
    """Endless deterministic English chat between two people: yields RenderTurn objects."""
    from optical_memory.render import RenderTurn

    rng = random.Random(seed)
    speakers = rng.sample(_NAMES, 2)
    at = start or datetime(2023, 5, 8, 13, 56, tzinfo=UTC)
    k = 0
    while True:
        n = rng.choice([1, 1, 2, 2, 2, 3, 3, 4, 5, 7])
        text = " ".join(_sentence(rng) for _ in range(n))
        yield RenderTurn(speakers[k % 2], at, text)
        k += 1 + (rng.random() < 0.2)
        at += timedelta(minutes=rng.randint(0, 9), seconds=rng.randint(0, 59))
        if rng.random() < 0.01:
            at += timedelta(days=1)


def full_page(renderer, canvas: tuple[int, int], seed: int = 0) -> list:
    """Turns of synthetic chat filling ``canvas`` up to the renderer's capacity (as the packer would)."""
    cap = renderer.capacity(canvas)
    used = 0
    turns = []
    for turn in synthetic_chat(seed):
        fp = renderer.footprint(turn, canvas)
        if used + fp > cap:
            break
        turns.append(turn)
        used += fp
    return turns
