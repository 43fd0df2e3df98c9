"""A real OpenAI-compatible HTTP server on 127.0.0.1 that records every request it is sent.

It answers ``POST /v1/chat/completions`` with a valid chat completion (the reply text is
``reply``), so real clients (``openai``, ``langchain_openai.ChatOpenAI``) can be driven
against it and the tests can read exactly what they sent.
"""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


class RecordingChatServer:
    def __init__(self, reply: str = "Noted.") -> None:
        self.reply = reply
        self.requests: list[dict[str, Any]] = []
        self.headers: dict[str, str] = {}  # sent with every whole answer (rate limits, ids)
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                if outer.streamed(self, body):
                    return
                status, answer = outer.answer(self.path, body)
                data = json.dumps(answer).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                for name, value in outer.headers.items():
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: Any) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"

    def answer(self, path: str, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        """Record the request and answer it (a subclass may check or script the answer)."""
        self.requests.append({"path": path, "body": body})
        return 200, self.completion(body)

    def streamed(self, handler: BaseHTTPRequestHandler, body: dict[str, Any]) -> bool:
        """Answer the request as a stream, writing to ``handler`` (a subclass may); False: it
        gets the whole answer."""
        return False

    def completion(self, body: dict[str, Any]) -> dict[str, Any]:
        n = len(self.requests)
        return {
            "id": f"chatcmpl-{n}",
            "object": "chat.completion",
            "created": 1_700_000_000,
            "model": body.get("model", "local"),
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": self.reply},
                    "finish_reason": "stop",
                }
            ],
            "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
        }

    def __enter__(self) -> RecordingChatServer:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(timeout=5)
