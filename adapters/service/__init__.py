"""The memory as a service: an HTTP API, an OpenAI-compatible proxy, an MCP server and a web
view, over one :class:`~optical_memory.MemoryManager` (``optical-memory serve``).

Needs the ``service`` extra (FastAPI, uvicorn, httpx, the MCP SDK); without it, importing
this package raises :class:`~optical_memory.MissingExtra` naming the extra.
"""

from __future__ import annotations

from optical_memory.errors import MissingExtra

try:
    import fastapi  # noqa: F401
    import httpx  # noqa: F401
    import mcp  # noqa: F401
    import uvicorn  # noqa: F401
except ImportError as exc:
    raise MissingExtra("the service", "service", exc.name) from exc

from .app import Service, create_app
from .config import ServiceConfig
from .keys import ApiKeyInfo, NotSignedIn, UnknownApiKey, create_key, list_keys, revoke_key

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
