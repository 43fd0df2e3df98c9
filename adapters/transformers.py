"""Optical memory for local transformers VLMs: cached visual tokens spliced into ``inputs_embeds``.

    from optical_memory import AgingPolicy, MemoryManager
    from optical_memory.adapters.transformers import LocalVLM, TransformersEncoder

    encoder = TransformersEncoder.from_pretrained("/models/DeepSeek-OCR-2")
    mm = MemoryManager("sqlite:///chat.db", target=encoder.target, encoder=encoder)
    chat = LocalVLM(mm, encoder, system_prompt="You are a helpful assistant.")
    reply = chat.generate("chat-1", "What did we decide about the tiles?")

The aging pass encodes each page once, when its tier changes (:class:`TransformersEncoder`);
a request reads those features, expands each image placeholder to as many tokens as the page
has feature rows and scatters the features into the embeddings (:class:`LocalAssembler`).
Two KV caches spare the prefill: each session's last prompt and reply, cut back to what the
next prompt repeats (:class:`ConversationCache`), and, for a session's first request after a
change, the system-prompt-plus-pages prefix (:class:`PrefixCache`). Both are dropped when a
page or a tier changes.

Qwen2.5-VL's stock processor also builds a video processor, which needs torchvision; without
it, load the processor another way and pass ``processor=`` to ``from_pretrained``.
"""

from __future__ import annotations

import os
from datetime import datetime
from typing import Any

from optical_memory import InvalidBudget, MemoryManager
from optical_memory.errors import MissingExtra

try:
    import torch
except ImportError as exc:
    raise MissingExtra("optical_memory.adapters.transformers", "hf", exc.name) from exc

from .transformers_assembler import PLAIN_TEMPLATE, LocalAssembler, LocalInputs, plain_template
from .transformers_encoder import PageFeatures, TransformersEncoder
from .transformers_prefix import ConversationCache, ConversationState, PrefixCache

__all__ = [
    "PLAIN_TEMPLATE",
    "ConversationCache",
    "ConversationState",
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
        conversation_cache: where each session's last KV cache lives (two sessions by
            default); pass ``ConversationCache(max_sessions=...)`` to serve more at once.
        chat_template, sanitize: see :class:`LocalAssembler`.

    The in-process caches hold keys and values computed from stored turns:
    :meth:`forget` deletes a session from the memory and from them.
    """

    def __init__(
        self,
        memory: MemoryManager,
        encoder: TransformersEncoder,
        *,
        system_prompt: str | None = None,
        budget: int = 4096,
        prefix_cache: PrefixCache | None = None,
        conversation_cache: ConversationCache | None = None,
        chat_template: str | None = None,
        sanitize: bool = True,
    ) -> None:
        if isinstance(budget, bool) or not isinstance(budget, int) or budget <= 0:
            raise InvalidBudget(f"budget must be a positive int of tokens, got {budget!r:.40}")
        self.memory = memory
        self.encoder = encoder
        self.model = encoder.model
        self.budget = budget
        self.prefix_cache = prefix_cache if prefix_cache is not None else PrefixCache()
        self.conversations = (
            conversation_cache if conversation_cache is not None else ConversationCache()
        )
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
        self.prefix_cache.put(inputs.prefix_key, n, out.cache)
        return self.prefix_cache.get(inputs.prefix_key, n)

    def past(self, inputs: LocalInputs, session_id: str | None = None) -> tuple[Any | None, int]:
        """A KV cache to start ``inputs`` from, and how many of its tokens it covers.

        The session's last request (its prompt and reply), cut back to what ``inputs``
        repeats, where the pages are the same and that covers more than the prefix; else a
        copy of the prefix's cache; else nothing (0). The cache is the caller's to extend.
        """
        if session_id is not None:
            taken = self.conversations.take(
                session_id,
                inputs.memory_key,
                inputs.input_ids[0],
                min_length=inputs.prefix_length + 1,
            )
            if taken is not None:
                return taken
        past = self.prefix_past(inputs)
        return (past, inputs.prefix_length) if past is not None else (None, 0)

    def _keep(self, session_id: str | None, inputs: LocalInputs, ids: Any, past: Any) -> None:
        """Keep ``past`` (covering ``ids``, 1-D) as the session's conversation cache."""
        if session_id is None or past is None:
            return
        n = past.get_seq_length()
        if n <= ids.shape[0]:
            self.conversations.put(
                session_id, ConversationState(inputs.memory_key, ids[:n].clone(), past)
            )

    @torch.no_grad()
    def forward(
        self,
        inputs: LocalInputs,
        *,
        reuse_prefix: bool = True,
        session_id: str | None = None,
        **kwargs: Any,
    ) -> Any:
        """One forward pass (prefill); the logits cover only the tokens computed.

        With ``reuse_prefix``, the first ``inputs.prefix_length`` tokens come from the prefix
        cache, or, given ``session_id``, as many as its last request shares with this one
        (:meth:`past`); the resulting cache is kept as the session's conversation cache.
        """
        past, start = self.past(inputs, session_id) if reuse_prefix else (None, 0)
        # transformers 5.x names the KV cache ``cache`` (``past_key_values`` goes in 5.40)
        out = self.model(**inputs.model_kwargs(start), cache=past, use_cache=True, **kwargs)
        self._keep(session_id, inputs, inputs.input_ids[0], out.cache)
        return out

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
        """Answer ``message`` from the session's memory; store the message and the reply.

        With ``reuse_prefix`` the prefill starts from the session's last request (or the
        memory prefix), and the KV cache of this prompt and reply is kept for the next turn.
        """
        inputs = self.inputs(session_id, message, now=now)
        past, _ = self.past(inputs, session_id) if reuse_prefix else (None, 0)
        kwargs = inputs.generate_kwargs()
        if past is not None:
            kwargs["cache"] = past
        gen = self.model.generation_config
        if (
            gen.pad_token_id is None
            and gen.eos_token_id is not None
            and "pad_token_id" not in generate_kwargs
        ):
            eos = gen.eos_token_id
            generate_kwargs["pad_token_id"] = eos[0] if isinstance(eos, list) else eos
        generate_kwargs["return_dict_in_generate"] = True
        out = self.model.generate(**kwargs, max_new_tokens=max_new_tokens, **generate_kwargs)
        sequence = out.sequences[0]  # the prompt ids first, then the new tokens
        reply = self.tokenizer.decode(sequence[inputs.length :], skip_special_tokens=True).strip()
        if reuse_prefix:
            self._keep(session_id, inputs, sequence, out.cache)
        if record:
            self.memory.add_turns(
                session_id,
                [
                    {"role": "user", "content": message, "at": now},
                    {"role": "assistant", "content": reply, "at": now},
                ],
            )
        return reply

    def forget(self, session_id: str) -> int:
        """Delete the session from the memory (:meth:`MemoryManager.forget`) and every KV
        cache and page feature kept in process; returns the turns deleted."""
        n = self.memory.forget(session_id)
        self.conversations.discard(session_id)
        self.prefix_cache.clear()
        self.assembler.clear()
        return n
