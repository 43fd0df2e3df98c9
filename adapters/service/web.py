"""A web view of one owner's memory, server-rendered HTML under ``/web``.

Sign in with an API key (kept in an HttpOnly, same-site cookie, accepted on these pages
only); then: the sessions; a session's pages at their stored tier beside the fainter
renditions made for tight budgets (the fading you can see), with their ages; a page's turns
as text beside its image; and the prompt ``assemble`` would build at a chosen budget and
target. The images are the ones the service stores, served from ``/web/.../image``.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from html import escape
from typing import TYPE_CHECKING
from urllib.parse import parse_qs, quote, unquote_to_bytes

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from optical_memory import (
    InvalidBudget,
    MemoryManager,
    OpticalMemoryError,
    PageSegment,
    target_names,
)
from optical_memory.ladder import IMAGE_TIERS, Tier

from .errors import status_of
from .keys import NotSignedIn, owner_of_key

if TYPE_CHECKING:
    from .app import Service

__all__ = ["add_web"]

_STYLE = """
body{font:15px/1.4 system-ui,sans-serif;margin:1.5rem;color:#222;max-width:1200px}
table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:.25rem .5rem;text-align:left}
.page{display:flex;gap:1rem;align-items:flex-start;border-top:1px solid #ddd;padding:.75rem 0}
.page figure{margin:0;text-align:center;font-size:12px}.page img{border:1px solid #999}
.turns{white-space:pre-wrap;font:13px/1.35 monospace;max-width:560px;margin:0}
.segment{margin:.5rem 0;padding:.5rem;border-left:4px solid #88a}.segment img{max-width:320px}
nav a{margin-right:1rem}
"""


def _page(title: str, body: str, owner: str | None = None) -> HTMLResponse:
    who = f"signed in as <b id='owner'>{escape(owner)}</b> · " if owner else ""
    nav = f"<nav>{who}<a href='/web'>sessions</a><a href='/web/logout'>sign out</a></nav>"
    return HTMLResponse(
        f"<!doctype html><html lang='en'><head><meta charset='utf-8'><title>{escape(title)}"
        f" · optical-memory</title><style>{_STYLE}</style></head><body>{nav}"
        f"<h1>{escape(title)}</h1>{body}</body></html>"
    )


_SESSIONS = b"/web/sessions/"


def _q(session_id: str) -> str:
    """A session id as one path segment. ``.`` and ``..`` (``%2E`` too) are dot segments a
    browser resolves away, so they get a NUL after them (which no id holds), dropped again
    when the path is read."""
    segment = quote(session_id, safe="")
    return segment + "%00" if session_id in (".", "..") else segment


def _age(at: datetime) -> str:
    seconds = max(0.0, (datetime.now(UTC) - at).total_seconds())
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size:
            return f"{seconds / size:.0f} {unit} ago"
    return "just now"


def _login(message: str = "") -> HTMLResponse:
    note = f"<p class='error'>{escape(message)}</p>" if message else ""
    form = (
        f"{note}<form method='post' action='/web/login'><label>API key "
        "<input type='password' name='key' id='key' size='60'></label> "
        "<button type='submit' id='sign-in'>Sign in</button></form>"
    )
    return _page("Sign in", form)


def _tiers_of(mm: MemoryManager, session_id: str, page_id: int, stored: str) -> list[str]:
    """The stored tier and every fainter rendition the aging pass made of a page."""
    out = [stored]
    for tier in IMAGE_TIERS:
        if tier <= Tier.parse(stored):
            continue
        try:
            mm.page_image(session_id, page_id, tier=tier.label)
        except LookupError:
            continue
        out.append(tier.label)
    return out


def add_web(app: FastAPI, service: Service) -> None:
    """Mount the web view's pages under ``/web``."""
    from .app import SESSION_COOKIE

    def signed_in(request: Request, session_id: str | None) -> tuple[str | None, MemoryManager]:
        owner = service.owner_of(request, cookie=True)
        view = service.view(owner)
        if session_id is not None:
            service.settle(view, session_id)  # a reply the proxy is still storing
        return owner, view

    async def guarded(request: Request, render, session_id: str | None = None) -> Response:  # type: ignore[no-untyped-def]
        try:
            owner, mm = await asyncio.to_thread(signed_in, request, session_id)
        except NotSignedIn:
            return _login()
        try:
            return await asyncio.to_thread(render, owner, mm)
        except OpticalMemoryError as exc:
            status = status_of(exc)
            resp = _page(
                "Not found" if status == 404 else "Error", f"<p>{escape(str(exc))}</p>", owner
            )
            resp.status_code = status
            return resp

    @app.post("/web/login", include_in_schema=False)
    async def login(request: Request) -> Response:
        form = parse_qs((await request.body()).decode("utf-8", "replace"))
        key = (form.get("key") or [""])[0].strip()
        owner = await asyncio.to_thread(owner_of_key, service.memory, key) if key else None
        if owner is None:
            return _login("that key is unknown or revoked")
        resp = RedirectResponse("/web", status_code=303)
        resp.set_cookie(SESSION_COOKIE, key, httponly=True, samesite="strict", path="/web")
        return resp

    @app.get("/web/logout", include_in_schema=False)
    def logout() -> Response:
        resp = RedirectResponse("/web", status_code=303)
        resp.delete_cookie(SESSION_COOKIE, path="/web")
        return resp

    @app.get("/web", include_in_schema=False)
    async def sessions(request: Request) -> Response:
        def render(owner: str | None, mm: MemoryManager) -> Response:
            rows = "".join(
                f"<tr><td><a class='session' href='/web/sessions/{_q(i.session_id)}'>"
                f"{escape(i.session_id)}</a></td><td>{i.turns}</td>"
                f"<td>{len(mm.pages(i.session_id))}</td><td>{_age(i.created_at)}</td></tr>"
                for i in mm.sessions()
            )
            table = (
                "<table id='sessions'><tr><th>session</th><th>turns</th><th>pages</th>"
                f"<th>created</th></tr>{rows}</table>"
            )
            return _page("Sessions", table, owner)

        return await guarded(request, render)

    async def page(request: Request, session_id: str, page_id: int) -> Response:
        def render(owner: str | None, mm: MemoryManager) -> Response:
            info = next((p for p in mm.pages(session_id) if p.page_id == page_id), None)
            if info is None:
                missing = _page("Not found", f"<p>no page {page_id} in this session</p>", owner)
                missing.status_code = 404
                return missing
            turns = mm.read(session_id, info.first_seq, info.last_seq)
            text = "\n".join(f"[{t.seq}] {t.role}: {t.content}" for t in turns)
            img = (
                f"<img id='page-image' alt='page {page_id}' width='512' src='/web/sessions/"
                f"{_q(session_id)}/pages/{page_id}/image'>"
                if info.tier != Tier.TEXT.label
                else ""
            )
            body = f"<div class='page'>{img}<pre class='turns' id='page-turns'>{escape(text)}</pre></div>"
            return _page(f"Page {page_id} of {session_id} ({info.tier})", body, owner)

        return await guarded(request, render, session_id)

    async def prompt(request: Request, session_id: str) -> Response:
        target = request.query_params.get("target") or None
        raw_budget = request.query_params.get("budget", "4096").strip()
        digits = raw_budget.isascii() and raw_budget.isdigit() and len(raw_budget) <= 18
        budget = int(raw_budget) if digits else 0

        def render(owner: str | None, mm: MemoryManager) -> Response:
            if budget <= 0:  # the value as sent, not what it was read as
                raise InvalidBudget(
                    f"budget must be a positive whole number of tokens, got {raw_budget!r:.40}"
                )
            ctx = mm.assemble(session_id, budget=budget, target=target)
            parts = []
            for seg in ctx.segments:
                if isinstance(seg, PageSegment):
                    parts.append(
                        f"<div class='segment page-segment'><p>{escape(seg.caption)} "
                        f"({seg.tier}, {seg.tokens} tokens)</p><img alt='page {seg.page_id}' "
                        f"src='/web/sessions/{_q(session_id)}/pages/{seg.page_id}/image?tier="
                        f"{seg.tier}'></div>"
                    )
                elif hasattr(seg, "turn"):
                    t = seg.turn
                    parts.append(
                        f"<div class='segment text-segment'><b>{t.role}</b> (turn {t.seq}, "
                        f"{seg.tokens} tokens): {escape(t.content)}</div>"
                    )
            head = (
                f"<p id='prompt-summary'>{ctx.tokens} of {ctx.budget} tokens on {ctx.target}: "
                f"{len(ctx.pages)} page images, {len(ctx.texts)} text turns, "
                f"{ctx.omitted_turns} older turns left out</p>"
            )
            return _page(
                f"Prompt for {session_id}",
                f"<section id='prompt'>{head}{''.join(parts)}</section>",
                owner,
            )

        return await guarded(request, render, session_id)

    async def image(request: Request, session_id: str, page_id: int) -> Response:
        tier = request.query_params.get("tier") or None

        def render(owner: str | None, mm: MemoryManager) -> Response:
            return Response(mm.page_image(session_id, page_id, tier=tier), media_type="image/png")

        return await guarded(request, render, session_id)

    async def session(request: Request, session_id: str) -> Response:
        def render(owner: str | None, mm: MemoryManager) -> Response:
            base = f"/web/sessions/{_q(session_id)}"
            blocks = []
            for p in mm.pages(session_id):
                if p.tier == Tier.TEXT.label:
                    figures = "<p>still shown as text</p>"
                else:
                    figures = "".join(
                        f"<figure><img class='tier-img' data-tier='{t}' "
                        f"width='{160 if t == p.tier else 100}' alt='page {p.page_id} at {t}' "
                        f"src='{base}/pages/{p.page_id}/image?tier={t}'><figcaption>"
                        f"{t}{' (stored)' if t == p.tier else ''}</figcaption></figure>"
                        for t in _tiers_of(mm, session_id, p.page_id, p.tier)
                    )
                blocks.append(
                    f"<div class='page' data-page-id='{p.page_id}' data-tier='{p.tier}'><div>"
                    f"<a href='{base}/pages/{p.page_id}'>page {p.page_id}</a><br>turns "
                    f"{p.first_seq}–{p.last_seq}<br>{_age(p.last_at)}<br>{p.tier}, "
                    f"{p.token_cost} tokens for {p.text_tokens} text tokens</div>{figures}</div>"
                )
            chosen = service.config.target
            options = "".join(
                f"<option{' selected' if n == chosen else ''}>{escape(n)}</option>"
                for n in target_names()
            )
            form = (
                f"<form id='assemble' action='{base}/prompt'><label>budget <input name='budget' "
                "value='4096' size='6'></label> <label>target <select name='target'>"
                f"{options}</select></label> <button type='submit'>Show the prompt</button></form>"
            )
            body = form + ("".join(blocks) or "<p id='no-pages'>no pages yet</p>")
            return _page(f"Session {session_id}", body, owner)

        return await guarded(request, render, session_id)

    @app.get("/web/sessions/{path:path}", include_in_schema=False)
    async def in_session(request: Request, path: str) -> Response:
        """A session's pages: ``/web/sessions/ID``, then ``/prompt``, ``/pages/N`` or
        ``/pages/N/image``. The id is the first segment of the path as sent, percent-decoded
        (the links here encode a ``/`` in it), so an id ending in ``/prompt`` is not taken
        for the prompt of a shorter one."""
        raw = request.scope.get("raw_path") or request.url.path.encode()  # (no query string)
        if not raw.startswith(_SESSIONS):  # the prefix itself spelled encoded (%2F, %73)
            return _not_found()
        first, *more = raw[len(_SESSIONS) :].split(b"/")
        session_id = unquote_to_bytes(first).decode("utf-8", "replace").removesuffix("\x00")
        rest = [unquote_to_bytes(m).decode("utf-8", "replace") for m in more]
        if rest in ([], [""]):
            return await session(request, session_id)
        if rest == ["prompt"]:
            return await prompt(request, session_id)
        if len(rest) in (2, 3) and rest[0] == "pages" and rest[1].isascii() and rest[1].isdigit():
            if len(rest) == 2:
                return await page(request, session_id, int(rest[1]))
            if rest[2] == "image":
                return await image(request, session_id, int(rest[1]))
        return _not_found()


def _not_found() -> HTMLResponse:
    missing = _page("Not found", "<p>no such page of the web view</p>")
    missing.status_code = 404
    return missing
