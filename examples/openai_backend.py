"""Chat with an OpenAI-compatible server through optical-memory.

Old turns reach the model as page images, recent ones as text, within a token budget. Works
with OpenAI and with local servers that speak chat completions (vLLM serving DeepSeek-OCR or
Qwen2.5-VL, Ollama, LM Studio).

    export OPENAI_BASE_URL=http://127.0.0.1:8000/v1   # omit for api.openai.com
    export OPENAI_API_KEY=sk-...                       # any string for most local servers
    export OPENAI_MODEL=deepseek-ai/DeepSeek-OCR
    python examples/openai_backend.py --target deepseek-ocr --session demo

Type a message per line; an empty line or Ctrl-D ends the chat. The aging pass runs in the
background, so pages appear and fade while you talk.
"""

from __future__ import annotations

import argparse
import os
import sys

from optical_memory import MemoryManager, target_names
from optical_memory.adapters.openai import record_openai_messages, to_openai_messages


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog="Environment: OPENAI_API_KEY, OPENAI_BASE_URL, OPENAI_MODEL (default gpt-4o-mini).",
    )
    p.add_argument("--db", default=None, help="SQLAlchemy URL or file (default: the user data dir)")
    p.add_argument("--session", default="openai-demo", help="conversation id")
    p.add_argument("--budget", type=int, default=4096, help="prompt tokens for the conversation")
    p.add_argument(
        "--target",
        default="openai",
        choices=target_names(),
        help="the model reading the prompt: decides page sizes and image costs",
    )
    p.add_argument(
        "--detail",
        default=None,
        choices=["auto", "low", "high"],
        help="image detail for every page (default: the target's own)",
    )
    p.add_argument("--system", default="You are a helpful assistant.", help="system prompt")
    p.add_argument("--age-every", type=float, default=60.0, help="seconds between aging passes")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from openai import OpenAI  # the client needs no network until the first request

    client = OpenAI(
        api_key=os.environ.get("OPENAI_API_KEY", "not-needed-for-local-servers"),
        base_url=os.environ.get("OPENAI_BASE_URL") or None,
    )
    model = os.environ.get("OPENAI_MODEL", "gpt-4o-mini")
    with MemoryManager(args.db, target=args.target) as memory:
        memory.start_scheduler(every=args.age_every)
        for line in sys.stdin:
            text = line.strip()
            if not text:
                break
            record_openai_messages(memory, args.session, [{"role": "user", "content": text}])
            ctx = memory.assemble(args.session, budget=args.budget)
            messages = to_openai_messages(ctx, detail=args.detail, system_prompt=args.system)
            reply = client.chat.completions.create(model=model, messages=messages)
            message = reply.choices[0].message
            record_openai_messages(memory, args.session, [message])
            print(f"assistant> {message.content}")
            print(
                f"  [{len(ctx.pages)} pages, {ctx.tokens} tokens, "
                f"{ctx.compression:.1f} text tokens per image token]",
                file=sys.stderr,
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
