"""optical-memory: chat memory that forgets gracefully.

Every turn is kept losslessly; what the model sees of old turns fades from text to ever
smaller page images. Start with :class:`MemoryManager`.
"""

from __future__ import annotations

from .aging import AgingPolicy, AgingReport, TimeLadder
from .assemble import MEMORY_INTRO, AssembledContext, PageSegment, Segment, TextSegment
from .encoder import EncodedPage, VisualEncoder
from .errors import (
    ContentTooLarge,
    InvalidBudget,
    InvalidContent,
    InvalidInput,
    InvalidRole,
    InvalidSessionId,
    InvalidTimestamp,
    MemoryClosed,
    OpticalMemoryError,
    SessionAccessDenied,
    StoreBusy,
    UnknownPage,
    UnknownSession,
    UnknownTarget,
)
from .integrity import VerifyReport
from .ladder import Target, Tier, TierSpec, get_target, register_target, target_names
from .manager import MemoryManager
from .records import PageInfo, SessionInfo, Turn
from .render import PageRenderer
from .tokens import approximate_tokens

__version__ = "0.1.0"

__all__ = [
    "MEMORY_INTRO",
    "AgingPolicy",
    "AgingReport",
    "AssembledContext",
    "ContentTooLarge",
    "EncodedPage",
    "InvalidBudget",
    "InvalidContent",
    "InvalidInput",
    "InvalidRole",
    "InvalidSessionId",
    "InvalidTimestamp",
    "MemoryClosed",
    "MemoryManager",
    "OpticalMemoryError",
    "PageInfo",
    "PageRenderer",
    "PageSegment",
    "Segment",
    "SessionAccessDenied",
    "SessionInfo",
    "StoreBusy",
    "Target",
    "TextSegment",
    "Tier",
    "TierSpec",
    "TimeLadder",
    "Turn",
    "UnknownPage",
    "UnknownSession",
    "UnknownTarget",
    "VerifyReport",
    "VisualEncoder",
    "approximate_tokens",
    "get_target",
    "register_target",
    "target_names",
    "__version__",
]
