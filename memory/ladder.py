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


# OpenAI, https://platform.openai.com/docs/guides/images-vision#calculating-costs (checked
# 2026-12): two rules. Tile models scale an image to fit 2048², then its short side to 768, and
# charge a base plus a price per 512² tile (``detail="low"``: the base alone). Patch models
# cover the image with 32×32 patches (at most 1536, scaling the image down to fit) and charge
# the patch count times a per-model multiplier; ``detail`` does not change their price.
OPENAI_TILE_PRICES: dict[str, tuple[int, int]] = {
    "gpt-4o": (85, 170),  # also gpt-4.1, gpt-4.5
    "gpt-4o-mini": (2833, 5667),
    "gpt-5": (70, 140),  # also gpt-5-chat-latest and the later full-size GPT-5.x models
    "o1": (75, 150),  # also o1-pro, o3
}
"""(base, per tile) tokens of the OpenAI tile models, from the page cited above."""
OPENAI_PATCH_MULTIPLIERS: dict[str, float] = {
    "gpt-4.1-mini": 1.62,
    "gpt-4.1-nano": 2.46,
    "o4-mini": 1.72,
    # The guide lists gpt-5-mini at 1.62 and gpt-5-nano at 2.46; billing reported on
    # https://community.openai.com/t/gpt-5-mini-image-input-token-calculation-discrepancy-with-official-faq-formula/1344040
    # is lower (1.2, 1.5): the documented figures are kept, so a budget is never overrun.
    "gpt-5-mini": 1.62,
    "gpt-5-nano": 2.46,
}
"""Tokens per 32×32 patch of the OpenAI patch models, from the page cited above."""
OPENAI_MAX_PATCHES = 1536


def openai_tiles(base: int, tile: int) -> CostRule:
    """An OpenAI tile model's rule: ``base`` (low detail), else ``base + tile`` per 512² tile
    after fitting 2048² and scaling the short side down to 768."""

    def cost(width: int, height: int, detail: str | None = None) -> int:
        if detail == "low":
            return base
        w, h = float(width), float(height)
        if max(w, h) > 2048:
            s = 2048 / max(w, h)
            w, h = w * s, h * s
        if min(w, h) > 768:
            s = 768 / min(w, h)
            w, h = w * s, h * s
        return base + tile * math.ceil(w / 512) * math.ceil(h / 512)

    return cost


def openai_patches(multiplier: float) -> CostRule:
    """An OpenAI patch model's rule: 32×32 patches (at most 1536; a larger image is scaled
    down to fit, then to whole patches), times ``multiplier``."""

    def cost(width: int, height: int, detail: str | None = None) -> int:
        w, h = float(width), float(height)
        if math.ceil(w / 32) * math.ceil(h / 32) > OPENAI_MAX_PATCHES:
            r = math.sqrt(32 * 32 * OPENAI_MAX_PATCHES / (w * h))
            w, h = w * r, h * r
            r = min(math.floor(w / 32) / (w / 32), math.floor(h / 32) / (h / 32))
            w, h = w * r, h * r
        patches = min(OPENAI_MAX_PATCHES, math.ceil(w / 32) * math.ceil(h / 32))
        return math.ceil(patches * multiplier)

    return cost


openai_tile_cost: CostRule = openai_tiles(*OPENAI_TILE_PRICES["gpt-4o"])
"""GPT-4o, GPT-4.1: 85 at low detail, else 85 + 170 per 512² tile."""

# Anthropic, https://docs.claude.com/en/docs/build-with-claude/vision (checked 2026-12):
# tokens = width · height / 750; an image whose long edge exceeds 1568 px, or that would take
# more than about 1,600 tokens, is first scaled down (aspect kept); larger than 8000×8000 px
# (2000×2000 when a request has more than 20 images) is refused.
ANTHROPIC_MAX_LONG_EDGE = 1568
ANTHROPIC_MAX_TOKENS = 1600
ANTHROPIC_MAX_SIDE = 8000


def anthropic_cost(width: int, height: int, detail: str | None = None) -> int:
    """Anthropic Claude: w·h/750 after scaling down to a 1568 px long edge and ~1,600 tokens."""
    w, h = float(width), float(height)
    if max(w, h) > ANTHROPIC_MAX_LONG_EDGE:
        s = ANTHROPIC_MAX_LONG_EDGE / max(w, h)
        w, h = w * s, h * s
    return min(math.ceil(w * h / 750), ANTHROPIC_MAX_TOKENS)


# Gemini, https://ai.google.dev/gemini-api/docs/tokens (2.x: 258 tokens for an image within
# 384² on both sides, else 258 per 768² tile) and
# https://ai.google.dev/gemini-api/docs/media-resolution (Gemini 3: a fixed budget per image set
# by media_resolution, default high: low 280, medium 560, high 1120, ultra_high 2240), checked
# 2026-12.
GEMINI3_MEDIA_RESOLUTION: dict[str, int] = {
    "low": 280,
    "medium": 560,
    "high": 1120,
    "ultra_high": 2240,
}


def gemini_cost(width: int, height: int, detail: str | None = None) -> int:
    """Gemini 2.x: 258 for an image within 384²; otherwise 258 per 768² tile."""
    if width <= 384 and height <= 384:
        return 258
    return 258 * math.ceil(width / 768) * math.ceil(height / 768)


def gemini3_cost(width: int, height: int, detail: str | None = None) -> int:
    """Gemini 3: the media resolution's budget whatever the size (``detail`` names it; the
    API's default for images is high)."""
    return GEMINI3_MEDIA_RESOLUTION.get(detail or "high", GEMINI3_MEDIA_RESOLUTION["high"])


def _square(*sides: int, detail: tuple[str | None, ...] = ()) -> dict[Tier, TierSpec]:
    details = detail or (None,) * len(sides)
    return {t: TierSpec(s, s, d) for t, s, d in zip(IMAGE_TIERS, sides, details, strict=False)}


# Patch models pay by area: canvases shrink with the tiers (1024² = 1024 patches).
_OPENAI_TILE_TIERS = _square(1024, 512, 512, detail=("high", "high", "low"))
_OPENAI_PATCH_TIERS = _square(1024, 768, 512, 384)

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
        _OPENAI_TILE_TIERS,
        openai_tile_cost,
        "OpenAI tile models GPT-4o, GPT-4.1, GPT-4.5: 765 / 255 / 85 (low detail)",
        aliases=("gpt-4o", "gpt-4.1", "gpt-4.5", "chatgpt-4o-latest"),
    ),
    Target(
        "gpt-4o-mini",
        _OPENAI_TILE_TIERS,
        openai_tiles(*OPENAI_TILE_PRICES["gpt-4o-mini"]),
        "GPT-4o mini: 2833 + 5667 per tile (low detail 2833): pages rarely pay",
    ),
    Target(
        "gpt-5",
        _OPENAI_TILE_TIERS,
        openai_tiles(*OPENAI_TILE_PRICES["gpt-5"]),
        "GPT-5 (and gpt-5-chat-latest, GPT-5.x full-size): 70 + 140 per tile, low detail 70",
        aliases=("gpt-5-chat-latest", "gpt-5.1", "gpt-5.2"),
    ),
    Target(
        "o3",
        _OPENAI_TILE_TIERS,
        openai_tiles(*OPENAI_TILE_PRICES["o1"]),
        "OpenAI o1, o1-pro, o3: 75 + 150 per tile, low detail 75",
        aliases=("o1", "o1-pro"),
    ),
    *(
        Target(
            name,
            _OPENAI_PATCH_TIERS,
            openai_patches(mult),
            f"{name}: 32 px patches × {mult} (at most 1536 patches; detail does not matter)",
        )
        for name, mult in OPENAI_PATCH_MULTIPLIERS.items()
    ),
    Target(
        "anthropic",
        _square(1092, 768, 512, 384),
        anthropic_cost,
        "Anthropic Claude: about w·h/750, at most ~1,600 per image",
        aliases=(
            "claude",
            "claude-opus-4",
            "claude-sonnet-4",
            "claude-haiku-4",
            "claude-opus-4.5",
            "claude-sonnet-4.5",
            "claude-haiku-4.5",
            "claude-3.7-sonnet",
        ),
    ),
    Target(
        "gemini",
        _square(1536, 768),
        gemini_cost,
        "Gemini 2.x: 258 per 768² tile",
        aliases=("gemini-2.5-pro", "gemini-2.5-flash", "gemini-2.0-flash"),
    ),
    Target(
        "gemini-3",
        _square(1536),
        gemini3_cost,
        "Gemini 3 at the default media resolution (high): 1120 per image of any size",
        aliases=("gemini-3-pro", "gemini-3-flash"),
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
