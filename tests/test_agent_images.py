"""The newest user message's images reach the model unchanged, paid for from the budget,
and stay in the archive byte-exact."""

from __future__ import annotations

import base64
import io
from datetime import UTC, datetime, timedelta

from fakes import RecordingChatModel
from langchain.agents import create_agent
from langchain_core.messages import AIMessage, HumanMessage
from langgraph.checkpoint.memory import InMemorySaver
from PIL import Image

from optical_memory import MemoryManager
from optical_memory.adapters.langchain import OpticalMemoryMiddleware, count_tokens_with_images

FILLER = "We checked the harbour tide tables against the lighthouse log once more. " * 4


def png_b64(size: tuple[int, int]) -> str:
    buf = io.BytesIO()
    Image.new("RGB", size, (200, 30, 30)).save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


def test_the_newest_user_image_reaches_the_model_unchanged(sqlite_url: str) -> None:
    memory = MemoryManager(sqlite_url, target="anthropic")
    clock = [datetime(2025, 8, 1, 9, 0, tzinfo=UTC)]
    model = RecordingChatModel(
        messages=iter(AIMessage(f"Reply {k}. {FILLER}") for k in range(20)), received=[]
    )
    budget = 2500
    mw = OpticalMemoryMiddleware(memory, budget=budget, now=lambda: clock[0], tools=False)
    agent = create_agent(model, middleware=[mw], checkpointer=InMemorySaver())
    cfg = {"configurable": {"thread_id": "img"}}
    for k in range(8):
        agent.invoke({"messages": [HumanMessage(f"Question {k}: {FILLER}")]}, cfg)
        clock[0] += timedelta(minutes=5)
    block = {"type": "image", "base64": png_b64((600, 400)), "mime_type": "image/png"}
    photo = HumanMessage([{"type": "text", "text": "What is in this photo?"}, block])
    agent.invoke({"messages": [photo]}, cfg)
    sent = model.received[-1]
    assert block in sent[-1].content  # exactly the block the user sent
    assert count_tokens_with_images(sent[1:], target="anthropic") <= budget  # image paid for
    # the image is archived with its turn, byte-exact; the next request shows it as a label
    stored = memory.turns("img")[-2]
    assert stored.content == "What is in this photo?"
    assert "omitted_blocks" not in stored.metadata
    assert [a.data for a in stored.attachments] == [base64.b64decode(block["base64"])]
    assert (stored.attachments[0].width, stored.attachments[0].height) == (600, 400)
    agent.invoke({"messages": [HumanMessage("Thanks.")]}, cfg)
    later = model.received[-1]
    assert not any(isinstance(m.content, list) and block in m.content for m in later)
    assert any("What is in this photo? [image 600×400 png]" in m.text for m in later)
    assert memory.turns("img")[-4].attachments == stored.attachments  # still there
    # graph state holds no image but the user's own (no page, no copy from the archive)
    state = agent.get_state(cfg).values["messages"]
    blocks = [b for m in state if isinstance(m.content, list) for b in m.content]
    assert [b for b in blocks if b.get("type") in ("image", "image_url")] in ([], [block])
