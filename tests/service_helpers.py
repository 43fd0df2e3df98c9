"""Helpers for the service tests: the app in a real uvicorn server on loopback, in this
process, and an upstream that answers each request with a scripted server-sent-event stream.

Import as ``from service_helpers import …`` (pytest puts ``tests/`` on ``sys.path``), after
``pytest.importorskip("uvicorn")``.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import uvicorn

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


def delta(content: str, finish: str | None = None) -> dict[str, Any]:
    """One chat-completions stream chunk carrying ``content``."""
    choice = {"index": 0, "delta": {"content": content}, "finish_reason": finish}
    return {"id": "c1", "object": "chat.completion.chunk", "model": "m", "choices": [choice]}


class ScriptedUpstream:
    """An OpenAI-compatible upstream on 127.0.0.1 that streams the chunks set in ``script``
    to each streaming request, each flushed on its own, and then closes the connection (with
    no end of the chunked body when ``cut``: the stream breaks); a request that does not
    stream gets ``reply`` as a whole answer."""

    def __init__(self) -> None:
        self.script: list[bytes] = []
        self.cut = False
        self.reply = "hi"
        upstream = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers.get("content-length", 0))))
                if not body.get("stream"):
                    message = {"role": "assistant", "content": upstream.reply}
                    choice = {"index": 0, "message": message, "finish_reason": "stop"}
                    answer = json.dumps(
                        {"id": "c1", "object": "chat.completion", "choices": [choice]}
                    )
                    self.send_response(200)
                    self.send_header("content-type", "application/json")
                    self.send_header("content-length", str(len(answer)))
                    self.end_headers()
                    self.wfile.write(answer.encode())
                    return
                self.send_response(200)
                self.send_header("content-type", "text/event-stream")
                self.send_header("transfer-encoding", "chunked")
                self.send_header("connection", "close")
                self.end_headers()
                for chunk in upstream.script:
                    self.wfile.write(f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n")
                    self.wfile.flush()
                    time.sleep(0.01)
                if not upstream.cut:
                    self.wfile.write(b"0\r\n\r\n")
                self.wfile.flush()
                self.close_connection = True

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> ScriptedUpstream:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()
