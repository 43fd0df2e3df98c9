"""An OpenAI-compatible proxy at ``/v1/chat/completions`` that remembers and compresses.

A chat backend points its ``base_url`` at the service and sends its whole conversation, as it
does today. The proxy stores what is new (:func:`record_openai_messages` skips what is stored
already), replaces the history with what ``assemble`` builds under the budget (recent turns as
text, older ones as page images, what the newest user message recalls as exact text), keeps
the client's own system messages in front, forwards the request to the configured upstream
(OpenAI, vLLM, Ollama: any compatible URL), passes the answer back unchanged (server-sent
events byte for byte when streaming) and stores the reply: a stream's before the client sees
its ``[DONE]``, a whole answer's beside the answer on its way back, the session's next use in
this process waiting for it (:mod:`.replies`).

Per request: the session comes from the ``X-Memory-Session`` header, else the body's ``user``
field; ``X-Memory-Budget`` and ``X-Memory-Target`` override the configured budget and target.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from functools import partial
from typing import Any

import aiohttp
import orjson
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from optical_memory import InvalidBudget, InvalidInput, MemoryManager
from optical_memory.errors import InvalidConfiguration
from optical_memory.ladder import Target, get_target

from ..openai import (
    newest_user_text,
    record_openai_messages,
    record_openai_reply,
    to_openai_messages,
)
from .app import Service, owner_in
from .errors import error_body

__all__ = ["SESSION_HEADER", "StreamedReply", "add_proxy", "prepare_messages", "store_reply"]

SESSION_HEADER = "x-memory-session"
BUDGET_HEADER = "x-memory-budget"
TARGET_HEADER = "x-memory-target"
log = logging.getLogger(__name__)
# Not passed back from the upstream: hop-by-hop headers, the body's framing (it is passed
# decoded, its length counted again) and what the service's own server writes (date, server).
_NOT_PASSED = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "content-length",
        "content-encoding",
        "date",
        "server",
    }
)


def prepare_messages(
    memory: MemoryManager, session_id: str, messages: list[Any], budget: int, target: Target | str
) -> list[dict[str, Any]]:
    """Store what is new of ``messages``, then the messages to send upstream: the client's
    system messages, then the assembled memory (which ends with the newest turns)."""
    return _prepare(memory, session_id, messages, budget, target)[0]


def _prepare(
    memory: MemoryManager, session_id: str, messages: list[Any], budget: int, target: Target | str
) -> tuple[list[dict[str, Any]], int | None]:
    """:func:`prepare_messages`, and the newest turn the prompt shows (what the reply will
    answer, for :func:`~optical_memory.adapters.openai.record_openai_reply`)."""
    record_openai_messages(memory, session_id, messages)
    ctx = memory.assemble(session_id, budget=budget, target=target, cue=newest_user_text(messages))
    system = [
        m for m in messages if isinstance(m, dict) and m.get("role") in ("system", "developer")
    ]
    newest = max((t.turn.seq for t in ctx.texts), default=None)
    return system + to_openai_messages(ctx), newest


class StreamedReply:
    """Reads a chat-completions SSE stream as it passes and rebuilds the assistant message
    (content, refusal and tool calls, by index) it adds up to. What it cannot read (an event
    of another shape, a comment, a keep-alive) is skipped: the stream itself always passes
    on unchanged."""

    def __init__(self) -> None:
        self._buffer = b""
        self.content: list[str] = []
        self.refusal: list[str] = []
        self.tool_calls: dict[int, dict[str, Any]] = {}
        self.done = False  # the stream's [DONE] came
        self.finished = False  # the answer's finish_reason came

    def feed(self, chunk: bytes) -> None:
        self._buffer += chunk
        # SSE lines end in CRLF, LF or CR alone. A CR at the end of a chunk whose LF comes
        # in the next one ends the line early: the LF then ends an empty line, which is
        # skipped like every line that is not data.
        *lines, self._buffer = _LINE_END.split(self._buffer)
        for raw in lines:
            line = raw.strip()
            if not line.startswith(b"data:"):
                continue
            data = line[5:].strip()
            if data == b"[DONE]":
                self.done = True
                continue
            try:
                event = json.loads(data)
            except ValueError:
                continue
            choices = event.get("choices") if isinstance(event, dict) else None
            for choice in choices if isinstance(choices, list) else ():
                if isinstance(choice, dict) and choice.get("index", 0) == 0:
                    delta = choice.get("delta")
                    if isinstance(delta, dict):
                        self._delta(delta)
                    self.finished = self.finished or choice.get("finish_reason") is not None

    def _delta(self, delta: dict[str, Any]) -> None:
        for name, parts in (("content", self.content), ("refusal", self.refusal)):
            if isinstance(delta.get(name), str):
                parts.append(delta[name])
        calls = delta.get("tool_calls")
        for call in calls if isinstance(calls, list) else ():
            if not isinstance(call, dict):
                continue
            index = call.get("index", 0)
            slot = self.tool_calls.setdefault(
                index if isinstance(index, int) and not isinstance(index, bool) else 0,
                {"id": "", "type": "function", "function": {"name": "", "arguments": ""}},
            )
            if isinstance(call.get("id"), str) and call["id"]:
                slot["id"] = call["id"]
            fn = call.get("function")
            for key in ("name", "arguments") if isinstance(fn, dict) else ():
                if isinstance(fn.get(key), str):
                    slot["function"][key] += fn[key]

    def message(self) -> dict[str, Any] | None:
        """The reply as a chat-completions message, or None if the stream carried none."""
        # A call that never got an id or a name (only stray pieces) is not a call.
        calls = [
            c
            for c in (self.tool_calls[i] for i in sorted(self.tool_calls))
            if c["id"] or c["function"]["name"]
        ]
        if not self.content and not self.refusal and not calls:
            return None
        msg: dict[str, Any] = {
            "role": "assistant",
            "content": _paired("".join(self.content)) or None,
        }
        if self.refusal:
            msg["refusal"] = _paired("".join(self.refusal))
        if calls:
            msg["tool_calls"] = [
                {
                    **c,
                    "function": {**c["function"], "arguments": _paired(c["function"]["arguments"])},
                }
                for c in calls
            ]
        return msg


_LINE_END = re.compile(rb"\r\n|\r|\n")


def _paired(text: str) -> str:
    """Text whose characters came in pieces: a character outside the BMP escaped as two
    surrogates (``"\\ud83d"``, ``"\\ude00"``) may be split between two events, each read as a
    lone surrogate; joined, they are the one character again. A surrogate still alone stays
    (the reply is then not stored: it is not text)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return text.encode("utf-16-le", "surrogatepass").decode("utf-16-le", "surrogatepass")
    return text


def _settled_prepare(
    settle: Callable[[MemoryManager, str], object],
    memory: MemoryManager,
    session_id: str,
    messages: list[Any],
    budget: int,
    target: Target,
) -> tuple[list[dict[str, Any]], int | None]:
    """:func:`_prepare` once this session's previous reply is stored (in this process)."""
    settle(memory, session_id)
    return _prepare(memory, session_id, messages, budget, target)


def _int_header(request: Request, name: str, default: int) -> int:
    raw = request.headers.get(name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise InvalidBudget(
            f"{name} must be a positive number of tokens, got {raw!r:.40}"
        ) from None
    if value <= 0:
        raise InvalidBudget(f"{name} must be a positive number of tokens, got {value}")
    return value


def _utf8_header(request: Request, name: str) -> str | None:
    """A header's value as UTF-8 text (HTTP carries bytes; Starlette reads them as Latin-1),
    so a session named in the header is the one of that name everywhere else."""
    raw = request.headers.get(name)
    if raw is None:
        return None
    try:
        return raw.encode("latin-1").decode("utf-8")
    except UnicodeError:
        raise InvalidInput(f"the {name} header is not UTF-8 text") from None


def _dumps(obj: Any) -> bytes:
    """The forwarded body as JSON bytes. orjson writes the page images' base64 text (most of
    the body: 2 MB for ten tiny pages) at memory speed, where ``json.dumps`` scans every
    character (4.4 against 0.23 ms for that body); what it refuses goes to ``json``
    (integers past 64 bits, say). Bodies are read with ``json``: orjson would read such an
    integer as a float."""
    try:
        return orjson.dumps(obj)
    except TypeError:  # orjson.JSONEncodeError
        return json.dumps(obj).encode()


def add_proxy(app: FastAPI, service: Service) -> None:
    """Mount ``POST /v1/chat/completions`` and the shared upstream client's lifespan."""
    holder: dict[str, aiohttp.ClientSession] = {}
    config = service.config

    @asynccontextmanager
    async def upstream_client() -> AsyncIterator[None]:
        # aiohttp, not httpx: its request costs about half the CPU (0.7 against 1.3-1.6 ms per
        # small completion on loopback), and that is most of what the proxy adds.
        connector = aiohttp.TCPConnector(limit=200, limit_per_host=200)
        # No bound on the whole answer (a long stream may take its time), only on each wait.
        timeout = aiohttp.ClientTimeout(total=None, connect=10.0, sock_read=600.0)
        async with aiohttp.ClientSession(connector=connector, timeout=timeout) as client:
            holder["client"] = client
            yield

    app.state.upstream_client = upstream_client

    replies = service.replies
    background: set[asyncio.Task[None]] = set()  # held until done (the loop keeps weak refs)

    async def record_reply(
        mm: MemoryManager,
        session_id: str,
        answering: int | None,
        reply: dict[str, Any] | None,
        *,
        after_answer: bool,
    ) -> None:
        """Store the reply: now (a stream's, before its ``[DONE]``), or ``after_answer``,
        beside the answer on its way back, the session's next use waiting for it."""
        if reply is None:
            return
        if not after_answer:
            # A reply that cannot be stored never breaks the client's stream.
            await asyncio.to_thread(_store_or_warn, mm, session_id, reply, answering)
            return
        key = (mm.owner, session_id)
        done = replies.start(key)

        def store() -> None:
            try:
                _store_or_warn(mm, session_id, reply, answering)
            finally:
                replies.finish(key, done)

        task = asyncio.create_task(asyncio.to_thread(store))
        background.add(task)
        task.add_done_callback(background.discard)

    @app.post("/v1/chat/completions", tags=["proxy"])
    async def chat_completions(request: Request) -> Response:
        """OpenAI chat completions, with the history replaced by the assembled memory."""
        mm = service.view(owner_in(request))  # signed in before the body is read (KeyCheck)
        try:  # an unreadable body is a 400, as on every other route
            body = json.loads(await request.body())
        except ValueError:
            return _unreadable("the body is not valid JSON, UTF-8 encoded")
        except RecursionError:
            return _unreadable("the body is JSON nested too deeply to read")
        if not isinstance(body, dict) or not isinstance(body.get("messages"), list):
            raise InvalidInput("a chat completion needs a JSON object with a messages list")
        session_id = _utf8_header(request, SESSION_HEADER) or body.get("user")
        if not isinstance(session_id, str) or not session_id:
            raise InvalidInput(
                f"name the memory session: an {SESSION_HEADER} header or the body's user field"
            )
        if not config.upstream_url:
            raise InvalidConfiguration(
                "no upstream configured: start the service with --upstream URL (e.g. "
                "https://api.openai.com/v1)"
            )
        budget = _int_header(request, BUDGET_HEADER, config.budget)
        # Checked before anything is stored: a bad header writes nothing.
        target = get_target(request.headers.get(TARGET_HEADER) or config.target)
        # One thread hop waits for this session's previous reply to be stored, stores what
        # is new and assembles (short transactions).
        body["messages"], answering = await asyncio.to_thread(
            _settled_prepare, service.settle, mm, session_id, body["messages"], budget, target
        )
        headers = {"content-type": "application/json"}
        if config.upstream_api_key:
            headers["authorization"] = f"Bearer {config.upstream_api_key}"
        url = config.upstream_url.rstrip("/") + "/chat/completions"
        client = holder["client"]
        try:
            return await _forward(
                client, url, body, headers, partial(record_reply, mm, session_id, answering)
            )
        except (aiohttp.ClientError, TimeoutError) as exc:  # stored; the upstream did not answer
            message = (
                f"the upstream {config.upstream_url} did not answer ({type(exc).__name__}); "
                "the conversation is stored, and sending it again stores nothing twice"
            )
            return JSONResponse(error_body("UpstreamUnavailable", message), status_code=502)


def _store_or_warn(
    memory: MemoryManager, session_id: str, reply: dict[str, Any], answering: int | None
) -> None:
    """:func:`store_reply`, a failure logged: the client's next request carries the reply."""
    try:
        store_reply(memory, session_id, reply, answering=answering)
    except Exception as exc:
        log.warning(
            "the reply to session %r was not stored (%s: %s); the next request that carries "
            "it stores it",
            session_id,
            type(exc).__name__,
            exc,
        )


def store_reply(
    memory: MemoryManager,
    session_id: str,
    reply: dict[str, Any],
    *,
    answering: int | None = None,
) -> None:
    """Append the upstream's reply to the request whose prompt ended at turn ``answering``,
    once (see :func:`~optical_memory.adapters.openai.record_openai_reply`)."""
    record_openai_reply(memory, session_id, reply, answering=answering)


async def _forward(
    client: aiohttp.ClientSession,
    url: str,
    forward: dict[str, Any],
    headers: dict[str, str],
    record_reply: Callable[..., Awaitable[None]],
) -> Response:
    """Send the request upstream; pass its answer back (streamed as it comes) and record it:
    a whole answer's reply beside the answer on its way back (``record_reply(reply,
    after_answer=True)``), a stream's before the client sees its ``[DONE]``.

    The body is passed on decoded (a compressed answer is unpacked on the way), so its
    ``content-encoding`` is not passed on."""
    data = _dumps(forward)
    if not forward.get("stream"):
        async with client.post(url, data=data, headers=headers) as resp:
            content = await resp.read()
            media_type = resp.headers.get("content-type", "application/json")
            if resp.status == 200:
                try:
                    reply = json.loads(content)["choices"][0]["message"]
                except (ValueError, KeyError, IndexError, TypeError):
                    reply = None
                await record_reply(reply, after_answer=True)
        return Response(
            content, status_code=resp.status, headers=_passed(resp), media_type=media_type
        )
    upstream = await client.post(url, data=data, headers=headers)
    if upstream.status != 200:
        try:
            content = await upstream.read()
        finally:
            upstream.release()
        return Response(content, status_code=upstream.status, headers=_passed(upstream))

    async def relay() -> AsyncIterator[bytes]:
        reply = StreamedReply()
        recorded = False
        try:
            async for chunk in upstream.content.iter_any():
                reply.feed(chunk)
                if reply.done and not recorded:  # stored before the client sees [DONE]
                    recorded = True
                    await record_reply(reply.message(), after_answer=False)
                yield chunk
        finally:
            upstream.release()
            if not recorded and reply.finished:
                # The answer finished but its [DONE] never came (or the client left first):
                # stored beside, as no await may run in a cancelled stream. A stream cut
                # before its answer finished stores nothing: the client's next request
                # carries what it kept of it.
                await record_reply(reply.message(), after_answer=True)

    return StreamingResponse(relay(), status_code=200, headers=_passed(upstream))


def _passed(resp: aiohttp.ClientResponse) -> dict[str, str]:
    """The upstream's answer headers passed back to the client (rate limits, request ids,
    ``Retry-After``), less those of its own connection."""
    return {k: v for k, v in resp.headers.items() if k.lower() not in _NOT_PASSED}


def _unreadable(message: str) -> JSONResponse:
    return JSONResponse(error_body("InvalidInput", message), status_code=400)
