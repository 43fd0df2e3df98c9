"""The ``optical-memory`` command line: a thin layer over :class:`MemoryManager`.

Every command takes ``--db URL`` (default ``$OPTICAL_MEMORY_URL``, else a SQLite file in the user
data directory). Errors print one line on stderr and exit with status 2; nothing is half-written.
Files are only ever written inside the output directory given; session ids are sanitised before
they become part of a file name.
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
import re
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from importlib import resources
from pathlib import Path
from typing import Annotated, Any, NoReturn, ParamSpec, TypeVar

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from sqlalchemy.exc import SQLAlchemyError

from .assemble import MEMORY_INTRO, AssembledContext, PageSegment, TextSegment
from .contact_sheet import Tile, contact_sheet
from .database import URL_ENV, default_url
from .errors import OpticalMemoryError
from .importers import FORMATS, Conversations, load_conversations
from .ladder import IMAGE_TIERS, Tier, get_target, target_names
from .manager import MemoryManager
from .records import PageInfo

__all__ = ["app", "main", "safe_name"]

P = ParamSpec("P")
R = TypeVar("R")

SAMPLE_PACKAGE = "optical_memory.sample"
SAMPLE_FILE = "conversation.jsonl"
DEMO_DB = "optical-memory-demo.db"
MAX_PASSES = 2000  # the demo stretches its step so that a long history stays quick
OUTPUT_FORMATS = ("json", "openai", "langchain")
TIER_ORDER = ("text", *(t.label for t in IMAGE_TIERS))

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
def _memory(db: str | None, target: str = "deepseek-ocr") -> Iterator[MemoryManager]:
    get_target(target)  # fail fast on an unknown target, before opening anything
    with MemoryManager(db if db else default_url(), target=target) as mm:
        yield mm


def _console() -> Console:
    return Console(highlight=False, soft_wrap=False)


def safe_name(session_id: str) -> str:
    """A file-name-safe, collision-free stand-in for an opaque session id.

    Letters, digits, ``_`` and ``-`` are kept (at most 48), everything else becomes ``_``, and a
    short hash of the full id is appended; the result never holds a dot or a slash.
    """
    stem = re.sub(r"[^A-Za-z0-9_-]+", "_", session_id).strip("_-")[:48] or "session"
    digest = hashlib.sha256(session_id.encode("utf-8", "surrogatepass")).hexdigest()[:8]
    return f"{stem}-{digest}"


def _inside(root: Path, name: str) -> Path:
    """``root / name``, refusing anything that would land outside ``root``."""
    path = (root / name).resolve()
    if root.resolve() not in path.parents:
        _fail(f"refusing to write {name!r} outside {root}")
    return path


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
    return dt.astimezone(UTC).strftime("%Y-%m-%d %H:%M")


def _preview(text: str, width: int = 60) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= width else flat[: width - 1] + "…"


# -- tier summary (shared by demo and show) ----------------------------------------------------


@dataclass(frozen=True)
class TierRow:
    """One line of the tier table."""

    tier: str  # "recent" for turns not packed into pages yet
    pages: int
    turns: int
    text_tokens: int
    image_tokens: int

    @property
    def compression(self) -> float | None:
        return self.text_tokens / self.image_tokens if self.image_tokens else None


def tier_rows(mm: MemoryManager, session_id: str) -> list[TierRow]:
    """Pages, turns, text tokens and image tokens of a session, per stored tier."""
    pages = mm.pages(session_id)
    paged_until = max((p.last_seq for p in pages), default=0)
    recent = mm.turns(session_id, since=paged_until)
    rows = [TierRow("recent", 0, len(recent), sum(t.tokens for t in recent), 0)]
    for tier in TIER_ORDER:
        group = [p for p in pages if p.tier == tier]
        rows.append(
            TierRow(
                tier,
                len(group),
                sum(p.last_seq - p.first_seq + 1 for p in group),
                sum(p.text_tokens for p in group),
                0 if tier == "text" else sum(p.token_cost for p in group),
            )
        )
    return rows


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


# -- writing files -----------------------------------------------------------------------------


def write_page_images(
    mm: MemoryManager, session_id: str, out: Path, *, scale: float = 0.2
) -> tuple[list[Path], Path]:
    """Each page's stored image and its fainter renditions as PNGs, plus a contact sheet."""
    pages = mm.pages(session_id)  # an unknown session fails before anything is created
    out.mkdir(parents=True, exist_ok=True)
    prefix = safe_name(session_id)
    written: list[Path] = []
    stored: dict[str, list[Tile]] = {t.label: [] for t in IMAGE_TIERS}
    renditions: dict[str, list[Tile]] = {t.label: [] for t in IMAGE_TIERS}
    for p in pages:
        if p.tier == Tier.TEXT.label:
            continue
        span = f"#{p.page_id} t{p.first_seq}-{p.last_seq}"
        png = mm.page_image(session_id, p.page_id)
        path = _inside(out, f"{prefix}-page-{p.page_id:05d}-{p.tier}.png")
        path.write_bytes(png)
        written.append(path)
        stored[p.tier].append(Tile(png, span))
        for tier in IMAGE_TIERS:
            if tier <= Tier.parse(p.tier):
                continue
            try:
                faint = mm.page_image(session_id, p.page_id, tier=tier.label)
            except LookupError:
                continue
            path = _inside(out, f"{prefix}-page-{p.page_id:05d}-{tier.label}.png")
            path.write_bytes(faint)
            written.append(path)
            renditions[tier.label].append(Tile(faint, span))
    rows = [
        (f"stored at {label}: {len(tiles)} pages ({_sizes(tiles)})", tiles)
        for label, tiles in stored.items()
    ] + [
        (f"{label} renditions of younger pages, for tight budgets", tiles)
        for label, tiles in renditions.items()
    ]
    sheet = _inside(out, f"{prefix}-contact-sheet.png")
    sheet.write_bytes(contact_sheet(rows, scale=scale, title=f"{session_id}: pages by tier"))
    return written, sheet


def _sizes(tiles: Sequence[Tile]) -> str:
    sizes = {
        (int.from_bytes(t.png[16:20], "big"), int.from_bytes(t.png[20:24], "big")) for t in tiles
    }
    return f"{'x'.join(map(str, sizes.pop()))} px each" if len(sizes) == 1 else "mixed sizes"


def context_dict(
    ctx: AssembledContext, image: Callable[[int, PageSegment], dict[str, Any]]
) -> dict[str, Any]:
    """An assembled context as plain JSON; ``image`` says how each page's PNG is given."""
    segments: list[dict[str, Any]] = []
    for i, seg in enumerate(ctx.segments):
        if isinstance(seg, PageSegment):
            segments.append(
                {
                    "kind": "page",
                    "page_id": seg.page_id,
                    "tier": seg.tier,
                    "stored_tier": seg.stored_tier,
                    **image(i, seg),
                    "mime_type": seg.mime_type,
                    "width": seg.width,
                    "height": seg.height,
                    "detail": seg.detail,
                    "tokens": seg.tokens,
                    "image_tokens": seg.image_tokens,
                    "text_tokens": seg.text_tokens,
                    "first_seq": seg.first_seq,
                    "last_seq": seg.last_seq,
                    "first_at": seg.first_at.isoformat(),
                    "last_at": seg.last_at.isoformat(),
                    "caption": seg.caption,
                }
            )
        else:
            assert isinstance(seg, TextSegment)
            t = seg.turn
            segments.append(
                {
                    "kind": "text",
                    "seq": t.seq,
                    "role": t.role,
                    "content": t.content,
                    "at": t.at.isoformat(),
                    "tokens": seg.tokens,
                    "metadata": t.metadata,
                }
            )
    return {
        "session_id": ctx.session_id,
        "target": ctx.target,
        "budget": ctx.budget,
        "tokens": ctx.tokens,
        "image_tokens": ctx.image_tokens,
        "text_tokens_replaced": ctx.text_tokens_replaced,
        "compression": round(ctx.compression, 3),
        "omitted_turns": ctx.omitted_turns,
        "over_budget": ctx.over_budget,
        "intro": MEMORY_INTRO if ctx.intro_tokens else None,
        "fingerprint": ctx.fingerprint(),
        "segments": segments,
    }


def write_prompt(ctx: AssembledContext, out: Path, name: str = "prompt") -> Path:
    """``name.json`` with the page PNGs beside it in ``name/``, referenced by relative path."""
    out.mkdir(parents=True, exist_ok=True)
    images = _inside(out, name)
    if images.exists():
        shutil.rmtree(images)
    images.mkdir()

    def image(i: int, seg: PageSegment) -> dict[str, Any]:
        file = f"{i + 1:03d}-page-{seg.page_id:05d}-{seg.tier}.png"
        _inside(images, file).write_bytes(seg.png)
        return {"image": f"{name}/{file}"}

    path = _inside(out, f"{name}.json")
    path.write_text(json.dumps(context_dict(ctx, image), indent=2, ensure_ascii=False) + "\n")
    return path


def _base64_image(i: int, seg: PageSegment) -> dict[str, Any]:
    return {"image_base64": seg.base64}


def _openai_messages(ctx: AssembledContext) -> list[dict[str, Any]]:
    from optical_memory.adapters.openai import to_openai_messages

    return to_openai_messages(ctx)


def _langchain_messages(ctx: AssembledContext) -> list[dict[str, Any]]:
    """LangChain's own serialised form (``messages_to_dict``), built by the adapter."""
    from optical_memory.adapters.langchain import to_langchain_dicts

    return to_langchain_dicts(ctx)


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
    db: DbOption = None,
) -> None:
    """Import a conversation file in one transaction: every turn, or none."""
    _check_choice(format, ("auto", *FORMATS), "format")
    convs = load_conversations(file, format=format, session=session)  # parse it all first
    with _memory(db) as mm:
        added = mm.add_sessions(convs)
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
def sessions(db: DbOption = None) -> None:
    """List the sessions."""
    with _memory(db) as mm:
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
    db: DbOption = None,
) -> None:
    """A session's tiers, tokens and pages."""
    with _memory(db) as mm:
        rows = tier_rows(mm, session)
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
    db: DbOption = None,
) -> None:
    """Write a session's page images (stored tier and renditions) and a contact sheet."""
    with _memory(db) as mm:
        written, sheet = write_page_images(mm, session, out)
    _console().print(f"{len(written)} page images and a contact sheet written to {out}")
    _console().print(f"contact sheet: {sheet}")


@app.command()
@_errors
def age(
    now: Annotated[
        str | None, typer.Option(help="Pretend it is this time (ISO 8601; naive means UTC).")
    ] = None,
    db: DbOption = None,
) -> None:
    """Run one aging pass: pack old turns into pages and fade pages by age."""
    when = _parse_time(now, "--now") if now else None
    with _memory(db) as mm:
        report = mm.age(now=when)
    console = _console()
    moved = ", ".join(f"{n} to {tier}" for tier, n in sorted(report.pages_moved.items())) or "none"
    console.print(
        f"aging pass at {_when(report.now)} UTC: {report.sessions_visited} sessions, "
        f"{report.pages_created} pages created, pages moved: {moved}; "
        f"{report.tokens_before:,} -> {report.tokens_after:,} tokens "
        f"in {report.seconds:.2f} s"
    )
    for err in report.errors:
        typer.echo(f"warning: {err}", err=True)


@app.command()
@_errors
def verify(
    repair: Annotated[
        bool, typer.Option("--repair/--check", help="Rebuild what is damaged, or only report.")
    ] = True,
    db: DbOption = None,
) -> None:
    """Check every page image, rendition and cached visual-token entry; rebuild the damaged
    ones from the archived turns. Exit status 1 when problems remain."""
    with _memory(db) as mm:
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
    db: DbOption = None,
) -> None:
    """Assemble a session's prompt under a token budget and print it as JSON."""
    _check_choice(format, OUTPUT_FORMATS, "format")
    get_target(target)
    when = _parse_time(now, "--now") if now else None
    with _memory(db) as mm:
        ctx = mm.assemble(session, budget=budget, target=target, now=when)
    if format == "json":
        if out is not None:
            path = write_prompt(ctx, out)
            typer.echo(f"wrote {path}")
            return
        data: Any = context_dict(ctx, _base64_image)
    elif format == "openai":
        data = _openai_messages(ctx)
    else:
        data = _langchain_messages(ctx)
    text = json.dumps(data, indent=2, ensure_ascii=False)
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        path = _inside(out, f"prompt-{format}.json")
        path.write_text(text + "\n")
        typer.echo(f"wrote {path}")
    else:
        typer.echo(text)


@app.command()
@_errors
def forget(
    session: Annotated[str, typer.Argument(help="Session id.")],
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")] = False,
    db: DbOption = None,
) -> None:
    """Delete a session and everything derived from it (turns, pages, images, caches)."""
    with _memory(db) as mm:
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


# -- demo --------------------------------------------------------------------------------------


def sample_conversation() -> Path:
    """The sample conversation that ships with the package (JSON Lines)."""
    return Path(str(resources.files(SAMPLE_PACKAGE).joinpath(SAMPLE_FILE)))


def fill_times(convs: Conversations, now: datetime) -> Conversations:
    """Give every turn a time: missing ones follow the previous turn by a minute; a session with
    no times at all is spread evenly over the 90 days before ``now``. Times never go backwards
    within a session."""
    out: Conversations = {}
    for sid, turns in convs.items():
        known = [t["at"] for t in turns if t.get("at") is not None]
        filled: list[dict[str, Any]] = []
        if not known:
            span = timedelta(days=90) / max(1, len(turns))
            start = now - timedelta(days=90)
            filled = [{**t, "at": start + i * span} for i, t in enumerate(turns)]
        else:
            first_known = next(i for i, t in enumerate(turns) if t.get("at") is not None)
            clock = known[0] - timedelta(minutes=first_known + 1)
            for t in turns:
                at = t.get("at")
                clock = clock + timedelta(minutes=1) if at is None else max(at, clock)
                filled.append({**t, "at": clock})
        out[sid] = filled
    return out


def replay(
    mm: MemoryManager,
    convs: Conversations,
    step: timedelta,
    on_step: Callable[[int, int], None] | None = None,
) -> tuple[datetime, int]:
    """Add the turns as simulated time passes and run one aging pass per ``step``, the way the
    scheduler would; returns the final simulated time and the number of passes."""
    timeline = sorted(
        ((t["at"], sid, i) for sid, turns in convs.items() for i, t in enumerate(turns)),
        key=lambda x: (x[0], x[1], x[2]),
    )
    if not timeline:
        _fail("nothing to replay: the conversation is empty")
    start, end = timeline[0][0], timeline[-1][0] + timedelta(minutes=5)
    passes = max(1, math.ceil((end - start) / step))
    cursor = {sid: 0 for sid in convs}
    k = 0
    for n in range(1, passes + 1):
        now = min(start + n * step, end)
        batch: dict[str, list[dict[str, Any]]] = {}
        while k < len(timeline) and timeline[k][0] <= now:
            _, sid, _i = timeline[k]
            turns = convs[sid]
            while cursor[sid] < len(turns) and turns[cursor[sid]]["at"] <= now:
                batch.setdefault(sid, []).append(turns[cursor[sid]])
                cursor[sid] += 1
            k += 1
        if batch:
            mm.add_sessions(batch)
        mm.age(now=now)
        if on_step is not None:
            on_step(n, passes)
    return end, passes


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
    if not step_hours > 0:
        _fail("--step-hours must be positive")
    if budget <= 0:
        _fail("--budget must be a positive number of tokens")
    source = file or sample_conversation()
    convs = load_conversations(source, format=format)
    convs = fill_times(convs, datetime.now(UTC))
    focus = session if session is not None else next(iter(convs))
    if focus not in convs:
        _fail(f"no session {focus!r} in {source.name}; it has {', '.join(list(convs)[:5])}")

    out = Path(dir) if dir is not None else Path(tempfile.mkdtemp(prefix="optical-memory-demo-"))
    out.mkdir(parents=True, exist_ok=True)
    if db is None:
        path = _inside(out, DEMO_DB)
        for suffix in ("", "-wal", "-shm", "-journal"):
            Path(f"{path}{suffix}").unlink(missing_ok=True)
        db = f"sqlite:///{path}"
    console = _console()
    n_turns = sum(len(t) for t in convs.values())
    first = min(t[0]["at"] for t in convs.values() if t)
    last = max(t[-1]["at"] for t in convs.values() if t)
    step = max(timedelta(hours=step_hours), (last - first) / MAX_PASSES)
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
            console.print(_tier_table(sid, tier_rows(mm, sid), target))
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


def main() -> None:
    """Entry point of the ``optical-memory`` console script."""
    app(prog_name="optical-memory")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
