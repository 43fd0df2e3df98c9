"""The vendor rules cited in ladder.py give the vendors' own published examples, and the
targets are found under the names of the models people use."""

from __future__ import annotations

import pytest

from optical_memory import get_target
from optical_memory.ladder import (
    anthropic_cost,
    gemini3_cost,
    openai_patches,
    openai_tiles,
)


def test_openai_patch_models_count_32px_patches_times_the_multiplier() -> None:
    one = openai_patches(1.0)
    assert one(1024, 1024) == 1024  # the guide's example: 32 × 32 patches
    assert one(1800, 2400) == 1452  # scaled down to fit 1536 patches, then to whole patches
    assert one(4000, 4000) <= 1536
    assert get_target("gpt-4.1-mini").image_cost(1024, 1024) == 1659  # 1024 × 1.62
    assert get_target("gpt-4.1-nano").image_cost(1024, 1024) == 2520  # × 2.46
    assert get_target("o4-mini").image_cost(1024, 1024) == 1762  # × 1.72
    # detail does not change a patch model's price
    t = get_target("gpt-5-mini")
    assert t.image_cost(512, 512, "low") == t.image_cost(512, 512, "high")


def test_openai_tile_models_by_family() -> None:
    assert get_target("gpt-4o").image_cost(1024, 1024, "high") == 765
    assert get_target("gpt-4.1").image_cost(1024, 1024, "low") == 85
    assert get_target("gpt-5").image_cost(1024, 1024, "high") == 70 + 4 * 140
    assert get_target("gpt-5").image_cost(1024, 1024, "low") == 70
    assert get_target("gpt-4o-mini").image_cost(512, 512, "low") == 2833
    assert get_target("gpt-4o-mini").image_cost(512, 512, "high") == 2833 + 5667
    assert get_target("o3").image_cost(512, 512, "high") == 75 + 150
    assert openai_tiles(85, 170)(2048, 4096, "high") == 1105


def test_anthropic_area_rule_and_its_ceiling() -> None:
    assert anthropic_cost(1000, 1000) == 1334
    assert anthropic_cost(200, 200) == 54
    assert anthropic_cost(4000, 3000) == 1600  # scaled down to about 1,600 tokens
    assert get_target("claude-sonnet-4.5") is get_target("anthropic")


def test_gemini_3_media_resolution_and_2x_tiles() -> None:
    assert gemini3_cost(100, 100) == gemini3_cost(3000, 3000) == 1120  # default: high
    assert gemini3_cost(800, 800, "medium") == 560
    assert gemini3_cost(800, 800, "low") == 280
    assert get_target("gemini-3-pro").tier_cost("tiny") == 1120  # one canvas: nothing to fade
    assert get_target("gemini-2.5-flash").image_cost(384, 384) == 258


@pytest.mark.parametrize("name", ["openai", "anthropic", "claude", "gemini", "deepseek-ocr"])
def test_the_old_names_still_work(name: str) -> None:
    assert get_target(name).tier_cost("large") > 0
