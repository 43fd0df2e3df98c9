"""The HTTP service: FastAPI over one :class:`MemoryManager`, with the aging scheduler inside.

Every request is resolved inside one owner's namespace: the owner its API key is bound to
(``Authorization: Bearer KEY``), or the configured owner of an unauthenticated loopback
service. Endpoints are plain ``def`` functions (FastAPI runs them in its thread pool), since
the library is synchronous; the proxy and MCP parts are async where they wait on the network.
"""

from __future__ import annotations

import base64
import binascii
import gc
import json
import os
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import asdict
from datetime import datetime
from typing import Annotated, Any
from urllib.parse import unquote_to_bytes, urlsplit

from optical_memory.errors import MissingExtra

try:
    import aiohttp  # noqa: F401
    import anyio
    import mcp  # noqa: F401
    import uvicorn  # noqa: F401
    from fastapi import Body, Depends, FastAPI, Query, Request
    from mcp.server.transport_security import TransportSecuritySettings
except ImportError as exc:
    raise MissingExtra("the service", "service", exc.name) from exc
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

from optical_memory import InvalidAttachment, InvalidInput, MemoryManager, OpticalMemoryError, Turn

from .config import LOOPBACK, ServiceConfig
from .errors import BodyTooLarge, describe, error_body, headers_of, status_of
from .formats import CONTEXT_FORMATS, context_as
from .keys import KeyCache, NotSignedIn
from .replies import PendingReplies

__all__ = ["OWNER_SCOPE_KEY", "SESSION_COOKIE", "KeyCheck", "Service", "app_from_env", "create_app"]

SESSION_COOKIE = "om_key"
"""The web view's sign-in cookie (HttpOnly): the key itself, accepted on ``/web`` pages only."""
OWNER_SCOPE_KEY = "optical_memory.owner"
"""Where :class:`KeyCheck` leaves the owner a request acts for, in its ASGI scope."""
REPLY_WAIT_SECONDS = 30.0
"""The longest a session's next use waits for the proxy to store its previous reply (a
store gives up after the manager's ``busy_timeout``, 10 s by default, long before)."""


class Service:
    """What the app's requests share: the manager, one scoped view per owner, the config."""

    def __init__(self, memory: MemoryManager, config: ServiceConfig) -> None:
        self.memory = memory
        self.config = config
        self._views: dict[str | None, MemoryManager] = {}
        self._guard = threading.Lock()
        self.keys = KeyCache(memory, config.key_cache_seconds)
        self.replies = PendingReplies()  # what the proxy is storing after its answers

    def settle(self, memory: MemoryManager, session_id: str) -> None:
        """Wait until the proxy has stored the session's newest reply (see :mod:`.replies`)."""
        self.replies.wait((memory.owner, session_id), REPLY_WAIT_SECONDS)

    def view(self, owner: str | None) -> MemoryManager:
        """The memory inside ``owner``'s namespace (one view per owner, reused)."""
        with self._guard:
            view = self._views.get(owner)
            if view is None:
                view = self._views[owner] = self.memory.scoped(owner)
            return view

    def owner_of(self, request: Request, *, cookie: bool = False) -> str | None:
        """The owner a request acts for; raises :class:`NotSignedIn` without a valid key.
        ``cookie``: the web view's sign-in cookie counts too."""
        key = bearer(request.headers)
        if key is None and cookie:
            key = request.cookies.get(SESSION_COOKIE)
        return self.owner_for(key)

    def owner_for(self, key: str | None) -> str | None:
        """The owner an API key acts for (the configured owner when auth is off)."""
        if not self.config.auth:
            return self.config.owner
        return self._signed_in(key, self.keys.owner(key) if key else None)

    async def resolve(self, key: str | None) -> str | None:
        """:meth:`owner_for` without blocking the event loop: a key seen lately is answered
        from memory, another is looked up in a worker thread."""
        if not self.config.auth:
            return self.config.owner
        if not key:
            return self._signed_in(key, None)
        owner = self.keys.cached(key)
        if owner is None:
            owner = await anyio.to_thread.run_sync(self.keys.owner, key)
        return self._signed_in(key, owner)

    @staticmethod
    def _signed_in(key: str | None, owner: str | None) -> str:
        if owner is None:
            raise NotSignedIn(
                "send Authorization: Bearer KEY with a valid key"
                if key is None
                else "this API key is unknown or revoked"
            )
        return owner


def bearer(headers: Mapping[str, str]) -> str | None:
    """The key of an ``Authorization: Bearer KEY`` header, if any."""
    scheme, _, key = headers.get("authorization", "").partition(" ")
    return key.strip() or None if scheme.lower() == "bearer" else None


def service_of(request: Request) -> Service:
    return request.app.state.service


def owner_in(request: Request) -> str | None:
    """The owner a request acts for: as :class:`KeyCheck` found it before the body was read
    (else checked now)."""
    if OWNER_SCOPE_KEY in request.scope:
        return request.scope[OWNER_SCOPE_KEY]
    return service_of(request).owner_of(request)


def memory_of(request: Request) -> MemoryManager:
    """FastAPI dependency: the caller's namespace; for a session's endpoints, once the
    proxy has stored that session's newest reply (see :mod:`.replies`)."""
    service = service_of(request)
    view = service.view(owner_in(request))
    session_id = request.path_params.get("session_id")
    if session_id is not None:
        service.settle(view, session_id)
    return view


Memory = Annotated[MemoryManager, Depends(memory_of)]


# -- bodies ----------------------------------------------------------------------------------


class AttachmentIn(BaseModel):
    """An image of a turn: its bytes as base64 (``media_type`` is checked against them)."""

    model_config = ConfigDict(extra="forbid")
    data: str
    media_type: str | None = None


class TurnIn(BaseModel):
    """One turn: ``at`` must carry a timezone (ISO 8601 with ``Z`` or an offset); its images
    in ``attachments``, stored exactly and returned with the turn."""

    model_config = ConfigDict(extra="forbid")
    role: str
    content: str
    at: datetime | None = None
    metadata: dict[str, Any] | None = None
    attachments: list[AttachmentIn] | None = None

    def as_item(self) -> dict[str, Any]:
        """The turn as ``MemoryManager.add_turns`` takes it (images as bytes)."""
        item = self.model_dump(exclude={"attachments"})
        if self.attachments:
            item["attachments"] = [_image_bytes(a, i) for i, a in enumerate(self.attachments)]
        return item


def _image_bytes(a: AttachmentIn, i: int) -> dict[str, Any]:
    try:
        data = base64.b64decode(a.data, validate=True)
    except (binascii.Error, ValueError):
        raise InvalidAttachment(
            f"attachment {i}: data must be the image's bytes as base64 (RFC 4648, no line breaks)"
        ) from None
    return {"data": data, "media_type": a.media_type} if a.media_type else {"data": data}


class TurnsIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    turns: list[TurnIn] = Field(min_length=1)


class AgeIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    now: datetime | None = None


class VerifyIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    repair: bool = True


def turn_json(t: Turn) -> dict[str, Any]:
    return {
        "session_id": t.session_id,
        "seq": t.seq,
        "role": t.role,
        "content": t.content,
        "at": t.at.isoformat(),
        "tokens": t.tokens,
        "metadata": t.metadata,
        "attachments": [
            {
                "media_type": a.media_type,
                "width": a.width,
                "height": a.height,
                "sha256": a.sha256,
                "data": a.base64,
            }
            for a in t.attachments
        ],
    }


def _plain(obj: Any) -> dict[str, Any]:
    return {k: (v.isoformat() if isinstance(v, datetime) else v) for k, v in asdict(obj).items()}


# -- the body limit and the error handlers ---------------------------------------------------


class JSONText(JSONResponse):
    """JSON as FastAPI writes it (UTF-8), or, for content holding a lone surrogate (metadata
    may: the store keeps it exactly as given), with every character past ASCII escaped,
    which JSON allows and every reader decodes back to the same string. What carries a
    turn's metadata is answered with it directly: FastAPI's response model (pydantic) cannot
    hold such a string at all."""

    def render(self, content: Any) -> bytes:
        try:
            return super().render(content)
        except UnicodeEncodeError:
            return json.dumps(content, allow_nan=False, separators=(",", ":")).encode("ascii")


class Utf8Path:
    """ASGI middleware: a path that is not UTF-8 once percent-decoded (``%FF``) is a 400.
    Decoded as the framework does, every invalid byte would read as U+FFFD, so two different
    session ids would name one session."""

    def __init__(self, app: Callable[..., Awaitable[None]]) -> None:
        self.app = app

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        raw = scope.get("raw_path") if scope["type"] == "http" else None
        if raw is not None and b"%" in raw:
            try:
                unquote_to_bytes(raw).decode("utf-8")  # (raw_path holds no query string)
            except UnicodeDecodeError:
                message = "the path is not UTF-8 once percent-decoded: encode ids as UTF-8"
                response = JSONResponse(error_body("InvalidInput", message), status_code=400)
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)


class LoopbackHost:
    """ASGI middleware of a service without API keys (loopback only): a request must name a
    loopback host (``Host``, and ``Origin`` when a browser sends one), else 421. Without
    it, any web page its user opens could point a name of its own at 127.0.0.1 (DNS
    rebinding) and read or forget the memory with the browser's requests."""

    def __init__(self, app: Callable[..., Awaitable[None]]) -> None:
        self.app = app

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            headers = dict(scope.get("headers") or [])
            origin = headers.get(b"origin")
            host_ok = _is_loopback(headers.get(b"host", b"").decode("latin-1"))
            origin_ok = origin is None or _is_loopback(urlsplit(origin.decode("latin-1")).netloc)
            if not (host_ok and origin_ok):
                message = (
                    "a service without API keys answers only requests for a loopback host "
                    "(127.0.0.1, localhost, [::1]); serve with keys to reach it by another name"
                )
                response = JSONResponse(error_body("MisdirectedRequest", message), status_code=421)
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)


def _is_loopback(netloc: str) -> bool:
    """Whether ``host[:port]`` names this machine's loopback interface."""
    host = netloc.rpartition("@")[2]
    if host.startswith("["):
        host = host[1:].partition("]")[0]
    elif host.count(":") == 1:
        host, _, port = host.partition(":")
        if not port.isascii() or not port.isdigit():
            return False
    return host.lower() in LOOPBACK


class BodyLimit:
    """ASGI middleware: a body over ``limit`` bytes gets 413 before anything reads it (by
    ``Content-Length``), or as soon as a chunked body passes the limit."""

    def __init__(self, app: Callable[..., Awaitable[None]], limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        length = dict(scope.get("headers") or []).get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.limit:
            await _too_large(self.limit)(scope, receive, send)
            return
        seen = 0
        answered = False  # the 413 went out: whatever the app sends after it is dropped

        async def limited_receive() -> dict[str, Any]:
            nonlocal seen, answered
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.limit and not answered:
                    answered = True
                    await _too_large(self.limit)(scope, receive, send)
                    raise BodyTooLarge(f"request body over {self.limit:,} bytes")
            return message

        async def guarded_send(message: dict[str, Any]) -> None:
            if not answered:
                await send(message)

        try:
            await self.app(scope, limited_receive, guarded_send)
        except BodyTooLarge:
            if not answered:
                raise


class KeyCheck:
    """ASGI middleware: every ``/v1`` request but ``/v1/health``, and every MCP request, is
    signed in first, before anything reads its body, so a request without a valid key gets
    401 whatever it sends (not 400/422 for a body it had no right to send; for MCP, as its
    authorization spec asks, not a session opened and tools listed for anyone). The owner
    goes into the scope (:data:`OWNER_SCOPE_KEY`)."""

    def __init__(self, app: Callable[..., Awaitable[None]], service: Service) -> None:
        self.app = app
        self.service = service

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        path = scope.get("path", "") if scope["type"] == "http" else ""
        signed = (path.startswith("/v1/") and path != "/v1/health") or _is_mcp(path)
        if not signed:
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        try:
            owner = await self.service.resolve(bearer(headers))
        except OpticalMemoryError as exc:  # NotSignedIn, or the store is unavailable
            response = JSONResponse(
                describe(exc), status_code=status_of(exc), headers=headers_of(exc)
            )
            await response(scope, receive, send)
            return
        scope[OWNER_SCOPE_KEY] = owner
        await self.app(scope, receive, send)


def _is_mcp(path: str) -> bool:
    return path == "/mcp" or path.startswith("/mcp/")


def _too_large(limit: int) -> JSONResponse:
    msg = f"request body over the service's limit of {limit:,} bytes; send less a request"
    return JSONResponse(error_body("BodyTooLarge", msg), status_code=413)


async def _library_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, OpticalMemoryError)
    return JSONResponse(describe(exc), status_code=status_of(exc), headers=headers_of(exc))


async def _validation_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    errors = exc.errors()
    malformed = any(e.get("type") == "json_invalid" for e in errors)
    kind = request.headers.get("content-type", "").partition(";")[0].strip().lower()
    if kind != "application/json" and any(_whole_body(e) for e in errors):
        # The framework reads a body as JSON only when it says it is: other bodies reach
        # validation as text, and "should be a valid dictionary" would not say why.
        message = f"send the body as JSON with Content-Type: application/json (got {kind!r:.60})"
        return JSONResponse(error_body("InvalidInput", message), status_code=400)
    parts = []
    for e in errors[:5]:
        where = ".".join(str(p) for p in e.get("loc", ()) if p != "body") or "body"
        parts.append(f"{where}: {e.get('msg', 'invalid')}")
    message = ("the body is not valid JSON; " if malformed else "") + "; ".join(parts)
    return JSONResponse(error_body("InvalidInput", message), status_code=400 if malformed else 422)


def _whole_body(error: Mapping[str, Any]) -> bool:
    """Whether a validation error is about the body as a whole (not one of its fields): the
    body itself, or one shape of a body that may take several."""
    loc = tuple(error.get("loc", ()))
    return loc[:1] == ("body",) and len(loc) <= 2 and str(error.get("type", "")).endswith("type")


_HTTP_ERRORS = {400: "InvalidInput", 404: "NotFound", 405: "MethodNotAllowed"}


async def _http_error(request: Request, exc: Exception) -> JSONResponse:
    """What the framework answers itself (no such path, a method a path does not take, a
    body it cannot parse), in the same JSON shape as the library's errors."""
    assert isinstance(exc, StarletteHTTPException)
    name = _HTTP_ERRORS.get(exc.status_code, "HTTPError")
    if exc.status_code == 404:
        message = f"no endpoint {request.url.path!r:.200}; the API is listed at /docs"
    elif exc.status_code == 405:
        message = f"{request.url.path!r:.200} does not take {request.method}"
    elif exc.status_code == 400:
        message = f"the body could not be read ({exc.detail}): send JSON, UTF-8 encoded"
    else:
        message = str(exc.detail)
    return JSONResponse(error_body(name, message), status_code=exc.status_code, headers=exc.headers)


# -- the app ---------------------------------------------------------------------------------


def create_app(
    memory: MemoryManager,
    config: ServiceConfig | None = None,
    *,
    own_memory: bool = False,
    own_process: bool = False,
) -> FastAPI:
    """The service's ASGI app over ``memory``. Its lifespan starts the aging scheduler (every
    ``config.age_every`` seconds), the MCP session manager and the proxy's HTTP client;
    ``own_memory``: close the manager when the app shuts down. ``own_process``: the app is
    all its process runs (``optical-memory serve``), so what is loaded at startup may be
    frozen out of the garbage collector's full passes (``gc.freeze``; never done to a
    process that merely mounts the app)."""
    from .mcp_server import build_mcp
    from .proxy import add_proxy
    from .web import add_web

    config = (config or ServiceConfig()).check()
    service = Service(memory, config)
    mcp = build_mcp(lambda ctx: http_memory(service, ctx), service.settle)
    mcp_app = mcp.streamable_http_app(
        streamable_http_path="/",
        stateless_http=True,
        json_response=True,
        # The SDK's own Host allow-list (loopback names for a loopback bind) refused MCP
        # behind a reverse proxy while /v1 answered: the service's rule holds for every path
        # instead (keys, or loopback names only without them, see LoopbackHost).
        transport_security=TransportSecuritySettings(enable_dns_rebinding_protection=False),
    )

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with AsyncExitStack() as stack:
            if config.age_every > 0:
                memory.start_scheduler(every=config.age_every, run_now=True)  # catch up at once
                stack.callback(memory.stop_scheduler, timeout=5)
            if own_memory:
                stack.callback(memory.close)
            await stack.enter_async_context(mcp.session_manager.run())
            await stack.enter_async_context(app.state.upstream_client())
            # Last in, first out: the replies still being stored finish before the rest stops.
            stack.push_async_callback(
                anyio.to_thread.run_sync, service.replies.wait_all, REPLY_WAIT_SECONDS
            )
            if own_process:
                # What is loaded by now (FastAPI, SQLAlchemy, the MCP SDK: ~200,000 objects)
                # lives as long as the process: kept out of the collector's full passes, each
                # of which otherwise stalled one request for 100-150 ms (the proxy's p99).
                gc.freeze()
            yield

    app = FastAPI(
        title="optical-memory",
        summary="Chat memory that forgets gracefully, over HTTP, OpenAI-compatible and MCP.",
        version="1",
        lifespan=lifespan,
        default_response_class=JSONText,
    )
    app.state.service = service
    app.add_exception_handler(OpticalMemoryError, _library_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_middleware(BodyLimit, limit=config.max_body_bytes)
    app.add_middleware(KeyCheck, service=service)  # before the body limit too
    app.add_middleware(Utf8Path)  # a path that names nothing is not signed in
    if not config.auth:
        app.add_middleware(LoopbackHost)  # outermost
    _add_routes(app)
    add_proxy(app, service)
    add_web(app, service)
    app.mount("/mcp", mcp_app)
    return app


def http_memory(service: Service, ctx: Any) -> MemoryManager:
    """The namespace of an MCP call that came over HTTP: the key in its headers."""
    return service.view(service.owner_for(bearer(ctx.headers or {})))


def _add_routes(app: FastAPI) -> None:
    @app.get("/v1/health", tags=["service"])
    def health(request: Request) -> dict[str, Any]:
        """Liveness, which worker process answered, and its aging scheduler."""
        sched = service_of(request).memory.scheduler
        aging = (
            {"running": sched.running, "passes": sched.passes, "failures": sched.failures}
            if sched is not None
            else {"running": False, "passes": 0, "failures": 0}
        )
        return {"status": "ok", "pid": os.getpid(), "scheduler": aging}

    @app.get("/v1/sessions", tags=["sessions"])
    def list_sessions(mm: Memory) -> dict[str, Any]:
        """The caller's sessions, oldest first."""
        return {"sessions": [_plain(i) for i in mm.sessions()]}

    @app.post("/v1/sessions/{session_id:path}/turns", status_code=201, tags=["sessions"])
    def add_turns(
        session_id: str,
        mm: Memory,
        body: Annotated[TurnIn | TurnsIn, Body()],
        expected_last_turn: Annotated[int | None, Query(ge=0)] = None,
    ) -> JSONText:
        """Append one turn or ``{"turns": [...]}`` in one transaction (all or none).

        ``expected_last_turn``: append only if the session's newest turn is still this number
        (0: no turns yet), for clients that decide what is new from what they read; otherwise
        409 ``SessionChanged`` and nothing is written: read the turns again and retry."""
        items = body.turns if isinstance(body, TurnsIn) else [body]
        stored = mm.add_turns(
            session_id, [t.as_item() for t in items], expected_last_turn=expected_last_turn
        )
        return JSONText({"turns": [turn_json(t) for t in stored]}, status_code=201)

    @app.get("/v1/sessions/{session_id:path}/turns", tags=["sessions"])
    def get_turns(
        session_id: str, mm: Memory, since: int = 0, limit: int | None = None
    ) -> JSONText:
        """The session's turns, lossless, in order (``since``: after this turn number)."""
        return JSONText(
            {"turns": [turn_json(t) for t in mm.turns(session_id, since=since, limit=limit)]}
        )

    @app.get("/v1/sessions/{session_id:path}/span", tags=["sessions"])
    def read_span(session_id: str, mm: Memory, first_turn: int, last_turn: int) -> JSONText:
        """Turns ``first_turn``..``last_turn`` exactly: the span a page's caption names."""
        return JSONText(
            {"turns": [turn_json(t) for t in mm.read(session_id, first_turn, last_turn)]}
        )

    @app.get("/v1/sessions/{session_id:path}/recall", tags=["sessions"])
    def recall(
        session_id: str,
        mm: Memory,
        cue: str,
        limit: Annotated[int, Query(ge=1, le=100)] = 8,
        scope: str = "session",
    ) -> JSONText:
        """Archived turns the cue's words match, best first, exactly as stored."""
        found = mm.recall(session_id, cue, limit=limit, scope=scope)
        return JSONText(
            {
                "turns": [
                    {**turn_json(r.turn), "score": r.score, "page_id": r.page_id, "tier": r.tier}
                    for r in found
                ]
            }
        )

    @app.get("/v1/sessions/{session_id:path}/context", tags=["sessions"])
    def context(
        session_id: str,
        mm: Memory,
        budget: int = 4096,
        target: str | None = None,
        format: str = "json",
        cue: str | None = None,
        now: datetime | None = None,
        system: str | None = None,
    ) -> JSONText:
        """The prompt ``assemble`` builds: ``format`` json (segments), openai or anthropic."""
        if format not in CONTEXT_FORMATS:
            raise InvalidInput(
                f"unknown format {format!r}; use one of {', '.join(CONTEXT_FORMATS)}"
            )
        ctx = mm.assemble(session_id, budget=budget, target=target, now=now, cue=cue)
        return JSONText(context_as(ctx, format, system_prompt=system))

    @app.get("/v1/sessions/{session_id:path}/pages", tags=["pages"])
    def pages(session_id: str, mm: Memory) -> dict[str, Any]:
        """The session's pages and the tier each is stored at."""
        return {"pages": [_plain(p) for p in mm.pages(session_id)]}

    @app.get(
        "/v1/sessions/{session_id:path}/pages/{page_id}/image",
        tags=["pages"],
        response_class=Response,
        responses={200: {"content": {"image/png": {}}}},
    )
    def page_image(session_id: str, page_id: int, mm: Memory, tier: str | None = None) -> Response:
        """A page's PNG at its stored tier, or at a fainter ``tier`` rendition."""
        png = mm.page_image(session_id, page_id, tier=tier)
        return Response(png, media_type="image/png", headers={"Cache-Control": "private"})

    @app.delete("/v1/sessions/{session_id:path}", tags=["sessions"])
    def forget(session_id: str, mm: Memory) -> dict[str, Any]:
        """Delete the session and everything derived from it."""
        return {"session_id": session_id, "turns_deleted": mm.forget(session_id)}

    @app.post("/v1/age", tags=["maintenance"])
    def age(mm: Memory, body: Annotated[AgeIn | None, Body()] = None) -> dict[str, Any]:
        """One aging pass over the caller's sessions now (the scheduler runs them anyway)."""
        report = mm.age(now=body.now if body else None)
        return {**_plain(report), "pid": os.getpid()}

    @app.post("/v1/verify", tags=["maintenance"])
    def verify(mm: Memory, body: Annotated[VerifyIn | None, Body()] = None) -> dict[str, Any]:
        """Check every page image of the caller's sessions; rebuild damaged ones."""
        return _plain(mm.verify(repair=body.repair if body else True))


def app_from_env() -> FastAPI:
    """The app factory uvicorn calls in each worker process (settings from the environment)."""
    config = ServiceConfig.from_env()
    memory = MemoryManager(config.db, target=config.target)
    return create_app(memory, config, own_memory=True, own_process=True)
