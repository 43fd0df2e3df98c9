"""Test doubles shared by the LangChain tests: real langchain-core classes, recording what they see."""

from __future__ import annotations

from typing import Any

from langchain_core.language_models.fake_chat_models import GenericFakeChatModel
from langchain_core.messages import BaseMessage
from langchain_core.outputs import ChatResult


class RecordingChatModel(GenericFakeChatModel):
    """langchain-core's fake chat model that also keeps every message list it was sent
    (pass ``received=[]`` so each model has its own list)."""

    received: list[list[BaseMessage]] = []

    def _generate(self, messages: list[BaseMessage], *args: Any, **kwargs: Any) -> ChatResult:
        self.received.append(list(messages))
        return super()._generate(messages, *args, **kwargs)

    def bind_tools(self, tools: Any, **kwargs: Any) -> RecordingChatModel:
        return self
