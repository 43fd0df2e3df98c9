"""The HTTP service as a real process: ``optical-memory serve`` (uvicorn) on a SQLite file, API
keys made with ``optical-memory keys create``, called over real HTTP; the OpenAI-compatible
proxy driven by the official ``openai`` client against a fake upstream on 127.0.0.1.

One service process serves the whole module (started once by the ``svc`` fixture).
"""

from __future__ import annotations

import base64
import hashlib
import io
import sqlite3
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")

from PIL import Image  # noqa: E402
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
KEY_CACHE = 0.5  # seconds the module's service remembers a key's owner


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
        args = [
            *("--upstream", upstream.url, "--max-body-bytes", str(LIMIT)),
            *("--age-every", "3600", "--key-cache-seconds", str(KEY_CACHE)),
        ]
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
    for bad, says in (
        (["--age-every", "nan"], "age_every"),
        (["--age-every", "1e9"], "age_every"),
        (["--owner", ""], "owner"),
    ):
        refused = cli("serve", "--db", fresh, "--no-auth", "--port", "1", *bad)
        assert refused.exit_code == 2 and says in refused.stderr, refused.output
    ignored = cli("serve", "--db", fresh, "--owner", "ana", "--port", "1")
    assert ignored.exit_code == 2 and "--no-auth" in ignored.stderr
    both = cli("mcp", "--db", fresh, "--owner", "bob", "--key", "om_x")
    assert both.exit_code == 2 and "not both" in both.stderr


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
        assert carol.get(f"/v1/sessions/{sid}/turns").status_code == 200  # the key is cached
        revoked = cli("keys", "revoke", svc.keys["carol"][:10], "--db", svc.db)
        assert revoked.exit_code == 0, revoked.output
        # refused once the service's memory of the key (KEY_CACHE seconds) runs out
        deadline = time.monotonic() + KEY_CACHE + 30
        while (r := carol.get(f"/v1/sessions/{sid}/turns")).status_code == 200:
            assert time.monotonic() < deadline, "a revoked key was still served"
            time.sleep(0.05)
        assert r.status_code == 401 and r.json()["error"]["type"] == "NotSignedIn"
        r = carol.post("/v1/chat/completions", json={"model": "m", "messages": [], "user": sid})
        assert r.status_code == 401


def test_the_key_is_checked_before_the_body_is_read(svc: Svc) -> None:
    """Without a valid key, a malformed, wrong-shaped or oversized body gets 401, not 400,
    413 or 422: nobody learns what the service would make of a body they may not send."""
    sid = _sid()
    bad_bodies = [b'{"model": "m", "messages": ', b"[1, 2]", b"x" * (LIMIT + 1)]
    with httpx.Client(base_url=svc.url, timeout=30) as anon:
        for auth in ({}, {"authorization": "Bearer om_not-a-key"}):
            for path in ("/v1/chat/completions", f"/v1/sessions/{sid}/turns"):
                for body in bad_bodies:
                    r = anon.post(
                        path, content=body, headers={**auth, "content-type": "application/json"}
                    )
                    assert r.status_code == 401, (path, body[:20], r.text)
                    assert r.json()["error"]["type"] == "NotSignedIn"
                    assert r.headers["www-authenticate"] == "Bearer"
    with svc.client("alice") as alice:  # with a key, the same bodies get their own answers
        r = alice.post(
            "/v1/chat/completions",
            content=bad_bodies[0],
            headers={"content-type": "application/json"},
        )
        assert r.status_code == 400 and r.json()["error"]["type"] == "InvalidInput"
        assert alice.get(f"/v1/sessions/{sid}/turns").status_code == 404  # nothing written


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
    """Two fresh owners write the same session id; each sees only its own through every
    endpoint: the API, the aging and checking of pages, the web view and the proxy."""
    sid = _sid()
    run = uuid.uuid4().hex[:6]
    owners = {"vermilion": f"dora-{run}", "cerulean": f"eve-{run}"}  # words found nowhere else
    keys = {colour: create_key(svc.db, owner) for colour, owner in owners.items()}
    old = datetime.now(UTC) - timedelta(days=3)

    def history(colour: str, n: int) -> list[dict[str, str]]:
        return [
            {
                "role": "user" if i % 2 == 0 else "assistant",
                "content": f"turn {i}: the {colour} boat sails from the harbour. " * 12,
                "at": (old + timedelta(minutes=i)).isoformat(),
            }
            for i in range(n)
        ]

    sizes = {"vermilion": 40, "cerulean": 44}  # the counts tell the two sessions apart
    clients = {
        c: httpx.Client(base_url=svc.url, headers={"authorization": f"Bearer {k}"}, timeout=60)
        for c, k in keys.items()
    }
    try:
        red, blue = clients["vermilion"], clients["cerulean"]
        for colour, c in clients.items():
            r = c.post(f"/v1/sessions/{sid}/turns", json={"turns": history(colour, sizes[colour])})
            assert r.status_code == 201, r.text
        aged = red.post("/v1/age", json={}).json()  # one owner's pass ages its own sessions only
        assert aged["pages_created"] > 0
        assert blue.get(f"/v1/sessions/{sid}/pages").json()["pages"] == []
        assert blue.post("/v1/age", json={}).json()["pages_created"] > 0
        pages = {
            c: cl.get(f"/v1/sessions/{sid}/pages").json()["pages"] for c, cl in clients.items()
        }
        ids = {c: {p["page_id"] for p in ps} for c, ps in pages.items()}
        assert ids["vermilion"] and ids["cerulean"] and not ids["vermilion"] & ids["cerulean"]
        for colour, c in clients.items():
            other = "cerulean" if colour == "vermilion" else "vermilion"
            listed = c.get("/v1/sessions").json()["sessions"]
            assert [(s["session_id"], s["owner"], s["turns"]) for s in listed] == [
                (sid, owners[colour], sizes[colour])
            ]
            reads = [
                c.get(f"/v1/sessions/{sid}/turns"),
                c.get(f"/v1/sessions/{sid}/span", params={"first_turn": 1, "last_turn": 40}),
                c.get(f"/v1/sessions/{sid}/recall", params={"cue": f"{other} boat harbour"}),
                c.get(f"/v1/sessions/{sid}/context", params={"format": "json"}),
                c.get(f"/v1/sessions/{sid}/context", params={"format": "openai"}),
                c.get(f"/v1/sessions/{sid}/context", params={"format": "anthropic"}),
            ]
            for r in reads:
                assert r.status_code == 200 and colour in r.text and other not in r.text, r.url
            assert len(reads[0].json()["turns"]) == sizes[colour]
            assert reads[2].json()["turns"]  # the cue's other words still find its own turns
            mine, theirs = min(ids[colour]), min(ids[other])
            img = c.get(f"/v1/sessions/{sid}/pages/{mine}/image")
            assert img.status_code == 200 and img.content[:4] == b"\x89PNG"
            r = c.get(f"/v1/sessions/{sid}/pages/{theirs}/image")  # same session id, not its page
            assert r.status_code == 404 and r.json()["error"]["type"] == "UnknownPage"
            checked = c.post("/v1/verify", json={"repair": False}).json()
            assert checked["pages_checked"] == len(pages[colour]) and checked["problems"] == []
            # the web view, signed in with the owner's key as its cookie
            web = httpx.Client(base_url=svc.url, cookies={"om_key": keys[colour]}, timeout=60)
            with web:
                listing = web.get("/web")
                assert listing.status_code == 200 and f">{sizes[colour]}<" in listing.text
                shown = web.get(f"/web/sessions/{sid}")
                assert f"data-page-id='{mine}'" in shown.text
                assert f"data-page-id='{theirs}'" not in shown.text
                page = web.get(f"/web/sessions/{sid}/pages/{mine}")
                assert colour in page.text and other not in page.text
                assert "no page" in web.get(f"/web/sessions/{sid}/pages/{theirs}").text
                assert web.get(f"/web/sessions/{sid}/pages/{theirs}/image").status_code == 404
                prompt = web.get(f"/web/sessions/{sid}/prompt", params={"budget": 8000})
                assert colour in prompt.text and other not in prompt.text
            # and through the proxy: what goes upstream is this owner's memory only
            question = {"role": "user", "content": f"What colour is my boat? ({colour})"}
            r = c.post(
                "/v1/chat/completions", json={"model": "m", "messages": [question], "user": sid}
            )
            assert r.status_code == 200, r.text
            sent = str(svc.upstream.received[-1]["messages"])
            assert colour in sent and other not in sent
        deleted = red.delete(f"/v1/sessions/{sid}").json()["turns_deleted"]
        assert deleted == sizes["vermilion"] + 2  # its history, the question and the reply
        assert red.get(f"/v1/sessions/{sid}/turns").status_code == 404
        left = blue.get(f"/v1/sessions/{sid}/turns").json()["turns"]
        assert len(left) == sizes["cerulean"] + 2 and left[-2]["content"].endswith("(cerulean)")
        assert left[-1]["content"] == svc.upstream.reply
        assert [p["page_id"] for p in blue.get(f"/v1/sessions/{sid}/pages").json()["pages"]] == [
            p["page_id"] for p in pages["cerulean"]
        ]
    finally:
        for c in clients.values():
            c.close()


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


def test_a_conditional_append_answers_409_when_the_session_moved_on(svc: Svc) -> None:
    sid = _sid()
    path = f"/v1/sessions/{sid}/turns"
    with svc.client("alice") as alice:
        r = alice.post(
            path, params={"expected_last_turn": 0}, json={"role": "user", "content": "a"}
        )
        assert r.status_code == 201 and r.json()["turns"][0]["seq"] == 1
        two = {"turns": [{"role": "assistant", "content": "b"}, {"role": "user", "content": "c"}]}
        r = alice.post(path, params={"expected_last_turn": 0}, json=two)  # stale
        assert r.status_code == 409, r.text
        err = r.json()["error"]
        assert err["type"] == "SessionChanged" and "newest turn is 1, not 0" in err["message"]
        r = alice.post(path, params={"expected_last_turn": -1}, json=two)
        assert r.status_code == 422
        assert [t["content"] for t in alice.get(path).json()["turns"]] == ["a"]  # nothing more
        r = alice.post(path, params={"expected_last_turn": 1}, json=two)
        assert r.status_code == 201 and [t["seq"] for t in r.json()["turns"]] == [2, 3]


def test_a_turns_images_go_in_as_base64_and_come_back_exactly(svc: Svc) -> None:
    sid = _sid()
    path = f"/v1/sessions/{sid}/turns"
    buf = io.BytesIO()
    Image.new("RGB", (32, 24), (200, 30, 30)).save(buf, "PNG")
    png = buf.getvalue()
    image = {"data": base64.b64encode(png).decode(), "media_type": "image/png"}
    with svc.client("alice") as alice:
        bad = [
            {"role": "user", "content": "x", "attachments": [{"data": "not base64!"}]},
            {"role": "user", "content": "x", "attachments": [{"data": "aGVsbG8="}]},  # "hello"
        ]
        for body in bad:
            r = alice.post(path, json=body)
            assert r.status_code == 422 and r.json()["error"]["type"] == "InvalidAttachment"
        assert alice.get(path).status_code == 404  # nothing was written
        r = alice.post(path, json={"role": "user", "content": "my cat", "attachments": [image]})
        assert r.status_code == 201, r.text
        (turn,) = alice.get(path).json()["turns"]
    (sent,) = turn["attachments"]
    assert base64.b64decode(sent["data"]) == png
    assert (sent["media_type"], sent["width"], sent["height"]) == ("image/png", 32, 24)
    assert sent["sha256"] == hashlib.sha256(png).hexdigest()


# -- the API round trip ----------------------------------------------------------------------


def test_the_json_context_carries_what_a_cue_recalls(svc: Svc) -> None:
    sid = _sid()
    start = datetime(2024, 1, 1, tzinfo=UTC)
    turns = [
        {
            "role": "user" if i % 2 == 0 else "assistant",
            "content": f"note {i} of the lighthouse keeper. " + "word " * 60,
            "at": (start + timedelta(hours=i)).isoformat(),
        }
        for i in range(80)
    ]
    with svc.client("alice") as alice:
        alice.post(f"/v1/sessions/{sid}/turns", json={"turns": turns}).raise_for_status()
        alice.post("/v1/age", json={"now": (start + timedelta(days=60)).isoformat()})
        params = {"budget": 3000, "format": "json", "cue": "note 3 lighthouse"}
        r = alice.get(f"/v1/sessions/{sid}/context", params=params)
        assert r.status_code == 200, r.text
        (block,) = (s for s in r.json()["segments"] if s["kind"] == "recalled")
        assert any(t["content"].startswith("note 3 of") for t in block["turns"])


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


def test_the_proxy_forwards_big_integers_and_unicode_as_sent(svc: Svc) -> None:
    """The forwarded body is written with orjson, and with ``json`` where orjson refuses: an
    integer past 64 bits reaches the upstream as sent, as does text beyond ASCII."""
    sid = _sid()
    before = len(svc.upstream.received)
    body = (
        '{"model": "m", "seed": 123456789012345678901234567890, "user": "' + sid + '", '
        '"messages": [{"role": "user", "content": "Wie heißt der Leuchtturmwärter? \\u2693"}]}'
    )
    with svc.client("alice") as c:
        r = c.post(
            "/v1/chat/completions", content=body, headers={"content-type": "application/json"}
        )
    assert r.status_code == 200, r.text
    sent = svc.upstream.received[before]
    assert sent["seed"] == 123456789012345678901234567890
    assert sent["messages"][-1]["content"] == "Wie heißt der Leuchtturmwärter? \u2693"
    assert _turns(svc, "alice", sid)[0] == ("user", "Wie heißt der Leuchtturmwärter? \u2693")
