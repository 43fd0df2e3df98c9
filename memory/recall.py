"""Recall: full-text search of the archive, pins and rehearsal.

The index lives in the database itself and is built by migration 0004:

- **SQLite**: ``om_turns_fts``, a contentless FTS5 table (``porter unicode61``) with two
  columns: ``body`` (the turn's text) and ``scope`` (one token naming the session, so a
  session-scoped search intersects posting lists instead of ranking the whole archive; a
  session whose turns lie together is narrowed by their range of row ids instead, which
  costs FTS5 nothing to apply).
  Triggers on ``om_turns`` feed it inside the writing transaction, with live turns only (a
  superseded version leaves it, migration 0013); deletes use FTS5's ``'delete'`` command
  with the same values. Ranked with ``bm25``; a term held by more than
  COMMON_TURNS turns of the archive is weighed by its frequency within the searched scope
  instead, which keeps a search's cost bounded by the scope (see :func:`_sqlite_rank`).
- **PostgreSQL**: a GIN expression index ``om_turns_fts`` over
  ``to_tsvector('english', …)`` of the same text. ``ts_rank_cd`` ignores how rare a word is,
  so turns are ranked by the inverse document frequency (within the scope) of the cue terms
  they hold, ``ts_rank_cd`` ordering ties (see :func:`_pg_ranked`). Scores of the two backends
  are not comparable.

Chinese, Japanese and Korean are written without spaces between words, and neither
tokenizer segments them. :func:`search_text` stores, for a turn with such characters, a copy
with every CJK character standing alone (``om_turns.search_text``, NULL for every other turn,
so plain turns cost nothing extra); a cue's CJK runs become overlapping two-character phrase
queries, so a two-character word such as 東京 matches wherever those characters stand
together. The stored copy is also free of NUL characters, which PostgreSQL text cannot hold.

A cue is user text, never query syntax: it is tokenized here, in Python, into words
(``[^\\W_]+`` runs), stop words are dropped, and each remaining term is passed as a quoted
phrase (SQLite) or a bound parameter of ``phraseto_tsquery`` (PostgreSQL), the terms ORed, so
a question finds the turns that share its rarer words. A cue with no term left recalls nothing
(the relevance floor: a turn is recalled only for holding a term of the cue). A long cue is
read up to its first MAX_WORDS words, and searched by at most MAX_TERMS terms.

Pins and rehearsal counts live in ``om_turn_marks`` (one small row per marked turn), so the
archive rows themselves stay write-once.
"""

from __future__ import annotations

import math
import re
import sqlite3
import weakref
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from itertools import combinations
from typing import Any, NamedTuple

from sqlalchemy import JSON, Integer, bindparam, delete, select, text
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.engine import Connection
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session

from .errors import InvalidInput
from .records import Attachment, Recollection, Turn
from .store import (
    FIRST_LIVE_SEQ,
    LosslessText,
    SessionRow,
    TurnMarkRow,
    TurnRow,
    UTCDateTime,
    load_attachments,
)
from .validation import MAX_TURN

# -- the index, as migration 0004 built it ------------------------------------------------------

FTS_TABLE = "om_turns_fts"  # the SQLite FTS5 table and the PostgreSQL GIN index
PG_CONFIG = "english"
# PostgreSQL: the stored, generated column to_tsvector('english', left(coalesce(search_text,
# content), 100000)), GIN-indexed. A tsvector is capped at 1 MB; the first 100k characters of a
# turn keep even adversarial text (a million distinct short words) well under it.
PG_VECTOR = "t.search_vector"

SCOPES = ("session", "owner")
MAX_WORDS = 20_000  # a long cue is read up to its first 20,000 words ...
MAX_CANDIDATES = 1024  # ... or its first 1,024 distinct terms, ...
MAX_TERMS = 64  # ... of which it keeps the 64 longest
MAX_TERM_CHARS = 128  # no word is longer; a longer run is noise (a hash, a blob) and is dropped
MAX_COMPOUNDS = 16

# Han (with extensions and compatibility forms), kana, Hangul syllables and jamo.
_CJK_CLASS = (
    "\u1100-\u11ff\u3040-\u309f\u30a0-\u30ff\u3130-\u318f\u31f0-\u31ff\u3400-\u4dbf"
    "\u4e00-\u9fff\ua960-\ua97f\uac00-\ud7af\ud7b0-\ud7ff\uf900-\ufaff\uff66-\uff9f"
    "\U00020000-\U0003134f"
)
_CJK = re.compile(f"[{_CJK_CLASS}]")
_CJK_RUN = re.compile(f"([{_CJK_CLASS}]+)")
_HIRAGANA_ONLY = re.compile("[\u3040-\u309f]+")
# The private-use areas: the BMP's and planes 15 and 16 (see search_text; migration 0015).
_PRIVATE_USE = re.compile("[\ue000-\uf8ff\U000f0000-\U000ffffd\U00100000-\U0010fffd]")
_WORD = re.compile(r"[^\W_]+")
# Words joined by punctuation: e-mail addresses, codes, versions, times. PostgreSQL's parser
# keeps such a compound as one lexeme (``ana@example.com``, ``-1234`` in ``QF-1234``), so the
# compound is also searched there; SQLite's tokenizer splits them into the words anyway.
_COMPOUND = re.compile(r"[^\W_]+(?:[.\-@:/+'][^\W_]+)+")
_CHUNK = re.compile(r"\S+")

_STOP_WORDS = """
    a about above after again against all also am an and any are as at be because been before
    being below between both but by can could did do does doing done down during each else
    ever few for from further get gets got had has have having he her here hers herself him
    himself his how i if in into is it its itself just let like me more most much must my
    myself no nor not now of off on once only or other our ours ourselves out over own please
    same shall she should so some such than that the their theirs them themselves then there
    these they this those through to too under until up upon us very was we were what when
    where which while who whom whose why will with would yes yet you your yours yourself
    yourselves s t d ll m re ve don didn doesn isn wasn aren weren wouldn couldn shouldn
    hasn haven hadn ok okay oh hi hey hello thanks thank really one thing things anything
    something say said says saying tell told telling talk talked mention mentioned ask asked
    remember remembered recall
    """
STOP_WORDS = frozenset(_STOP_WORDS.split())
# Function words of Chinese and Japanese that a two-character window often catches.
_CJK_STOP_TERMS = """
    的 了 是 我 你 他 她 它 在 和 吗 呢 吧 啊 也 都 就 有 这 那 个 不 之 与
    什么 怎么 为什 么时 我们 你们 他们 她们 这个 那个 一个 是不 不是 没有 可以 因为 所以 如果
    的是 是什 说过 告诉 记得 知道 提到 时候 我的 你的 他的 以前 之前 上次
    何時 何と 何を 言っ 話し 教え 覚え
    """
CJK_STOP_TERMS = frozenset(_CJK_STOP_TERMS.split())


# -- what the index reads -----------------------------------------------------------------------


def search_text(content: str) -> str | None:
    """The text the index reads for a turn when it differs from ``content``, else None.

    CJK characters are set apart by spaces (the tokenizers do not segment them); NUL and
    private-use characters become spaces (FTS5's unicode61 counts a private-use character,
    an icon font's glyph say, as part of the word beside it, where PostgreSQL's parser and
    the cue's tokenizer part words there). Plain turns return None: the index reads their
    content.
    """
    has_cjk = _CJK.search(content) is not None
    has_private = _PRIVATE_USE.search(content) is not None
    if not has_cjk and not has_private and "\x00" not in content:
        return None
    out = content.replace("\x00", " ")
    if has_private:
        out = _PRIVATE_USE.sub(" ", out)
    return _CJK.sub(r" \g<0> ", out) if has_cjk else out


# -- the cue ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Cue:
    """A cue reduced to search terms: each term a tuple of tokens that must stand together
    (one word, or two CJK characters), plus word compounds for PostgreSQL's parser."""

    terms: tuple[tuple[str, ...], ...]
    compounds: tuple[str, ...] = ()

    def __bool__(self) -> bool:
        return bool(self.terms)


def parse_cue(cue: object) -> Cue:
    """Tokenize a cue in Python: no character of it reaches a query parser as syntax."""
    if not isinstance(cue, str):
        raise InvalidInput(f"cue must be a string, got {type(cue).__name__}")
    # casefolded key -> term; kana-only windows (particles and endings, mostly) are weak:
    # they count only when a cue has nothing else.
    strong: dict[str, tuple[str, ...]] = {}
    weak: dict[str, tuple[str, ...]] = {}
    for n, m in enumerate(_WORD.finditer(cue)):
        if n >= MAX_WORDS or len(strong) + len(weak) >= MAX_CANDIDATES:
            break
        word = m.group()
        if len(word) > MAX_TERM_CHARS and not _CJK.search(word):
            continue
        for i, part in enumerate(_CJK_RUN.split(word)):
            if not part:
                continue
            if i % 2 == 0:  # not CJK
                key = part.casefold()
                if len(part) <= MAX_TERM_CHARS and key not in STOP_WORDS:
                    strong.setdefault(key, (part,))
                continue
            for term in _cjk_terms(part[: MAX_CANDIDATES + 1]):
                key = "".join(term)
                if key in CJK_STOP_TERMS:
                    continue
                (weak if _HIRAGANA_ONLY.fullmatch(key) else strong).setdefault(key, term)
    terms = list((strong or weak).values())
    if len(terms) > MAX_TERMS:
        order = {t: i for i, t in enumerate(terms)}
        terms = sorted(terms, key=lambda t: (-sum(map(len, t)), order[t]))[:MAX_TERMS]
    compounds: dict[str, None] = {}
    if terms:
        for n, m in enumerate(_CHUNK.finditer(cue)):
            if n >= MAX_CANDIDATES or len(compounds) >= MAX_COMPOUNDS:
                break
            chunk = m.group()
            if len(chunk) > 2 * MAX_TERM_CHARS:  # bounded: the pattern backtracks
                continue
            for c in _COMPOUND.findall(chunk):
                if len(c) <= MAX_TERM_CHARS and not _CJK.search(c):
                    compounds.setdefault(c.casefold(), None)
    return Cue(tuple(terms), tuple(compounds))


def _cjk_terms(run: str) -> list[tuple[str, ...]]:
    """Overlapping two-character windows of a CJK run (a lone character stands for itself)."""
    if len(run) == 1:
        return [(run,)]
    return [(run[i], run[i + 1]) for i in range(len(run) - 1)]


def _phrase(term: tuple[str, ...]) -> str:
    """An FTS5 string: terms hold only letters, digits and CJK characters, never a quote."""
    return '"' + " ".join(term) + '"'


def sqlite_match(terms: Sequence[tuple[str, ...]], scope_ids: Sequence[int] | None) -> str:
    """An FTS5 MATCH expression: the terms as quoted phrases, ORed, in the ``body`` column,
    within the turns of the given session row ids (their ``scope`` tokens) when given."""
    return _within(scope_ids, "{body} : (" + " OR ".join(_phrase(t) for t in terms) + ")")


def _within(scope_ids: Sequence[int] | None, expr: str) -> str:
    """An FTS5 expression limited to the turns of the given session row ids (their ``scope``
    tokens) when given."""
    if scope_ids is None:
        return expr
    tokens = " OR ".join(f'"s{int(i)}x"' for i in scope_ids)
    return f"{{scope}} : ({tokens}) AND ({expr})"


def _pg_rare(s: Session, cue: Cue, params: dict[str, Any]) -> list[int]:
    """The numbers (in :data:`_PG_CUE`'s ``q``: terms from 1, then compounds) of the cue's
    rare terms: held by fewer than COMMON_TURNS turns of the whole archive, so that the GIN
    index finds them cheaply. Verdicts are kept as on SQLite (see _COMMON_CACHE and
    _RARE_CACHE), so only a term not known yet is probed, at most COMMON_TURNS entries of
    its posting list. A verdict picks how a term's matches are found (either way finds them
    all) and, in a session longer than COMMON_WINDOW, whether turns before its window count:
    one that a concurrent writer left slightly stale (a term just crossing COMMON_TURNS) costs
    time, or changes only whether such an early turn holding that term is found. ``params``:
    the search's, holding the cue's arrays (see :data:`_PG_CUE`)."""
    keys = [f"t:{_verdict_key(t)}" for t in cue.terms]
    keys += [f"c:{c}" for c in cue.compounds]
    known = _verdicts(s, _COMMON_CACHE)
    rare = _verdicts(s, _RARE_CACHE)
    conn = s.connection()
    unknown = [i for i, k in enumerate(keys) if k not in known]
    if unknown and any(keys[i] in rare for i in unknown):
        newest = conn.execute(text(_NEWEST_TURN)).scalar() or 0
        unknown = [i for i in unknown if not _still_rare(rare.get(keys[i]), newest)]
    if unknown:
        probe = {**params, "probe": [i + 1 for i in unknown], "limit": COMMON_TURNS}
        newest, counts = conn.execute(text(_PG_PROBE), probe).one()
        for i, n in zip(unknown, counts, strict=True):
            if n >= COMMON_TURNS:
                rare.pop(keys[i], None)
                _remember(known, keys[i], None)
            else:
                _remember(rare, keys[i], (int(n), newest or 0))
    return [i + 1 for i, k in enumerate(keys) if k not in known]


def _pg_window(session: SessionRow, scope: str, before: int | None, params: dict[str, Any]) -> str:
    """In a session longer than COMMON_WINDOW turns, what keeps PostgreSQL's ranking bounded
    (a condition on ``om_turns t`` for the common terms' matches; empty otherwise): as on
    SQLite, a common term (one in COMMON_TURNS turns of the archive or more) is matched, and
    its frequency counted, within the newest COMMON_WINDOW turns only; a rare one anywhere."""
    end = before if before is not None else session.next_seq + 1
    if scope != "session" or end - 1 <= COMMON_WINDOW:
        return ""
    params["lo"], params["n"] = end - COMMON_WINDOW, COMMON_WINDOW  # (a seq: the index's range)
    return " AND t.seq >= :lo"


_NEWEST_TURN = "SELECT max(id) FROM om_turns"

_PG_CUE = (
    "WITH q AS (SELECT i, query FROM ("
    f"SELECT u.i, phraseto_tsquery('{PG_CONFIG}'::regconfig, u.term) AS query "
    "FROM unnest(CAST(:terms AS text[])) WITH ORDINALITY AS u(term, i) UNION ALL "
    f"SELECT CAST(:nterms AS bigint) + c.i, plainto_tsquery('{PG_CONFIG}'::regconfig, c.term) "
    "FROM unnest(CAST(:compounds AS text[])) WITH ORDINALITY AS c(term, i)"
    ") x WHERE numnode(query) > 0)"
)
"""The cue's tsqueries, numbered (its terms from 1, then its compounds), from two bound
arrays: the statement's text is the same whatever the cue, so the server can keep its plan."""

_PG_PROBE = (
    f"{_PG_CUE} SELECT ({_NEWEST_TURN}), ARRAY(SELECT (SELECT count(*) FROM (SELECT 1 "
    f"FROM om_turns t WHERE {PG_VECTOR} @@ q.query LIMIT :limit) c) "
    "FROM unnest(CAST(:probe AS int[])) AS p(i) LEFT JOIN q ON q.i = p.i ORDER BY p.i)"
)
"""The newest turn id, and how many turns hold each of the cue's terms numbered in ``probe``
(up to ``limit``; none for a term PostgreSQL reads as no word, which ``q`` leaves out)."""


def _pg_ranked(join: str, where: str, window: str) -> str:
    """(turn_id, score) of the best matches on PostgreSQL, as one statement of a fixed shape.

    Which turns hold which term is found the cheaper way for that term, written out so that
    no plan, whatever the table's statistics, can take the costly one: a *rare* term
    (``:rare``, see :func:`_pg_rare`) is looked up in the GIN index alone (an ``OFFSET 0``
    fence) and its matches then kept to the scope; a *common* one is matched against the
    scope's own rows (``window``: only the newest COMMON_WINDOW of a long session) with
    ``ts_match_vq``, the function behind ``@@``, which no index serves. One plan for every
    term read, after ANALYZE, the posting lists of common words across every tenant, and
    without statistics matched rare ones against every row of the session, term by term (a
    pasted paragraph as the cue, on a 25k-turn session: 0.6-0.8 s).

    ``ts_rank_cd`` knows nothing of how rare a word is (a long turn repeating a common word
    outranks the one holding a rare code), so the score is, as on SQLite's common-term path,
    the sum over the cue's terms held by a turn of their inverse document frequency within
    the scope, ``ln((n - df + 0.5) / (df + 0.5))`` (at least 1e-6), plus a hundredth of
    ``ts_rank_cd`` (against all the terms) to order turns holding the same terms.
    ``ts_rank_cd`` is most of the cost of a match, so it is computed for the best
    ``PG_RANKED`` times ``k`` by the sum alone (ties there go to the newest turns). A turn's
    terms are pairs of (turn, term), counted per term. Each term's weight is computed once
    and looked up by its number in an array (``w``): joining the pairs to the per-term counts
    instead is planned as a nested loop (the planner cannot estimate a tsquery's matches),
    which cost a third of the statement.
    """
    return (
        f"{_PG_CUE}, c AS MATERIALIZED (SELECT q.i, q.query, q.i = ANY(CAST(:rare AS int[])) "
        "AS rare FROM q), "
        "m AS (SELECT t.id, c.i FROM c CROSS JOIN LATERAL (SELECT g.id, g.session_id, g.seq "
        "FROM om_turns g WHERE g.search_vector @@ c.query OFFSET 0) t "
        f"{join} WHERE c.rare AND {where} "
        f"UNION ALL SELECT t.id, c.i FROM om_turns t {join} "
        f"JOIN c ON NOT c.rare AND ts_match_vq({PG_VECTOR}, c.query) WHERE {where}{window}), "
        "d AS (SELECT i, greatest(ln((CAST(:n AS float8) - count(*) + 0.5) / (count(*) + 0.5)), "
        "1e-6) AS idf FROM m GROUP BY i), "
        "w AS (SELECT array_agg(d.idf ORDER BY g.i) AS idf FROM generate_series(1, "
        "(SELECT max(i) FROM d)) AS g(i) LEFT JOIN d ON d.i = g.i), "
        "b AS (SELECT m.id, sum(((SELECT idf FROM w))[m.i]) AS base FROM m GROUP BY m.id "
        f"ORDER BY base DESC, m.id DESC LIMIT :k * {PG_RANKED}) "
        "SELECT b.id AS turn_id, b.base + 0.01 * ts_rank_cd(t.search_vector, "
        "(SELECT string_agg('(' || query::text || ')', ' | ')::tsquery FROM q), 1) AS score "
        "FROM b JOIN om_turns t ON t.id = b.id ORDER BY score DESC, turn_id DESC LIMIT :k"
    )


# -- searching ----------------------------------------------------------------------------------

# FTS5's bm25 counts, once per query, every turn of the archive holding each term: a cost that
# grows with the archive for common words. A term in more turns than this is weighed by its
# frequency within the searched scope instead (see _sqlite_rank), over its newest COMMON_TURNS
# matches in scope; rarer terms get exact BM25.
COMMON_TURNS = 2000
COMMON_WINDOW = 10 * COMMON_TURNS  # the newest turns of a session where common terms count
PG_RANKED = 8  # PostgreSQL: ts_rank_cd breaks ties among this many times k best by idf alone
MAX_SCOPE_SESSIONS = 256  # an owner with more sessions is searched without the scope tokens
RANGE_SLACK = 64  # other rows in a session's id range up to which the range alone narrows it

_HIT_COLUMNS = {
    "key": LosslessText(),
    "content": LosslessText(),
    "at": UTCDateTime(),
    "metadata": JSON(),
    "attachments": JSON(),
    "tokens": Integer(),
}
_FETCH = (
    "SELECT h.turn_id, h.score, s.key, t.seq, t.role, t.content, t.at, t.tokens, "
    "t.metadata, t.attachments, t.session_id AS session_row_id, p.id AS page_id, p.tier "
    "FROM ({hits}) h "
    "JOIN om_turns t ON t.id = h.turn_id "
    "JOIN om_sessions s ON s.id = t.session_id "
    "LEFT JOIN om_pages p ON p.id = ("
    "SELECT p2.id FROM om_pages p2 WHERE p2.session_id = t.session_id "
    "AND p2.first_seq <= t.seq ORDER BY p2.first_seq DESC LIMIT 1"
    ") AND p.last_seq >= t.seq "
    "ORDER BY h.score DESC, h.turn_id DESC"
)


_SESSION_IDS = (
    "SELECT (SELECT id FROM om_turns WHERE session_id = :sid AND seq >= 1 ORDER BY seq LIMIT 1), "
    "(SELECT id FROM om_turns WHERE session_id = :sid AND seq >= 1 AND seq < :end "
    "ORDER BY seq DESC LIMIT 1), "
    "(SELECT id FROM om_turns WHERE session_id = :sid AND seq >= :wlo ORDER BY seq LIMIT 1)"
)
"""A session's first and last live turn ids before seq ``end``, and the first id from seq
``wlo`` (where the common-term window starts), from the (session, seq) index."""


class Hit(NamedTuple):
    """One search result: the turn's row id (for rehearsal) and the public record."""

    turn_id: int
    recollection: Recollection


def search(
    s: Session,
    session: SessionRow,
    cue: str | Cue,
    *,
    limit: int = 8,
    scope: str = "session",
    before: int | None = None,
) -> list[Hit]:
    """The archived turns that best match ``cue``, best first, exactly as stored.

    ``scope="session"`` searches ``session``; ``"owner"`` every session of its owner (sessions
    without an owner when it has none). ``before`` drops turns of ``session`` at or after
    that seq. Reads only (rehearsal is :func:`rehearse`, a separate short write); on SQLite
    every query runs in the caller's read transaction, one snapshot; on PostgreSQL it is one
    statement.
    """
    parsed = cue if isinstance(cue, Cue) else parse_cue(cue)
    if not parsed:
        return []
    params: dict[str, Any] = {"sid": session.id, "k": limit}
    join, where = _scope_filter(session, scope, before, params)
    if s.get_bind().dialect.name == "postgresql":
        params["n"] = _scope_ids(s, session, scope)[1]()
        params["terms"] = [" ".join(t) for t in parsed.terms]
        params["compounds"] = list(parsed.compounds)
        params["nterms"] = len(parsed.terms)
        params["rare"] = _pg_rare(s, parsed, params)
        hits = _pg_ranked(join, where, _pg_window(session, scope, before, params))
        stmt = text(_FETCH.format(hits=hits)).columns(**_HIT_COLUMNS)
        rows = s.connection().execute(stmt, params).all()
        images = load_attachments(s.connection(), rows)
        return [_hit(r, float(r.score), images) for r in rows]
    args = (s, session, parsed, scope, limit, before, join, where, params)
    extra = 0
    while True:
        ranked, asked = _sqlite_rank(*args, extra=extra)
        exhausted = len(ranked) < asked
        if len(ranked) > limit:  # the ranking's rows in scope first, then the best of them
            ids = ", ".join(str(int(i)) for i, _ in ranked)
            sql = _IN_SCOPE.format(ids=ids, join=join, where=where)
            kept = {i for (i,) in _sqlite_rows(s, sql, params)}
            ranked = [r for r in ranked if r[0] in kept]
        found = _fetch_ranked(s, ranked[:limit], join, where, params)
        if len(found) >= limit or exhausted:
            return found
        # Rows the scope drops (other sessions' turns between this one's; earlier versions
        # of turns in a store indexed before migration 0013) took places among the best:
        # rank deeper.
        extra = 4 * asked


_IN_SCOPE = "SELECT t.id FROM om_turns t NOT INDEXED {join} WHERE t.id IN ({ids}) AND {where}"


def _sqlite_rows(s: Session, sql: str, params: Mapping[str, Any]) -> list[Any]:
    """SQLite: a search statement (plain numbers and strings bound by name) on the driver's
    connection, in the read's transaction: these are built per cue, so SQLAlchemy's
    per-statement work (parsing the binds, a cache key) would cost as much as FTS5's."""
    try:
        return s.connection().connection.driver_connection.execute(sql, params).fetchall()
    except sqlite3.Error as exc:
        raise DBAPIError.instance(sql, params, exc, sqlite3.Error) from exc


def _fetch_ranked(
    s: Session, ranked: list[tuple[int, float]], join: str, where: str, params: dict[str, Any]
) -> list[Hit]:
    """The ranked turns that are in scope (``where`` re-checks each), best first."""
    if not ranked:
        return []
    scores = dict(ranked)
    # NOT INDEXED: the ids are looked up by rowid, not by scanning the (session, seq) index.
    hits = (
        "SELECT t.id AS turn_id, 0.0 AS score FROM om_turns t NOT INDEXED "
        f"{join} WHERE t.id IN :ids AND {where}"
    )
    stmt = (
        text(_FETCH.format(hits=hits))
        .bindparams(bindparam("ids", expanding=True))
        .columns(**_HIT_COLUMNS)
    )
    rows = s.connection().execute(stmt, {**params, "ids": list(scores)}).all()
    images = load_attachments(s.connection(), rows)
    found = [_hit(r, scores[r.turn_id], images) for r in rows]
    return sorted(found, key=lambda h: (-h.recollection.score, -h.turn_id))


def _hit(r: Any, score: float, images: dict[str, Attachment]) -> Hit:
    found = tuple(images[d["sha256"]] for d in r.attachments or ())
    turn = Turn(r.key, r.seq, r.role, r.content, r.at, r.tokens, dict(r.metadata or {}), found)
    tier = r.tier if r.page_id is not None else "text"
    return Hit(r.turn_id, Recollection(turn, score, r.page_id, tier))


def _scope_filter(
    session: SessionRow, scope: str, before: int | None, params: dict[str, Any]
) -> tuple[str, str]:
    """The join and WHERE clause (over ``om_turns t``) that keep a search inside its scope:
    the authority on what may be returned, whatever the index narrowed first."""
    join, where = "", ["t.seq >= 1"]  # live turns only (store.FIRST_LIVE_SEQ)
    if scope == "session":
        where.append("t.session_id = :sid")
        if before is not None:
            where.append("t.seq < :before")
    else:
        join = "JOIN om_sessions o ON o.id = t.session_id"
        where.append("o.owner = :owner")  # the session's namespace ('' for no owner)
        params["owner"] = session.owner
        if before is not None:
            where.append("(t.session_id <> :sid OR t.seq < :before)")
    if before is not None:
        params["before"] = before
    return join, " AND ".join(where)


def _sqlite_rank(
    s: Session,
    session: SessionRow,
    cue: Cue,
    scope: str,
    limit: int,
    before: int | None,
    join: str,
    where: str,
    params: dict[str, Any],
    *,
    extra: int = 0,
) -> tuple[list[tuple[int, float]], int]:
    """(turn id, score) of the best matches, best first, and how many were asked for:
    ``limit`` plus ``extra``, plus the range's other rows where it alone narrows (see below).

    Terms in fewer than COMMON_TURNS turns of the archive are ranked by FTS5's bm25 (score =
    -bm25). When the cue also has common terms, each adds, to the turns in scope holding it,
    its inverse document frequency within the scope, ``ln((n - df + 0.5) / (df + 0.5))``
    (at least 1e-6, as FTS5 clamps it): close to BM25 for short turns, at a cost bounded by the
    scope rather than the archive. In a session longer than COMMON_WINDOW turns, common terms
    are counted and matched in its newest COMMON_WINDOW turns (before ``before``) only, so that
    cost stays bounded too as one session grows. Up to SUBSET_TERMS common terms are ranked
    set by set (:func:`_rank_by_subsets`); more, by summing each one's newest COMMON_TURNS
    matches in one statement.

    The index narrows by its scope tokens where it can, and a session's search by the range
    of its turn ids (within a session ids grow with turn numbers); the caller's fetch re-checks
    every row against the scope, so a narrowing can only ever drop a row, never admit one.
    A session whose id range holds few other rows (at most RANGE_SLACK: one conversation
    at a time, or an agent's long session) is narrowed by that range alone: its scope token's
    posting list is as long as the session, and intersecting it with a common word's costs
    2-4x the word's alone. Then as many more rows are ranked as the range holds others: ids
    in the range less the turn numbers before ``end``. Each number a replacement skipped has
    its superseded row in the range (out of the index), so the count is the other sessions'
    rows there, none for a session written alone; where it falls short (the first turn was
    replaced), the caller ranks deeper, as it does whenever the scope dropped too many.
    """
    scope_ids, in_scope = _scope_ids(s, session, scope)
    rare, common = _split_common(s, list(cue.terms))
    use_join = scope_ids is None or (before is not None and scope == "owner")
    q = dict(params)
    q["k"] = limit + extra
    narrow = ""
    window = ""  # where common terms are counted and matched (see the docstring)
    total = None
    end = before if before is not None else session.next_seq + 1  # (the focus session's)
    if scope == "session":
        wlo = end - COMMON_WINDOW if end - 1 > COMMON_WINDOW else end
        ((first, last, lo),) = _sqlite_rows(
            s, _SESSION_IDS, {"sid": session.id, "end": end, "wlo": wlo}
        )
        if last is None:
            return [], q["k"]  # no live turn before ``end``
        q["first"], q["last"] = first, last
        narrow = f" AND {FTS_TABLE}.rowid BETWEEN :first AND :last"
        others = (last - first + 1) - (end - 1)  # rows in the range not its live turns
        if others <= RANGE_SLACK:
            scope_ids = None
            q["k"] += max(others, 0)
        if wlo < end and lo is not None:
            q["lo"] = lo
            window, total = f" AND {FTS_TABLE}.rowid >= :lo", COMMON_WINDOW
    tid = "t.id" if use_join else f"{FTS_TABLE}.rowid"

    def matched(param: str, extra: str = "") -> str:
        if use_join:
            return (
                f"FROM {FTS_TABLE} CROSS JOIN om_turns t ON t.id = {FTS_TABLE}.rowid {join} "
                f"WHERE {FTS_TABLE} MATCH :{param} AND {where}"
            )
        return f"FROM {FTS_TABLE} WHERE {FTS_TABLE} MATCH :{param}{narrow}{extra}"

    arms = []
    if rare:
        q["q"] = sqlite_match(rare, scope_ids)
        arms.append(f"SELECT {tid} AS id, -bm25({FTS_TABLE}, 1.0, 0.0) AS score {matched('q')}")
        if not common:
            sql = f"{arms[0]} ORDER BY score DESC, id DESC LIMIT :k"
            return [(int(i), float(r)) for i, r in _sqlite_rows(s, sql, q)], q["k"]
    for n, term in enumerate(common):
        q[f"q{n}"] = sqlite_match([term], scope_ids)
    # Counts are kept per session, or per owner (an owner's sessions are many short ones: a
    # count there walks the term's postings across the whole scope, half the search's cost).
    counted: SessionRow | str | None = session
    count_end = end
    if scope == "owner":
        counted, count_end = (session.owner, in_scope()) if before is None else (None, end)
    counts = _known_counts(s, counted, common, count_end) if counted is not None else {}
    todo = [n for n in range(len(common)) if n not in counts]
    if todo:
        sql = "SELECT " + ", ".join(f"(SELECT count(*) {matched(f'q{n}', window)})" for n in todo)
        (row,) = _sqlite_rows(s, sql, q)
        counts.update(zip(todo, row, strict=True))
        if counted is not None:
            _remember_counts(s, counted, {common[n]: counts[n] for n in todo}, count_end)
    total = in_scope() if total is None else total
    weights = {
        n: max(math.log((total - held + 0.5) / (held + 0.5)), 1e-6)
        for n in range(len(common))
        if (held := counts[n])
    }
    if len(weights) <= SUBSET_TERMS:
        held = [common[n] for n in weights]
        by_subsets = _rank_by_subsets(
            s, q, arms, held, list(weights.values()), scope_ids, matched, window, tid
        )
        return by_subsets, q["k"]
    for n, w in weights.items():
        q[f"w{n}"] = w
        # Its newest COMMON_TURNS matches only: summing every match of a word held by a
        # third of a 100k-turn session costs ~100 ms, while its weight is the smallest.
        arms.append(
            f"SELECT * FROM (SELECT {tid} AS id, :w{n} AS score {matched(f'q{n}', window)} "
            f"ORDER BY {tid} DESC LIMIT {COMMON_TURNS})"
        )
    if not arms:
        return [], q["k"]
    sql = (
        f"SELECT id, sum(score) AS score FROM ({' UNION ALL '.join(arms)}) "
        "GROUP BY id ORDER BY score DESC, id DESC LIMIT :k"
    )
    return [(int(i), float(r)) for i, r in _sqlite_rows(s, sql, q)], q["k"]


SUBSET_TERMS = 4  # a cue's common terms ranked subset by subset (at most 15 queries) ...
# ... else by summing each one's newest COMMON_TURNS matches (see _sqlite_rank)


def _rank_by_subsets(
    s: Session,
    q: dict[str, Any],
    rare_arms: list[str],
    terms: list[tuple[str, ...]],
    weights: list[float],
    scope_ids: Sequence[int] | None,
    matched: Callable[[str, str], str],
    window: str,
    tid: str,
) -> list[tuple[int, float]]:
    """The best ``q["k"]`` matches when the cue's common terms are few, best first.

    A turn scores its rare terms' -bm25 plus the weight of each common term it holds (in the
    window). The ``k`` best turns holding rare terms are scored exactly in one statement (their
    common terms found by intersecting with each). Every other turn scores the weight of the
    set of common terms it holds, so turns are taken set by set, the heaviest first, each set
    one FTS5 query (``a AND b``) for its newest rows not placed yet, until ``k`` are placed:
    FTS5 walks only as far as those rows, not every match of a common word. A turn holding
    rare terms as well scores more than its set, so it ranks above every turn not yet placed
    too.
    """
    k = int(q["k"])
    scores: dict[int, float] = {}
    if rare_arms:
        arms = list(rare_arms)
        for n, (term, w) in enumerate(zip(terms, weights, strict=True)):
            q[f"r{n}"] = f"({q['q']}) AND {{body}} : {_phrase(term)}"
            q[f"rw{n}"] = w
            arms.append(f"SELECT {tid} AS id, :rw{n} AS score {matched(f'r{n}', window)}")
        sql = (
            f"SELECT id, sum(score) AS score FROM ({' UNION ALL '.join(arms)}) "
            "GROUP BY id ORDER BY score DESC, id DESC LIMIT :k"
        )
        scores = {int(i): float(r) for i, r in _sqlite_rows(s, sql, q)}
    phrases = [f"{{body}} : {_phrase(t)}" for t in terms]
    sets = [c for size in range(len(terms), 0, -1) for c in combinations(range(len(terms)), size)]
    weight = {c: sum(weights[i] for i in c) for c in sets}
    sets.sort(key=lambda c: -weight[c])
    found: dict[int, float] = {}
    seen: set[int] = set()  # rows placed: known to rank above every row not yet seen
    i = 0
    while i < len(sets) and len(seen) < k:
        group = [sets[i]]  # sets of one weight: their rows are merged, newest first
        while i + len(group) < len(sets) and math.isclose(
            weight[sets[i + len(group)]], weight[sets[i]], rel_tol=1e-12
        ):
            group.append(sets[i + len(group)])
        i += len(group)
        need = k - len(seen)
        rows: list[tuple[int, float]] = []
        for c in group:
            # Holding at least these terms; a row holding more was placed with a heavier set
            # (its rows were all taken, or k were placed). Not FTS5's NOT: it walks the
            # whole archive, whatever the rowid range.
            q["x"] = _within(scope_ids, " AND ".join(phrases[j] for j in c))
            sql = (
                f"SELECT {tid} AS id {matched('x', window)} "
                f"ORDER BY {tid} DESC LIMIT {need + len(seen)}"
            )
            rows += [(r[0], weight[c]) for r in _sqlite_rows(s, sql, q) if r[0] not in seen]
        rows = sorted(rows, reverse=True)[:need]
        seen.update(r[0] for r in rows)  # a row holding rare terms too ranks higher still
        found.update(r for r in rows if r[0] not in scores)
    scores.update(found)
    return sorted(scores.items(), key=lambda r: (-r[1], -r[0]))[:k]


# How many turns of a session's window (or of an owner's sessions) held a common term, per
# database, with the scope's end (the session's next turn number; the owner's turns in all)
# when counted: counting walks the term's postings there (half the search's cost), and a count
# changes by at most one a turn. A count is reused while the scope has grown by at most
# 1/COUNT_DRIFT of it (the term's weight then moves by a few percent), so a conversation's
# recurring words are counted once every few dozen turns. Kept per connection pool (another
# database can sit at the same URL); a forget drops them with the verdicts.
_WINDOW_COUNTS: weakref.WeakKeyDictionary[Any, OrderedDict[tuple[Any, ...], tuple[int, int]]] = (
    weakref.WeakKeyDictionary()
)
_WINDOW_COUNTS_SIZE = 4096
COUNT_DRIFT = 40


def _count_key(scope: SessionRow | str, term: tuple[str, ...]) -> tuple[Any, ...]:
    """A session's (created_at: a forgotten session's row id may be reused, its counts
    never), or an owner's."""
    if isinstance(scope, str):
        return ("owner", scope, term)
    return (scope.id, scope.created_at, term)


def _known_counts(
    s: Session, scope: SessionRow | str, terms: list[tuple[str, ...]], end: int
) -> dict[int, int]:
    """The still-valid counts of ``terms`` in the scope ending at ``end``, by index."""
    cache = _WINDOW_COUNTS.get(s.get_bind().pool)
    if not cache:
        return {}
    out = {}
    for n, term in enumerate(terms):
        hit = cache.get(_count_key(scope, term))
        if hit is not None and 0 <= end - hit[0] <= hit[1] // COUNT_DRIFT:
            out[n] = hit[1]
    return out


def _remember_counts(
    s: Session, scope: SessionRow | str, counts: dict[tuple[str, ...], int], end: int
) -> None:
    cache = _WINDOW_COUNTS.setdefault(s.get_bind().pool, OrderedDict())
    for term, held in counts.items():
        cache[_count_key(scope, term)] = (end, int(held))
    while len(cache) > _WINDOW_COUNTS_SIZE:
        cache.popitem(last=False)


# Terms known to be common, per database: a term in COMMON_TURNS turns stays common (short of
# forgetting most of them), so each is probed once. Bounded; the oldest verdicts go first.
# Kept per connection pool (an engine's, shared by its views), never by URL: another database
# can sit at the same URL (``:memory:``, a file made again).
_COMMON_CACHE: weakref.WeakKeyDictionary[Any, OrderedDict[str, None]] = weakref.WeakKeyDictionary()
_COMMON_CACHE_SIZE = 4096
# Terms known to be rare, per database (SQLite): the matches a probe counted and the newest turn
# id then. Turn ids are never reused and SQLite commits one writer at a time, so the turns
# added since number at most the ids since, each adding at most one match: a term stays rare
# while its count plus the ids since stays under COMMON_TURNS. A conversation's words are then
# probed once every (COMMON_TURNS - count) turns instead of on every search (the probes were
# most of a search in an archive where no word is common).
_RARE_CACHE: weakref.WeakKeyDictionary[Any, OrderedDict[str, tuple[int, int]]] = (
    weakref.WeakKeyDictionary()
)


def _verdict_key(term: tuple[str, ...]) -> str:
    """A term's key in the verdict caches: lower-cased, not casefolded, as both indexes fold
    case (casefold would make "Straße" and "strasse", two words to either, share a verdict)."""
    return " ".join(term).lower()


def forget_verdicts(s: Session) -> None:
    """Drop this database's verdicts and counts (this process's): after a forget, a term
    known to be common may be rare again, and treated as common it would be matched only in a long
    session's newest turns. Another process keeps its own until it restarts, a cost the
    verdicts accept (a term stays common short of forgetting most of the turns holding it)."""
    pool = s.get_bind().pool
    for cache in (_COMMON_CACHE, _RARE_CACHE, _WINDOW_COUNTS):
        cache.pop(pool, None)


def _verdicts(s: Session, table: weakref.WeakKeyDictionary[Any, OrderedDict[str, Any]]) -> Any:
    """This database's verdicts in ``table`` (by the session's connection pool)."""
    return table.setdefault(s.get_bind().pool, OrderedDict())


def _split_common(
    s: Session, terms: list[tuple[str, ...]]
) -> tuple[list[tuple[str, ...]], list[tuple[str, ...]]]:
    """The cue's terms in fewer than COMMON_TURNS turns of the archive, and the others."""
    known = _verdicts(s, _COMMON_CACHE)
    rare = _verdicts(s, _RARE_CACHE)
    keys = [_verdict_key(t) for t in terms]
    common = {i for i, k in enumerate(keys) if k in known}
    unknown = [i for i, k in enumerate(keys) if k not in known]
    if unknown and any(keys[i] in rare for i in unknown):
        ((newest,),) = _sqlite_rows(s, _NEWEST_TURN, {})
        unknown = [i for i in unknown if not _still_rare(rare.get(keys[i]), newest or 0)]
    if unknown:
        probes = ", ".join(
            f"(SELECT count(*) FROM (SELECT 1 FROM {FTS_TABLE} WHERE {FTS_TABLE} MATCH :p{i} "
            f"LIMIT {COMMON_TURNS}))"
            for i in unknown
        )
        params = {f"p{i}": _phrase(terms[i]) for i in unknown}
        (row,) = _sqlite_rows(s, f"SELECT ({_NEWEST_TURN}), {probes}", params)
        newest, counts = row[0] or 0, row[1:]
        for i, n in zip(unknown, counts, strict=True):
            if n >= COMMON_TURNS:
                common.add(i)
                rare.pop(keys[i], None)
                _remember(known, keys[i], None)
            else:
                _remember(rare, keys[i], (int(n), newest))
    return [t for i, t in enumerate(terms) if i not in common], [terms[i] for i in sorted(common)]


def _still_rare(entry: tuple[int, int] | None, newest: int) -> bool:
    """Whether a rare verdict (count, newest turn id then) still holds at ``newest``."""
    if entry is None:
        return False
    count, then = entry
    return newest >= then and count + (newest - then) < COMMON_TURNS


def _remember(cache: OrderedDict[str, Any], key: str, value: Any) -> None:
    cache[key] = value
    cache.move_to_end(key)
    while len(cache) > _COMMON_CACHE_SIZE:
        cache.popitem(last=False)


def _scope_ids(
    s: Session, session: SessionRow, scope: str
) -> tuple[list[int] | None, Callable[[], int]]:
    """The session row ids whose scope tokens narrow the search (None: no narrowing), and
    how to count the turns in scope."""
    if scope == "session":
        return [session.id], lambda: int(session.next_seq)
    rows = (
        s.connection()
        .execute(
            select(SessionRow.id, SessionRow.next_seq).where(SessionRow.owner == session.owner)
        )
        .all()
    )
    ids = [int(r.id) for r in rows] if len(rows) <= MAX_SCOPE_SESSIONS else None
    return ids, lambda: sum(int(r.next_seq) for r in rows)


def check_recall_args(limit: object, scope: object, before: object) -> None:
    """Typed errors for recall's options (the cue is checked by :func:`parse_cue`)."""
    if isinstance(limit, bool) or not isinstance(limit, int) or limit <= 0:
        raise InvalidInput(f"limit must be a positive int, got {limit!r:.40}")
    if scope not in SCOPES:
        raise InvalidInput(f"scope must be 'session' or 'owner', got {scope!r:.40}")
    if before is not None and (isinstance(before, bool) or not isinstance(before, int)):
        raise InvalidInput(f"before must be None or a turn number (int), got {before!r:.40}")


# -- reading spans ------------------------------------------------------------------------------


def read_span(s: Session, session: SessionRow, first: object, last: object) -> list[TurnRow]:
    """The live turns numbered ``first``..``last`` (inclusive, from 1), exactly as stored, or
    a typed error. Numbers a replacement left behind (``replace_turns`` numbers its turns
    after the session's newest, so the versions it superseded leave gaps) hold no live turn:
    a span across them, such as a page's caption names, returns the turns around them."""
    for name, value in (("first_turn", first), ("last_turn", last)):
        if isinstance(value, bool) or not isinstance(value, int):
            raise InvalidInput(f"{name} must be a turn number (int), got {value!r:.40}")
    assert isinstance(first, int) and isinstance(last, int)
    have = session.next_seq
    if first < 1 or last < first:
        raise InvalidInput(
            f"a span is first_turn..last_turn with 1 <= first_turn <= last_turn; got {first}..{last}"
        )
    if last > have:
        raise InvalidInput(
            f"session {session.key!r} has turns 1..{have}; {first}..{last} runs past its end"
            if have
            else f"session {session.key!r} has no turns yet"
        )
    rows = s.scalars(
        select(TurnRow)
        .where(TurnRow.session_row_id == session.id, TurnRow.seq >= first, TurnRow.seq <= last)
        .order_by(TurnRow.seq)
    ).all()
    return list(rows)


# -- marks: pins and rehearsal ------------------------------------------------------------------


def _upsert(s: Session) -> Any:
    return pg_insert if s.get_bind().dialect.name == "postgresql" else sqlite_insert


def set_pinned(s: Session, session: SessionRow, seq: object, pinned: bool) -> None:
    """Pin or unpin one turn of ``session`` (by its number)."""
    if isinstance(seq, bool) or not isinstance(seq, int):
        raise InvalidInput(f"turn must be a turn number (int), got {seq!r:.40}")
    turn_id = (
        s.scalar(select(TurnRow.id).where(TurnRow.session_row_id == session.id, TurnRow.seq == seq))
        if 1 <= seq <= MAX_TURN  # (PostgreSQL compares turn numbers as INTEGER)
        else None
    )
    if turn_id is None:
        raise InvalidInput(
            f"session {session.key!r} has no turn {seq} (it has turns 1..{session.next_seq})"
        )
    stmt = _upsert(s)(TurnMarkRow).values(
        turn_id=turn_id, session_row_id=session.id, pinned=pinned, recalls=0
    )
    s.execute(
        stmt.on_conflict_do_update(
            index_elements=[TurnMarkRow.turn_id], set_={"pinned": stmt.excluded.pinned}
        )
    )


_PINNED_SEQS = (
    select(TurnRow.seq)
    .join(TurnMarkRow, TurnMarkRow.turn_id == TurnRow.id)
    .where(TurnMarkRow.session_row_id == bindparam("sid"), TurnMarkRow.pinned)
    .where(TurnRow.seq >= FIRST_LIVE_SEQ)  # a replaced turn's pin went with it
    .order_by(TurnRow.seq)
)


def pinned_seqs(s: Session, session: SessionRow) -> list[int]:
    """The numbers of the session's pinned turns, in order (built once, run on the read
    transaction's connection: every ``assemble`` asks)."""
    return list(s.connection().execute(_PINNED_SEQS, {"sid": session.id}).scalars())


# One statement on both backends (SQLite >= 3.24 upserts; the SELECT needs its WHERE there).
_REHEARSE = text(
    "INSERT INTO om_turn_marks (turn_id, session_id, pinned, recalls, recalled_at) "
    "SELECT id, session_id, FALSE, 1, :now FROM om_turns WHERE id IN :ids "
    "ON CONFLICT (turn_id) DO UPDATE SET recalls = om_turn_marks.recalls + 1, "
    "recalled_at = excluded.recalled_at"
).bindparams(bindparam("ids", expanding=True), bindparam("now", type_=UTCDateTime()))


def rehearse(s: Session | Connection, turn_ids: Sequence[int], now: datetime) -> None:
    """Count one more recall of each turn (turns forgotten meanwhile are skipped)."""
    if turn_ids:
        s.execute(_REHEARSE, {"ids": list(turn_ids), "now": now})


def recall_counts(s: Session, session: SessionRow) -> dict[int, int]:
    """How often each of the session's turns was recalled, by turn number (recalled ones)."""
    rows = s.execute(
        select(TurnRow.seq, TurnMarkRow.recalls)
        .join(TurnMarkRow, TurnMarkRow.turn_id == TurnRow.id)
        .where(TurnMarkRow.session_row_id == session.id, TurnMarkRow.recalls > 0)
    ).all()
    return {int(seq): int(n) for seq, n in rows}


# -- forgetting ---------------------------------------------------------------------------------


def purge_session(s: Session, session_row_id: int) -> None:
    """After a session's turns are deleted: drop its marks and leave no trace in the index.

    The delete triggers already took the turns out of the SQLite index, but FTS5 keeps the
    old tokens in earlier segments until a merge; ``optimize`` rewrites the index into one
    segment, and with ``secure_delete`` on, the freed pages are zeroed. PostgreSQL's
    expression index has no rows of its own: its entries die with the turns.
    """
    s.execute(delete(TurnMarkRow).where(TurnMarkRow.session_row_id == session_row_id))
    forget_verdicts(s)
    if s.get_bind().dialect.name == "sqlite":
        s.execute(text(f"INSERT INTO {FTS_TABLE}({FTS_TABLE}) VALUES ('optimize')"))
