"""Tiers, targets and what an image costs on each target.

A *tier* is how sharply a page is shown: ``text`` (not an image), then ``large``, ``base``,
``small``, ``tiny`` images. A *target* is the model that reads the prompt: it decides each
tier's canvas and what an image of a given size costs, by the vendor's own rule.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from enum import IntEnum

from .errors import InvalidConfiguration, UnknownTarget


class Tier(IntEnum):
    """Sharp to faint. A larger value is fainter; stored tiers only ever grow."""

    TEXT = 0
    LARGE = 1
    BASE = 2
    SMALL = 3
    TINY = 4

    @property
    def label(self) -> str:
        return self.name.lower()

    @classmethod
    def parse(cls, value: Tier | str | int) -> Tier:
        if isinstance(value, Tier):
            return value
        try:
            if isinstance(value, int) and not isinstance(value, bool):
                return cls(value)
            return cls[str(value).upper()]
        except (KeyError, ValueError):
            names = ", ".join(t.label for t in cls)
            raise InvalidConfiguration(f"unknown tier {value!r}; use one of {names}") from None

    def __str__(self) -> str:
        return self.label


IMAGE_TIERS: tuple[Tier, ...] = (Tier.LARGE, Tier.BASE, Tier.SMALL, Tier.TINY)

CostRule = Callable[[int, int, str | None], int]
"""``rule(width, height, detail) -> prompt tokens`` of one image on a target."""


@dataclass(frozen=True)
class TierSpec:
    """How a target shows one tier: the canvas, and the detail flag some APIs take."""

    width: int
    height: int
    detail: str | None = None

    @property
    def size(self) -> tuple[int, int]:
        return (self.width, self.height)


@dataclass(frozen=True)
class Target:
    """A model that reads prompts: each tier's canvas, and its image cost rule.

    Tiers a target does not offer fall back to the nearest sharper one it does (on Gemini a
    small tile costs what a base tile costs, so there is nothing to gain by going smaller).
    """

    name: str
    tiers: Mapping[Tier, TierSpec]
    cost_rule: CostRule
    description: str = ""
    aliases: tuple[str, ...] = field(default=())

    def __post_init__(self) -> None:
        if Tier.LARGE not in self.tiers:
            raise InvalidConfiguration(f"target {self.name!r} must define the large tier")
        if Tier.TEXT in self.tiers:
            raise InvalidConfiguration("the text tier has no canvas; leave it out of tiers")

    @property
    def layout(self) -> tuple[int, int]:
        """Pages are laid out once, on the large canvas; fainter tiers downsample it."""
        return self.tiers[Tier.LARGE].size

    def spec(self, tier: Tier | str) -> TierSpec:
        tier = Tier.parse(tier)
        if tier is Tier.TEXT:
            raise InvalidConfiguration(
                "the text tier has no image; ask for large, base, small or tiny"
            )
        for t in range(tier, Tier.TEXT, -1):
            if Tier(t) in self.tiers:
                return self.tiers[Tier(t)]
        raise AssertionError("unreachable: large is always defined")

    def image_cost(self, width: int, height: int, detail: str | None = None) -> int:
        """Prompt tokens of one image of this size on this target."""
        return int(self.cost_rule(width, height, detail))

    def tier_cost(self, tier: Tier | str) -> int:
        """Prompt tokens of a page image at this tier (its canvas, its detail)."""
        s = self.spec(tier)
        return self.image_cost(s.width, s.height, s.detail)


# -- cost rules, one per vendor ---------------------------------------------------------------

_DEEPSEEK_MODES = ((512, 64), (640, 100), (1024, 256), (1280, 400))


def deepseek_ocr_cost(width: int, height: int, detail: str | None = None) -> int:
    """DeepSeek-OCR v1 native modes: n visual tokens + one newline per row + one separator.

    An image is padded to the smallest mode that holds it (large if none does):
    tiny 64 -> 73, small 100 -> 111, base 256 -> 273, large 400 -> 421 positions.
    """
    side = max(width, height)
    n = next((n for canvas, n in _DEEPSEEK_MODES if side <= canvas), _DEEPSEEK_MODES[-1][1])
    return n + math.isqrt(n) + 1


def deepseek_ocr2_cost(width: int, height: int, detail: str | None = None) -> int:
    """DeepSeek-OCR-2: a 1024² global view (256 + 1 separator), plus 768² tiles of 144 each
    for larger images; an image that fits 768² is one view of 144 (+1)."""
    side = max(width, height)
    if side <= 768:
        return 144 + 1
    if side <= 1024:
        return 256 + 1
    tiles = math.ceil(width / 768) * math.ceil(height / 768)
    return 256 + 1 + 144 * tiles


def qwen25_vl_cost(width: int, height: int, detail: str | None = None) -> int:
    """Qwen2.5-VL: sides rounded to multiples of 28 (its smart_resize), one token per 28×28,
    plus the <|vision_start|> and <|vision_end|> markers."""
    h = max(28, round(height / 28) * 28)
    w = max(28, round(width / 28) * 28)
    return (h // 28) * (w // 28) + 2


def openai_tile_cost(width: int, height: int, detail: str | None = None) -> int:
    """OpenAI tile models (GPT-4o, 4.1): low detail 85; high detail fits 2048², scales the
    short side down to 768, then 85 + 170 per 512² tile."""
    if detail == "low":
        return 85
    w, h = float(width), float(height)
    if max(w, h) > 2048:
        s = 2048 / max(w, h)
        w, h = w * s, h * s
    if min(w, h) > 768:
        s = 768 / min(w, h)
        w, h = w * s, h * s
    tiles = math.ceil(w / 512) * math.ceil(h / 512)
    return 85 + 170 * tiles


def anthropic_cost(width: int, height: int, detail: str | None = None) -> int:
    """Anthropic Claude: about w·h/750 after scaling the long edge down to 1568."""
    w, h = float(width), float(height)
    if max(w, h) > 1568:
        s = 1568 / max(w, h)
        w, h = w * s, h * s
    return math.ceil(w * h / 750)


def gemini_cost(width: int, height: int, detail: str | None = None) -> int:
    """Gemini 2.x: 258 for an image within 384²; otherwise 258 per 768² tile."""
    if width <= 384 and height <= 384:
        return 258
    return 258 * math.ceil(width / 768) * math.ceil(height / 768)


def _square(*sides: int, detail: tuple[str | None, ...] = ()) -> dict[Tier, TierSpec]:
    details = detail or (None,) * len(sides)
    return {t: TierSpec(s, s, d) for t, s, d in zip(IMAGE_TIERS, sides, details, strict=False)}


BUILTIN_TARGETS: tuple[Target, ...] = (
    Target(
        "deepseek-ocr",
        _square(1280, 1024, 640, 512),
        deepseek_ocr_cost,
        "DeepSeek-OCR v1 native modes (e.g. served by vLLM): 421/273/111/73 positions",
    ),
    Target(
        "deepseek-ocr-2",
        _square(1536, 1024, 768),
        deepseek_ocr2_cost,
        "DeepSeek-OCR-2: global view + 768² tiles (large), global only (base), one 768² view",
        aliases=("deepseek-ocr2",),
    ),
    Target(
        "qwen2.5-vl",
        _square(1120, 896, 672, 448),
        qwen25_vl_cost,
        "Qwen2.5-VL: one token per 28×28 pixels",
        aliases=("qwen2_5_vl", "qwen25-vl"),
    ),
    Target(
        "openai",
        _square(1024, 512, 512, detail=("high", "high", "low")),
        openai_tile_cost,
        "OpenAI tile models (GPT-4o, GPT-4.1): 765 / 255 / 85 (low detail)",
    ),
    Target(
        "anthropic",
        _square(1092, 768, 512, 384),
        anthropic_cost,
        "Anthropic Claude: about w·h/750",
        aliases=("claude",),
    ),
    Target(
        "gemini",
        _square(1536, 768),
        gemini_cost,
        "Gemini 2.x: 258 per 768² tile",
    ),
)

_REGISTRY: dict[str, Target] = {}


def register_target(target: Target, *, replace: bool = False) -> Target:
    """Make a target available by name (and aliases) to ``assemble`` and the aging pass."""
    for name in (target.name, *target.aliases):
        key = name.lower()
        if key in _REGISTRY and not replace and _REGISTRY[key] is not target:
            raise InvalidConfiguration(
                f"a target named {name!r} is registered already; pass replace=True"
            )
        _REGISTRY[key] = target
    return target


def unregister_target(name: str) -> None:
    """Remove a registered target and its aliases (a no-op for an unknown name)."""
    target = _REGISTRY.get(name.lower())
    if target is None:
        return
    for key in (target.name, *target.aliases):
        if _REGISTRY.get(key.lower()) is target:
            del _REGISTRY[key.lower()]


def get_target(target: Target | str) -> Target:
    """Look a target up by name; a :class:`Target` passes through."""
    if isinstance(target, Target):
        return target
    try:
        return _REGISTRY[str(target).lower()]
    except KeyError:
        raise UnknownTarget(
            f"unknown target {target!r}; use one of {', '.join(target_names())} "
            "or register your own with optical_memory.register_target()"
        ) from None


def target_names() -> list[str]:
    return sorted({t.name for t in _REGISTRY.values()})


for _t in BUILTIN_TARGETS:
    register_target(_t)
