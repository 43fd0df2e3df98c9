"""The service under load, on loopback: add-and-assemble requests from concurrent clients, and
what the OpenAI-compatible proxy adds over calling the upstream directly.

    python -m benchmarks.service                         # SQLite, 8 clients x 25 requests
    python -m benchmarks.service --pg-url postgresql://postgres@127.0.0.1:5432/test
    python -m benchmarks.service --clients 50 --requests 200 --pg-url ...   # the issue's size

Starts ``optical-memory serve`` as a real process (uvicorn, API keys on) on a fresh database,
then ``--clients`` threads, each with its own session and HTTP connection, send ``--requests``
rounds of ``POST /v1/sessions/{id}/turns`` and ``GET /v1/sessions/{id}/context?format=openai``
(budget 4096). Reported: p50/p99 of one round, rounds per second, errors (goal 0) and turns
lost (turns acknowledged but not stored; goal 0). Then a fake OpenAI upstream on 127.0.0.1
(a real HTTP server, see :class:`FakeUpstream`) is called directly and through the proxy
(``/v1/chat/completions``, 4k budget, the conversation growing each call): the proxy's added
latency is the difference of the p50s (goal ≤ 10 ms).

:class:`FakeUpstream` and :class:`ServiceProcess` are used by the tests too.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
import zlib
from gzip import compress as gzip_compress
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx

from benchmarks.scratch import scratch_pg_database

REPO = Path(__file__).resolve().parent.parent
CLI = [sys.executable, "-c", "from optical_memory.cli import main; main()"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run ``optical-memory ARGS`` in a subprocess."""
    return subprocess.run(
        [*CLI, *args],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, **(env or {})},
    )


def create_key(db: str, owner: str) -> str:
    """``optical-memory keys create --owner OWNER``: the key is the last word it prints."""
    out = cli("keys", "create", "--owner", owner, "--db", db)
    if out.returncode != 0:
        raise RuntimeError(out.stderr)
    return out.stdout.split()[-1]


# -- a fake OpenAI upstream ---------------------------------------------------------------------


class FakeUpstream:
    """A chat-completions server on 127.0.0.1 that records every request body it receives and
    answers ``reply`` (as JSON, or as server-sent events in a few chunks when asked to stream).
    ``gzip``: compress the answers of clients that accept it, as many servers do (each event
    flushed as it is sent)."""

    def __init__(
        self, reply: str = "Noted, the lighthouse keeper was called Ada.", *, gzip: bool = False
    ) -> None:
        self.reply = reply
        self.gzip = gzip
        self.received: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        upstream = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            disable_nagle_algorithm = True  # headers and body go out as two writes

            def log_message(self, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers.get("content-length", 0))))
                with upstream._lock:
                    upstream.received.append(body)
                packed = upstream.gzip and "gzip" in self.headers.get("accept-encoding", "")
                if body.get("stream"):
                    self.send_response(200)
                    self.send_header("content-type", "text/event-stream")
                    self.send_header("cache-control", "no-cache")
                    self.send_header("connection", "close")
                    if packed:
                        self.send_header("content-encoding", "gzip")
                    self.end_headers()
                    packer = zlib.compressobj(wbits=31) if packed else None
                    for event in upstream.stream_events(body.get("model", "fake")):
                        if packer is not None:
                            event = packer.compress(event) + packer.flush(zlib.Z_SYNC_FLUSH)
                        self.wfile.write(event)
                        self.wfile.flush()
                    if packer is not None:
                        self.wfile.write(packer.flush())
                    self.close_connection = True
                    return
                data = json.dumps(upstream.completion(body.get("model", "fake"))).encode()
                self.send_response(200)
                self.send_header("content-type", "application/json")
                if packed:
                    data = gzip_compress(data)
                    self.send_header("content-encoding", "gzip")
                self.send_header("content-length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"

    def completion(self, model: str) -> dict[str, Any]:
        return {
            "id": "chatcmpl-fake",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": model,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": self.reply},
                    "finish_reason": "stop",
                }
            ],
            "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
        }

    def stream_events(self, model: str) -> list[bytes]:
        words = self.reply.split(" ")
        pieces = [w if i == 0 else " " + w for i, w in enumerate(words)]
        out = []
        for i, piece in enumerate(pieces):
            delta: dict[str, Any] = {"content": piece}
            if i == 0:
                delta["role"] = "assistant"
            chunk = {
                "id": "chatcmpl-fake",
                "object": "chat.completion.chunk",
                "created": 0,
                "model": model,
                "choices": [{"index": 0, "delta": delta, "finish_reason": None}],
            }
            out.append(f"data: {json.dumps(chunk)}\n\n".encode())
        end = {
            "id": "chatcmpl-fake",
            "object": "chat.completion.chunk",
            "created": 0,
            "model": model,
            "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}],
        }
        out.append(f"data: {json.dumps(end)}\n\n".encode())
        out.append(b"data: [DONE]\n\n")
        return out

    def __enter__(self) -> FakeUpstream:
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


# -- the service as a process -------------------------------------------------------------------


class ServiceProcess:
    """``optical-memory serve`` in a subprocess on a free loopback port, until closed."""

    def __init__(self, db: str, *args: str, env: dict[str, str] | None = None) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = tempfile.NamedTemporaryFile(  # noqa: SIM115 (closed in close())
            prefix="om-serve-", suffix=".log", delete=False
        )
        cmd = [*CLI, "serve", "--db", db, "--port", str(self.port), *args]
        self.proc = subprocess.Popen(
            cmd, stdout=self.log, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})}
        )
        self._wait()

    def _wait(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"serve exited {self.proc.returncode}: {self.output()}")
            try:
                if httpx.get(self.url + "/v1/health", timeout=1).status_code in (200, 401):
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        self.close()
        raise RuntimeError(f"serve did not answer in {timeout} s: {self.output()}")

    def output(self) -> str:
        return Path(self.log.name).read_text(errors="replace")

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()
        Path(self.log.name).unlink(missing_ok=True)

    def __enter__(self) -> ServiceProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# -- the measurements ---------------------------------------------------------------------------


def _pct(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(q * len(s)))] if s else float("nan")


def load(url: str, key: str, clients: int, requests: int) -> dict[str, Any]:
    """``clients`` threads × ``requests`` add-and-assemble rounds; latency of each round."""
    headers = {"authorization": f"Bearer {key}"}
    latencies: list[float] = []
    errors: list[str] = []
    acked: dict[str, int] = {}
    lock = threading.Lock()
    run = uuid.uuid4().hex[:8]
    start = threading.Barrier(clients)

    def client(i: int) -> None:
        sid = f"bench-{run}-{i}"
        mine: list[float] = []
        n = 0
        with httpx.Client(base_url=url, headers=headers, timeout=60) as c:
            start.wait()
            for j in range(requests):
                role = "user" if j % 2 == 0 else "assistant"
                text = f"round {j} of client {i}: the harbour at dawn, boat number {j * 7}."
                t0 = time.perf_counter()
                try:
                    r = c.post(f"/v1/sessions/{sid}/turns", json={"role": role, "content": text})
                    r.raise_for_status()
                    n += 1
                    r = c.get(f"/v1/sessions/{sid}/context", params={"format": "openai"})
                    r.raise_for_status()
                except httpx.HTTPError as exc:
                    with lock:
                        errors.append(f"{type(exc).__name__}: {exc}"[:200])
                    continue
                mine.append(time.perf_counter() - t0)
        with lock:
            latencies.extend(mine)
            acked[sid] = n

    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    lost = 0
    with httpx.Client(base_url=url, headers=headers, timeout=60) as c:
        for sid, n in acked.items():
            stored = len(c.get(f"/v1/sessions/{sid}/turns").json().get("turns", []))
            lost += max(0, n - stored)
    return {
        "clients": clients,
        "requests": requests,
        "p50_ms": _pct(latencies, 0.5) * 1000,
        "p99_ms": _pct(latencies, 0.99) * 1000,
        "rounds_per_s": len(latencies) / wall,
        "errors": len(errors),
        "turns_lost": lost,
        "first_errors": errors[:3],
    }


def proxy_overhead(url: str, key: str, upstream: FakeUpstream, calls: int) -> dict[str, Any]:
    """p50 of a chat completion straight to the fake upstream and through the proxy."""
    direct: list[float] = []
    proxied: list[float] = []
    body = {"model": "fake", "messages": [{"role": "user", "content": "hello"}]}
    with httpx.Client(timeout=60) as c:
        for _ in range(calls):
            t0 = time.perf_counter()
            c.post(upstream.url + "/chat/completions", json=body).raise_for_status()
            direct.append(time.perf_counter() - t0)
        messages: list[dict[str, Any]] = []
        sid = f"proxy-{uuid.uuid4().hex[:8]}"
        headers = {"authorization": f"Bearer {key}", "x-memory-session": sid}
        floor: list[float] = []  # one authenticated request that does no store work
        for _ in range(calls):
            t0 = time.perf_counter()
            c.get(url + "/v1/sessions/none/turns", headers=headers)
            floor.append(time.perf_counter() - t0)
        for i in range(calls):
            messages.append({"role": "user", "content": f"question {i}: where is boat {i}?"})
            t0 = time.perf_counter()
            r = c.post(
                url + "/v1/chat/completions",
                json={"model": "fake", "messages": messages},
                headers={**headers, "x-memory-budget": "4096"},
            )
            r.raise_for_status()
            proxied.append(time.perf_counter() - t0)
            messages.append(r.json()["choices"][0]["message"])
    d, p = statistics.median(direct) * 1000, statistics.median(proxied) * 1000
    f = statistics.median(floor) * 1000
    return {
        "direct_p50_ms": d,
        "direct_p99_ms": _pct(direct, 0.99) * 1000,
        "proxy_p50_ms": p,
        "proxy_p99_ms": _pct(proxied, 0.99) * 1000,
        "added_p50_ms": p - d,
        "floor_p50_ms": f,
        "calls": calls,
    }


def long_proxy_overhead(
    url: str, key: str, upstream: FakeUpstream, calls: int, db: str, history: int
) -> dict[str, Any]:
    """The proxy on a long conversation, over its 4k budget: ``history`` turns of varied chat
    (``benchmarks.chatgen``, spread over 55 days) stored and aged first, so the prompt is
    pages, recalled text and recent text, and each question is a cue. The direct call sends
    the same whole conversation, as the client would without the proxy; the proxied one sends
    it to the proxy, which forwards the assembled memory (page images: a bigger body, which
    the upstream reads too). That body is also sent straight to the upstream after each
    call: the proxy's own work is the proxied time less that."""
    from datetime import UTC, datetime, timedelta

    from benchmarks.chatgen import conversation
    from optical_memory import MemoryManager

    sid = f"long-{uuid.uuid4().hex[:8]}"
    start = datetime.now(UTC) - timedelta(days=60)
    turns = conversation(history, start, timedelta(days=55) / history)
    with MemoryManager(db, owner="bench") as mm:
        mm.add_turns(sid, turns)
        mm.age()
        pages = len(mm.pages(sid))
    messages: list[dict[str, Any]] = [{"role": t["role"], "content": t["content"]} for t in turns]
    headers = {"authorization": f"Bearer {key}", "x-memory-session": sid}
    direct: list[float] = []
    proxied: list[float] = []
    memory_direct: list[float] = []
    with httpx.Client(timeout=60) as c:
        for i in range(calls):
            ask = {"role": "user", "content": f"question {i}: when did Maya book flights to Lisbon?"}
            body = {"model": "fake", "messages": [*messages, ask]}
            t0 = time.perf_counter()
            c.post(upstream.url + "/chat/completions", json=body).raise_for_status()
            direct.append(time.perf_counter() - t0)
            messages.append(ask)
            upstream.received.clear()  # two bodies a call: keep only this call's
            t0 = time.perf_counter()
            r = c.post(
                url + "/v1/chat/completions",
                json={"model": "fake", "messages": messages},
                headers={**headers, "x-memory-budget": "4096"},
            )
            r.raise_for_status()
            proxied.append(time.perf_counter() - t0)
            messages.append(r.json()["choices"][0]["message"])
            memory_body = json.dumps(upstream.received[-1]).encode()
            t0 = time.perf_counter()  # what the upstream takes to read the memory itself
            c.post(
                upstream.url + "/chat/completions",
                content=memory_body,
                headers={"content-type": "application/json"},
            ).raise_for_status()
            memory_direct.append(time.perf_counter() - t0)
    sent = len(json.dumps(body))
    forwarded = len(memory_body)
    d, p = statistics.median(direct) * 1000, statistics.median(proxied) * 1000
    md = statistics.median(memory_direct) * 1000
    return {
        "direct_p50_ms": d,
        "memory_direct_p50_ms": md,
        "own_p50_ms": p - md,
        "proxy_p50_ms": p,
        "proxy_p99_ms": _pct(proxied, 0.99) * 1000,
        "added_p50_ms": p - d,
        "calls": calls,
        "history": history,
        "pages": pages,
        "sent_bytes": sent,
        "forwarded_bytes": forwarded,
    }


def bench(db: str, label: str, args: argparse.Namespace) -> None:
    with FakeUpstream() as upstream:
        key = create_key(db, "bench")
        serve_args = ["--upstream", upstream.url, "--workers", str(args.workers)]
        with ServiceProcess(db, *serve_args, "--age-every", "0") as svc:
            if not args.proxy_only:
                result = load(svc.url, key, args.clients, args.requests)
                print(
                    f"{label}: {result['clients']} clients x {result['requests']} "
                    f"add-and-assemble rounds: p50 {result['p50_ms']:.1f} ms, p99 "
                    f"{result['p99_ms']:.1f} ms, {result['rounds_per_s']:.0f} rounds/s, "
                    f"errors {result['errors']}, turns lost {result['turns_lost']}",
                    flush=True,
                )
                for e in result["first_errors"]:
                    print(f"  error: {e}")
            over = proxy_overhead(svc.url, key, upstream, args.proxy_calls)
            long = (
                long_proxy_overhead(
                    svc.url, key, upstream, args.proxy_calls, db, args.proxy_history
                )
                if args.proxy_history
                else None
            )
    print(
        f"{label}: proxy over {over['calls']} calls: upstream direct p50 "
        f"{over['direct_p50_ms']:.1f} ms (p99 {over['direct_p99_ms']:.1f}), through the proxy "
        f"p50 {over['proxy_p50_ms']:.1f} ms (p99 {over['proxy_p99_ms']:.1f}): added "
        f"{over['added_p50_ms']:.1f} ms (goal <= 10 ms); the service's floor (an "
        f"authenticated 404, no store work) p50 {over['floor_p50_ms']:.1f} ms",
        flush=True,
    )
    if long is not None:
        print(
            f"{label}: proxy on a {long['history']}-turn aged conversation ({long['pages']} "
            f"pages), {long['calls']} calls: direct (the whole conversation, "
            f"{long['sent_bytes'] / 1e3:.0f} kB) p50 {long['direct_p50_ms']:.1f} ms, through the "
            f"proxy (forwarding {long['forwarded_bytes'] / 1e3:.0f} kB of memory) p50 "
            f"{long['proxy_p50_ms']:.1f} ms (p99 {long['proxy_p99_ms']:.1f}): added "
            f"{long['added_p50_ms']:.1f} ms; the memory's body sent directly p50 "
            f"{long['memory_direct_p50_ms']:.1f} ms, so the proxy's own work "
            f"{long['own_p50_ms']:.1f} ms",
            flush=True,
        )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--requests", type=int, default=25)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--proxy-calls", type=int, default=40)
    parser.add_argument(
        "--proxy-history",
        type=int,
        default=1000,
        help="turns of the long, aged conversation the proxy is also timed on (0: skip)",
    )
    parser.add_argument("--pg-url", default=os.environ.get("OPTICAL_MEMORY_TEST_PG_URL"))
    parser.add_argument("--no-sqlite", action="store_true")
    parser.add_argument(
        "--proxy-only", action="store_true", help="skip the load; measure the proxy alone"
    )
    args = parser.parse_args(argv)
    if not args.no_sqlite:
        with tempfile.TemporaryDirectory() as tmp:
            bench(f"sqlite:///{Path(tmp) / 'bench.db'}", "sqlite", args)
    if args.pg_url:
        with scratch_pg_database(args.pg_url, "om_svcbench") as url:
            bench(url, "postgresql", args)


if __name__ == "__main__":
    main()
