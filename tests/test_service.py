"""The HTTP service as a real process: ``optical-memory serve`` (uvicorn) on a SQLite file, API
keys made with ``optical-memory keys create``, called over real HTTP; the OpenAI-compatible
proxy driven by the official ``openai`` client against a fake upstream on 127.0.0.1.

One service process serves the whole module (started once by the ``svc`` fixture).
"""

from __future__ import annotations

import hashlib
import sqlite3
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")

from typer.testing import CliRunner  # noqa: E402

from benchmarks.service import FakeUpstream, ServiceProcess  # noqa: E402
from optical_memory.cli import app  # noqa: E402

runner = CliRunner()


def cli(*args: str):  # type: ignore[no-untyped-def]
    """``optical-memory ARGS`` in-process (the service itself runs as a real process)."""
    return runner.invoke(app, list(args))


def create_key(db: str, owner: str) -> str:
    out = cli("keys", "create", "--owner", owner, "--db", db)
    assert out.exit_code == 0, out.output
    return out.stdout.split()[-1]  # the key is the last word


pytestmark = pytest.mark.slow  # one uvicorn process for the module, a few seconds to start

LIMIT = 64 * 1024  # the module's service refuses bodies over this


@dataclass
class Svc:
    url: str
    db: str
    file: Path
    keys: dict[str, str]
    upstream: FakeUpstream

    def client(self, owner: str | None) -> httpx.Client:
        headers = {"authorization": f"Bearer {self.keys[owner]}"} if owner else {}
        return httpx.Client(base_url=self.url, headers=headers, timeout=30)


@pytest.fixture(scope="module")
def svc(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Svc]:
    file = tmp_path_factory.mktemp("service") / "memory.db"
    db = f"sqlite:///{file}"
    keys = {owner: create_key(db, owner) for owner in ("alice", "bob", "carol")}
    with FakeUpstream() as upstream:
        args = ["--upstream", upstream.url, "--max-body-bytes", str(LIMIT), "--age-every", "3600"]
        with ServiceProcess(db, *args) as proc:
            yield Svc(proc.url, db, file, keys, upstream)


def _sid() -> str:
    return f"chat-{uuid.uuid4().hex[:8]}"


# -- keys and authentication ---------------------------------------------------------------------


def test_keys_are_stored_only_as_hashes_and_listed_by_prefix(svc: Svc) -> None:
    key = svc.keys["alice"]
    assert key.startswith("om_") and len(key) > 40
    listed = cli("keys", "list", "--db", svc.db)
    assert listed.exit_code == 0, listed.output
    assert "alice" in listed.stdout and key not in listed.stdout and key[:10] in listed.stdout
    with sqlite3.connect(svc.file) as conn:
        rows = conn.execute("SELECT owner, key_hash FROM om_api_keys").fetchall()
    assert ("alice", hashlib.sha256(key.encode()).hexdigest()) in rows
    assert key.encode() not in svc.file.read_bytes()


def test_serve_refuses_to_start_open(tmp_path: Path) -> None:
    fresh = f"sqlite:///{tmp_path / 'fresh.db'}"
    no_keys = cli("serve", "--db", fresh, "--port", "1")
    assert no_keys.exit_code == 2 and "keys create" in no_keys.stderr
    exposed = cli("serve", "--db", fresh, "--no-auth", "--host", "0.0.0.0", "--port", "1")
    assert exposed.exit_code == 2 and "refusing to serve without API keys" in exposed.stderr


def test_requests_without_a_valid_key_get_401_and_revoked_keys_are_refused(svc: Svc) -> None:
    sid = _sid()
    with httpx.Client(base_url=svc.url, timeout=30) as anon:
        r = anon.get("/v1/sessions")
        assert r.status_code == 401 and r.json()["error"]["type"] == "NotSignedIn"
        r = anon.get("/v1/sessions", headers={"authorization": "Bearer om_not-a-key"})
        assert r.status_code == 401
    with svc.client("carol") as carol:
        assert (
            carol.post(
                f"/v1/sessions/{sid}/turns", json={"role": "user", "content": "hi"}
            ).status_code
            == 201
        )
        revoked = cli("keys", "revoke", svc.keys["carol"][:10], "--db", svc.db)
        assert revoked.exit_code == 0, revoked.output
        r = carol.get(f"/v1/sessions/{sid}/turns")
        assert r.status_code == 401 and r.json()["error"]["type"] == "NotSignedIn"
        r = carol.post("/v1/chat/completions", json={"model": "m", "messages": [], "user": sid})
        assert r.status_code == 401


# -- owners are namespaces -----------------------------------------------------------------------


def test_another_owners_session_is_404_on_every_endpoint(svc: Svc) -> None:
    sid = _sid()
    old = datetime.now(UTC) - timedelta(days=3)
    turns = [
        {
            "role": "user" if i % 2 == 0 else "assistant",
            "content": f"secret harbour {i} " * 20,
            "at": (old + timedelta(minutes=i)).isoformat(),
        }
        for i in range(40)
    ]
    with svc.client("alice") as alice, svc.client("bob") as bob:
        assert alice.post(f"/v1/sessions/{sid}/turns", json={"turns": turns}).status_code == 201
        alice.post("/v1/age", json={}).raise_for_status()
        page = alice.get(f"/v1/sessions/{sid}/pages").json()["pages"][0]
        for method, path, params in [
            ("GET", f"/v1/sessions/{sid}/turns", {}),
            ("GET", f"/v1/sessions/{sid}/span", {"first_turn": 1, "last_turn": 2}),
            ("GET", f"/v1/sessions/{sid}/recall", {"cue": "harbour"}),
            ("GET", f"/v1/sessions/{sid}/context", {}),
            ("GET", f"/v1/sessions/{sid}/pages", {}),
            ("GET", f"/v1/sessions/{sid}/pages/{page['page_id']}/image", {}),
            ("DELETE", f"/v1/sessions/{sid}", {}),
        ]:
            r = bob.request(method, path, params=params)
            assert r.status_code == 404, (path, r.text)
            assert r.json()["error"]["type"] == "UnknownSession"
        assert sid not in {s["session_id"] for s in bob.get("/v1/sessions").json()["sessions"]}
        assert len(alice.get(f"/v1/sessions/{sid}/turns").json()["turns"]) == 40


def test_two_owners_with_the_same_session_id_stay_apart(svc: Svc) -> None:
    """Needs owner namespaces (issue 18, point 1) in the store."""
    sid = _sid()
    with svc.client("alice") as alice, svc.client("bob") as bob:
        r = alice.post(
            f"/v1/sessions/{sid}/turns", json={"role": "user", "content": "alice's boat is red"}
        )
        assert r.status_code == 201
        r = bob.post(
            f"/v1/sessions/{sid}/turns", json={"role": "user", "content": "bob's boat is blue"}
        )
        assert r.status_code == 201, r.text
        for who, mine, theirs in [(alice, "red", "blue"), (bob, "blue", "red")]:
            turns = who.get(f"/v1/sessions/{sid}/turns").json()["turns"]
            assert [t["content"].split()[-1] for t in turns] == [mine]
            span = who.get(f"/v1/sessions/{sid}/span", params={"first_turn": 1, "last_turn": 1})
            assert theirs not in span.text
            assert theirs not in who.get(f"/v1/sessions/{sid}/recall", params={"cue": "boat"}).text
            ctx = who.get(f"/v1/sessions/{sid}/context", params={"format": "openai"}).json()
            assert mine in str(ctx) and theirs not in str(ctx)
        for who, colour in ((alice, "red"), (bob, "blue")):  # and through the proxy
            question = {"role": "user", "content": f"What colour is my boat? ({colour})"}
            r = who.post(
                "/v1/chat/completions", json={"model": "m", "messages": [question], "user": sid}
            )
            assert r.status_code == 200, r.text
            sent = svc.upstream.received[-1]["messages"]
            assert colour in str(sent) and ("blue" if colour == "red" else "red") not in str(sent)
        assert alice.delete(f"/v1/sessions/{sid}").json()["turns_deleted"] == 3
        assert [t["content"] for t in bob.get(f"/v1/sessions/{sid}/turns").json()["turns"]] == [
            "bob's boat is blue",
            "What colour is my boat? (blue)",
            svc.upstream.reply,
        ]


# -- bad input -------------------------------------------------------------------------------


def test_oversized_and_malformed_bodies_get_4xx_json_and_write_nothing(svc: Svc) -> None:
    sid = _sid()
    path = f"/v1/sessions/{sid}/turns"
    good = {"role": "user", "content": "fine"}
    naive = datetime(2025, 1, 1).isoformat()
    with svc.client("alice") as alice:
        cases = [
            (alice.post(path, json={"role": "user", "content": "x" * (LIMIT + 1)}), 413),
            (
                alice.post(
                    path,
                    content=b'{"role": "user", "content": ',
                    headers={"content-type": "application/json"},
                ),
                400,
            ),
            (alice.post(path, json={"role": "user"}), 422),
            (alice.post(path, json={"turns": [good, {"role": "wizard", "content": "x"}]}), 422),
            (
                alice.post(
                    path, json={"turns": [good, {"role": "user", "content": "x", "at": naive}]}
                ),
                422,
            ),
            (alice.post(path, json={"turns": []}), 422),
            (alice.post(path, json=["not", "an", "object"]), 422),
        ]
        for r, status in cases:
            assert r.status_code == status, r.text
            assert r.headers["content-type"].startswith("application/json")
            assert set(r.json()["error"]) == {"type", "message"} and r.json()["error"]["message"]

        def chunks() -> Iterator[bytes]:  # no Content-Length: counted as it arrives
            yield b'{"role": "user", "content": "'
            for _ in range(LIMIT // 1024 + 1):
                yield b"y" * 1024
            yield b'"}'

        r = alice.post(path, content=chunks(), headers={"content-type": "application/json"})
        assert r.status_code == 413 and r.json()["error"]["type"] == "BodyTooLarge"
        r = alice.get(path)
        assert r.status_code == 404  # nothing was written, not even the session


# -- the API round trip ----------------------------------------------------------------------


def test_turns_age_into_pages_served_as_images_and_assembled_in_three_shapes(svc: Svc) -> None:
    sid = _sid()
    start = datetime(2025, 1, 1, tzinfo=UTC)
    turns = [
        {
            "role": "user" if i % 2 == 0 else "assistant",
            "content": f"turn {i}: the ferry to island {i} leaves at {i % 12 + 1} o'clock. " * 6,
            "at": (start + timedelta(minutes=i)).isoformat(),
        }
        for i in range(80)
    ]
    with svc.client("alice") as alice:
        stored = alice.post(f"/v1/sessions/{sid}/turns", json={"turns": turns}).json()["turns"]
        assert [t["seq"] for t in stored] == list(range(1, 81))
        one = alice.post(f"/v1/sessions/{sid}/turns", json={"role": "user", "content": "and now?"})
        assert one.json()["turns"][0]["seq"] == 81
        report = alice.post("/v1/age", json={"now": (start + timedelta(days=3)).isoformat()}).json()
        assert report["pages_created"] > 0
        pages = alice.get(f"/v1/sessions/{sid}/pages").json()["pages"]
        imaged = [p for p in pages if p["tier"] != "text"]
        assert imaged
        p = imaged[0]
        png = alice.get(f"/v1/sessions/{sid}/pages/{p['page_id']}/image")
        assert (
            png.headers["content-type"] == "image/png" and png.content[:8] == b"\x89PNG\r\n\x1a\n"
        )
        faint = alice.get(f"/v1/sessions/{sid}/pages/{p['page_id']}/image", params={"tier": "tiny"})
        assert faint.status_code == 200 and len(faint.content) < len(png.content)
        nope = alice.get(f"/v1/sessions/{sid}/pages/999999/image")
        assert nope.status_code == 404 and nope.json()["error"]["type"] == "UnknownPage"
        span = alice.get(
            f"/v1/sessions/{sid}/span",
            params={"first_turn": p["first_seq"], "last_turn": p["last_seq"]},
        )
        assert [t["content"] for t in span.json()["turns"]] == [
            t["content"] for t in turns[p["first_seq"] - 1 : p["last_seq"]]
        ]
        hits = alice.get(f"/v1/sessions/{sid}/recall", params={"cue": "island 7"}).json()["turns"]
        assert any("island 7 " in h["content"] for h in hits)

        params = {"budget": 2000, "target": "deepseek-ocr"}
        js = alice.get(f"/v1/sessions/{sid}/context", params={**params, "format": "json"}).json()
        assert js["tokens"] <= 2000 and any(s["kind"] == "page" for s in js["segments"])
        assert js["segments"][-1] == {**js["segments"][-1], "kind": "text", "content": "and now?"}
        oa = alice.get(
            f"/v1/sessions/{sid}/context",
            params={**params, "format": "openai", "system": "Be brief."},
        ).json()
        assert oa["messages"][0] == {"role": "system", "content": "Be brief."}
        assert any(
            part.get("type") == "image_url"
            for m in oa["messages"]
            if isinstance(m["content"], list)
            for part in m["content"]
        )
        an = alice.get(
            f"/v1/sessions/{sid}/context", params={**params, "format": "anthropic"}
        ).json()
        assert an["messages"][0]["role"] == "user"
        blocks = an["messages"][0]["content"]
        assert any(
            b["type"] == "image" and b["source"]["media_type"] == "image/png" for b in blocks
        )
        roles = [m["role"] for m in an["messages"]]
        assert all(a != b for a, b in zip(roles, roles[1:], strict=False))  # they alternate
        bad = alice.get(f"/v1/sessions/{sid}/context", params={"format": "yaml"})
        assert bad.status_code == 422 and bad.json()["error"]["type"] == "InvalidInput"
        bad = alice.get(f"/v1/sessions/{sid}/context", params={"budget": 0})
        assert bad.status_code == 422 and bad.json()["error"]["type"] == "InvalidBudget"
        bad = alice.get(f"/v1/sessions/{sid}/context", params={"target": "gpt-99"})
        assert bad.status_code == 422 and bad.json()["error"]["type"] == "UnknownTarget"

        verify = alice.post("/v1/verify", json={"repair": False}).json()
        assert verify["pages_checked"] >= len(pages) and verify["problems"] == []
        assert alice.delete(f"/v1/sessions/{sid}").json()["turns_deleted"] == 81
        assert alice.get(f"/v1/sessions/{sid}/turns").status_code == 404


def test_the_aging_scheduler_runs_inside_the_service(svc: Svc) -> None:
    import time

    deadline = time.monotonic() + 60
    while (health := httpx.get(svc.url + "/v1/health").json())["scheduler"]["passes"] < 1:
        assert time.monotonic() < deadline, health
        time.sleep(0.2)
    assert health["scheduler"]["running"] and health["scheduler"]["failures"] == 0


def test_openapi_schema_and_docs_are_served(svc: Svc) -> None:
    schema = httpx.get(svc.url + "/openapi.json").json()
    for path in (
        "/v1/sessions/{session_id}/turns",
        "/v1/sessions/{session_id}/context",
        "/v1/chat/completions",
    ):
        assert path in schema["paths"]
    assert "swagger" in httpx.get(svc.url + "/docs").text.lower()


# -- the OpenAI-compatible proxy -----------------------------------------------------------------


def _openai(svc: Svc, owner: str, **headers: str):  # type: ignore[no-untyped-def]
    openai = pytest.importorskip("openai")
    return openai.OpenAI(
        base_url=svc.url + "/v1", api_key=svc.keys[owner], default_headers=headers, max_retries=0
    )


def _turns(svc: Svc, owner: str, sid: str) -> list[tuple[str, str]]:
    with svc.client(owner) as c:
        return [
            (t["role"], t["content"]) for t in c.get(f"/v1/sessions/{sid}/turns").json()["turns"]
        ]


def test_the_proxy_streams_unchanged_and_records_each_message_exactly_once(svc: Svc) -> None:
    sid = _sid()
    client = _openai(svc, "alice", **{"X-Memory-Session": sid})
    messages = [
        {"role": "system", "content": "You are a harbour guide."},
        {"role": "user", "content": "Who keeps the lighthouse?"},
    ]
    before = len(svc.upstream.received)
    stream = client.chat.completions.create(model="fake-model", messages=messages, stream=True)
    pieces = [c.choices[0].delta.content or "" for c in stream if c.choices]
    assert "".join(pieces) == svc.upstream.reply
    assert len(pieces) >= 3  # it came in chunks, not one body
    sent = svc.upstream.received[before]
    assert sent["stream"] is True and sent["model"] == "fake-model"
    assert sent["messages"][0] == messages[0]  # the client's system message stays first
    assert sent["messages"][-1] == {"role": "user", "content": "Who keeps the lighthouse?"}
    assert _turns(svc, "alice", sid) == [
        ("user", "Who keeps the lighthouse?"),
        ("assistant", svc.upstream.reply),
    ]
    # The client sends the whole conversation again, with the reply and a new question.
    messages += [
        {"role": "assistant", "content": svc.upstream.reply},
        {"role": "user", "content": "And who rows the ferry?"},
    ]
    reply = client.chat.completions.create(model="fake-model", messages=messages)
    assert reply.choices[0].message.content == svc.upstream.reply
    assert _turns(svc, "alice", sid) == [
        ("user", "Who keeps the lighthouse?"),
        ("assistant", svc.upstream.reply),
        ("user", "And who rows the ferry?"),
        ("assistant", svc.upstream.reply),
    ]


def test_the_proxy_replaces_old_history_with_memory_under_the_budget(svc: Svc) -> None:
    sid = _sid()
    history = []
    for i in range(60):
        role = "user" if i % 2 == 0 else "assistant"
        history.append({"role": role, "content": f"message {i} about the ferry timetable. " * 8})
    history.append({"role": "user", "content": "What did we say about the ferry?"})
    client = _openai(svc, "bob")
    before = len(svc.upstream.received)
    client.chat.completions.create(
        model="m", messages=history, user=sid, extra_headers={"X-Memory-Budget": "600"}
    )
    sent = svc.upstream.received[before]["messages"]
    assert len(sent) < len(history) and sent[-1] == history[-1]
    assert len(_turns(svc, "bob", sid)) == 62  # 61 sent and the reply, each once
    with svc.client("alice") as alice:
        assert alice.get(f"/v1/sessions/{sid}/turns").status_code == 404
    with svc.client("bob") as bob:
        r = bob.post("/v1/chat/completions", json={"model": "m", "messages": history})
        assert r.status_code == 422 and "x-memory-session" in r.json()["error"]["message"]
        r = bob.post(
            "/v1/chat/completions",
            json={"model": "m", "messages": history, "user": sid},
            headers={"x-memory-budget": "lots"},
        )
        assert r.status_code == 422 and r.json()["error"]["type"] == "InvalidBudget"


def test_serve_without_the_service_extra_says_which_extra_in_one_line(tmp_path: Path) -> None:
    import subprocess
    import sys

    code = (
        "import sys; sys.modules['fastapi'] = None\n"  # as if the extra were not installed
        "from optical_memory.cli import main\n"
        f"sys.argv = ['optical-memory', 'serve', '--no-auth', '--db', 'sqlite:///{tmp_path}/x.db']\n"
        "main()"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 2
    assert out.stderr.strip().splitlines() == [
        "error: the service needs the service extra: pip install 'optical-memory[service]'"
    ]
