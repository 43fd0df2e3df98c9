"""Deterministic synthetic chat for tests: varied sentences with names, numbers and dates."""

from __future__ import annotations

import random
from datetime import datetime, timedelta

SUBJECTS = ["Maya", "the landlord", "my sister", "Dr. Okafor", "the team", "our neighbour Ravi"]
VERBS = ["moved", "booked", "cancelled", "painted", "repaired", "ordered", "planted", "rescheduled"]
OBJECTS = [
    "the kitchen shelves",
    "flights to Lisbon",
    "the tomato seedlings",
    "a dentist visit",
    "the blue bicycle",
    "three boxes of tiles",
    "the quarterly report",
    "a pottery class",
]
TAILS = [
    "on Tuesday",
    "for 42 euros",
    "before the 15th of June",
    "after the storm",
    "with a 10% discount",
    "at 7:30 in the morning",
    "next to the old station",
    "twice this week",
]


def sentence(rng: random.Random) -> str:
    return (
        f"{rng.choice(SUBJECTS).capitalize()} {rng.choice(VERBS)} {rng.choice(OBJECTS)} "
        f"{rng.choice(TAILS)}."
    )


def conversation(
    n: int, start: datetime, step: timedelta, seed: int = 7, sentences: tuple[int, int] = (1, 5)
) -> list[dict]:
    """``n`` alternating user/assistant turns, ``step`` apart, starting at ``start``."""
    rng = random.Random(seed)
    turns = []
    for i in range(n):
        text = " ".join(sentence(rng) for _ in range(rng.randint(*sentences)))
        turns.append(
            {"role": "user" if i % 2 == 0 else "assistant", "content": text, "at": start + i * step}
        )
    return turns
