"""optical-memory: chat memory that forgets gracefully.

Every turn is kept losslessly; what the model sees of old turns fades from text to ever
smaller page images. Start with :class:`MemoryManager`.
"""

from __future__ import annotations

from .aging import AgingPolicy, AgingReport, TimeLadder
from .assemble import (
    AssembledContext,
    AssemblyShares,
    PageSegment,
    RecalledSegment,
    Segment,
    TextSegment,
)
from .captions import MEMORY_INTRO
from .encoder import EncodedPage, VisualEncoder
from .errors import (
    AttachmentTooLarge,
    ContentTooLarge,
    DatabaseCorrupt,
    DatabaseTooNew,
    DatabaseUnavailable,
    DrawingFailed,
    ForgetIncomplete,
    InvalidAttachment,
    InvalidBudget,
    InvalidConfiguration,
    InvalidContent,
    InvalidInput,
    InvalidRole,
    InvalidSessionId,
    InvalidTimestamp,
    InvalidTokenCounter,
    MemoryClosed,
    MetadataTooLarge,
    MissingExtra,
    OpticalMemoryError,
    SessionAccessDenied,
    SessionChanged,
    StoreBusy,
    StoreFull,
    StoreReadOnly,
    UnknownPage,
    UnknownSession,
    UnknownTarget,
    UnsupportedDatabase,
)
from .integrity import VerifyReport
from .ladder import (
    Target,
    Tier,
    TierSpec,
    get_target,
    register_target,
    target_names,
    unregister_target,
)
from .manager import MemoryManager
from .records import Attachment, PageInfo, SessionInfo, Turn
from .render import PageRenderer
from .tokens import approximate_tokens

__version__ = "0.1.0"

__all__ = [
    "MEMORY_INTRO",
    "AgingPolicy",
    "AgingReport",
    "AssembledContext",
    "AssemblyShares",
    "Attachment",
    "AttachmentTooLarge",
    "ContentTooLarge",
    "DatabaseCorrupt",
    "DatabaseTooNew",
    "DatabaseUnavailable",
    "DrawingFailed",
    "ForgetIncomplete",
    "EncodedPage",
    "InvalidAttachment",
    "InvalidBudget",
    "InvalidConfiguration",
    "InvalidContent",
    "InvalidInput",
    "InvalidRole",
    "InvalidSessionId",
    "InvalidTimestamp",
    "InvalidTokenCounter",
    "MemoryClosed",
    "MetadataTooLarge",
    "MissingExtra",
    "MemoryManager",
    "OpticalMemoryError",
    "PageInfo",
    "PageRenderer",
    "PageSegment",
    "RecalledSegment",
    "Segment",
    "SessionAccessDenied",
    "SessionInfo",
    "SessionChanged",
    "StoreBusy",
    "StoreFull",
    "StoreReadOnly",
    "Target",
    "TextSegment",
    "Tier",
    "TierSpec",
    "TimeLadder",
    "Turn",
    "UnknownPage",
    "UnknownSession",
    "UnknownTarget",
    "UnsupportedDatabase",
    "VerifyReport",
    "VisualEncoder",
    "approximate_tokens",
    "get_target",
    "register_target",
    "target_names",
    "unregister_target",
    "__version__",
]
