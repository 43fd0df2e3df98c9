"""Chat with a local DeepSeek-OCR-2 or Qwen2.5-VL over optical memory.

    python examples/local_vlm.py < questions.txt         # offline: a recording fake model
    python examples/local_vlm.py /models/DeepSeek-OCR-2 --db chat.db --session me
    python examples/local_vlm.py /models/Qwen2.5-VL-3B-Instruct --device cuda --dtype bfloat16

Every turn is stored; between turns an aging pass packs old turns into pages, renders them
at the tier their age calls for and caches the model's visual tokens for them. Each answer is
generated from the system prompt, the memory pages, the recent turns as text and your
message; the KV cache of the last prompt and reply is kept, so each turn prefills only what it
adds (until an aging pass changes the pages). Type /age to run an aging pass now,
/pages to list the pages, /quit to leave. Nothing is downloaded: the model directory must
hold the weights, the config and the processor files. Without a model directory nothing is
loaded: a fake model answers with what it was shown, and a simulated clock moves 20 minutes per
message (aging after each), so pages appear within a few messages.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Chat with a local VLM (DeepSeek-OCR-2, Qwen2.5-VL) whose older turns are "
        "kept as page images with cached visual tokens.",
    )
    parser.add_argument(
        "model",
        type=Path,
        nargs="?",
        default=None,
        help="local model directory (weights + processor); default: an offline recording fake",
    )
    parser.add_argument("--db", default="local_vlm.db", help="SQLite file or SQLAlchemy URL")
    parser.add_argument("--session", default="local-vlm", help="conversation id")
    parser.add_argument(
        "--target", default=None, help="optical-memory target (default: from the model type)"
    )
    parser.add_argument("--system", default="You are a helpful assistant.", help="system prompt")
    parser.add_argument("--budget", type=int, default=8192, help="prompt token budget")
    parser.add_argument(
        "--keep-last-turns", type=int, default=8, help="recent turns always shown as text"
    )
    parser.add_argument("--max-new-tokens", type=int, default=512)
    parser.add_argument("--dtype", default="auto", help="auto, float32, bfloat16, float16")
    parser.add_argument("--device", default=None, help="cpu, cuda, mps (default: as loaded)")
    return parser.parse_args(argv)


def offline(args: argparse.Namespace) -> int:
    """No model: show what a model would be sent (pages and text within the budget)."""
    from datetime import UTC, datetime, timedelta

    from optical_memory import AgingPolicy, MemoryManager

    url = args.db if "://" in args.db else f"sqlite:///{Path(args.db).resolve()}"
    clock = datetime(2025, 1, 1, 9, 0, tzinfo=UTC)
    target = args.target or "deepseek-ocr-2"
    policy = AgingPolicy(keep_last_turns=args.keep_last_turns)
    with MemoryManager(url, target=target, policy=policy) as memory:
        for line in sys.stdin:
            message = line.strip()
            if not message or message == "/quit":
                break
            memory.add_turn(args.session, "user", message, at=clock)
            ctx = memory.assemble(args.session, budget=args.budget, now=clock)
            reply = (
                f"(offline model) I was shown {len(ctx.pages)} page images and "
                f"{len(ctx.texts)} turns as text, {ctx.tokens} tokens."
            )
            memory.add_turn(args.session, "assistant", reply, at=clock)
            print(f"model> {reply}")
            clock += timedelta(minutes=20)
            memory.age(now=clock)
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.model is None:
        return offline(args)
    if not args.model.is_dir():
        print(f"no model directory at {args.model}", file=sys.stderr)
        return 2

    import torch

    from optical_memory import AgingPolicy, MemoryManager, UnknownSession
    from optical_memory.adapters.transformers import LocalVLM, TransformersEncoder

    dtype = args.dtype if args.dtype == "auto" else getattr(torch, args.dtype)
    encoder = TransformersEncoder.from_pretrained(args.model, dtype=dtype, device=args.device)
    target = args.target or encoder.target
    if target is None:
        print(f"unknown model type {encoder.model_type!r}; pass --target", file=sys.stderr)
        return 2
    url = args.db if "://" in args.db else f"sqlite:///{Path(args.db).resolve()}"
    memory = MemoryManager(
        url,
        target=target,
        encoder=encoder,
        policy=AgingPolicy(keep_last_turns=args.keep_last_turns),
    )
    chat = LocalVLM(memory, encoder, system_prompt=args.system, budget=args.budget)
    print(f"{encoder.key} on {encoder.device}; target {target}; session {args.session!r}")
    print("/age runs an aging pass, /pages lists pages, /quit leaves.")
    try:
        while True:
            try:
                message = input("you> ").strip()
            except EOFError:
                break
            if not message:
                continue
            if message == "/quit":
                break
            if message == "/age":
                report = memory.age()
                print(f"aging: {report.pages_created} new pages, moved {report.pages_moved}")
                continue
            if message == "/pages":
                try:
                    pages = memory.pages(args.session)
                except UnknownSession:
                    pages = []
                for page in pages:
                    print(
                        f"  page {page.page_id}: turns {page.first_seq}-{page.last_seq}, "
                        f"{page.tier}, {page.token_cost} tokens for {page.text_tokens}"
                    )
                continue
            reply = chat.generate(args.session, message, max_new_tokens=args.max_new_tokens)
            print(f"model> {reply}")
            memory.age()  # normally the scheduler does this in the background
    finally:
        memory.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
