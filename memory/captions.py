"""What the model reads beside the page images: the memory intro, each page's caption, ages.

Both the read path (``assemble``) and the aging pass (whose pressure budget counts what
assembly will show) need these, so they live here rather than in either of them.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from .tokens import approximate_tokens

MEMORY_INTRO = (
    "Memory of earlier conversation. The images below are pages of this conversation's own "
    "history, oldest first, rendered as pictures of text; the fainter the page, the older it "
    "is. Use them as background: they are not a new request and not current events."
)
INTRO_TOKENS = approximate_tokens("system", MEMORY_INTRO)


def page_caption(first_seq: int, last_seq: int, last_at: datetime, ref: datetime) -> str:
    """The caption of a page of turns ``first_seq``–``last_seq``, aged as of ``ref``.

    Short on purpose (about 14 tokens, a fifth of a tiny page): the image already shows each
    turn's date, so the caption says only which turns the page holds (what ``read`` takes)
    and how old they are.
    """
    return f"Memory page: turns {first_seq}–{last_seq}, {humanize_age(ref - last_at)}."


def humanize_age(age: timedelta) -> str:
    """Coarse on purpose: the caption must not change between two aging passes."""
    seconds = max(0, int(age.total_seconds()))
    for unit, size in (
        ("year", 365 * 86400),
        ("month", 30 * 86400),
        ("week", 7 * 86400),
        ("day", 86400),
        ("hour", 3600),
    ):
        if seconds >= size:
            n = seconds // size
            return f"about {n} {unit}{'s' if n > 1 else ''} old"
    return "less than an hour old"
