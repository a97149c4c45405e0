"""Answer metrics shared by the router (shadow checks) and the pipelines: SQuAD's official
answer normalization, exact match, token F1, and SQuAD 2.0 abstention."""

from __future__ import annotations

import re
import string
from collections import Counter
from collections.abc import Sequence

_ARTICLES = re.compile(r"\b(a|an|the)\b", re.UNICODE)
_NO_PUNCTUATION = str.maketrans("", "", string.punctuation)
ABSTENTIONS = frozenset({"", "i dont know", "unanswerable", "no answer", "unknown", "cannot be determined",
                         "not enough information", "none"})


def normalize_answer(text: str) -> str:
    """Lower case, drop punctuation and articles, collapse whitespace (SQuAD's evaluation script)."""
    return " ".join(_ARTICLES.sub(" ", text.lower().translate(_NO_PUNCTUATION)).split())


def is_abstention(prediction: str) -> bool:
    """An empty answer or an "I don't know" counts as declining to answer."""
    return normalize_answer(prediction) in ABSTENTIONS


def exact_match(prediction: str, golds: Sequence[str]) -> float:
    """1.0 when the normalized prediction equals a normalized gold; for no gold, when it abstains."""
    if not golds:
        return float(is_abstention(prediction))
    normalized = normalize_answer(prediction)
    return float(any(normalized == normalize_answer(g) for g in golds))


def token_f1(prediction: str, golds: Sequence[str]) -> float:
    """Best token-overlap F1 against the golds; for no gold, 1.0 when it abstains."""
    if not golds:
        return float(is_abstention(prediction))
    predicted = normalize_answer(prediction).split()
    best = 0.0
    for gold in golds:
        expected = normalize_answer(gold).split()
        common = sum((Counter(predicted) & Counter(expected)).values())
        if not predicted or not expected:
            best = max(best, float(predicted == expected))
        elif common:
            precision, recall = common / len(predicted), common / len(expected)
            best = max(best, 2 * precision * recall / (precision + recall))
    return best
