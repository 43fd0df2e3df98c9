"""A LangChain agent whose old turns fade into page images.

``create_agent`` with :class:`OpticalMemoryMiddleware`: every message is stored once in
optical-memory, and each model call sees recent turns as text and older ones as page images,
within a token budget. The LangGraph checkpointer keeps only text.

    pip install langchain-openai
    export OPENAI_BASE_URL=http://127.0.0.1:8000/v1   # omit for api.openai.com
    export OPENAI_API_KEY=sk-...                       # any string for most local servers
    export OPENAI_MODEL=gpt-4o-mini
    python examples/langchain_agent.py --session demo

Type a message per line; an empty line or Ctrl-D ends the chat.
"""

from __future__ import annotations

import argparse
import os
import sys
from datetime import UTC, datetime

from optical_memory import MemoryManager, target_names


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog="Environment: OPENAI_API_KEY, OPENAI_BASE_URL, OPENAI_MODEL (default gpt-4o-mini).",
    )
    p.add_argument("--db", default=None, help="SQLAlchemy URL or file (default: the user data dir)")
    p.add_argument("--session", default="langchain-demo", help="thread id = memory session")
    p.add_argument("--budget", type=int, default=4096, help="prompt tokens for the conversation")
    p.add_argument(
        "--target",
        default="openai",
        choices=target_names(),
        help="the model reading the prompt: decides page sizes and image costs",
    )
    p.add_argument(
        "--checkpoints",
        default=":memory:",
        help="SQLite file for LangGraph checkpoints (default: in memory)",
    )
    p.add_argument("--age-every", type=float, default=60.0, help="seconds between aging passes")
    return p.parse_args(argv)


def utc_now() -> str:
    """Current date and time in UTC."""
    return datetime.now(UTC).isoformat(timespec="seconds")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        from langchain_openai import ChatOpenAI
    except ImportError:
        print("This example needs langchain-openai: pip install langchain-openai", file=sys.stderr)
        return 1
    import sqlite3

    from langchain.agents import create_agent
    from langchain_core.tools import tool
    from langgraph.checkpoint.sqlite import SqliteSaver

    from optical_memory.adapters.langchain import OpticalMemoryMiddleware

    model = ChatOpenAI(
        model=os.environ.get("OPENAI_MODEL", "gpt-4o-mini"),
        api_key=os.environ.get("OPENAI_API_KEY", "not-needed-for-local-servers"),
        base_url=os.environ.get("OPENAI_BASE_URL") or None,
    )
    with MemoryManager(args.db, target=args.target) as memory:
        memory.start_scheduler(every=args.age_every)
        conn = sqlite3.connect(args.checkpoints, check_same_thread=False)
        agent = create_agent(
            model,
            tools=[tool(utc_now)],
            system_prompt="You are a helpful assistant with a long memory.",
            middleware=[OpticalMemoryMiddleware(memory, budget=args.budget)],
            checkpointer=SqliteSaver(conn),
        )
        config = {"configurable": {"thread_id": args.session}}
        for line in sys.stdin:
            text = line.strip()
            if not text:
                break
            result = agent.invoke({"messages": [{"role": "user", "content": text}]}, config)
            print(f"assistant> {result['messages'][-1].text}")
        conn.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
