"""A LangChain agent whose old turns fade into page images.

``create_agent`` with :class:`OpticalMemoryMiddleware`: every message is stored once in
optical-memory, and each model call sees recent turns as text and older ones as page images,
within a token budget. The LangGraph checkpointer keeps only text.

    pip install "optical-memory[langchain]"
    python examples/langchain_agent.py < questions.txt     # offline: a recording fake model

    export OPENAI_BASE_URL=http://127.0.0.1:8000/v1   # omit for api.openai.com
    export OPENAI_API_KEY=sk-...                       # any string for most local servers
    python examples/langchain_agent.py --model gpt-4.1-mini --target gpt-4.1-mini

Type a message per line; an empty line or Ctrl-D ends the chat. Without ``--model`` nothing
leaves the machine: a langchain-core fake chat model answers with what it was shown, and a
simulated clock moves 20 minutes per message (aging after each), so pages appear quickly.
"""

from __future__ import annotations

import argparse
import os
import sys
from datetime import UTC, datetime, timedelta
from typing import Any

from optical_memory import MemoryManager, target_names


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog="Environment (with --model): OPENAI_API_KEY, OPENAI_BASE_URL.",
    )
    p.add_argument(
        "--model",
        default=None,
        help="chat model for langchain-openai's ChatOpenAI (default: an offline recording fake)",
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


def offline_model() -> Any:
    """langchain-core's fake chat model, answering with what each request showed it."""
    from langchain_core.language_models.fake_chat_models import GenericFakeChatModel
    from langchain_core.messages import AIMessage
    from langchain_core.outputs import ChatGeneration, ChatResult

    class RecordingModel(GenericFakeChatModel):
        received: list[list[Any]] = []

        def _generate(self, messages: list[Any], *args: Any, **kwargs: Any) -> ChatResult:
            self.received.append(list(messages))
            images = sum(
                1
                for m in messages
                if isinstance(m.content, list)
                for b in m.content
                if isinstance(b, dict) and b.get("type") in ("image", "image_url")
            )
            text = f"(offline model) I was shown {len(messages)} messages and {images} page images."
            return ChatResult(generations=[ChatGeneration(message=AIMessage(text))])

        def bind_tools(self, tools: Any, **kwargs: Any) -> Any:
            return self

    return RecordingModel(messages=iter(()), received=[])


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    import sqlite3

    from langchain.agents import create_agent
    from langchain_core.tools import tool
    from langgraph.checkpoint.sqlite import SqliteSaver

    from optical_memory.adapters.langchain import OpticalMemoryMiddleware

    if args.model is None:
        model = offline_model()
    else:
        try:
            from langchain_openai import ChatOpenAI
        except ImportError:
            print('--model needs langchain-openai: pip install "optical-memory[langchain]"')
            return 1
        model = ChatOpenAI(
            model=args.model,
            api_key=os.environ.get("OPENAI_API_KEY", "not-needed-for-local-servers"),
            base_url=os.environ.get("OPENAI_BASE_URL") or None,
        )
    clock = [datetime(2025, 1, 1, 9, 0, tzinfo=UTC)]
    offline = args.model is None
    with MemoryManager(args.db, target=args.target) as memory:
        if not offline:
            memory.start_scheduler(every=args.age_every)
        conn = sqlite3.connect(args.checkpoints, check_same_thread=False)
        middleware = OpticalMemoryMiddleware(
            memory, budget=args.budget, now=(lambda: clock[0]) if offline else None
        )
        agent = create_agent(
            model,
            tools=[tool(utc_now)],
            system_prompt="You are a helpful assistant with a long memory.",
            middleware=[middleware],
            checkpointer=SqliteSaver(conn),
        )
        config = {"configurable": {"thread_id": args.session}}
        for line in sys.stdin:
            text = line.strip()
            if not text:
                break
            result = agent.invoke({"messages": [{"role": "user", "content": text}]}, config)
            print(f"assistant> {result['messages'][-1].text}")
            if offline:  # the simulated 20 minutes pass; age as the scheduler would
                clock[0] += timedelta(minutes=20)
                memory.age(now=clock[0])
        conn.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
