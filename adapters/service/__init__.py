"""The memory as a service: an HTTP API, an OpenAI-compatible proxy, an MCP server and a web
view, over one :class:`~optical_memory.MemoryManager` (``optical-memory serve``).

The app needs the ``service`` extra (FastAPI, uvicorn, aiohttp, the MCP SDK); without it,
``create_app`` raises :class:`~optical_memory.MissingExtra` naming the extra. Keys and the
configuration need nothing beyond the core.
"""

from __future__ import annotations

from typing import Any

from .config import ServiceConfig
from .keys import ApiKeyInfo, NotSignedIn, UnknownApiKey, create_key, list_keys, revoke_key


def __getattr__(name: str) -> Any:
    if name in ("Service", "create_app"):
        from . import app

        return getattr(app, name)
    raise AttributeError(name)


__all__ = [
    "ApiKeyInfo",
    "NotSignedIn",
    "Service",
    "ServiceConfig",
    "UnknownApiKey",
    "create_app",
    "create_key",
    "list_keys",
    "revoke_key",
]
