"""Local prefill with cached visual tokens: tiny random-weight DeepSeek-OCR-2 and Qwen2.5-VL.

Measures, on CPU and with models built from transformers' own config classes (no downloads):

* assembling a request from the visual-token cache versus re-encoding every page per request
  (from the database's cache with nothing kept in process, and again with the same prefix);
* second-turn prefill versus a full prefill, reusing either the system-prompt-plus-pages KV
  prefix, or the session's whole first turn (prompt and reply, cut back to what the second
  prompt repeats), which is what ``LocalVLM.generate`` does.

    python benchmarks/local_prefill.py                  # both models, 3 and 7 pages
    python benchmarks/local_prefill.py --model qwen2.5-vl --memory long --repeat 5
    python benchmarks/local_prefill.py --lm-hidden 64 512   # also a wider language model

Tiny language models spend their prefill in attention, where the new tokens still attend to
the whole prefix; wider ones spend it in the MLPs, as real models do, and the reused prefix
saves close to its share of the tokens.

The tiny-model builders here are shared with ``tests/test_adapter_transformers.py``.
"""

from __future__ import annotations

import argparse
import copy
import csv
import random
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make `benchmarks` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.chatgen import sentence  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"

QWEN25_VL_CHAT_TEMPLATE = (
    "{% set image_count = namespace(value=0) %}{% set video_count = namespace(value=0) %}"
    "{% for message in messages %}{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n{% if message['content'] is string %}"
    "{{ message['content'] }}<|im_end|>\n{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
    "{% set image_count.value = image_count.value + 1 %}"
    "{% if add_vision_id %}Picture {{ image_count.value }}: {% endif %}"
    "<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'video' or 'video' in content %}"
    "{% set video_count.value = video_count.value + 1 %}"
    "{% if add_vision_id %}Video {{ video_count.value }}: {% endif %}"
    "<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif 'text' in content %}{{ content['text'] }}{% endif %}{% endfor %}<|im_end|>\n"
    "{% endif %}{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
"""The chat template Qwen2.5-VL checkpoints ship (chat_template.json)."""

# -- tiny models ----------------------------------------------------------------------------------


def tiny_tokenizer(special: dict[str, Any], *, vocab_size: int = 480, seed: int = 0) -> Any:
    """A byte-level BPE trained in memory on chat-like text, wrapped for transformers.

    ``special`` is what ``add_special_tokens`` takes (bos/eos/pad and extra tokens)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    rng = random.Random(seed)
    corpus = [" ".join(sentence(rng) for _ in range(4)) for _ in range(300)]
    corpus += [
        "Memory page: turns 1–40, 3 May 2026 10:00 – 11:00 UTC, about 2 weeks old.",
        "User: Assistant: user assistant system tool",
    ]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(corpus, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok)
    fast.add_special_tokens(special)
    return fast


def _lm_shape(hidden: int) -> dict[str, int]:
    """Language-model sizes for a hidden width (head size 16 up to 64 wide, then 64)."""
    heads = 4 if hidden <= 64 else hidden // 64
    return {"hidden_size": hidden, "intermediate_size": 2 * hidden, "num_attention_heads": heads}


def tiny_deepseek_ocr2(seed: int = 0, lm_hidden: int = 64) -> tuple[Any, Any]:
    """A random-weight DeepseekOcr2ForConditionalGeneration (SAM + Qwen2 encoder + MoE LM,
    hidden 32-64, 1-2 layers each) and its processor with a tiny tokenizer."""
    import torch
    from transformers import (
        DeepseekOcr2Config,
        DeepseekOcr2ForConditionalGeneration,
        DeepseekOcr2ImageProcessorPil,
        DeepseekOcr2Processor,
    )

    tok = tiny_tokenizer(
        {
            "bos_token": "<｜begin▁of▁sentence｜>",
            "eos_token": "<｜end▁of▁sentence｜>",
            "pad_token": "<｜▁pad▁｜>",
            "additional_special_tokens": ["<image>"],
        }
    )
    processor = DeepseekOcr2Processor(
        image_processor=DeepseekOcr2ImageProcessorPil(), tokenizer=tok
    )
    config = DeepseekOcr2Config(
        vision_config={
            "sam_config": {
                "hidden_size": 32,
                "output_channels": 16,
                "num_hidden_layers": 1,
                "num_attention_heads": 2,
                "global_attn_indexes": [],
                "mlp_dim": 64,
                "downsample_channels": [16, 32],
                "initializer_range": 0.02,  # the default 1e-10 makes denormal activations
            },
            "encoder_config": {
                "hidden_size": 32,
                "intermediate_size": 64,
                "num_hidden_layers": 1,
                "num_attention_heads": 2,
                "num_key_value_heads": 2,
                "vocab_size": 8,
            },
        },
        text_config={
            "vocab_size": len(tok),
            **_lm_shape(lm_hidden),
            "num_hidden_layers": 2,
            "num_key_value_heads": _lm_shape(lm_hidden)["num_attention_heads"],
            "mlp_layer_types": ["dense", "sparse"],
            "n_routed_experts": 4,
            "num_experts_per_tok": 2,
            "moe_intermediate_size": lm_hidden // 2,
            "n_shared_experts": 1,
            "max_position_embeddings": 16384,
            "bos_token_id": tok.bos_token_id,
            "eos_token_id": tok.eos_token_id,
            "pad_token_id": tok.pad_token_id,
        },
        image_token_id=tok.convert_tokens_to_ids("<image>"),
    )
    torch.manual_seed(seed)
    model = DeepseekOcr2ForConditionalGeneration(config).eval()
    _generation_ids(model, tok)
    return model, processor


def tiny_qwen25_vl(seed: int = 0, lm_hidden: int = 64) -> tuple[Any, Any]:
    """A random-weight Qwen2_5_VLForConditionalGeneration (hidden 32-64, 2 layers) and its
    processor with a tiny tokenizer and the checkpoints' chat template."""
    import torch
    from transformers import (
        Qwen2_5_VLConfig,
        Qwen2_5_VLForConditionalGeneration,
        Qwen2VLImageProcessorPil,
    )

    tok = tiny_tokenizer(
        {
            "eos_token": "<|im_end|>",
            "pad_token": "<|endoftext|>",
            "additional_special_tokens": [
                "<|im_start|>",
                "<|vision_start|>",
                "<|vision_end|>",
                "<|image_pad|>",
                "<|video_pad|>",
            ],
        }
    )
    # The released checkpoints allow up to 12,845,056 pixels (so 1120² pages keep their size).
    image_processor = Qwen2VLImageProcessorPil(min_pixels=56 * 56, max_pixels=28 * 28 * 16384)
    processor = image_only_qwen25_vl_processor_class()(
        image_processor=image_processor, tokenizer=tok, chat_template=QWEN25_VL_CHAT_TEMPLATE
    )
    ids = tok.convert_tokens_to_ids
    shape = _lm_shape(lm_hidden)
    half = lm_hidden // shape["num_attention_heads"] // 2  # rotary pairs per head
    config = Qwen2_5_VLConfig(
        vision_config={
            "depth": 2,
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_heads": 2,
            "out_hidden_size": lm_hidden,
            "patch_size": 14,
            "spatial_merge_size": 2,
            "temporal_patch_size": 2,
            "window_size": 112,
            "fullatt_block_indexes": [1],
        },
        text_config={
            "vocab_size": len(tok),
            **shape,
            "num_hidden_layers": 2,
            "num_key_value_heads": shape["num_attention_heads"] // 2,
            "max_position_embeddings": 32768,
            "rope_parameters": {
                "rope_type": "default",
                "mrope_section": [half // 4, 3 * half // 8, 3 * half // 8],
                "rope_theta": 10000.0,
            },
            "bos_token_id": None,
            "eos_token_id": tok.eos_token_id,
            "pad_token_id": tok.pad_token_id,
        },
        image_token_id=ids("<|image_pad|>"),
        video_token_id=ids("<|video_pad|>"),
        vision_start_token_id=ids("<|vision_start|>"),
        vision_end_token_id=ids("<|vision_end|>"),
    )
    torch.manual_seed(seed)
    model = Qwen2_5_VLForConditionalGeneration(config).eval()
    _generation_ids(model, tok)
    return model, processor


def image_only_qwen25_vl_processor_class() -> type:
    """Qwen2.5-VL's own processor without its video processor.

    The video processor needs torchvision; without it transformers cannot build the stock
    processor at all. Pages are images, so everything else is the stock class unchanged.
    """
    from transformers import Qwen2_5_VLProcessor

    class ImageOnlyQwen2_5_VLProcessor(Qwen2_5_VLProcessor):  # noqa: N801
        def __init__(
            self,
            image_processor: Any = None,
            tokenizer: Any = None,
            chat_template: Any = None,
            **kwargs: Any,
        ) -> None:
            super().__init__(image_processor, tokenizer, None, chat_template=chat_template)

    return ImageOnlyQwen2_5_VLProcessor


def load_processor(path: Path) -> Any:
    """A saved tiny processor, loaded offline the way a checkpoint's would be."""
    import json

    from transformers import AutoProcessor

    saved = json.loads((path / "processor_config.json").read_text())
    if "Qwen2_5_VL" in str(saved.get("processor_class", "")):
        cls = image_only_qwen25_vl_processor_class()
        return cls.from_pretrained(path, local_files_only=True)
    return AutoProcessor.from_pretrained(path, local_files_only=True)


def _generation_ids(model: Any, tok: Any) -> None:
    gen = model.generation_config
    gen.eos_token_id = tok.eos_token_id
    gen.pad_token_id = tok.pad_token_id
    gen.bos_token_id = tok.bos_token_id
    gen.do_sample = False


BUILDERS: dict[str, Callable[..., tuple[Any, Any]]] = {
    "deepseek-ocr-2": tiny_deepseek_ocr2,
    "qwen2.5-vl": tiny_qwen25_vl,
}


def save_tiny(name: str, path: Path, lm_hidden: int = 64) -> Path:
    """Build a tiny model and save model + processor to ``path`` (loadable offline)."""
    import json

    model, processor = BUILDERS[name](lm_hidden=lm_hidden)
    model.save_pretrained(path)
    processor.save_pretrained(path)
    config = path / "processor_config.json"
    saved = json.loads(config.read_text())
    saved["processor_class"] = saved["processor_class"].replace("ImageOnly", "")  # stock name
    config.write_text(json.dumps(saved, indent=2))
    return path


# -- a memory with pages at several tiers ---------------------------------------------------------


@dataclass(frozen=True)
class Burst:
    """Alternating turns a minute apart, starting ``ago`` before now: enough to fill ``fill``
    of a page on the target's layout, or ``turns`` turns when ``fill`` is 0."""

    ago: timedelta
    fill: float = 0.0
    turns: int = 4


BURSTS = (
    Burst(timedelta(days=20), fill=0.35),  # -> a small page
    Burst(timedelta(days=3), fill=0.35),  # -> a base page
    Burst(timedelta(hours=5), fill=0.45),  # -> a large page
    Burst(timedelta(minutes=10)),  # recent turns, shown as text
)
"""Sittings that age into pages at three tiers. A page holds a third of its capacity, so the
default policy seals it (at least ``min_fill`` of a page, quiet for ``seal_after``)."""

LONG_BURSTS = (
    Burst(timedelta(days=90), fill=0.35),  # tiny
    Burst(timedelta(days=70), fill=0.35),  # tiny
    Burst(timedelta(days=50), fill=0.35),  # tiny
    Burst(timedelta(days=35), fill=0.35),  # tiny
    Burst(timedelta(days=14), fill=0.35),  # small
    *BURSTS,
)
"""Three months of sittings: four more pages, faded to the tiny tier."""


def aged_memory(
    url: str,
    encoder: Any,
    *,
    target: str,
    now: datetime,
    session: str = "chat",
    seed: int = 7,
    bursts: tuple[Burst, ...] = BURSTS,
) -> Any:
    """A MemoryManager whose session has pages at different tiers, aged the way a scheduler
    would have done it (a pass two hours after each sitting, then one at ``now``)."""
    from optical_memory import AgingPolicy, MemoryManager, get_target
    from optical_memory.render import PageRenderer

    mm = MemoryManager(url, target=target, policy=AgingPolicy(keep_last_turns=4), encoder=encoder)
    capacity = PageRenderer().capacity(get_target(target).layout)
    rng = random.Random(seed)
    for b in bursts:
        start = now - b.ago
        turns: list[dict[str, Any]] = []
        chars = 0
        while (chars < b.fill * capacity) if b.fill else (len(turns) < b.turns):
            text = " ".join(sentence(rng) for _ in range(rng.randint(2, 5)))
            at = start + len(turns) * timedelta(minutes=1)
            turns.append(
                {"role": "user" if len(turns) % 2 == 0 else "assistant", "content": text, "at": at}
            )
            chars += len(text)
        mm.add_turns(session, turns)
        after = turns[-1]["at"] + timedelta(hours=2)
        if after < now:
            mm.age(now=after)
    mm.age(now=now)
    return mm


# -- the benchmark --------------------------------------------------------------------------------


def _race(a: Callable[[], Any], b: Callable[[], Any], repeat: int) -> tuple[float, float]:
    """Best-of-``repeat`` seconds of ``a`` and ``b``, run interleaved (fair on a busy machine)."""
    times: tuple[list[float], list[float]] = ([], [])
    for _ in range(repeat):
        for fn, out in ((a, times[0]), (b, times[1])):
            t0 = time.perf_counter()
            fn()
            out.append(time.perf_counter() - t0)
    return min(times[0]), min(times[1])


def run(
    name: str, repeat: int, workdir: Path, lm_hidden: int = 64, memory: str = "short"
) -> dict[str, Any]:
    """One model: cached vs re-encoded assembly, then reused-prefix vs full prefill."""
    import torch

    from optical_memory.adapters.transformers import LocalVLM, TransformersEncoder
    from optical_memory.adapters.transformers_prefix import common_prefix_length

    workdir = workdir / f"{name}-{lm_hidden}-{memory}"
    path = save_tiny(name, workdir / "model", lm_hidden=lm_hidden)
    encoder = TransformersEncoder.from_pretrained(
        path, dtype=torch.float32, processor=load_processor(path)
    )
    now = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)
    bursts = LONG_BURSTS if memory == "long" else BURSTS
    mm = aged_memory(
        f"sqlite:///{workdir / 'memory.db'}", encoder, target=name, now=now, bursts=bursts
    )
    chat = LocalVLM(mm, encoder, system_prompt="You are a helpful assistant.", budget=8192)
    message = "What did Maya book before the storm?"

    def from_store() -> None:  # the visual-token cache in the database, nothing in process
        chat.assembler.clear()
        chat.inputs("chat", message, now=now)

    chat.inputs("chat", message, now=now)  # warm up
    cached, encoded = _race(
        from_store, lambda: chat.inputs("chat", message, now=now, use_cache=False), repeat
    )
    chat.inputs("chat", message, now=now)
    warm, _ = _race(lambda: chat.inputs("chat", message, now=now), lambda: None, repeat)

    # Turn 1 fills the prefix cache and the session's conversation cache; turn 2 is measured
    # three ways: from the conversation cache (what generate() does), from the memory prefix
    # only, and from nothing.
    chat.generate("chat", message, now=now, max_new_tokens=4)
    turn1 = chat.conversations.get("chat")
    assert turn1 is not None
    second = chat.inputs("chat", "And who repaired the blue bicycle?", now=now)
    chat.forward(second)  # warm up both paths
    chat.forward(second, reuse_prefix=False)
    with_prefix, without = _race(
        lambda: chat.forward(second, logits_to_keep=1),
        lambda: chat.forward(second, reuse_prefix=False, logits_to_keep=1),
        repeat,
    )
    # each timed run starts from a fresh copy of turn 1's cache, copied before the clock starts
    copies = [copy.deepcopy(turn1) for _ in range(repeat + 1)]

    def from_conversation() -> None:
        chat.forward(second, session_id="chat", logits_to_keep=1)

    chat.conversations.put("chat", copies.pop())
    from_conversation()  # warm up
    conv_times = []
    for state in copies:
        chat.conversations.put("chat", state)
        t0 = time.perf_counter()
        from_conversation()
        conv_times.append(time.perf_counter() - t0)
    with_conversation = min(conv_times)
    shared = common_prefix_length(turn1.ids, second.input_ids[0])
    mm.close()
    return {
        "model": name,
        "lm_hidden": lm_hidden,
        "memory": memory,
        "pages": len(second.pages),
        "tiers": "/".join(p.tier for p in second.pages),
        "image_tokens": sum(second.page_rows),
        "prompt_tokens": second.length,
        "prefix_tokens": second.prefix_length,
        "suffix_share": round(1 - second.prefix_length / second.length, 3),
        "assemble_cached_ms": round(cached * 1e3, 2),
        "assemble_warm_ms": round(warm * 1e3, 2),
        "assemble_reencode_ms": round(encoded * 1e3, 2),
        "speedup": round(encoded / cached, 1),
        "speedup_warm": round(encoded / warm, 1),
        "prefill_full_ms": round(without * 1e3, 2),
        "prefill_reused_ms": round(with_prefix * 1e3, 2),
        "reused_share": round(with_prefix / without, 3),
        "conversation_tokens": shared,
        "prefill_conversation_ms": round(with_conversation * 1e3, 2),
        "conversation_share": round(with_conversation / without, 3),
    }


COLUMNS = [
    ("model", "model"),
    ("lm_hidden", "LM width"),
    ("memory", "memory"),
    ("pages", "pages"),
    ("tiers", "tiers"),
    ("image_tokens", "image tok"),
    ("prompt_tokens", "prompt tok"),
    ("prefix_tokens", "prefix tok"),
    ("suffix_share", "new tok share"),
    ("assemble_cached_ms", "assemble from store cache (ms)"),
    ("assemble_warm_ms", "same prefix again (ms)"),
    ("assemble_reencode_ms", "re-encode every page (ms)"),
    ("speedup", "speed-up (store)"),
    ("speedup_warm", "speed-up (again)"),
    ("prefill_full_ms", "2nd-turn prefill, full (ms)"),
    ("prefill_reused_ms", "reused prefix (ms)"),
    ("reused_share", "reused / full"),
    ("conversation_tokens", "turn 1 tokens reused"),
    ("prefill_conversation_ms", "reused turn 1 (ms)"),
    ("conversation_share", "reused turn 1 / full"),
]


def markdown(rows: list[dict[str, Any]]) -> str:
    head = "| " + " | ".join(h for _, h in COLUMNS) + " |"
    rule = "|" + "|".join("---" for _ in COLUMNS) + "|"
    body = ["| " + " | ".join(str(r[k]) for k, _ in COLUMNS) + " |" for r in rows]
    return "\n".join([head, rule, *body])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Assembly from cached visual tokens vs re-encoding, and prefill with a "
        "reused prefix vs a full prefill, on tiny random-weight VLMs (CPU, offline)."
    )
    parser.add_argument("--model", choices=[*BUILDERS, "all"], default="all")
    parser.add_argument("--repeat", type=int, default=7, help="timed runs per measure (best of)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument(
        "--lm-hidden",
        type=int,
        nargs="+",
        default=[64],
        help="language-model widths to try (64 is the tiny test model; wider ones put the "
        "prefill cost where real models have it, in the MLPs)",
    )
    parser.add_argument(
        "--memory",
        choices=["short", "long", "both"],
        default="both",
        help="short: 3 pages (small/base/large); long: 3 months, 4 more tiny pages",
    )
    parser.add_argument("--out", type=Path, default=RESULTS, help="folder for the CSV and table")
    args = parser.parse_args(argv)

    names = list(BUILDERS) if args.model == "all" else [args.model]
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        memories = ["short", "long"] if args.memory == "both" else [args.memory]
        for hidden in args.lm_hidden:
            for memory in memories:
                for name in names:
                    rows.append(run(name, args.repeat, Path(tmp), hidden, memory))
    table = markdown(rows)
    print(table)
    args.out.mkdir(parents=True, exist_ok=True)
    with open(args.out / "local_prefill.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=[k for k, _ in COLUMNS])
        writer.writeheader()
        writer.writerows(rows)
    (args.out / "local_prefill.md").write_text(table + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
