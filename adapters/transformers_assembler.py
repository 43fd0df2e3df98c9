"""From an assembled context to what a local decoder takes: ``inputs_embeds`` and friends.

The memory message (system prompt, the memory intro, then each page's caption and image) comes
first, recent turns and the new user message follow, all through the model's chat template
(a plain ``User:`` / ``Assistant:`` layout where the model has none). Each image placeholder is
expanded to exactly as many tokens as the page's cached features have rows, the model's own
input embeddings and placeholder mask put the features in place, and models with 3-D rope
positions (Qwen2.5-VL) get them from their own ``get_rope_index``.

Assembly reads the visual-token cache the aging pass filled; a page it did not cache (shown
fainter than stored under a tight budget, or encoded by another model) is encoded on the spot.
Pages and, per prefix key, the prefix's embeddings and rope positions are also kept in process,
so a request whose memory did not change embeds only its new tokens.
"""

from __future__ import annotations

import hashlib
import inspect
import io
import json
import logging
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from PIL import Image

from optical_memory import AssembledContext, MemoryManager, PageSegment, UnknownSession
from optical_memory.errors import InvalidConfiguration, MissingExtra

try:
    import torch
except ImportError as exc:
    raise MissingExtra("optical_memory.adapters.transformers_assembler", "hf", exc.name) from exc

from ._framing import FramedMessage, frame
from .transformers_encoder import PageFeatures, TransformersEncoder

log = logging.getLogger("optical_memory.adapters.transformers")

PLAIN_TEMPLATE = (
    "{%- if bos_token %}{{ bos_token }}{% endif -%}"
    "{%- for message in messages -%}"
    "{%- if message['role'] == 'user' %}User: {% elif message['role'] == 'assistant' %}"
    "Assistant: {% elif message['role'] == 'tool' %}Tool: {% endif -%}"
    "{%- if message['content'] is string %}{{ message['content'] }}{% else -%}"
    "{%- for part in message['content'] -%}"
    "{%- if part['type'] == 'image' %}@IMAGE@{% else %}{{ part['text'] }}{% endif -%}"
    "{%- endfor -%}{%- endif -%}"
    "{%- if message['role'] == 'assistant' and eos_token %}{{ eos_token }}{% endif -%}"
    "{{ '\\n\\n' }}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt %}Assistant:{% endif -%}"
)
"""For models without a chat template (DeepSeek-OCR-2): DeepSeek-style ``User:`` /
``Assistant:`` turns, images as the processor's image token (``@IMAGE@`` is replaced)."""


def plain_template(image_token: str) -> str:
    """:data:`PLAIN_TEMPLATE` with the model's image token written in."""
    return PLAIN_TEMPLATE.replace("@IMAGE@", image_token)


@dataclass
class LocalInputs:
    """One request for a local decoder, ready for ``model.forward`` or ``model.generate``.

    ``prefix_length`` tokens (system prompt and memory pages) form a prefix whose KV cache can
    be reused while ``prefix_key`` stays the same (0 when the prompt has no such prefix).
    """

    input_ids: torch.Tensor  # (1, L), image placeholders expanded
    inputs_embeds: torch.Tensor  # (1, L, hidden), page features in place
    attention_mask: torch.Tensor  # (1, L)
    position_ids: torch.Tensor | None  # (3, 1, L) for 3-D rope models, else None
    prefix_length: int
    prefix_key: str | None
    memory_key: str = ""  # the pages shown (ids, tiers, images) and the encoder
    pages: tuple[PageSegment, ...] = ()
    page_rows: tuple[int, ...] = ()
    encoded_on_request: int = 0  # pages that were neither in the store nor in process
    context: AssembledContext | None = field(default=None, repr=False)
    render: Callable[[], str] | None = field(default=None, repr=False)

    @property
    def length(self) -> int:
        return int(self.input_ids.shape[1])

    @property
    def prompt(self) -> str:
        """The template's text with one image placeholder per page (for logs and checks)."""
        return self.render() if self.render is not None else ""

    def model_kwargs(self, start: int = 0, stop: int | None = None) -> dict[str, Any]:
        """Keyword arguments for ``model(...)`` over tokens ``start:stop``; the attention
        mask always covers everything before ``stop`` (the cached prefix included)."""
        stop = self.length if stop is None else stop
        kwargs: dict[str, Any] = {
            "inputs_embeds": self.inputs_embeds[:, start:stop],
            "attention_mask": self.attention_mask[:, :stop],
        }
        if self.position_ids is not None:
            kwargs["position_ids"] = self.position_ids[..., start:stop]
        return kwargs

    def generate_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for ``model.generate(...)`` over the whole prompt."""
        kwargs = {
            "input_ids": self.input_ids,
            "inputs_embeds": self.inputs_embeds,
            "attention_mask": self.attention_mask,
        }
        if self.position_ids is not None:
            kwargs["position_ids"] = self.position_ids
        return kwargs


@dataclass(frozen=True)
class _PrefixMemo:
    """What a prefix became last time: page rows, embeddings and rope positions."""

    rows: tuple[int, ...]
    embeds: torch.Tensor
    positions: torch.Tensor | None


class LocalAssembler:
    """Builds :class:`LocalInputs` for a session from its memory and a new user message.

    Args:
        memory: the memory to assemble from (its aging pass should use ``encoder``).
        encoder: the model that reads the prompt, wrapped as a :class:`TransformersEncoder`.
        system_prompt: text put first, before the memory pages (part of the reusable prefix).
        chat_template: overrides the processor's / tokenizer's template.
        sanitize: encode control tokens found in turns as plain text (so stored text cannot
            open a new message or fake an image placeholder); needs a fast tokenizer.
        feature_cache_size: decoded (or encoded on the spot) pages kept in process, so that
            consecutive requests neither read nor decode them again.
    """

    def __init__(
        self,
        memory: MemoryManager,
        encoder: TransformersEncoder,
        *,
        system_prompt: str | None = None,
        chat_template: str | None = None,
        sanitize: bool = True,
        feature_cache_size: int = 16,
    ) -> None:
        self.memory = memory
        self.encoder = encoder
        self.system_prompt = system_prompt
        self.sanitize = sanitize
        proc = encoder.processor
        self.tokenizer = proc.tokenizer
        cfg = encoder.model.config
        token_id = getattr(proc, "image_token_id", None)
        self.image_token_id = int(token_id if token_id is not None else cfg.image_token_id)
        self.image_token = str(
            getattr(proc, "image_token", None)
            or self.tokenizer.convert_ids_to_tokens(self.image_token_id)
        )
        self.chat_template = (
            chat_template
            or getattr(proc, "chat_template", None)
            or getattr(self.tokenizer, "chat_template", None)
            or plain_template(self.image_token)
        )
        self._features: OrderedDict[tuple[int, str, str, bytes], PageFeatures] = OrderedDict()
        self._feature_cache_size = feature_cache_size
        self._prefix_ids: OrderedDict[str, list[int]] = OrderedDict()
        self._prefix_memo: OrderedDict[str, _PrefixMemo] = OrderedDict()
        self._prefix_memo_size = 2
        self.prefix_hits = 0  # requests whose prefix embeddings were reused
        base = getattr(encoder.model, "model", encoder.model)
        self._base = base
        self._rope_index = getattr(base, "get_rope_index", None)
        self._rope_args = (
            set(inspect.signature(self._rope_index).parameters) if self._rope_index else set()
        )

    # -- page features -----------------------------------------------------------------------------

    def page_features(
        self, page: PageSegment, *, use_cache: bool = True
    ) -> tuple[PageFeatures, bool]:
        """A page's features and whether they had to be encoded now: from process memory,
        else from the store's cache, else encoded (and kept in process)."""
        if not use_cache:
            return self._encode(page), True
        key = (page.page_id, page.tier, self.encoder.key, hashlib.sha256(page.png).digest())
        hit = self._features.get(key)
        if hit is not None:
            self._features.move_to_end(key)
            return hit, False
        cached = self.memory.visual_tokens(page.page_id, page.tier, self.encoder.key)
        feats = self.encoder.decode(cached) if cached is not None else self._encode(page)
        self._features[key] = feats
        while len(self._features) > self._feature_cache_size:
            self._features.popitem(last=False)
        return feats, cached is None

    def _encode(self, page: PageSegment) -> PageFeatures:
        with Image.open(io.BytesIO(page.png)) as im:
            return self.encoder.features(im)

    # -- messages ------------------------------------------------------------------------------------

    def messages(
        self, ctx: AssembledContext | None, message: str | None
    ) -> tuple[list[dict[str, Any]], int]:
        """Template messages for the prompt, and how many of them form the reusable prefix."""
        framed = frame(ctx, memory_role="system") if ctx is not None else []
        out: list[dict[str, Any]] = []
        prefix = 0
        head = f"{self.system_prompt}\n\n" if self.system_prompt else ""
        if framed and framed[0].is_memory:
            parts: list[dict[str, Any]] = []
            if head:
                parts.append({"type": "text", "text": head})
            for part in framed[0].parts:
                if part.page is not None:
                    parts.append({"type": "image"})
                    parts.append({"type": "text", "text": "\n"})
                else:
                    parts.append({"type": "text", "text": f"{part.text}\n"})
            out.append({"role": "system", "content": parts})
            framed = framed[1:]
            prefix = 1
        elif self.system_prompt:
            out.append({"role": "system", "content": self.system_prompt})
            prefix = 1
        out.extend(_turn_message(m) for m in framed)
        if message is not None:
            out.append({"role": "user", "content": message})
        return out, prefix

    def _ids(self, messages: list[dict[str, Any]], *, generation_prompt: bool) -> list[int]:
        kwargs: dict[str, Any] = {
            "chat_template": self.chat_template,
            "tokenize": True,
            "add_generation_prompt": generation_prompt,
        }
        if self.sanitize:
            kwargs["sanitize_control_tokens"] = True
        out = self.tokenizer.apply_chat_template(messages, **kwargs)
        ids = out["input_ids"] if isinstance(out, Mapping) else out
        return [int(i) for i in ids]

    def render(self, messages: list[dict[str, Any]], *, generation_prompt: bool = True) -> str:
        """The template's text (one image placeholder per page), for logs and checks."""
        return str(
            self.tokenizer.apply_chat_template(
                messages,
                chat_template=self.chat_template,
                tokenize=False,
                add_generation_prompt=generation_prompt,
            )
        )

    # -- the request ---------------------------------------------------------------------------------

    def context(
        self, session_id: str, message: str | None, *, budget: int, now: datetime | None = None
    ) -> AssembledContext | None:
        """The session's budgeted context, leaving room for the new message and the system
        prompt; None for a session with nothing stored yet."""
        reserve = 0
        if message is not None:
            reserve += self.memory.count_tokens("user", message)
        if self.system_prompt:
            reserve += self.memory.count_tokens("system", self.system_prompt)
        try:
            return self.memory.assemble(  # a text chat template: images as labels
                session_id, budget=max(1, budget - reserve), now=now, newest_images=False
            )
        except UnknownSession:
            return None

    @torch.no_grad()
    def build(
        self,
        session_id: str,
        message: str | None,
        *,
        budget: int = 4096,
        now: datetime | None = None,
        context: AssembledContext | None = None,
        use_cache: bool = True,
    ) -> LocalInputs:
        """Inputs for one request: the session's memory, then ``message`` from the user.

        ``use_cache=False`` ignores the visual-token cache and encodes every page now (the
        slow path, for comparison).
        """
        ctx = (
            context
            if context is not None
            else self.context(session_id, message, budget=budget, now=now)
        )
        msgs, n_prefix = self.messages(ctx, message)
        pages = tuple(ctx.pages) if ctx is not None else ()
        ids = self._ids(msgs, generation_prompt=True)
        prefix_ids: list[int] | None = None
        if n_prefix and len(msgs) > n_prefix:
            prefix_ids = self._prefix_token_ids(msgs[:n_prefix])
            if prefix_ids is not None and ids[: len(prefix_ids)] != prefix_ids:
                prefix_ids = None

        slots = [i for i, t in enumerate(ids) if t == self.image_token_id]
        if len(slots) != len(pages):
            raise InvalidConfiguration(
                f"the chat template wrote {len(slots)} image placeholders for {len(pages)} pages"
            )
        in_prefix = 0
        prefix_key = None
        pages_hash = self._pages_hash(pages)
        if prefix_ids is not None:
            in_prefix = sum(1 for s in slots if s < len(prefix_ids))
            prefix_hash = (
                pages_hash if in_prefix == len(pages) else self._pages_hash(pages[:in_prefix])
            )
            prefix_key = self._prefix_key(prefix_hash, prefix_ids)
        memo = None
        if use_cache and prefix_key is not None and in_prefix == len(pages):
            memo = self._prefix_memo.get(prefix_key)
            if memo is not None:
                self._prefix_memo.move_to_end(prefix_key)
                self.prefix_hits += 1

        feats: list[PageFeatures] = []
        fresh = 0
        if memo is None:
            for page in pages:
                f, new = self.page_features(page, use_cache=use_cache)
                feats.append(f)
                fresh += int(new)
        rows = list(memo.rows) if memo is not None else [f.rows for f in feats]

        expanded: list[int] = []
        last = 0
        for slot, n in zip(slots, rows, strict=True):
            expanded.extend(ids[last:slot])
            expanded.extend([self.image_token_id] * n)
            last = slot + 1
        expanded.extend(ids[last:])
        prefix_len = 0
        if prefix_ids is not None:
            prefix_len = len(prefix_ids) + sum(r - 1 for r in rows[:in_prefix])

        device = self.encoder.device
        input_ids = torch.tensor([expanded], dtype=torch.long, device=device)
        attention_mask = torch.ones_like(input_ids)
        embed = self.encoder.model.get_input_embeddings()
        if memo is not None:  # the prefix as last time; only the new tokens are embedded
            inputs_embeds = torch.cat([memo.embeds, embed(input_ids[:, prefix_len:])], dim=1)
            position_ids = self._suffix_positions(memo.positions, prefix_len, len(expanded))
        else:
            inputs_embeds = embed(input_ids)
            if feats:
                image_features = torch.cat([f.features for f in feats], dim=0).to(
                    inputs_embeds.device, inputs_embeds.dtype
                )
                mask = self._placeholder_mask(input_ids, inputs_embeds, image_features)
                inputs_embeds = inputs_embeds.masked_scatter(mask, image_features)
            position_ids = self._positions(input_ids, attention_mask, feats, [expanded])
            if use_cache and prefix_key is not None and in_prefix == len(pages):
                self._remember_prefix(prefix_key, rows, inputs_embeds, position_ids, prefix_len)
        return LocalInputs(
            input_ids=input_ids,
            inputs_embeds=inputs_embeds,
            attention_mask=attention_mask,
            position_ids=position_ids,
            prefix_length=prefix_len,
            prefix_key=prefix_key,
            memory_key=pages_hash.hexdigest(),
            pages=pages,
            page_rows=tuple(rows),
            encoded_on_request=fresh,
            context=ctx,
            render=lambda: self.render(msgs),
        )

    def clear(self) -> None:
        """Drop what is kept in process (page features, prefix token ids and embeddings)."""
        self._features.clear()
        self._prefix_ids.clear()
        self._prefix_memo.clear()

    def _remember_prefix(
        self,
        key: str,
        rows: list[int],
        inputs_embeds: torch.Tensor,
        position_ids: torch.Tensor | None,
        prefix_len: int,
    ) -> None:
        positions = None
        if position_ids is not None:
            positions = position_ids[..., :prefix_len].clone()
        self._prefix_memo[key] = _PrefixMemo(
            tuple(rows), inputs_embeds[:, :prefix_len].clone(), positions
        )
        while len(self._prefix_memo) > self._prefix_memo_size:
            self._prefix_memo.popitem(last=False)

    def _suffix_positions(
        self, prefix: torch.Tensor | None, prefix_len: int, length: int
    ) -> torch.Tensor | None:
        """Positions after a remembered prefix: text continues from the prefix's largest
        position, the way the model's own generation step continues (``rope_deltas``)."""
        if prefix is None:
            return None
        start = int(prefix.max()) + 1 if prefix_len else 0
        text = torch.arange(start, start + length - prefix_len, device=prefix.device)
        text = text.view(1, 1, -1).expand(prefix.shape[0], prefix.shape[1], -1)
        return torch.cat([prefix, text.to(prefix.dtype)], dim=-1)

    def _prefix_token_ids(self, messages: list[dict[str, Any]]) -> list[int] | None:
        """Token ids of the prefix messages alone (memoised: they repeat every turn)."""
        memo = hashlib.sha256(json.dumps(messages, sort_keys=True).encode()).hexdigest()
        ids = self._prefix_ids.get(memo)
        if ids is None:
            try:
                ids = self._ids(messages, generation_prompt=False)
            except Exception as exc:  # a template that needs a user turn: no reusable prefix
                log.debug("no reusable prefix: %s", exc)
                return None
            self._prefix_ids[memo] = ids
            while len(self._prefix_ids) > 8:
                self._prefix_ids.popitem(last=False)
        else:
            self._prefix_ids.move_to_end(memo)
        return ids

    def _pages_hash(self, pages: Sequence[PageSegment]) -> Any:
        """A hash of the encoder and the pages: ids, tiers and image digests."""
        h = hashlib.sha256(self.encoder.key.encode())
        for p in pages:
            h.update(f"|{p.page_id}:{p.tier}:".encode())
            h.update(hashlib.sha256(p.png).digest())
        return h

    def _prefix_key(self, pages_hash: Any, prefix: list[int]) -> str:
        """The pages and the encoder (their :meth:`_pages_hash`), plus the prefix tokens
        themselves (captions, system prompt, template): any change gives another key."""
        h = pages_hash.copy()
        h.update(b"|" + torch.tensor(prefix, dtype=torch.int64).numpy().tobytes())
        return h.hexdigest()

    def _placeholder_mask(
        self, input_ids: torch.Tensor, inputs_embeds: torch.Tensor, features: torch.Tensor
    ) -> torch.Tensor:
        """The model's own image-token mask (it also checks the counts match)."""
        get_mask = getattr(self._base, "get_placeholder_mask", None)
        if get_mask is None:
            mask = (input_ids == self.image_token_id).unsqueeze(-1)
            return mask.expand_as(inputs_embeds)
        mask = get_mask(input_ids, inputs_embeds=inputs_embeds, image_features=features)
        return mask[0] if isinstance(mask, tuple) else mask

    def _positions(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        feats: list[PageFeatures],
        ids: list[list[int]],
    ) -> torch.Tensor | None:
        """3-D rope positions from the model's own ``get_rope_index`` (None where 1-D)."""
        if self._rope_index is None:
            return None
        grids = [f.image_grid_thw for f in feats]
        kwargs: dict[str, Any] = {"attention_mask": attention_mask}
        if grids:
            if any(g is None for g in grids):
                raise InvalidConfiguration(
                    "cached features lack the image grid this model's rope needs"
                )
            kwargs["image_grid_thw"] = torch.cat(grids, dim=0).to(input_ids.device)
        if "mm_token_type_ids" in self._rope_args:
            types = self.encoder.processor.create_mm_token_type_ids(ids)
            kwargs["mm_token_type_ids"] = torch.tensor(types, device=input_ids.device)
        kwargs = {k: v for k, v in kwargs.items() if k in self._rope_args}
        position_ids, _ = self._rope_index(input_ids, **kwargs)
        return position_ids


def _turn_message(m: FramedMessage) -> dict[str, Any]:
    """A recent turn as a plain template message (tool calls spelled out as text)."""
    content = m.content
    if m.tool_calls:
        calls = "\n".join(f"[tool call {c.name}({c.arguments_json()})]" for c in m.tool_calls)
        content = f"{content}\n{calls}" if content else calls
    return {"role": m.role, "content": content}
