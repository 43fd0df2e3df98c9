"""Properties of every public entry point: whatever it is given, a call either succeeds or
raises an :class:`OpticalMemoryError`, and a call that raises leaves every table of the
database exactly as it was (compared row by row, the full-text index's tables included).

Each test function works on its own SQLite file, copied from one seeded template (sessions with
pages at several tiers, renditions, pins, an owned session) and restored from it between
examples with SQLite's backup API, so every example starts from the same state.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from helpers import make_history
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from optical_memory import AssemblyShares, MemoryManager, OpticalMemoryError, target_names
from optical_memory import importers as imp

T0 = datetime(2024, 1, 1, tzinfo=UTC)
LATER = T0 + timedelta(days=40)
SEEDED = ("chat-1", "chat-2", "alice-1")
MAX_BYTES = 4096

SETTINGS = settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    derandomize=True,  # the same examples on every run: a failure is reproducible
)
FEW = settings(SETTINGS, max_examples=12)  # for calls that may render (aging, repair)

EXAMPLES: dict[str, int] = {}


# -- the store ---------------------------------------------------------------------------------


def _dump(path: Path) -> dict[str, list[str]]:
    """Every row of every table (SQLite's own and FTS5's shadow tables included)."""
    conn = sqlite3.connect(path)
    try:
        names = [
            r[0]
            for r in conn.execute(
                "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'"
            )
        ]
        return {n: sorted(repr(row) for row in conn.execute(f'SELECT * FROM "{n}"')) for n in names}
    finally:
        conn.close()


class Store:
    """A manager on a file that can be put back to the seeded state between examples."""

    def __init__(self, template: Path, path: Path) -> None:
        self.template, self.path = template, path
        self.reset()
        self.mm = MemoryManager(f"sqlite:///{path}", max_content_bytes=MAX_BYTES)

    def reset(self) -> None:
        src, dst = sqlite3.connect(self.template), sqlite3.connect(self.path)
        try:
            src.backup(dst)
        finally:
            src.close()
            dst.close()

    def check(self, name: str, call: Callable[[], Any]) -> Any:
        """Run ``call``: success, or an OpticalMemoryError with the database unchanged."""
        EXAMPLES[name] = EXAMPLES.get(name, 0) + 1
        self.reset()
        before = _dump(self.path)
        try:
            return call()
        except OpticalMemoryError as exc:
            assert str(exc), f"{name}: {type(exc).__name__} without a message"
            after = _dump(self.path)
            changed = [t for t in before if before[t] != after.get(t)]
            assert not changed, f"{name} raised {exc!r} but changed {changed}"
            return exc


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("properties") / "template.db"
    with MemoryManager(f"sqlite:///{path}") as mm:
        mm.add_turns(
            "chat-1",
            make_history(
                50,
                lambda i: f"turn {i}: my name is Ada, code {4400 + i}, " + "fox jumps " * 12,
                T0,
                metadata=lambda i: {"i": i},
            ),
        )
        mm.add_turns("chat-2", make_history(8, lambda i: f"short {i} ✓ 😀", T0))
        mm.age(now=T0 + timedelta(hours=5))  # pages at large, with their renditions
        mm.add_turns("chat-1", make_history(20, lambda i: f"late {i} " + "lazy dog " * 20, LATER))
        mm.age(now=LATER + timedelta(days=1), sessions=["chat-2"])
        mm.pin("chat-1", 3)
        mm.scoped("alice").add_turns("alice-1", [("user", "alice's secret 7731")] * 5)
        with mm.database.engine.connect() as conn:
            conn.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")
    return path


@pytest.fixture
def store(template: Path, tmp_path: Path) -> Iterator[Store]:
    s = Store(template, tmp_path / "memory.db")
    try:
        yield s
    finally:
        s.mm.close()


# -- strategies --------------------------------------------------------------------------------

any_char = st.characters(min_codepoint=0, max_codepoint=0x10FFFF, exclude_categories=())
texts = st.one_of(st.text(any_char, max_size=24), st.sampled_from(["", "\x00", "\ud800", "x"]))
big_ints = st.sampled_from([2**31, 2**63 - 1, 2**63, 2**70, -(2**70), -(2**63)])
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-5, 100),
    big_ints,
    st.floats(allow_nan=True, allow_infinity=True),
    texts,
    st.binary(max_size=8),
)
anything = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=3)
        | st.dictionaries(st.text(max_size=6), inner, max_size=3)
        | st.tuples(inner, inner)
    ),
    max_leaves=6,
)
session_ids = st.one_of(
    st.sampled_from([*SEEDED, "new-session", "CHAT-1", "chat-1 "]), texts, anything
)
roles = st.one_of(st.sampled_from(["user", "assistant", "system", "tool"]), anything)
contents = st.one_of(
    texts,
    st.sampled_from(["x" * MAX_BYTES, "é" * (MAX_BYTES // 2 + 1), "a\x00b"]),
    anything,
)
aware = st.builds(
    lambda dt, minutes: dt.replace(tzinfo=timezone(timedelta(minutes=minutes))),
    st.datetimes(min_value=datetime(1, 1, 2), max_value=datetime(9999, 12, 30)),
    st.integers(-1439, 1439),
)
edge_times = st.sampled_from(
    [
        datetime.max.replace(tzinfo=timezone(-timedelta(hours=5))),
        datetime.min.replace(tzinfo=timezone(timedelta(hours=5))),
        datetime.max.replace(tzinfo=UTC),
        datetime.min.replace(tzinfo=UTC),
        LATER,
        T0,
    ]
)
times = st.one_of(st.none(), aware, edge_times, st.datetimes(), anything)
ints = st.one_of(st.integers(-3, 80), big_ints, anything)
metadatas = st.one_of(
    st.none(), st.dictionaries(st.text(max_size=6), anything, max_size=3), anything
)
turn_items = st.one_of(
    st.fixed_dictionaries(
        {"role": roles, "content": contents},
        optional={"at": times, "metadata": metadatas},
    ),
    st.tuples(roles, contents),
    st.tuples(roles, contents, times),
    anything,
)
turn_lists = st.one_of(st.lists(turn_items, max_size=4), anything)
tiers = st.one_of(st.sampled_from([None, "text", "large", "base", "small", "tiny"]), anything)
targets = st.one_of(st.none(), st.sampled_from(target_names()), anything)
cues = st.one_of(
    st.none(), st.sampled_from(["fox", "Ada code 4403", "secret 7731"]), texts, anything
)
owners = st.one_of(st.none(), st.sampled_from(["alice", "bob"]), texts, anything)
shares = st.one_of(
    st.none(),
    st.builds(AssemblyShares),
    anything,
)


def _page_ids(store: Store) -> list[int]:
    conn = sqlite3.connect(store.path)
    try:
        return [r[0] for r in conn.execute("SELECT id FROM om_pages ORDER BY id")]
    finally:
        conn.close()


page_refs = st.one_of(st.integers(0, 12), big_ints, anything)


# -- writing -----------------------------------------------------------------------------------


@SETTINGS
@given(sid=session_ids, role=roles, content=contents, at=times, metadata=metadatas)
def test_add_turn(store: Store, sid: Any, role: Any, content: Any, at: Any, metadata: Any) -> None:
    out = store.check(
        "add_turn", lambda: store.mm.add_turn(sid, role, content, at, metadata=metadata)
    )
    if not isinstance(out, OpticalMemoryError):
        assert store.mm.turns(sid)[-1] == out
        assert out.metadata is not metadata


@SETTINGS
@given(sid=session_ids, turns=turn_lists)
def test_add_turns(store: Store, sid: Any, turns: Any) -> None:
    out = store.check("add_turns", lambda: store.mm.add_turns(sid, turns))
    if not isinstance(out, OpticalMemoryError) and out:
        assert store.mm.turns(sid)[-len(out) :] == out


@SETTINGS
@given(
    sessions=st.one_of(
        st.dictionaries(session_ids.filter(lambda k: isinstance(k, str)), turn_lists, max_size=3),
        anything,
    )
)
def test_add_sessions(store: Store, sessions: Any) -> None:
    store.check("add_sessions", lambda: store.mm.add_sessions(sessions))


@SETTINGS
@given(sid=session_ids, from_turn=ints, turns=turn_lists)
def test_replace_turns(store: Store, sid: Any, from_turn: Any, turns: Any) -> None:
    out = store.check("replace_turns", lambda: store.mm.replace_turns(sid, from_turn, turns))
    if not isinstance(out, OpticalMemoryError) and out:
        assert store.mm.turns(sid)[-len(out) :] == out


# -- reading -----------------------------------------------------------------------------------


@SETTINGS
@given(sid=session_ids, since=ints, limit=st.one_of(st.none(), ints))
def test_turns(store: Store, sid: Any, since: Any, limit: Any) -> None:
    out = store.check("turns", lambda: store.mm.turns(sid, since=since, limit=limit))
    if isinstance(out, list):
        assert [t.seq for t in out] == sorted(t.seq for t in out)


@SETTINGS
@given(owner=owners)
def test_sessions_and_scoped(store: Store, owner: Any) -> None:
    store.check("sessions", store.mm.sessions)
    store.check("sessions(all_owners)", lambda: store.mm.sessions(all_owners=owner))
    view = store.check("scoped", lambda: store.mm.scoped(owner))
    if isinstance(view, MemoryManager):
        listed = store.check("scoped.sessions", view.sessions)
        assert owner is None or all(s.owner == owner for s in listed)
        for sid in SEEDED:
            store.check("scoped.turns", lambda sid=sid: view.turns(sid))
            store.check("scoped.add_turn", lambda sid=sid: view.add_turn(sid, "user", "hi"))
        view.close()


@SETTINGS
@given(sid=session_ids)
def test_superseded(store: Store, sid: Any) -> None:
    out = store.check("superseded", lambda: store.mm.superseded(sid))
    if isinstance(out, list):
        assert all(t.seq >= 1 for t in out)


@SETTINGS
@given(sid=session_ids)
def test_pages_pins_and_tier_summary(store: Store, sid: Any) -> None:
    store.check("pages", lambda: store.mm.pages(sid))
    store.check("pins", lambda: store.mm.pins(sid))
    store.check("tier_summary", lambda: store.mm.tier_summary(sid))


@SETTINGS
@given(sid=session_ids, page=page_refs, tier=tiers)
def test_page_image(store: Store, sid: Any, page: Any, tier: Any) -> None:
    ids = _page_ids(store)
    page_id = ids[page % len(ids)] if isinstance(page, int) and 0 <= page < 12 and ids else page
    out = store.check("page_image", lambda: store.mm.page_image(sid, page_id, tier))
    if isinstance(out, bytes):
        assert out.startswith(b"\x89PNG")


@SETTINGS
@given(page=page_refs, tier=tiers, key=st.one_of(st.just("thumb"), anything))
def test_visual_tokens(store: Store, page: Any, tier: Any, key: Any) -> None:
    store.check("visual_tokens", lambda: store.mm.visual_tokens(page, tier, key))


@SETTINGS
@given(
    sid=session_ids,
    budget=st.one_of(st.integers(-10, 20_000), big_ints, anything),
    target=targets,
    now=times,
    cue=cues,
    share=shares,
)
def test_assemble(
    store: Store, sid: Any, budget: Any, target: Any, now: Any, cue: Any, share: Any
) -> None:
    out = store.check(
        "assemble",
        lambda: store.mm.assemble(sid, budget, target, now, cue=cue, shares=share),
    )
    if not isinstance(out, OpticalMemoryError):
        shown = [
            q
            for seg in out.segments
            if seg.kind in ("page", "text")
            for q in (
                range(seg.first_seq, seg.last_seq + 1) if seg.kind == "page" else [seg.turn.seq]
            )
        ]
        assert len(shown) == len(set(shown))


@SETTINGS
@given(
    sid=session_ids,
    cue=cues,
    limit=st.one_of(st.integers(-2, 20), big_ints, anything),
    scope=st.one_of(st.sampled_from(["session", "owner"]), anything),
    before=st.one_of(st.none(), ints),
)
def test_recall(store: Store, sid: Any, cue: Any, limit: Any, scope: Any, before: Any) -> None:
    store.check(
        "recall", lambda: store.mm.recall(sid, cue, limit=limit, scope=scope, before=before)
    )


@SETTINGS
@given(sid=session_ids, first=ints, last=ints)
def test_read(store: Store, sid: Any, first: Any, last: Any) -> None:
    out = store.check("read", lambda: store.mm.read(sid, first, last))
    if isinstance(out, list):
        assert [t.seq for t in out] == list(range(first, last + 1))


@SETTINGS
@given(sid=session_ids, turn=ints, pinned=st.booleans())
def test_pin_and_unpin(store: Store, sid: Any, turn: Any, pinned: bool) -> None:
    call = store.mm.pin if pinned else store.mm.unpin
    store.check("pin" if pinned else "unpin", lambda: call(sid, turn))


@SETTINGS
@given(role=roles, content=contents)
def test_count_tokens(store: Store, role: Any, content: Any) -> None:
    store.check("count_tokens", lambda: store.mm.count_tokens(role, content))


# -- aging, checking, forgetting ---------------------------------------------------------------

scopes = st.one_of(
    st.none(), st.lists(session_ids, max_size=3), st.sampled_from(["chat-1", b"chat-1"]), anything
)


@FEW
@given(now=times, sessions=scopes)
def test_age(store: Store, now: Any, sessions: Any) -> None:
    store.check("age", lambda: store.mm.age(now=now, sessions=sessions))


@FEW
@given(repair=st.one_of(st.booleans(), anything), sessions=scopes)
def test_verify(store: Store, repair: Any, sessions: Any) -> None:
    out = store.check("verify", lambda: store.mm.verify(repair=repair, sessions=sessions))
    if not isinstance(out, OpticalMemoryError):
        assert out.ok


@SETTINGS
@given(sid=session_ids, owner=owners)
def test_forget(store: Store, sid: Any, owner: Any) -> None:
    view = store.check("scoped", lambda: store.mm.scoped(owner))
    if not isinstance(view, MemoryManager):
        return
    out = store.check("forget", lambda: view.forget(sid))
    if isinstance(out, int):  # gone from the owner's namespace (others may have the id)
        assert sid not in [s.session_id for s in view.sessions()]


@SETTINGS
@given(every=st.one_of(st.floats(allow_nan=True), st.timedeltas(), big_ints, anything))
def test_start_scheduler(store: Store, every: Any) -> None:
    def call() -> None:
        store.mm.start_scheduler(every=every)
        store.mm.stop_scheduler(wait=False)

    store.check("start_scheduler", call)


# -- importers ---------------------------------------------------------------------------------

_FIELDS = ["role", "content", "at", "metadata", "session_id", "name", "tool_calls", "messages"]
rows = st.dictionaries(st.sampled_from(_FIELDS), st.one_of(roles, contents, times, anything))
_turn_like = st.fixed_dictionaries(
    {},
    optional={
        "speaker": st.one_of(st.sampled_from(["A", "B", "Zed"]), anything),
        "text": st.one_of(texts, anything),
        "dia_id": anything,
        "role": roles,
        "content": contents,
        "has_answer": anything,
        "blip_caption": anything,
        "img_url": anything,
    },
)
locomo_samples = st.fixed_dictionaries(
    {
        "conversation": st.dictionaries(
            st.sampled_from(
                [
                    "speaker_a",
                    "speaker_b",
                    "session_1",
                    "session_01",
                    "session_2",
                    "session_1_date_time",
                    "session_01_date_time",
                    "session_2_date_time",
                ]
            ),
            st.one_of(
                st.sampled_from(["A", "B", "1:56 pm on 8 May, 2023", "11:59 pm on 31 Dec, 9999"]),
                st.lists(_turn_like, max_size=3),
                anything,
            ),
        )
    },
    optional={
        "sample_id": st.one_of(st.sampled_from(["conv-1", "conv-2"]), anything),
        "qa": st.one_of(
            st.lists(
                st.dictionaries(
                    st.sampled_from(["question", "answer", "category", "evidence"]), anything
                ),
                max_size=2,
            ),
            anything,
        ),
    },
)
lme_items = st.fixed_dictionaries(
    {
        "haystack_sessions": st.one_of(
            st.lists(st.lists(_turn_like, max_size=2), max_size=2), anything
        )
    },
    optional={
        "question_id": st.one_of(st.sampled_from(["q1", "q2"]), anything),
        "haystack_dates": st.one_of(
            st.lists(
                st.one_of(
                    st.sampled_from(["2023/05/28 (Sun) 19:47", "9999/12/31 23:59"]), anything
                ),
                max_size=2,
            ),
            anything,
        ),
        "haystack_session_ids": anything,
        "answer_session_ids": anything,
        "question": anything,
        "answer": anything,
        "question_date": anything,
        "question_type": anything,
    },
)


def _json_text(value: Any) -> str | None:
    try:
        return json.dumps(value, ensure_ascii=False)
    except (TypeError, ValueError):
        return None


files = st.one_of(
    st.binary(max_size=64),
    st.text(any_char, max_size=64).map(lambda t: t.encode("utf-8", "surrogatepass")),
    st.lists(rows, max_size=4).map(
        lambda rs: "\n".join(_json_text(r) or "{" for r in rs).encode("utf-8", "surrogatepass")
    ),
    st.one_of(
        anything,
        st.lists(rows, max_size=3),
        st.lists(locomo_samples, max_size=2),
        st.lists(lme_items, max_size=2),
        rows,
    ).map(lambda v: (_json_text(v) or "[").encode("utf-8", "surrogatepass")),
    st.integers(1, 3000).map(lambda n: ("[" * n + "]" * n).encode()),
)


@SETTINGS
@given(
    data=files,
    suffix=st.sampled_from([".jsonl", ".json", ".txt", ""]),
    fmt=st.one_of(st.sampled_from(["auto", *imp.FORMATS]), anything),
    session=st.one_of(st.none(), texts),
)
def test_importers(
    store: Store, tmp_path: Path, data: bytes, suffix: str, fmt: Any, session: Any
) -> None:
    path = tmp_path / f"conversation{suffix}"
    path.write_bytes(data)
    loaders: dict[str, Callable[[], Any]] = {
        "load_conversations": lambda: imp.load_conversations(path, format=fmt, session=session),
        "detect_format": lambda: imp.detect_format(path),
        "load_jsonl": lambda: imp.load_jsonl(path, session=session),
        "load_openai": lambda: imp.load_openai(path, session=session),
        "load_locomo": lambda: imp.load_locomo(path),
        "load_longmemeval": lambda: imp.load_longmemeval(path),
        "locomo_qa": lambda: imp.locomo_qa(path),
        "longmemeval_qa": lambda: imp.longmemeval_qa(path),
    }
    for name, load in loaders.items():
        EXAMPLES[name] = EXAMPLES.get(name, 0) + 1
        try:
            out = load()
        except OpticalMemoryError as exc:
            assert str(exc)
            continue
        if name in (
            "load_conversations",
            "load_jsonl",
            "load_openai",
            "load_locomo",
            "load_longmemeval",
        ):
            assert isinstance(out, dict)
            assert all(isinstance(k, str) and isinstance(v, list) for k, v in out.items())
            store.check(f"add_sessions({name})", lambda out=out: store.mm.add_sessions(out))


def test_example_counts() -> None:
    """Runs last in this file: how many examples each entry point was given."""
    if EXAMPLES:
        total = sum(EXAMPLES.values())
        print(f"\nproperty examples: {total} calls over {len(EXAMPLES)} entry points")
        for name, n in sorted(EXAMPLES.items()):
            print(f"  {name}: {n}")
