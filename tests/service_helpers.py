"""Helpers for the service tests: the app in a real uvicorn server on loopback, in this
process, and an upstream that answers each streaming request with a scripted server-sent-event stream.

Import as ``from service_helpers import …`` (pytest puts ``tests/`` on ``sys.path``), after
``pytest.importorskip("uvicorn")``.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler
from typing import Any

import uvicorn
from chat_server import RecordingChatServer

from benchmarks.service import free_port
from optical_memory import MemoryManager
from optical_memory.adapters.service import ServiceConfig, create_app


@contextmanager
def serving(
    memory: MemoryManager, config: ServiceConfig, *, own_memory: bool = False
) -> Iterator[str]:
    """The service's app over ``memory`` in a uvicorn server on a free loopback port
    (``own_memory``: the app closes the manager as it shuts down, as ``serve`` does)."""
    port = free_port()
    app = create_app(memory, config, own_memory=own_memory)
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="error"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)


def sse(*events: dict[str, Any] | str) -> list[bytes]:
    """Server-sent events as an upstream writes them (``"[DONE]"`` as is), one chunk each;
    JSON as Python's ``json`` writes it by default (ASCII, characters past the BMP as
    surrogate escapes)."""
    return [
        b"data: " + (e.encode() if isinstance(e, str) else json.dumps(e).encode()) + b"\n\n"
        for e in events
    ]


MCP_INITIALIZE: dict[str, Any] = {
    "jsonrpc": "2.0",
    "id": 1,
    "method": "initialize",
    "params": {
        "protocolVersion": "2025-06-18",
        "capabilities": {},
        "clientInfo": {"name": "t", "version": "1"},
    },
}
"""An MCP client's first request, as JSON-RPC over streamable HTTP."""


def delta(content: str, finish: str | None = None) -> dict[str, Any]:
    """One chat-completions stream chunk carrying ``content``."""
    choice = {"index": 0, "delta": {"content": content}, "finish_reason": finish}
    return {"id": "c1", "object": "chat.completion.chunk", "model": "m", "choices": [choice]}


class ScriptedUpstream(RecordingChatServer):
    """The recording upstream of ``chat_server``, streaming the chunks set in ``script`` to
        each streaming request, each flushed on its own, and then closing the connection (with no
        end of the chunked body when ``cut``: the stream breaks); a request that does not stream
        gets ``reply`` as a whole answer. A ``status`` other than 200 answers every request with it
    (and ``headers``), as an upstream refusing the call does. With ``hold`` set, every answer
    waits (once its request is recorded) until that event is set: an answer on its way."""

    def __init__(self) -> None:
        super().__init__(reply="hi")
        self.script: list[bytes] = []
        self.cut = False
        self.status = 200  # of every answer, whole or streamed
        self.hold: threading.Event | None = None

    def _wait(self) -> None:
        if self.hold is not None:
            assert self.hold.wait(30), "the test never let the answer go"

    def answer(self, path: str, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        status, answer = super().answer(path, body)
        self._wait()
        if self.status != 200:
            return self.status, {"error": {"message": "scripted", "type": "scripted"}}
        return status, answer

    @property
    def url(self) -> str:
        return self.base_url

    def streamed(self, handler: BaseHTTPRequestHandler, body: dict[str, Any]) -> bool:
        if not body.get("stream"):
            return False
        self.requests.append({"path": handler.path, "body": body})
        self._wait()
        handler.protocol_version = "HTTP/1.1"  # chunked: a cut body is a broken stream
        if self.status != 200:
            handler.send_response(self.status)
            handler.send_header("content-type", "application/json")
            handler.send_header("content-length", "2")
            for name, value in self.headers.items():
                handler.send_header(name, value)
            handler.end_headers()
            handler.wfile.write(b"{}")
            handler.close_connection = True
            return True
        handler.send_response(200)
        handler.send_header("content-type", "text/event-stream")
        handler.send_header("transfer-encoding", "chunked")
        handler.send_header("connection", "close")
        handler.end_headers()
        for chunk in self.script:
            handler.wfile.write(f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n")
            handler.wfile.flush()
            time.sleep(0.01)
        if not self.cut:
            handler.wfile.write(b"0\r\n\r\n")
        handler.wfile.flush()
        handler.close_connection = True
        return True
