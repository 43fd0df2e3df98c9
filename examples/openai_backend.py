"""Chat with an OpenAI-compatible server through optical-memory.

Old turns reach the model as page images, recent ones as text, within a token budget. Works
with OpenAI and with local servers that speak chat completions (vLLM serving DeepSeek-OCR or
Qwen2.5-VL, Ollama, LM Studio).

    python examples/openai_backend.py < questions.txt      # offline: a recording fake model

    export OPENAI_BASE_URL=http://127.0.0.1:8000/v1   # omit for api.openai.com
    export OPENAI_API_KEY=sk-...                       # any string for most local servers
    python examples/openai_backend.py --model deepseek-ai/DeepSeek-OCR --target deepseek-ocr

Type a message per line; an empty line or Ctrl-D ends the chat. With ``--model`` the aging
pass runs in the background, so pages appear and fade while you talk. Without it, nothing
leaves the machine: a fake model answers with what it was shown, and a simulated clock moves
20 minutes per message (aging after each), so pages appear within a few messages.
"""

from __future__ import annotations

import argparse
import os
import sys
from datetime import UTC, datetime, timedelta
from typing import Any

from optical_memory import MemoryManager, target_names
from optical_memory.adapters.openai import record_openai_messages, to_openai_messages


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog="Environment (with --model): OPENAI_API_KEY, OPENAI_BASE_URL.",
    )
    p.add_argument(
        "--model", default=None, help="chat model to call (default: an offline recording fake)"
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


class RecordingModel:
    """An offline stand-in for a chat-completions endpoint: it keeps every request and answers
    with what it was shown (how many page images, messages and tokens)."""

    def __init__(self) -> None:
        self.requests: list[list[dict[str, Any]]] = []

    def reply(self, messages: list[dict[str, Any]]) -> dict[str, Any]:
        self.requests.append(messages)
        images = sum(
            1
            for m in messages
            if isinstance(m.get("content"), list)
            for part in m["content"]
            if part.get("type") == "image_url"
        )
        text = f"(offline model) I was shown {len(messages)} messages and {images} page images."
        return {"role": "assistant", "content": text}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    fake = RecordingModel() if args.model is None else None
    client = None
    if fake is None:
        from openai import OpenAI  # the client needs no network until the first request

        client = OpenAI(
            api_key=os.environ.get("OPENAI_API_KEY", "not-needed-for-local-servers"),
            base_url=os.environ.get("OPENAI_BASE_URL") or None,
        )
    clock = datetime(2025, 1, 1, 9, 0, tzinfo=UTC)
    with MemoryManager(args.db, target=args.target) as memory:
        if fake is None:
            memory.start_scheduler(every=args.age_every)
        for line in sys.stdin:
            text = line.strip()
            if not text:
                break
            now = clock if fake is not None else None
            record_openai_messages(
                memory, args.session, [{"role": "user", "content": text}], at=now
            )
            ctx = memory.assemble(args.session, budget=args.budget, now=now)
            messages = to_openai_messages(ctx, detail=args.detail, system_prompt=args.system)
            if client is not None:
                reply = client.chat.completions.create(model=args.model, messages=messages)
                message: Any = reply.choices[0].message
                content = message.content
            else:
                assert fake is not None
                message = fake.reply(messages)
                content = message["content"]
            record_openai_messages(memory, args.session, [message], at=now)
            print(f"assistant> {content}")
            print(
                f"  [{len(ctx.pages)} pages, {ctx.tokens} tokens, "
                f"{ctx.compression:.1f} text tokens per image token]",
                file=sys.stderr,
            )
            if fake is not None:  # the simulated 20 minutes pass; age as the scheduler would
                clock += timedelta(minutes=20)
                memory.age(now=clock)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
