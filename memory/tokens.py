"""Text token counting: approximate by default, pluggable.

The default mirrors langchain-core's ``count_tokens_approximately`` (4 characters a token over
role and content, plus 3 per message) without importing it, so the core stays framework-free.
"""

from __future__ import annotations

import inspect
import math
import numbers
from collections.abc import Callable
from typing import Any

from .errors import InvalidTokenCounter

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
        return _checked(_tokenizer_counter(counter))  # a Hugging Face or tiktoken tokenizer
    if not callable(counter):
        raise InvalidTokenCounter(
            "token_counter must be f(role, content), f(text) or have .encode(text)"
        )
    try:
        n_params = len(inspect.signature(counter).parameters)
    except (TypeError, ValueError):
        n_params = 2
    if n_params == 1:

        def by_text(role: str, content: str) -> int:
            return _count_of(counter(content)) + EXTRA_TOKENS_PER_MESSAGE

        return by_text
    return _checked(counter)


MAX_TOKENS = 2**31 - 1  # what the store's token columns hold


def _count_of(value: object) -> int:
    """A counter's answer as a token count, or a typed error saying what came back."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise InvalidTokenCounter(
            f"the token counter returned {type(value).__name__} {value!r:.40}; it must return "
            "a non-negative int"
        )
    if not math.isfinite(value) or not 0 <= value <= MAX_TOKENS:
        raise InvalidTokenCounter(
            f"the token counter returned {value!r:.40}; a token count is an int from 0 to "
            f"{MAX_TOKENS:,}"
        )
    return int(value)


def _checked(counter: Callable[[str, str], Any]) -> TokenCounter:
    def count(role: str, content: str) -> int:
        return _count_of(counter(role, content))

    return count


def _tokenizer_counter(tokenizer: Any) -> TokenCounter:
    def count(role: str, content: str) -> int:
        ids = tokenizer.encode(content)
        if isinstance(ids, dict):
            ids = ids["input_ids"]
        return len(ids) + EXTRA_TOKENS_PER_MESSAGE

    return count
