"""Visual tokens from a local transformers VLM: the encoder the aging pass caches with.

The encoder runs the model's own image processor and ``get_image_features`` and stores the
projected features (the rows that replace the image placeholders in the language model's
input) as safetensors bytes, with the image grid for models whose rope positions need it
(Qwen2.5-VL). First-class: DeepSeek-OCR-2 and Qwen2.5-VL; other transformers VLMs that follow
the same ``get_image_features`` / ``get_placeholder_mask`` convention work too.
"""

from __future__ import annotations

import hashlib
import inspect
import io
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image

from optical_memory import EncodedPage
from optical_memory.errors import InvalidConfiguration, MissingExtra

try:
    import torch
    from safetensors.torch import load as st_load
    from safetensors.torch import save as st_save
except ImportError as exc:
    raise MissingExtra("optical_memory.adapters.transformers_encoder", "hf", exc.name) from exc

LAYOUT_VERSION = "v1"
"""Part of every key: bump when the per-tier processor settings below change."""

FEATURES = "features"
IMAGE_GRID_THW = "image_grid_thw"

_TARGETS = {
    "deepseek_ocr2": "deepseek-ocr-2",
    "qwen2_5_vl": "qwen2.5-vl",
}


@dataclass(frozen=True)
class PageFeatures:
    """One page's visual tokens: ``features`` (rows × hidden) and, where the model's rope
    positions need it, the image grid ``image_grid_thw`` (1 × 3)."""

    features: torch.Tensor
    image_grid_thw: torch.Tensor | None = None

    @property
    def rows(self) -> int:
        """How many placeholder tokens this page takes in the prompt."""
        return int(self.features.shape[0])

    def to_bytes(self, metadata: Mapping[str, str] | None = None) -> bytes:
        tensors = {FEATURES: self.features.detach().to("cpu").contiguous()}
        if self.image_grid_thw is not None:
            tensors[IMAGE_GRID_THW] = self.image_grid_thw.detach().to("cpu").contiguous()
        return st_save(tensors, metadata=dict(metadata or {}))

    @classmethod
    def from_bytes(cls, data: bytes) -> PageFeatures:
        tensors = st_load(bytes(data))
        if FEATURES not in tensors:
            raise InvalidConfiguration("cached visual tokens hold no 'features' tensor")
        return cls(tensors[FEATURES], tensors.get(IMAGE_GRID_THW))


class TransformersEncoder:
    """A :class:`~optical_memory.VisualEncoder` backed by a transformers VLM.

    Pass a loaded ``model`` and its ``processor``, or use :meth:`from_pretrained` with a local
    directory. ``key`` names the model, its revision (or a fingerprint of its weights) and its
    dtype, so features made by one model are never served to another.
    """

    def __init__(
        self,
        model: Any,
        processor: Any,
        *,
        name: str | None = None,
        revision: str | None = None,
        key: str | None = None,
    ) -> None:
        if not hasattr(model, "get_image_features"):
            raise InvalidConfiguration(
                f"{type(model).__name__} has no get_image_features(): not a vision-language model"
            )
        self.model = model.eval()
        self.processor = processor
        self.model_type: str = getattr(model.config, "model_type", "")
        self.name = name or str(getattr(model.config, "_name_or_path", "") or self.model_type)
        self.revision = (
            revision or getattr(model.config, "_commit_hash", None) or self._fingerprint()
        )
        self._key = key  # None: named from the model as it is when asked (see key)
        self._feature_args = set(inspect.signature(model.get_image_features).parameters)

    @classmethod
    def from_pretrained(
        cls,
        path: str | os.PathLike[str],
        *,
        dtype: torch.dtype | str = "auto",
        device: str | torch.device | None = None,
        revision: str | None = None,
        processor: Any = None,
        local_files_only: bool = True,
        **model_kwargs: Any,
    ) -> TransformersEncoder:
        """Load model and processor from a directory (offline by default); pass
        ``processor`` to use one loaded otherwise."""
        from transformers import AutoModelForImageTextToText, AutoProcessor

        if processor is None:
            processor = AutoProcessor.from_pretrained(path, local_files_only=local_files_only)
        model = AutoModelForImageTextToText.from_pretrained(
            path, dtype=dtype, local_files_only=local_files_only, **model_kwargs
        )
        if device is not None:
            model = model.to(device)
        name = str(path)
        if Path(name).expanduser().is_dir():
            name = Path(name).expanduser().resolve().name
        return cls(model, processor, name=name, revision=revision)

    # -- identity ---------------------------------------------------------------------------------

    @property
    def key(self) -> str:
        """What cached features are filed under: the model, its revision, its dtype now (a
        model cast after loading, ``model.to(torch.bfloat16)``, computes other features) and
        the layout version; or the ``key`` given."""
        if self._key is not None:
            return self._key
        return f"{self.name}@{self.revision}:{self.dtype_name}:{LAYOUT_VERSION}"

    @property
    def dtype(self) -> torch.dtype:
        return self.model.dtype

    @property
    def dtype_name(self) -> str:
        return str(self.dtype).removeprefix("torch.")

    @property
    def device(self) -> torch.device:
        return self.model.device

    @property
    def target(self) -> str | None:
        """The optical-memory target whose tiers this model reads natively, if known."""
        return _TARGETS.get(self.model_type)

    @property
    def tokenizer(self) -> Any:
        return self.processor.tokenizer

    def _fingerprint(self) -> str:
        """A cheap weight fingerprint: config plus a sample of the first and last tensors."""
        h = hashlib.sha256(self.model.config.to_json_string(use_diff=False).encode())
        params = list(self.model.parameters())
        for p in params[:4] + params[-4:]:
            h.update(p.detach().reshape(-1)[:64].to("cpu", torch.float32).numpy().tobytes())
        return "w" + h.hexdigest()[:12]

    # -- encoding ---------------------------------------------------------------------------------

    def image_kwargs(self, width: int, height: int) -> dict[str, Any]:
        """Image-processor settings for a page of this size (its tier's view layout).

        DeepSeek-OCR-2 reads a page larger than the 1024² global view as global view plus
        768² tiles, a page up to 1024² as one 1024² view, and a page up to 768² as one 768²
        view (144 tokens + separator). The processor alone counts 256 + 1 placeholders for
        that last layout, so placeholders are always counted from the features.
        """
        if self.model_type != "deepseek_ocr2":
            return {}
        ip = self.processor.image_processor
        tile = int(getattr(ip, "tile_size", 768))
        size = ip.size
        glob = int(size["height"] if isinstance(size, Mapping) else size.height)
        side = max(width, height)
        if side > glob:
            return {"crop_to_patches": True}
        if side > tile:
            return {"crop_to_patches": False, "tile_size": glob}
        return {"crop_to_patches": False, "tile_size": tile}

    def pixels(self, image: Image.Image) -> dict[str, Any]:
        """The image processor's output for one page, in this model's layout for its size."""
        image = image.convert("RGB")
        kwargs = self.image_kwargs(image.width, image.height)
        return dict(self.processor.image_processor(images=[image], return_tensors="pt", **kwargs))

    @torch.no_grad()
    def features(self, image: Image.Image) -> PageFeatures:
        """Run the model's vision tower and projector on one page image."""
        processed = self.pixels(image)
        args: dict[str, Any] = {}
        for name, value in processed.items():
            if name not in self._feature_args or value is None:
                continue
            if isinstance(value, torch.Tensor):
                value = value.to(self.device)
                if value.is_floating_point():
                    value = value.to(self.dtype)
            args[name] = value
        out = self.model.get_image_features(**args, return_dict=True)
        pooled = out.pooler_output
        feats = torch.cat(list(pooled), dim=0) if isinstance(pooled, list | tuple) else pooled
        feats = feats.reshape(-1, feats.shape[-1])
        grid = processed.get(IMAGE_GRID_THW)
        return PageFeatures(feats, grid.to(torch.long) if isinstance(grid, torch.Tensor) else None)

    def encode(self, png: bytes, tier: str) -> EncodedPage:
        """The VisualEncoder hook: a page image at a tier, as safetensors bytes."""
        with Image.open(io.BytesIO(png)) as im:
            page = self.features(im)
        meta = {"encoder_key": self.key, "tier": str(tier), "model_type": self.model_type}
        return EncodedPage(page.to_bytes(meta), self.dtype_name, tuple(page.features.shape))

    def decode(self, encoded: EncodedPage | bytes) -> PageFeatures:
        """Cached bytes back to tensors, on this model's device and dtype."""
        data = encoded.data if isinstance(encoded, EncodedPage) else encoded
        page = PageFeatures.from_bytes(data)
        feats = page.features.to(self.device, self.dtype)
        return PageFeatures(feats, page.image_grid_thw)
