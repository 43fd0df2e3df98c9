"""An MCP server (the official ``mcp`` SDK) with the memory as tools, over stdio or HTTP.

Tools: ``remember`` (store a turn), ``recall`` (search the archive), ``read_span`` (turns
exactly), ``get_context`` (the assembled prompt: text and page images), ``forget``. Each call
resolves the memory inside one owner's namespace: over stdio the owner the process was
started for (``optical-memory mcp --owner NAME`` or ``--key KEY``); over streamable HTTP
(mounted at ``/mcp`` of the service) the owner of the request's ``Authorization: Bearer`` key.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from optical_memory.errors import MissingExtra

try:
    import anyio
    from mcp.server.mcpserver import Context, MCPServer
    from mcp.server.mcpserver.exceptions import ToolError
    from mcp.types import ImageContent, TextContent
except ImportError as exc:
    raise MissingExtra("the MCP server", "service", exc.name) from exc

from optical_memory import MemoryManager, OpticalMemoryError

from .._framing import RECALL_LIMIT, answer_read, answer_recall, frame

__all__ = ["TOOL_NAMES", "build_mcp", "run_stdio"]

TOOL_NAMES = ("remember", "recall", "read_span", "get_context", "forget")
Resolve = Callable[[Any], MemoryManager]
Settle = Callable[[MemoryManager, str], object]


def build_mcp(resolve: Resolve, settle: Settle | None = None) -> MCPServer:
    """The MCP server; ``resolve(ctx)`` gives the memory (namespace) a tool call acts on;
    ``settle(memory, session_id)``, if given, runs before a tool acts on that session (the
    service waits there for a reply its proxy is still storing)."""
    server = MCPServer(
        "optical-memory",
        # The SDK configures the root logger at this level: at its default (INFO) every
        # upstream request of the proxy was logged (httpx, through rich), a few ms each.
        log_level="WARNING",
        instructions=(
            "Long-term chat memory. remember stores a turn; get_context gives what to show the "
            "model (recent turns as text, older ones as page images); recall and read_span "
            "bring back exact text of earlier turns."
        ),
    )

    def act(ctx: Context, session_id: str, fn: Callable[[MemoryManager], Any]) -> Any:
        memory = resolve(ctx)
        if settle is not None:
            settle(memory, session_id)
        return fn(memory)

    async def run(ctx: Context, session_id: str, fn: Callable[[MemoryManager], Any]) -> Any:
        try:  # one thread hop: the key's lookup (when not remembered) and the work
            return await anyio.to_thread.run_sync(act, ctx, session_id, fn)
        except OpticalMemoryError as exc:  # the model reads the error's name and message
            message = str(exc.args[0]) if isinstance(exc, LookupError) and exc.args else str(exc)
            raise ToolError(f"{type(exc).__name__}: {message}") from None

    @server.tool()
    async def remember(session_id: str, role: str, content: str, ctx: Context) -> str:
        """Store one turn (role: user, assistant, system or tool) at the end of a session."""
        turn = await run(ctx, session_id, lambda m: m.add_turn(session_id, role, content))
        return f"stored turn {turn.seq} of session {session_id}"

    @server.tool()
    async def recall(session_id: str, query: str, ctx: Context, limit: int = RECALL_LIMIT) -> str:
        """Search the session's archive for earlier turns using the query's words."""
        return await run(
            ctx, session_id, lambda m: answer_recall(m, session_id, query, limit=limit)
        )

    @server.tool()
    async def read_span(session_id: str, first_turn: int, last_turn: int, ctx: Context) -> str:
        """Read turns first_turn..last_turn of a session exactly as they were written."""
        return await run(
            ctx, session_id, lambda m: answer_read(m, session_id, first_turn, last_turn)
        )

    @server.tool()
    async def get_context(
        session_id: str,
        ctx: Context,
        budget: int = 4096,
        target: str | None = None,
        cue: str | None = None,
    ) -> list[TextContent | ImageContent]:
        """What the model should see of a session under a token budget: the memory (captions
        and page images of older turns), then the recent turns as text."""
        assembled = await run(
            ctx, session_id, lambda m: m.assemble(session_id, budget=budget, target=target, cue=cue)
        )
        out: list[TextContent | ImageContent] = []
        for msg in frame(assembled):
            for part in msg.parts:
                if part.page is None:
                    out.append(TextContent(type="text", text=part.text or ""))
                else:
                    out.append(
                        ImageContent(
                            type="image", data=part.page.base64, mime_type=part.page.mime_type
                        )
                    )
            if not msg.is_memory:
                out.append(TextContent(type="text", text=f"{msg.role}: {msg.content}"))
        return out

    @server.tool()
    async def forget(session_id: str, ctx: Context) -> str:
        """Delete a session and everything derived from it, for good."""
        n = await run(ctx, session_id, lambda m: m.forget(session_id))
        return f"forgot session {session_id}: {n} turns"

    return server


def run_stdio(memory: MemoryManager) -> None:
    """Serve ``memory`` (a manager, or a view scoped to one owner) over stdio until EOF."""
    build_mcp(lambda _ctx: memory).run("stdio")
