"""Text token counting: approximate by default, pluggable.

The default mirrors langchain-core's ``count_tokens_approximately`` (4 characters a token over
role and content, plus 3 per message) without importing it, so the core stays framework-free.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable
from typing import Any

CHARS_PER_TOKEN = 4.0
EXTRA_TOKENS_PER_MESSAGE = 3


TokenCounter = Callable[[str, str], int]
"""``counter(role, content) -> tokens`` for one message."""


def approximate_tokens(role: str, content: str) -> int:
    """Tokens of one message, the way langchain-core approximates them."""
    return math.ceil((len(content) + len(role)) / CHARS_PER_TOKEN) + EXTRA_TOKENS_PER_MESSAGE


def make_counter(counter: TokenCounter | Callable[[str], int] | Any | None) -> TokenCounter:
    """Normalise what users pass: None, ``f(role, content)``, ``f(text)`` or a tokenizer."""
    if counter is None:
        return approximate_tokens
    if hasattr(counter, "encode"):
        return _tokenizer_counter(counter)  # a Hugging Face or tiktoken tokenizer
    if not callable(counter):
        raise TypeError("token_counter must be f(role, content), f(text) or have .encode(text)")
    try:
        n_params = len(inspect.signature(counter).parameters)
    except (TypeError, ValueError):
        n_params = 2
    if n_params == 1:

        def by_text(role: str, content: str) -> int:
            return int(counter(content)) + EXTRA_TOKENS_PER_MESSAGE

        return by_text
    return counter


def _tokenizer_counter(tokenizer: Any) -> TokenCounter:
    def count(role: str, content: str) -> int:
        ids = tokenizer.encode(content)
        if isinstance(ids, dict):
            ids = ids["input_ids"]
        return len(ids) + EXTRA_TOKENS_PER_MESSAGE

    return count
