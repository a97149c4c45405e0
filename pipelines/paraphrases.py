"""A paraphrase set for judging a semantic cache, built from evaluation questions without a model.

Positives are the same question asked another way: typos, contractions and reworded question
openings, a polite lead-in, clauses in another order. Negatives are questions whose answer differs:
another question about the same passage (the same cache scope, so only the embedding keeps them
apart), and the question turned into its opposite (an antonym swapped in, or a negation), the
known failure of semantic caches.
"""

from __future__ import annotations

import random
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np

Kind = Literal["typo", "reword", "lead-in", "reorder", "same-passage", "opposite"]
POSITIVE_KINDS: tuple[Kind, ...] = ("typo", "reword", "lead-in", "reorder")

REWORDINGS = [
    (r"^What is\b", "What's"), (r"^What's\b", "What is"), (r"^In what year\b", "What year"),
    (r"^What year\b", "In what year"), (r"^How many\b", "What number of"), (r"^Who was\b", "Who's"),
    (r"^When did\b", "At what time did"), (r"^Where is\b", "Where's"), (r"^What was\b", "What's"),
    (r"^Which\b", "What"), (r"^What\b", "Which"), (r"\bdid not\b", "didn't"), (r"\bis not\b", "isn't"),
]
LEAD_INS = ["Can you tell me", "Do you know", "Please tell me", "I'd like to know", "Quick question:"]
ANTONYMS = [
    ("largest", "smallest"), ("biggest", "smallest"), ("first", "last"), ("most", "least"),
    ("before", "after"), ("increase", "decrease"), ("increased", "decreased"), ("earliest", "latest"),
    ("highest", "lowest"), ("more", "less"), ("maximum", "minimum"), ("longest", "shortest"),
    ("oldest", "youngest"), ("best", "worst"), ("better", "worse"), ("north", "south"), ("east", "west"),
    ("win", "lose"), ("won", "lost"), ("positive", "negative"), ("above", "below"), ("major", "minor"),
    ("early", "late"), ("start", "end"), ("began", "ended"), ("strong", "weak"), ("large", "small"),
    ("high", "low"), ("same", "different"), ("inside", "outside"), ("import", "export"), ("rise", "fall"),
    ("allowed", "forbidden"), ("legal", "illegal"), ("supported", "opposed"), ("accepted", "rejected"),
]
NEGATABLE = re.compile(r"\b(is|was|are|were|did|does|do|can|could|would|will|has|had|have)\b(?!['’]t)")


@dataclass(frozen=True)
class Pair:
    """A question, another wording or another question, and whether one's answer serves the other."""

    question: str
    other: str
    kind: Kind
    same_answer: bool


def typo(question: str, rng: random.Random) -> str | None:
    """One or two adjacent letters swapped inside words of five letters or more."""
    words = question.split(" ")
    long = [i for i, w in enumerate(words) if sum(c.isalpha() for c in w) >= 5]
    if not long:
        return None
    for i in rng.sample(long, min(len(long), rng.choice([1, 2]))):
        word = words[i]
        j = rng.randrange(1, len(word) - 2)
        words[i] = word[:j] + word[j + 1] + word[j] + word[j + 2:]
    return " ".join(words)


def reword(question: str) -> str | None:
    """The first rewording rule that applies, else None."""
    for pattern, replacement in REWORDINGS:
        changed = re.sub(pattern, replacement, question, count=1)
        if changed != question:
            return changed
    return None


def lead_in(question: str, rng: random.Random) -> str:
    rest = question[0].lower() + question[1:] if question[:2] != question[:2].upper() else question
    return f"{rng.choice(LEAD_INS)} {rest}"


def reorder(question: str) -> str | None:
    """A leading or trailing clause moved to the other end of the question."""
    body = question.rstrip("?").strip()
    head, comma, tail = body.partition(", ")
    if not comma or len(head.split()) < 2 or len(tail.split()) < 3:
        return None
    return f"{tail[0].upper()}{tail[1:]}, {head[0].lower()}{head[1:]}?"


def opposite(question: str, rng: random.Random) -> str | None:
    """The question with an antonym swapped in, or else negated."""
    pairs = [(a, b) for a, b in ANTONYMS if re.search(rf"\b{a}\b", question, re.I)]
    pairs += [(b, a) for a, b in ANTONYMS if re.search(rf"\b{b}\b", question, re.I)]
    if pairs:
        word, antonym = rng.choice(pairs)
        return re.sub(rf"\b{word}\b", antonym, question, count=1, flags=re.I)
    match = NEGATABLE.search(question)
    if match is None:
        return None
    return question[:match.end()] + " not" + question[match.end():]


def build_pairs(questions: Sequence[tuple[str, str]], seed: int = 0) -> list[Pair]:
    """Pairs from ``(passage id, question)`` items: every positive kind and both negative kinds that
    apply to each question (another question about the same passage chosen at random)."""
    rng = random.Random(seed)
    by_passage: dict[str, list[str]] = {}
    for passage, question in questions:
        by_passage.setdefault(passage, []).append(question)
    pairs: list[Pair] = []
    for passage, question in questions:
        candidates: list[tuple[Kind, str | None]] = [
            ("typo", typo(question, rng)), ("reword", reword(question)), ("lead-in", lead_in(question, rng)),
            ("reorder", reorder(question)), ("opposite", opposite(question, rng))]
        others = [q for q in by_passage[passage] if q.strip().lower() != question.strip().lower()]
        candidates.append(("same-passage", rng.choice(others) if others else None))
        pairs += [Pair(question, other, kind, kind in POSITIVE_KINDS)
                  for kind, other in candidates if other is not None and other != question]
    return pairs


@dataclass(frozen=True)
class HitRates:
    """At one distance threshold: the share of pairs that would hit, per kind, over positives
    (wanted hits) and over negatives (false hits)."""

    threshold: float
    by_kind: dict[str, float]
    hit_rate: float
    false_hit_rate: float


def hit_rates(pairs: Sequence[Pair], distances: np.ndarray, threshold: float,
              accepted: np.ndarray | None = None) -> HitRates:
    """Which pairs hit at ``threshold`` (cosine distance at most it, and the guard's ``accepted``)."""
    hit = distances <= threshold
    if accepted is not None:
        hit &= accepted
    kinds = np.array([p.kind for p in pairs])
    positive = np.array([p.same_answer for p in pairs])
    return HitRates(threshold, {k: float(hit[kinds == k].mean()) for k in dict.fromkeys(kinds.tolist())},
                    float(hit[positive].mean()), float(hit[~positive].mean()))


def threshold_for(pairs: Sequence[Pair], distances: np.ndarray, false_hit_rate: float,
                  accepted: np.ndarray | None = None) -> float:
    """The largest threshold (up to 1.0) whose false-hit rate stays at or below ``false_hit_rate``."""
    negative = ~np.array([p.same_answer for p in pairs])
    reachable = distances[negative] if accepted is None else distances[negative & accepted]
    allowed = int(np.floor(false_hit_rate * negative.sum()))
    if reachable.size <= allowed:
        return 1.0
    return float(min(1.0, np.nextafter(np.sort(reachable)[allowed], -np.inf)))
