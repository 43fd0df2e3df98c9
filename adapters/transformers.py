"""Optical memory for local transformers VLMs: cached visual tokens spliced into ``inputs_embeds``.

    from optical_memory import AgingPolicy, MemoryManager
    from optical_memory.adapters.transformers import LocalVLM, TransformersEncoder

    encoder = TransformersEncoder.from_pretrained("/models/DeepSeek-OCR-2")
    mm = MemoryManager("sqlite:///chat.db", target=encoder.target, encoder=encoder)
    chat = LocalVLM(mm, encoder, system_prompt="You are a helpful assistant.")
    reply = chat.generate("chat-1", "What did we decide about the tiles?")

The aging pass encodes each page once, when its tier changes (:class:`TransformersEncoder`);
a request reads those features, expands each image placeholder to as many tokens as the page
has feature rows and scatters the features into the embeddings (:class:`LocalAssembler`); the
KV cache of the system-prompt-plus-pages prefix is reused until a page or tier changes
(:class:`PrefixCache`).

Qwen2.5-VL's stock processor also builds a video processor, which needs torchvision; without
it, load the processor another way and pass ``processor=`` to ``from_pretrained``.
"""

from __future__ import annotations

import os
from datetime import datetime
from typing import Any

import torch

from optical_memory import MemoryManager

from .transformers_assembler import PLAIN_TEMPLATE, LocalAssembler, LocalInputs, plain_template
from .transformers_encoder import PageFeatures, TransformersEncoder
from .transformers_prefix import PrefixCache

__all__ = [
    "PLAIN_TEMPLATE",
    "LocalAssembler",
    "LocalInputs",
    "LocalVLM",
    "PageFeatures",
    "PrefixCache",
    "TransformersEncoder",
    "plain_template",
]


class LocalVLM:
    """Chat with a local VLM over a session's optical memory.

    Args:
        memory: where turns are stored; give it the same ``encoder`` so its aging pass caches
            visual tokens.
        encoder: the model and processor (:class:`TransformersEncoder`).
        system_prompt: first in every prompt, before the memory pages.
        budget: prompt tokens for memory plus the new message (on the memory's target).
        prefix_cache: where prefix KV caches live (a fresh two-entry cache by default).
        chat_template, sanitize: see :class:`LocalAssembler`.
    """

    def __init__(
        self,
        memory: MemoryManager,
        encoder: TransformersEncoder,
        *,
        system_prompt: str | None = None,
        budget: int = 4096,
        prefix_cache: PrefixCache | None = None,
        chat_template: str | None = None,
        sanitize: bool = True,
    ) -> None:
        self.memory = memory
        self.encoder = encoder
        self.model = encoder.model
        self.budget = budget
        self.prefix_cache = prefix_cache if prefix_cache is not None else PrefixCache()
        self.assembler = LocalAssembler(
            memory,
            encoder,
            system_prompt=system_prompt,
            chat_template=chat_template,
            sanitize=sanitize,
        )

    @classmethod
    def from_pretrained(
        cls,
        path: str | os.PathLike[str],
        memory: MemoryManager,
        *,
        dtype: torch.dtype | str = "auto",
        device: str | torch.device | None = None,
        **kwargs: Any,
    ) -> LocalVLM:
        """Load a local model directory; ``memory`` should share the returned ``.encoder``."""
        encoder = TransformersEncoder.from_pretrained(path, dtype=dtype, device=device)
        return cls(memory, encoder, **kwargs)

    @property
    def tokenizer(self) -> Any:
        return self.encoder.tokenizer

    def inputs(
        self,
        session_id: str,
        message: str | None,
        *,
        now: datetime | None = None,
        use_cache: bool = True,
    ) -> LocalInputs:
        """The request's inputs (see :meth:`LocalAssembler.build`)."""
        return self.assembler.build(
            session_id, message, budget=self.budget, now=now, use_cache=use_cache
        )

    @torch.no_grad()
    def prefix_past(self, inputs: LocalInputs) -> Any | None:
        """A private copy of the prefix's KV cache, computed on first use (None: no prefix)."""
        if not inputs.prefix_length or inputs.prefix_key is None:
            return None
        n = inputs.prefix_length
        past = self.prefix_cache.get(inputs.prefix_key, n)
        if past is not None:
            return past
        out = self.model(**inputs.model_kwargs(0, n), use_cache=True, logits_to_keep=1)
        self.prefix_cache.put(inputs.prefix_key, n, out.past_key_values)
        return self.prefix_cache.get(inputs.prefix_key, n)

    @torch.no_grad()
    def forward(self, inputs: LocalInputs, *, reuse_prefix: bool = True, **kwargs: Any) -> Any:
        """One forward pass (prefill). With ``reuse_prefix`` the logits cover only the tokens
        after the prefix (``inputs.prefix_length`` of them are served from the cache)."""
        past = self.prefix_past(inputs) if reuse_prefix else None
        start = inputs.prefix_length if past is not None else 0
        return self.model(
            **inputs.model_kwargs(start), past_key_values=past, use_cache=True, **kwargs
        )

    @torch.no_grad()
    def generate(
        self,
        session_id: str,
        message: str,
        *,
        now: datetime | None = None,
        max_new_tokens: int = 256,
        reuse_prefix: bool = True,
        record: bool = True,
        **generate_kwargs: Any,
    ) -> str:
        """Answer ``message`` from the session's memory; store the message and the reply."""
        inputs = self.inputs(session_id, message, now=now)
        past = self.prefix_past(inputs) if reuse_prefix else None
        kwargs = inputs.generate_kwargs()
        if past is not None:
            kwargs["past_key_values"] = past
        gen = self.model.generation_config
        if (
            gen.pad_token_id is None
            and gen.eos_token_id is not None
            and "pad_token_id" not in generate_kwargs
        ):
            eos = gen.eos_token_id
            generate_kwargs["pad_token_id"] = eos[0] if isinstance(eos, list) else eos
        out = self.model.generate(**kwargs, max_new_tokens=max_new_tokens, **generate_kwargs)
        new_tokens = out[0, inputs.length :]  # generate returns the prompt ids first
        reply = self.tokenizer.decode(new_tokens, skip_special_tokens=True).strip()
        if record:
            self.memory.add_turns(
                session_id,
                [
                    {"role": "user", "content": message, "at": now},
                    {"role": "assistant", "content": reply, "at": now},
                ],
            )
        return reply
