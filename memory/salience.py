"""Salience: how much a turn says that someone will want back word for word.

One job: a cheap, deterministic score per turn from its text alone (no model calls, no
database), used by the aging pass to decide which turns an abridged faint page keeps whole
(:mod:`.render`). What counts, each a *cue* with a weight:

- a person telling facts about themselves, their plans and their preferences: first-person
  statements (``I am``/``I'm`` + something other than a feeling, ``I work``, ``I live``,
  ``I moved``, ``I'm going to``, ``I plan``, ``we will``, ``I like``/``love``/``hate``/
  ``prefer`` + something other than ``that``/``it``/``your …``, ``my favourite``, ``my name
  is``); ``my``/``our`` + a noun counts less (``my sister``; not ``my god``, ``my pleasure``);
- numbers; dates (month and day names, ``2023-05-08``, ``5/8``, ``1999``, ``yesterday``,
  ``next week``, ``2023年5月``); times (``10:30``, ``3pm``, ``noon``); amounts and quantities
  (``$45``, ``€12``, ``30%``, ``12 dollars``, ``5 km``);
- proper names: capitalised words that do not open a sentence (``Caroline``, ``Boston``);
- codes and identifiers: letters and digits mixed (``TAP1357``, ``12A``, ``A-443``,
  ``#443``), e-mail addresses, URLs.

The cues combine as a noisy-or, ``1 - prod(1 - w)``, so the score is in ``[0, 1)``, grows with
every cue and never saturates to a tie. One strong cue (a self-fact, a plan, a preference, a
code, an e-mail address, a URL, an amount) is enough to reach :data:`SALIENT`; weaker ones
(a number, a date, a time, a name, ``my …``) need company: ``see you tomorrow`` is chatter,
``my flight is on May 5`` is not.

Long turns are discounted by ``sqrt(LONG_CHARS / length)`` past :data:`LONG_CHARS`: keeping a
turn whole on a faint page costs room in proportion to its length, and a long exposition
(an assistant's list of suggestions) nearly always holds a name or a number somewhere without
being the fact someone will ask about.

The cues are English; any other text scores from the script-independent cues (digits,
identifiers, addresses, capitalised words) and never raises: the score reads the first
:data:`SCAN_CHARS` characters of any string, of any script. The role is not used (the same
words mean the same from either side of a chat); a user function passed as
``MemoryManager(salience=fn)`` receives it and replaces this score entirely.

Rehearsal: the aging pass adds :data:`RECALL_BONUS` per time a turn was recalled
(:func:`rehearsed`), so a turn that got used once counts as salient whatever it says; a pinned
turn is always kept whole (:func:`keeps_whole`).
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable

from .errors import InvalidConfiguration

__all__ = [
    "LONG_CHARS",
    "RECALL_BONUS",
    "SALIENT",
    "SCAN_CHARS",
    "SalienceFn",
    "check_salience",
    "keeps_whole",
    "rehearsed",
    "salience",
]

SalienceFn = Callable[[str, str], float]
"""``fn(role, content) -> float``: higher is more salient; :data:`SALIENT` is the line."""

# A turn scoring at least this is salient: one strong cue (0.5) reaches it alone, two weak
# ones (a date and a time 0.58, a date and a name 0.48) together; a lone date (0.35), a
# lone name (0.2) or a lone number (0.15) does not.
SALIENT = 0.45
# Each recall of a turn adds this much: one recall makes any turn salient (rehearsal).
RECALL_BONUS = SALIENT
# Turns longer than this are discounted by sqrt(LONG_CHARS / length).
LONG_CHARS = 600
# Only the opening of a turn is read (the cues saturate long before; a 1 MiB turn costs a
# bounded scan).
SCAN_CHARS = 4096

# -- the weights ------------------------------------------------------------------------------

W_SELF = 0.5  # a self-fact, plan or preference
W_SELF_MORE = 0.2  # a second one
W_MY = 0.35  # my/our + a noun
W_NUMBER = 0.15
W_DATE = 0.35
W_TIME = 0.35
W_AMOUNT = 0.5
W_NAME = 0.2  # per distinct name, at most MAX_NAMES of them
MAX_NAMES = 3
W_CODE = 0.5
W_EMAIL = 0.6
W_URL = 0.5

# -- the cues ---------------------------------------------------------------------------------

_I = re.IGNORECASE
_ADVERBS = (
    r"(?:(?:really|also|just|still|actually|definitely|totally|absolutely|so|do|did|don'?t|"
    r"didn'?t|do not|did not|never|usually|always|probably|finally|recently|now|already|"
    r"currently|even|sometimes|often|only|first|once)\s+)*"
)
# Alternatives are tried in order at each position; what follows (up to a clause end) is
# in `rest`, or in `verb` for a plain "I <verb>".
_FIRST_PERSON = re.compile(
    r"(?=[IiWwMmOo])(?<![\w'])(?:"
    r"(?P<plan>(?:i'?m|i am|we'?re|we are)\s+" + _ADVERBS + r"(?:going|gonna|planning|"
    r"about|hoping|trying)\s+to|i'?ll|i will|we'?ll|we will|i'?d like to|we'?d like to|"
    r"(?:i|we)\s+" + _ADVERBS + r"(?:plan(?:ned)?|intend|want|need|hope|decided|have|aim)"
    r"\s+to|i'?m gonna|we'?re gonna)"
    r"|(?P<pref>i\s+" + _ADVERBS + r"(?:like|love|hate|prefer|enjoy|adore|dislike|liked|"
    r"loved|hated|preferred|enjoyed|can'?t stand)|(?:my|our) fav(?:ou?rite)?s?|"
    r"i'?m (?:a (?:huge |big )?fan of|into|allergic|vegan|vegetarian))"
    r"|(?P<fact>my name is|i'?m from|i come from|i was born|(?:i|we) used to|"
    r"(?:i|we)'?ve\s+" + _ADVERBS + r"(?:been|got|gotten|had|done|started|decided|lived|"
    r"worked|taken|bought|seen|visited|learned|made|finished|joined|moved|tried|read|"
    r"watched|always|never))"
    r"|(?P<ime>i'?m|i am|i was|we'?re|we are|we were)"
    r"|(?:i|we)\s+" + _ADVERBS + r"(?P<verb>[^\W\d_]+(?:'[^\W\d_]+)?)"
    r"|(?P<my>my|our)"
    r")(?![\w'])(?=(?P<rest>[^.!?;\n]{0,48}))",
    _I,
)
# A sentence that opens on a verb, its subject dropped: "Got a new puppy!", "Been painting".
_DROPPED = re.compile(
    r"(?=[JAFRGWBSTMOVPHjafrgwbstmovph])(?:^|(?<=[.!?\n])|(?<=[.!?]\s)|(?<=[.!?]\s\s))"
    r"(?i:just |also |finally |recently )?"
    r"(?i:got|gotten|went|been|started|finished|launched|bought|took|made|joined|visited|"
    r"tried|signed up|booked|moved|adopted|won|baked|painted|opened|found|watched|gonna|"
    r"planning|heading|headed|off to|spent|volunteered|ran|wrapped up)(?![\w'])"
    r"(?=(?P<rest>[^.!?;\n]{0,48}))",
    re.MULTILINE,
)
_WORD = re.compile(r"[^\W_]+(?:'[^\W_]+)?")
# A word that may be capitalised: it opens on a letter other than a-z (checked with isupper).
_CAPWORD = re.compile(r"(?<![\w'])[^\W\d_a-z][^\W_]*(?:'[^\W_]+)?")


def _words(text: str) -> frozenset[str]:
    return frozenset(text.split())


# What follows "I'm"/"I was" when it is a feeling or a reply, not a fact.
_STATES = _words(
    """
    so very really too just sure not glad happy sorry excited thrilled proud good fine ok okay
    great well here afraid thinking wondering curious kidding impressed amazed touched
    grateful thankful honored honoured looking doing feeling totally absolutely also still
    all always always blown moved inspired jealous envious surprised shocked speechless
    relieved pleased delighted lucky blessed a_bit bit kind kinda pretty quite with in on
    at there back right wrong confused lost positive certain guessing hoping trying
    loving enjoying listening agreeing down up for the that this it like exactly actually
    """
)
# "I <verb>" that is thinking aloud or replying, not a fact about oneself.
_NOT_FACTS = _words(
    """
    think thought know knew guess mean meant agree see saw understand understood appreciate
    feel felt hope wish bet believe wonder wondered can can't cannot could couldn't would
    wouldn't should shouldn't must may might say said tell get gotta wanna do did don't didn't
    will won't shall totally remember recall imagine suppose hear heard noticed love like
    admire respect care miss missed just also really am was were are is do does
    doubt figure figured reckon trust promise swear and or but nor so too as than to in on at
    with for because if when while though although who that the a an all both
    """
)
# What follows "I love"/"I like" when it is a reaction to what was said.
_REACTIONS = _words(
    """
    that this it how what your you the_idea those these them hearing seeing when to
    talking chatting reading the_way
    """
)
# What follows "I'll" when it is a reply, not a plan.
_REPLIES = _words(
    """
    let keep check try see think look take be do have give bear make get go
    """
)
# What follows "my" when it is an exclamation or a reply, not a noun of one's life.
_MY_NOT = _words(
    """
    god gosh goodness pleasure bad dear heart thoughts opinion view mind point guess word
    own apologies condolences bet fault advice
    """
)

_DIGIT = re.compile(r"\d")
_MONTHS = (
    r"January|February|March|April|June|July|August|September|October|November|December|"
    r"Jan|Feb|Mar|Apr|Jun|Jul|Aug|Sept?|Oct|Nov|Dec"
)
# Dates in words ("Monday", "next week") and in digits ("May 5", "2023-05-08", "5th", "1999").
_DATE_WORDS = re.compile(
    r"(?=[JFMASONDjfmasondTtWwYyBbNnLlCcPp])(?<![\w])(?:(?:" + _MONTHS + r")\.?(?![\w])"
    r"|(?i:monday|tuesday|wednesday|thursday|friday|saturday|sunday|weekend|yesterday|"
    r"tomorrow|tonight|today|birthday|anniversary)(?![\w])"
    r"|(?i:(?:next|last|this|coming|past)\s+(?:week|month|year|summer|winter|spring|fall|"
    r"autumn|semester|weekend|morning|evening|night))(?![\w]))"
)
_DATE_DIGITS = re.compile(
    r"(?=[M\d])(?:May\s+\d|(?<![\w])(?:\d{1,2}(?:st|nd|rd|th)?\s+(?:of\s+)?May"
    r"|(?i:\d+\s+(?:days?|weeks?|months?|years?)\s+ago)"
    r"|\d{1,4}[/.-]\d{1,2}[/.-]\d{1,4}|(?:19|20)\d\d(?!\d)|\d{1,2}(?i:st|nd|rd|th)(?![\w]))"
    r"|\d{1,4}\s*[年月日])"
)
_TIME_DIGITS = re.compile(
    r"(?=\d)(?<!\d)\d{1,2}[:.]\d{2}(?!\d)|(?<![\w])\d{1,2}\s?(?i:am|pm|a\.m\.|p\.m\.)(?![\w])"
)
_TIME_WORDS = re.compile(r"(?=[NnMmOo])(?<![\w])(?i:noon|midnight|o'clock)(?![\w])")
_AMOUNT = re.compile(
    r"(?=[$€£¥₹₩₽¢\d])(?:[$€£¥₹₩₽¢]\s?\d|\d\s?[$€£¥₹₩₽¢%]"
    r"|(?<![\w])\d+(?:[.,]\d+)?\s?(?i:percent|dollars?|euros?|pounds?|bucks|cents?|usd|eur|gbp|jpy|yen|k|kg|g|lbs?|km|miles?|mph|kph|"
    r"meters?|metres?|feet|ft|inch(?:es)?|cm|mm|liters?|litres?|ml|calories|kcal|years?\s+old)"
    r"(?![\w]))"
)
_TLD = re.compile(r"://|www\.|\.(?i:com|org|net|io|dev|edu|gov|co|ai|app)(?![\w])")
_EMAIL = re.compile(r"[\w.+-]+@[\w-]+(?:\.[\w-]+)+")
_URL = re.compile(
    r"(?i:https?://|www\.)\S+|(?<![\w@.])[\w-]+\.(?i:com|org|net|io|dev|edu|gov|co|ai|app)"
    r"(?![\w])(?:/\S*)?"
)
# Letters and digits mixed in one token (ASCII), or a number after '#'.
_CODE = re.compile(
    r"(?<![\w-])(?=[A-Za-z0-9-]*\d)(?=[A-Za-z0-9-]*[A-Za-z])[A-Za-z0-9]+(?:-[A-Za-z0-9]+)*"
    r"(?![\w-])|#\s?[A-Za-z0-9-]*\d"
)
# Mixed tokens that are not codes: ordinals, decades, times, sizes, "3D", "mp3" ...
_NOT_CODE = re.compile(
    r"\d+(?:st|nd|rd|th|s|am|pm|k|m|h|d|x|g|ish|kg|km|cm|mm|ml|lbs?|ft|mph|yo)|"
    r"\d+(?:[.,]\d+)?(?:k|m|b)|mp[34]|[234]d|covid-19|4g|5g|wi-fi|\d+-(?:year|day|week|month|"
    r"hour|minute|min|time|ish|star|page|mile|person|part)s?(?:-old)?",
    _I,
)
_SENTENCE_END = frozenset('.!?\n:;"“”()[]*-•>|#…')
_CAP_STOP = _words(
    """
    I I'm I've I'll I'd Im Ive Ill Id OK Ok Okay Oh Ohh Ooh Yes Yeah Yep No Nope Lol Haha Hehe
    Omg Wow Hey Hi Hello Thanks Thank Please Sorry Sure Mr Mrs Ms Dr Sir Madam The A An And
    But Or So Well It It's That That's This What Why How Who When Where You You're We We're
    Congrats Congratulations Cool Great Nice Awesome Also Anyway
    """
)


def _first_word(rest: str) -> str:
    words = _WORD.findall(rest.casefold())
    if not words:
        return ""
    if len(words) > 1 and f"{words[0]}_{words[1]}" in _REACTIONS | _STATES:
        return f"{words[0]}_{words[1]}"
    return words[0]


def _self_statements(text: str) -> tuple[int, bool]:
    """(first-person facts, plans and preferences; a ``my``/``our`` + noun seen)."""
    facts = 0
    mine = False
    for m in _FIRST_PERSON.finditer(text):
        word = _first_word(m.group("rest"))
        if m.group("plan") is not None:
            if m.group("plan").casefold().rstrip().endswith(("'ll", "will")) and (
                not word or word in _REPLIES
            ):
                continue
            facts += 1
        elif m.group("pref") is not None:
            if word in _REACTIONS:
                continue
            facts += 1
        elif m.group("fact") is not None:
            facts += 1
        elif m.group("ime") is not None:
            if word and word not in _STATES:
                facts += 1
        elif m.group("verb") is not None:
            if m.group("verb").casefold() not in _NOT_FACTS:
                facts += 1
        elif m.group("my") is not None and word and word not in _MY_NOT:
            mine = True
    for m in _DROPPED.finditer(text):
        if _first_word(m.group("rest")) not in _REACTIONS | {"any", "a_chance", "", "me"}:
            facts += 1
    return facts, mine


def _names(text: str) -> int:
    """Distinct capitalised words that do not open a sentence (at most MAX_NAMES)."""
    seen: set[str] = set()
    for m in _CAPWORD.finditer(text):
        word = m.group()
        if not word[0].isupper() or word in _CAP_STOP or len(word) < 2:
            continue
        i = m.start() - 1
        while i >= 0 and text[i] in " \t":
            i -= 1
        if i < 0 or text[i] in _SENTENCE_END:
            continue
        if word.isupper() and len(word) <= 3:
            continue  # LOL, OMG, TV: shouting and acronyms, mostly
        seen.add(word)
        if len(seen) >= MAX_NAMES:
            break
    return len(seen)


def _codes(text: str) -> bool:
    return any(not _NOT_CODE.fullmatch(m.group().lstrip("# ")) for m in _CODE.finditer(text))


def salience(role: str, content: str) -> float:
    """How salient a turn is, in ``[0, 1)``; at least :data:`SALIENT` means salient.

    Deterministic and cheap (regular expressions over the first :data:`SCAN_CHARS`
    characters). ``role`` is accepted for the signature user functions share and not used.
    Any string is fine, of any script; a non-string content scores 0.
    """
    del role
    if not isinstance(content, str) or not content:
        return 0.0
    length = len(content)
    text = content[:SCAN_CHARS].replace("\u2019", "'").replace("\u02bc", "'")
    weights: list[float] = []
    facts, mine = _self_statements(text)
    if facts:
        weights.append(W_SELF)
    if facts > 1:
        weights.append(W_SELF_MORE)
    if mine:
        weights.append(W_MY)
    if "@" in text and _EMAIL.search(text):
        weights.append(W_EMAIL)
    if _TLD.search(text) and _URL.search(text):
        weights.append(W_URL)
    digits = _DIGIT.search(text) is not None
    amount = digits and _AMOUNT.search(text) is not None
    code = digits and _codes(text)
    date = (digits and _DATE_DIGITS.search(text) is not None) or _DATE_WORDS.search(text)
    clock = (digits and _TIME_DIGITS.search(text) is not None) or _TIME_WORDS.search(text)
    for cue, weight in ((amount, W_AMOUNT), (code, W_CODE), (date, W_DATE), (clock, W_TIME)):
        if cue:
            weights.append(weight)
    if digits and not (amount or code or date or clock):
        weights.append(W_NUMBER)  # a bare number
    weights.extend([W_NAME] * _names(text))
    keep = 1.0
    for w in weights:
        keep *= 1.0 - w
    score = 1.0 - keep
    if length > LONG_CHARS:
        score *= math.sqrt(LONG_CHARS / length)
    return score


def rehearsed(score: float, recalls: int) -> float:
    """A turn's salience after ``recalls`` recalls: :data:`RECALL_BONUS` more per recall."""
    return score + RECALL_BONUS * max(0, int(recalls))


def keeps_whole(score: float, *, pinned: bool = False, recalls: int = 0) -> bool:
    """Whether an abridged page keeps the turn whole: pinned, or salient after rehearsal."""
    return bool(pinned) or rehearsed(score, recalls) >= SALIENT


def check_salience(fn: object) -> SalienceFn:
    """``fn`` if it is a usable salience function (callable), else InvalidConfiguration;
    None gives the default :func:`salience`."""
    if fn is None:
        return salience
    if not callable(fn):
        raise InvalidConfiguration(
            f"salience must be a function f(role, content) -> float, got {type(fn).__name__}"
        )
    return fn  # type: ignore[return-value]
