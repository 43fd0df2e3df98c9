"""The ``optical-memory`` command line: parse the arguments, call the library, print the result.

The work is done by :class:`MemoryManager`, :mod:`.export` (prompts and page images out) and
:mod:`.replay` (the demo's simulated clock); this module only adds options, tables and progress.
Every command takes ``--db URL`` (default ``$OPTICAL_MEMORY_URL``, else a SQLite file in the user
data directory). Errors, a missing extra among them, print one line on stderr and exit with
status 2, without a traceback; nothing is half-written.
"""

from __future__ import annotations

import functools
import logging
import math
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, suppress
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Annotated, Any, NoReturn, ParamSpec, TypeVar

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from sqlalchemy.exc import SQLAlchemyError

from .assemble import AssembledContext, PageSegment
from .database import URL_ENV, default_url, normalise_url, sqlite_file
from .errors import OpticalMemoryError
from .export import (
    EXPORT_FORMATS,
    formatter,
    json_text,
    write_context,
    write_page_images,
    write_prompt,
)
from .importers import FORMATS, load_conversations
from .ladder import get_target, target_names
from .manager import MemoryManager
from .records import PageInfo, TierRow
from .replay import (
    MAX_PASSES,
    fill_times,
    fresh_sqlite_url,
    replay,
    replay_step,
    sample_conversation,
    time_span,
)

__all__ = ["app", "main"]

P = ParamSpec("P")
R = TypeVar("R")

DEMO_DB = "optical-memory-demo.db"
MAX_STEP_HOURS = 100_000  # about 11 years between two passes

app = typer.Typer(
    name="optical-memory",
    help="Chat memory that forgets gracefully: old turns age into ever smaller page images.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)
db_app = typer.Typer(help="Database maintenance.", no_args_is_help=True)
app.add_typer(db_app, name="db")

DbOption = Annotated[
    str | None,
    typer.Option(
        "--db",
        envvar=URL_ENV,
        show_envvar=True,
        help="Database URL (sqlite:///path.db, postgresql://...) or a file path.",
    ),
]
TargetOption = Annotated[
    str,
    typer.Option(
        "--target", "-t", help=f"Model that reads the prompt: {', '.join(target_names())}."
    ),
]
BudgetOption = Annotated[int, typer.Option("--budget", "-b", help="Prompt budget in tokens.")]
OwnerOption = Annotated[
    str | None,
    typer.Option(
        "--owner",
        help="Work inside this owner's namespace (default: the sessions without an owner).",
    ),
]


# -- plumbing ----------------------------------------------------------------------------------


class CliError(Exception):
    """A problem to report on one line (exit status 2)."""


def _fail(message: str) -> NoReturn:
    raise CliError(message)


def _errors(fn: Callable[P, R]) -> Callable[P, R]:
    """Turn expected failures into one line on stderr and exit status 2, without a traceback."""

    @functools.wraps(fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return fn(*args, **kwargs)
        except (typer.Exit, typer.Abort):
            raise
        except (CliError, OpticalMemoryError, LookupError, ValueError, OSError) as exc:
            message = str(exc.args[0]) if isinstance(exc, LookupError) and exc.args else str(exc)
            typer.echo(f"error: {_one_line(message)}", err=True)
            raise typer.Exit(2) from None
        except SQLAlchemyError as exc:
            orig = getattr(exc, "orig", None) or exc
            typer.echo(f"error: database: {_one_line(str(orig))}", err=True)
            raise typer.Exit(2) from None

    return wrapper


def _one_line(text: str) -> str:
    return " ".join(text.split()) or "unknown error"


@contextmanager
def _memory(
    db: str | None,
    target: str = "deepseek-ocr",
    *,
    existing: bool = False,
    owner: str | None = None,
) -> Iterator[MemoryManager]:
    """The memory at ``db`` inside ``owner``'s namespace; ``existing``: a command that only
    reads refuses to create one."""
    get_target(target)  # fail fast on an unknown target, before opening anything
    url = db if db else default_url()
    if existing:
        path = sqlite_file(normalise_url(url))
        if path is not None and not path.is_file():
            _fail(
                f"no database at {path}; check --db (or ${URL_ENV}), or import a conversation "
                "to create one"
            )
    with MemoryManager(url, target=target, owner=owner) as mm:
        yield mm


def _console() -> Console:
    """Lines as they are (soft wrap): a path or a summary is never broken at 80 columns when
    the output is a pipe or a file, where there is no terminal width to fit."""
    return Console(highlight=False, soft_wrap=True)


def _parse_time(text: str, what: str) -> datetime:
    try:
        dt = datetime.fromisoformat(text.strip())
    except ValueError:
        _fail(f"{what}={text!r} is not an ISO 8601 time (e.g. 2025-05-20T21:00:00Z)")
    return dt if dt.tzinfo is not None else dt.replace(tzinfo=UTC)


def _check_choice(value: str, choices: Sequence[str], what: str) -> str:
    if value not in choices:
        _fail(f"unknown {what} {value!r}; use one of {', '.join(choices)}")
    return value


def _when(dt: datetime) -> str:
    """A time as UTC (``0001-01-01 00:00``; a time whose UTC falls past year 9999 as given)."""
    with suppress(OverflowError):
        dt = dt.astimezone(UTC)
    return f"{dt.year:04d}-{dt:%m-%d %H:%M}"


def _preview(text: str, width: int = 60) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= width else flat[: width - 1] + "…"


def _tier_table(session_id: str, rows: Sequence[TierRow], target: str) -> Table:
    table = Table(title=f"{session_id}: memory by tier (target {target})", title_justify="left")
    for name in ("tier", "pages", "turns", "text tokens", "image tokens", "compression"):
        table.add_column(name, justify="left" if name == "tier" else "right")
    for r in rows:
        table.add_row(
            r.tier if r.tier != "recent" else "recent (unpaged)",
            str(r.pages),
            str(r.turns),
            f"{r.text_tokens:,}",
            f"{r.image_tokens:,}" if r.tier not in ("recent", "text") else "-",
            f"{r.compression:.1f}x" if r.compression is not None else "-",
        )
    imaged = [r for r in rows if r.image_tokens]
    text_all = sum(r.text_tokens for r in rows)
    shown = sum(r.text_tokens for r in rows if r.tier in ("recent", "text")) + sum(
        r.image_tokens for r in rows
    )
    ratio = sum(r.text_tokens for r in imaged) / max(1, sum(r.image_tokens for r in imaged))
    table.add_section()
    table.add_row(
        "total",
        str(sum(r.pages for r in rows)),
        str(sum(r.turns for r in rows)),
        f"{text_all:,}",
        f"{sum(r.image_tokens for r in rows):,}",
        f"{ratio:.1f}x" if imaged else "-",
    )
    table.caption = (
        f"the whole history as text: {text_all:,} tokens; as stored now "
        f"(text + images): {shown:,} tokens"
    )
    table.caption_justify = "left"
    return table


def _pages_table(session_id: str, pages: Sequence[PageInfo]) -> Table:
    table = Table(title=f"{session_id}: pages", title_justify="left")
    for name in ("page", "tier", "turns", "from", "to", "text tokens", "cost", "size"):
        table.add_column(
            name, justify="right" if name in ("page", "text tokens", "cost") else "left"
        )
    for p in pages:
        table.add_row(
            str(p.page_id),
            p.tier,
            f"{p.first_seq}-{p.last_seq}",
            _when(p.first_at),
            _when(p.last_at),
            f"{p.text_tokens:,}",
            f"{p.token_cost:,}",
            f"{p.width}x{p.height}" if p.width else "-",
        )
    return table


def _segments_table(ctx: AssembledContext) -> Table:
    table = Table(
        title=(
            f"assembled prompt for {ctx.session_id}: {ctx.tokens:,} of {ctx.budget:,} tokens "
            f"on {ctx.target}"
        ),
        title_justify="left",
    )
    for name in ("#", "kind", "tier", "turns", "tokens", "content"):
        table.add_column(name, justify="right" if name in ("#", "tokens") else "left")
    for i, seg in enumerate(ctx.segments, start=1):
        if isinstance(seg, PageSegment):
            table.add_row(
                str(i),
                "image",
                seg.tier if seg.tier == seg.stored_tier else f"{seg.tier} (from {seg.stored_tier})",
                f"{seg.first_seq}-{seg.last_seq}",
                f"{seg.tokens:,}",
                _preview(f"{seg.width}x{seg.height}: {seg.caption}"),
            )
        else:
            t = seg.turn
            table.add_row(
                str(i),
                "text",
                "text",
                str(t.seq),
                f"{seg.tokens:,}",
                _preview(f"{t.role}: {t.content}"),
            )
    table.caption = (
        f"{len(ctx.pages)} page images ({ctx.image_tokens:,} image tokens standing for "
        f"{ctx.text_tokens_replaced:,} text tokens, {ctx.compression:.1f}x), "
        f"{len(ctx.texts)} text turns, {ctx.omitted_turns} older turns left out"
    )
    table.caption_justify = "left"
    return table


# -- commands ----------------------------------------------------------------------------------


@app.command("import")
@_errors
def import_(
    file: Annotated[Path, typer.Argument(help="File to import.")],
    session: Annotated[
        str | None,
        typer.Option(
            help="Session id (a prefix, ID:original, for files with several conversations)."
        ),
    ] = None,
    format: Annotated[
        str, typer.Option("--format", "-f", help=f"auto, {', '.join(FORMATS)}.")
    ] = "auto",
    owner: OwnerOption = None,
    db: DbOption = None,
) -> None:
    """Import a conversation file in one transaction: every turn, or none."""
    _check_choice(format, ("auto", *FORMATS), "format")
    convs = load_conversations(file, format=format, session=session)  # parse it all first
    with _memory(db, owner=owner) as mm:
        added = mm.add_sessions(convs)  # a large import also refreshes planner statistics
    table = Table(title=f"imported {file.name}", title_justify="left")
    for name in ("session", "turns", "first", "last"):
        table.add_column(name, justify="right" if name == "turns" else "left")
    for sid, turns in added.items():
        table.add_row(sid, f"{len(turns):,}", _when(turns[0].at), _when(turns[-1].at))
    console = _console()
    console.print(table)
    console.print(f"{sum(len(t) for t in added.values()):,} turns in {len(added)} sessions")


@app.command()
@_errors
def sessions(db: DbOption = None, owner: OwnerOption = None) -> None:
    """List the sessions of one owner (default: those without an owner)."""
    with _memory(db, existing=True, owner=owner) as mm:
        infos = mm.sessions()
        table = Table(title="sessions", title_justify="left")
        for name in ("session", "turns", "pages", "created", "owner"):
            table.add_column(name, justify="right" if name in ("turns", "pages") else "left")
        for info in infos:
            table.add_row(
                info.session_id,
                str(info.turns),
                str(len(mm.pages(info.session_id))),
                _when(info.created_at),
                info.owner or "-",
            )
    _console().print(table)


@app.command()
@_errors
def show(
    session: Annotated[str, typer.Argument(help="Session id.")],
    owner: OwnerOption = None,
    db: DbOption = None,
) -> None:
    """A session's tiers, tokens and pages."""
    with _memory(db, existing=True, owner=owner) as mm:
        rows = mm.tier_summary(session)
        pages = mm.pages(session)
        target = mm.target.name
    console = _console()
    console.print(_tier_table(session, rows, target))
    if pages:
        console.print(_pages_table(session, pages))


@app.command()
@_errors
def render(
    session: Annotated[str, typer.Argument(help="Session id.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Directory to write the PNGs into.")],
    owner: OwnerOption = None,
    db: DbOption = None,
) -> None:
    """Write a session's page images (stored tier and renditions) and a contact sheet."""
    with _memory(db, existing=True, owner=owner) as mm:
        written, sheet = write_page_images(mm, session, out)
    _console().print(f"{len(written)} page images and a contact sheet written to {out}")
    _console().print(f"contact sheet: {sheet}")


@app.command()
@_errors
def age(
    now: Annotated[
        str | None, typer.Option(help="Pretend it is this time (ISO 8601; naive means UTC).")
    ] = None,
    owner: OwnerOption = None,
    db: DbOption = None,
) -> None:
    """Run one aging pass: pack old turns into pages and fade pages by age (every owner's
    sessions, or with --owner that owner's). Exit status 1 when a session could not be
    aged (each is named on stderr)."""
    when = _parse_time(now, "--now") if now else None
    # The pass's report names each failure below; its log would say it again.
    aging_log = logging.getLogger("optical_memory.aging")
    if not aging_log.handlers:
        aging_log.addHandler(logging.NullHandler())
    with _memory(db, owner=owner) as mm:
        report = mm.age(now=when)
    console = _console()
    moved = ", ".join(f"{n} to {tier}" for tier, n in sorted(report.pages_moved.items())) or "none"
    console.print(
        f"aging pass at {_when(report.now)} UTC: {report.sessions_visited} sessions, "
        f"{report.pages_created} pages created, pages moved: {moved}; "
        f"{report.tokens_before:,} -> {report.tokens_after:,} tokens "
        f"in {report.seconds:.2f} s"
        + (
            f"; {report.sessions_busy} sessions left to another pass aging them now"
            if report.sessions_busy
            else ""
        )
    )
    for err in report.errors:
        typer.echo(f"error: {err}", err=True)
    if report.errors:
        raise typer.Exit(1)


@app.command()
@_errors
def verify(
    repair: Annotated[
        bool, typer.Option("--repair/--check", help="Rebuild what is damaged, or only report.")
    ] = True,
    owner: OwnerOption = None,
    db: DbOption = None,
) -> None:
    """Check every page image, rendition and cached visual-token entry; rebuild the damaged
    ones from the archived turns (every owner's, or with --owner that owner's). Exit status 1
    when problems remain."""
    with _memory(db, existing=True, owner=owner) as mm:
        report = mm.verify(repair=repair)
        remaining = mm.verify(repair=False).problems if repair and report.problems else []
    for problem in report.problems:
        typer.echo(problem, err=True)
    _console().print(
        f"verified {report.pages_checked} pages: {len(report.problems)} problems, "
        f"{report.pages_repaired} pages rebuilt, {len(remaining)} left"
    )
    if remaining or (report.problems and not repair):
        raise typer.Exit(1)


@app.command()
@_errors
def assemble(
    session: Annotated[str, typer.Argument(help="Session id.")],
    budget: BudgetOption = 4096,
    target: TargetOption = "deepseek-ocr",
    format: Annotated[
        str, typer.Option("--format", "-f", help="json, openai (messages) or langchain (messages).")
    ] = "json",
    out: Annotated[
        Path | None,
        typer.Option("--out", "-o", help="Write prompt.json and its PNGs here instead of stdout."),
    ] = None,
    now: Annotated[str | None, typer.Option(help="Assemble as of this time (ISO 8601).")] = None,
    owner: OwnerOption = None,
    db: DbOption = None,
) -> None:
    """Assemble a session's prompt under a token budget and print it as JSON."""
    _check_choice(format, EXPORT_FORMATS, "format")
    get_target(target)
    when = _parse_time(now, "--now") if now else None
    to_data = formatter(format)  # a missing extra fails here, before any work
    with _memory(db, existing=True, owner=owner) as mm:
        ctx = mm.assemble(session, budget=budget, target=target, now=when)
    if out is not None:
        typer.echo(f"wrote {write_context(ctx, out, format)}")
    else:
        typer.echo(json_text(to_data(ctx)), nl=False)


@app.command()
@_errors
def forget(
    session: Annotated[str, typer.Argument(help="Session id.")],
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")] = False,
    owner: OwnerOption = None,
    db: DbOption = None,
) -> None:
    """Delete a session and everything derived from it (turns, pages, images, caches)."""
    with _memory(db, existing=True, owner=owner) as mm:
        info = next((i for i in mm.sessions() if i.session_id == session), None)
        if info is None:
            mm.turns(session, limit=1)  # raises UnknownSession with the library's message
            _fail(f"no session {session!r}")
        if not yes and not typer.confirm(
            f"Delete session {session!r} and its {info.turns} turns for good?", default=False
        ):
            typer.echo("aborted; nothing was deleted", err=True)
            raise typer.Exit(1)
        n = mm.forget(session)
    typer.echo(f"forgot session {session!r}: {n} turns and everything derived from them")


@db_app.command("vacuum")
@_errors
def db_vacuum(db: DbOption = None) -> None:
    """Remove what deleted rows leave in the database files (after forgetting, at a quiet
    time): SQLite rebuilds its file; PostgreSQL runs VACUUM (FULL, ANALYZE) on the store's
    tables, each locked while it is rewritten."""
    with _memory(db, existing=True) as mm:
        path = sqlite_file(mm.url)
        before = path.stat().st_size if path is not None else None
        mm.vacuum()
    if path is not None and before is not None:
        typer.echo(f"{mm.url}: vacuumed, {before:,} -> {path.stat().st_size:,} bytes")
    else:
        typer.echo(f"{mm.url}: vacuumed")


@db_app.command("upgrade")
@_errors
def db_upgrade(db: DbOption = None) -> None:
    """Migrate the database schema to the newest version."""
    from . import migrations

    with MemoryManager(db if db else default_url(), migrate=False) as mm:
        engine = mm.database.engine
        before = migrations.current_revision(engine)
        migrations.upgrade(engine)
        after = migrations.current_revision(engine)
    if before == after:
        typer.echo(f"{mm.url}: already at {after}")
    else:
        typer.echo(f"{mm.url}: upgraded {before or 'empty'} -> {after}")


def _progress(console: Console) -> Progress:
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
        transient=False,
    )


@app.command()
@_errors
def demo(
    dir: Annotated[
        Path | None, typer.Option("--dir", help="Output directory (default: a new temp dir).")
    ] = None,
    file: Annotated[
        Path | None,
        typer.Option("--file", help="Replay this conversation file instead of the sample."),
    ] = None,
    format: Annotated[
        str, typer.Option("--format", "-f", help=f"auto, {', '.join(FORMATS)}.")
    ] = "auto",
    session: Annotated[
        str | None, typer.Option(help="Session to assemble and render (default: the first).")
    ] = None,
    budget: BudgetOption = 4096,
    target: TargetOption = "deepseek-ocr",
    step_hours: Annotated[
        float,
        typer.Option(
            "--step-hours",
            help=f"Simulated hours between two aging passes (stretched to at most {MAX_PASSES}).",
        ),
    ] = 6.0,
    db: Annotated[
        str | None, typer.Option("--db", help=f"Database URL (default: DIR/{DEMO_DB}, made fresh).")
    ] = None,
) -> None:
    """Replay a conversation over simulated time, age it, and show what the model would see."""
    started = time.perf_counter()
    _check_choice(format, ("auto", *FORMATS), "format")
    get_target(target)
    if not (math.isfinite(step_hours) and 0 < step_hours <= MAX_STEP_HOURS):
        _fail(f"--step-hours must be a positive number of hours, at most {MAX_STEP_HOURS:,}")
    if budget <= 0:
        _fail("--budget must be a positive number of tokens")
    source = file or sample_conversation()
    convs = fill_times(load_conversations(source, format=format), datetime.now(UTC))
    first, last = time_span(convs)
    focus = session if session is not None else next(iter(convs))
    if focus not in convs:
        _fail(f"no session {focus!r} in {source.name}; it has {', '.join(list(convs)[:5])}")

    out = Path(dir) if dir is not None else Path(tempfile.mkdtemp(prefix="optical-memory-demo-"))
    out.mkdir(parents=True, exist_ok=True)
    if db is None:
        db = fresh_sqlite_url(out, DEMO_DB)
    console = _console()
    n_turns = sum(len(t) for t in convs.values())
    step = replay_step(convs, timedelta(hours=step_hours), MAX_PASSES)
    console.print(
        f"replaying {n_turns:,} turns of {len(convs)} session(s) from {source.name}: "
        f"{_when(first)} to {_when(last)} UTC, one aging pass every "
        f"{step.total_seconds() / 3600:g} simulated hours"
    )
    with _memory(db, target) as mm:
        existing = {i.session_id for i in mm.sessions()} & set(convs)
        if existing:
            _fail(f"{db} already holds session {sorted(existing)[0]!r}; use a fresh --db or --dir")
        with _progress(console) as progress:
            task = progress.add_task("aging over simulated time", total=None)

            def on_step(n: int, total: int) -> None:
                progress.update(task, completed=n, total=total)

            end, passes = replay(mm, convs, step, on_step)
        shown = list(convs)[:5]
        for sid in shown:
            console.print(_tier_table(sid, mm.tier_summary(sid), target))
        if len(convs) > len(shown):
            console.print(f"... and {len(convs) - len(shown)} more sessions")
        ctx = mm.assemble(focus, budget=budget, target=target, now=end)
        console.print(_segments_table(ctx))
        with _progress(console) as progress:
            task = progress.add_task("writing page images", total=None)
            written, sheet = write_page_images(mm, focus, out)
            prompt = write_prompt(ctx, out)
            progress.update(task, completed=1, total=1)
    seconds = time.perf_counter() - started
    console.print(f"simulated time: {_when(end)} UTC after {passes} aging passes")
    console.print(f"contact sheet: {sheet}")
    console.print(f"page images:   {len(written)} PNGs in {out}")
    console.print(f"prompt:        {prompt} (page images in {prompt.with_suffix('')})")
    console.print(f"database:      {db}")
    console.print(f"done in {seconds:.1f} s")


# -- the service -------------------------------------------------------------------------------

keys_app = typer.Typer(
    help="API keys of the service, each bound to one owner.", no_args_is_help=True
)
app.add_typer(keys_app, name="keys")


def _service() -> Any:
    """The service package (its app raises MissingExtra, one line, without the extra)."""
    import optical_memory.adapters.service as service

    return service


@keys_app.command("create")
@_errors
def keys_create(
    owner: Annotated[str, typer.Option("--owner", help="The owner (namespace) the key acts for.")],
    db: DbOption = None,
) -> None:
    """Create an API key for OWNER; the key is printed once, as the last word."""
    service = _service()
    with _memory(db) as mm:
        key, info = service.create_key(mm, owner)
    typer.echo(
        f"created key {info.id} ({info.prefix}...) for owner {info.owner}; store it now: {key}"
    )


@keys_app.command("list")
@_errors
def keys_list(
    owner: Annotated[str | None, typer.Option("--owner", help="Only this owner's keys.")] = None,
    db: DbOption = None,
) -> None:
    """List the keys (never the keys themselves: their first characters)."""
    service = _service()
    with _memory(db, existing=True) as mm:
        infos = service.list_keys(mm, owner)
    table = Table(title="API keys", title_justify="left")
    for name in ("id", "key", "owner", "created", "revoked"):
        table.add_column(name, justify="right" if name == "id" else "left")
    for i in infos:
        revoked = _when(i.revoked_at) if i.revoked_at else "-"
        table.add_row(str(i.id), f"{i.prefix}...", i.owner, _when(i.created_at), revoked)
    _console().print(table)


@keys_app.command("revoke")
@_errors
def keys_revoke(
    key: Annotated[
        str,
        typer.Argument(
            help="The key's id or prefix, exactly as keys list shows them, or the whole key."
        ),
    ],
    db: DbOption = None,
) -> None:
    """Revoke a key: requests with it are refused from now on."""
    service = _service()
    with _memory(db, existing=True) as mm:
        info = service.revoke_key(mm, key)
    typer.echo(f"revoked key {info.id} ({info.prefix}...) of owner {info.owner}")


@app.command()
@_errors
def serve(
    db: DbOption = None,
    host: Annotated[str, typer.Option(help="Address to bind.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 8000,
    workers: Annotated[int, typer.Option(help="Worker processes (each ages too).")] = 1,
    no_auth: Annotated[
        bool, typer.Option("--no-auth", help="Serve without API keys (loopback only).")
    ] = False,
    owner: Annotated[
        str | None, typer.Option(help="With --no-auth: the owner whose namespace is served.")
    ] = None,
    upstream: Annotated[
        str | None,
        typer.Option(
            help="OpenAI-compatible URL the proxy forwards to (e.g. https://api.openai.com/v1)."
        ),
    ] = None,
    upstream_key: Annotated[
        str | None,
        typer.Option(envvar="OPTICAL_MEMORY_UPSTREAM_API_KEY", help="API key for the upstream."),
    ] = None,
    budget: BudgetOption = 4096,
    target: TargetOption = "deepseek-ocr",
    age_every: Annotated[
        float, typer.Option(help="Seconds between aging passes (0: no scheduler).")
    ] = 300.0,
    max_body_bytes: Annotated[int, typer.Option(help="Larger request bodies get 413.")] = 4 << 20,
    key_cache_seconds: Annotated[
        float, typer.Option(help="How long a revoked key may still be served (0: none).")
    ] = 5.0,
) -> None:
    """Serve the memory over HTTP: the /v1 API, the OpenAI-compatible proxy, MCP at /mcp and
    the web view at /web, with the aging scheduler running inside."""
    import os

    service = _service()
    import uvicorn

    import optical_memory.adapters.service.app  # noqa: F401  (the extra, before any work)

    if owner is not None and not no_auth:
        _fail("--owner names the namespace of a service without keys: add --no-auth, or drop it")

    get_target(target)
    url = db if db else default_url()
    config = service.ServiceConfig(
        db=url,
        host=host,
        auth=not no_auth,
        owner=owner,
        upstream_url=upstream,
        upstream_api_key=upstream_key,
        budget=budget,
        target=target,
        age_every=age_every,
        max_body_bytes=max_body_bytes,
        key_cache_seconds=key_cache_seconds,
    ).check()
    with _memory(url, target) as mm:  # migrates once, before any worker starts
        if config.auth and not service.keys.has_active_keys(mm):
            _fail(
                "no API key can sign in: create one with `optical-memory keys create --owner "
                "NAME`, or serve with --no-auth on 127.0.0.1"
            )
    os.environ.update(config.to_env())
    typer.echo(
        f"serving {normalise_url(url)} on http://{host}:{port} ({workers} workers)", err=True
    )
    uvicorn.run(
        "optical_memory.adapters.service.app:app_from_env",
        factory=True,
        host=host,
        port=port,
        workers=workers,
        log_level="warning",
    )


@app.command()
@_errors
def mcp(
    db: DbOption = None,
    owner: Annotated[str | None, typer.Option(help="The owner whose namespace is served.")] = None,
    key: Annotated[
        str | None,
        typer.Option(envvar="OPTICAL_MEMORY_API_KEY", help="Or an API key: serve its owner."),
    ] = None,
) -> None:
    """Serve the memory as an MCP server over stdio (for agent frameworks and desktop apps)."""
    service = _service()
    from optical_memory.adapters.service.mcp_server import run_stdio

    if key is not None and owner is not None:
        _fail("give --owner or --key, not both: a key serves the owner it is bound to")
    with _memory(db) as mm:
        if key is not None:
            owner = service.keys.owner_of_key(mm, key)
            if owner is None:
                _fail("that API key is unknown or revoked")
        run_stdio(mm.scoped(owner) if owner is not None else mm)


def main() -> None:
    """Entry point of the ``optical-memory`` console script."""
    app(prog_name="optical-memory")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
