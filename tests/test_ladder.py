"""Targets price images by the vendors' own published rules."""

from __future__ import annotations

import pytest

from optical_memory import Target, Tier, TierSpec, UnknownTarget, get_target, register_target
from optical_memory.ladder import anthropic_cost, openai_tile_cost


def test_deepseek_ocr_native_modes_with_newlines_and_separator() -> None:
    t = get_target("deepseek-ocr")
    assert [t.tier_cost(x) for x in ("large", "base", "small", "tiny")] == [421, 273, 111, 73]
    assert [t.spec(x).size for x in ("large", "base", "small", "tiny")] == [
        (1280, 1280),
        (1024, 1024),
        (640, 640),
        (512, 512),
    ]
    assert t.image_cost(300, 200) == 73  # padded to the tiny mode


def test_deepseek_ocr_2_global_view_and_tiles() -> None:
    t = get_target("deepseek-ocr-2")
    assert t.tier_cost("base") == 257  # 1024² global view + separator
    assert t.tier_cost("large") == 257 + 4 * 144  # global + 2×2 tiles of 768²
    assert t.tier_cost("small") == 145  # one 768² view
    assert t.spec("tiny") == t.spec("small")  # not offered: falls back to the sharper tier


def test_openai_published_examples() -> None:
    assert openai_tile_cost(1024, 1024, "high") == 765
    assert openai_tile_cost(2048, 4096, "high") == 1105
    assert openai_tile_cost(4096, 8192, "low") == 85
    t = get_target("openai")
    assert [t.tier_cost(x) for x in ("large", "base", "small", "tiny")] == [765, 255, 85, 85]
    assert t.spec("small").detail == "low"


def test_anthropic_published_example() -> None:
    assert anthropic_cost(1092, 1092) == pytest.approx(1590, abs=1)
    assert anthropic_cost(3000, 3000) == anthropic_cost(1568, 1568)  # long edge capped


def test_qwen_one_token_per_28_pixels() -> None:
    t = get_target("qwen2.5-vl")
    assert t.image_cost(28, 28) == 1 + 2
    assert t.image_cost(1120, 1120) == 40 * 40 + 2
    assert t.image_cost(448, 448) == 16 * 16 + 2


def test_gemini_tiles() -> None:
    t = get_target("gemini")
    assert t.image_cost(384, 384) == 258
    assert t.image_cost(768, 768) == 258
    assert t.image_cost(1536, 1536) == 4 * 258


def test_every_builtin_target_gets_cheaper_down_the_ladder() -> None:
    for name in ("deepseek-ocr", "deepseek-ocr-2", "qwen2.5-vl", "openai", "anthropic", "gemini"):
        t = get_target(name)
        costs = [t.tier_cost(x) for x in (Tier.LARGE, Tier.BASE, Tier.SMALL, Tier.TINY)]
        assert costs == sorted(costs, reverse=True), name


def test_users_register_their_own_target() -> None:
    mine = Target(
        "my-vlm-test",
        {Tier.LARGE: TierSpec(896, 896), Tier.TINY: TierSpec(224, 224)},
        lambda w, h, d: (w // 32) * (h // 32),
    )
    register_target(mine)
    assert get_target("MY-VLM-TEST") is mine
    assert mine.tier_cost("base") == 28 * 28  # base falls back to large
    assert mine.tier_cost("tiny") == 49
    with pytest.raises(ValueError):
        register_target(Target("my-vlm-test", {Tier.LARGE: TierSpec(1, 1)}, lambda w, h, d: 1))


def test_unknown_target_names_the_known_ones() -> None:
    with pytest.raises(UnknownTarget, match="deepseek-ocr"):
        get_target("gpt-9-vision")


def test_tier_parsing() -> None:
    assert Tier.parse("Base") is Tier.BASE
    assert Tier.parse(4) is Tier.TINY
    assert Tier.TEXT < Tier.LARGE < Tier.TINY
    with pytest.raises(ValueError, match="large"):
        Tier.parse("medium")
