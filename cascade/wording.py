"""Whether two wordings of a question may share an answer: the semantic cache's guard on a hit.

Embeddings place a question and its opposite side by side ("the largest city" and "the smallest
city" are 0.003 apart in cosine distance for MiniLM), so a near vector is not enough for a hit.
The guard compares the words:

- words that decide what is asked must occur as often on both sides: negations, question words,
  numbers and ordinals (in words or digits: "two", "eighty", "third", "1066", "covid19"), quantities,
  order, direction and obligation, and the opposites scikit-learn's stop words hold ("not", "who",
  "most", "first", "before", "full", "empty", "should", ...);
- what a question relates must not be the other way round: two names that share a clause (split
  at commas, so that a clause moved to the other end is still the same question) in one order on one
  side and in the other order on the other ("Did Germany beat Brazil?" is not "Did Brazil beat
  Germany?"), or the words on either side of "to", "from", "than", "into" or "vs" swapped ("meters
  to feet" is not "feet to meters");
- every other word that carries meaning, left over on one side, must be a typo (one edit, or two
  neighbours swapped) or an inflection (the same stem of five letters or more, then an ending such
  as "s", "ed", "ing", "ies" or "ment") of a word left over on the other side; a name (a capitalised
  word after the first) must match exactly;
- English function words and the lead-ins of a request ("please tell me") are ignored, and
  "which" counts as "what".

A guard that refuses costs a miss; a wrong hit would cost a wrong answer.
"""

from __future__ import annotations

import importlib.util
import re
from collections import Counter
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path


def english_stop_words() -> frozenset[str]:
    """scikit-learn's English stop words, read from the one module that holds them (a single ``frozenset``
    literal): importing them through ``sklearn`` runs the package's ``__init__``, which loads SciPy, about
    1 s and 70 MB in every process that routes, for 318 words. If a release moves the module, the
    public import is used."""
    package = importlib.util.find_spec("sklearn")  # locates the package without running its __init__
    if package is not None and package.submodule_search_locations:
        source = Path(next(iter(package.submodule_search_locations)), "feature_extraction", "_stop_words.py")
        spec = importlib.util.spec_from_file_location("cascade._stop_words", source)
        if source.is_file() and spec is not None and spec.loader is not None:
            module = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(module)
            return frozenset(module.ENGLISH_STOP_WORDS)
    from sklearn.feature_extraction.text import ENGLISH_STOP_WORDS

    return frozenset(ENGLISH_STOP_WORDS)


DECISIVE = frozenset([
    "not", "no", "nor", "never", "none", "nothing", "nobody", "neither", "cannot", "without", "against", "except",
    "who", "whom", "whose", "what", "which", "when", "where", "why", "how", "whether",
    "zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "eleven", "twelve",
    "thirteen", "fourteen", "fifteen", "sixteen", "seventeen", "eighteen", "nineteen", "twenty", "thirty", "forty",
    "fifty", "sixty", "seventy", "eighty", "ninety", "hundred", "thousand", "million", "billion", "trillion", "dozen",
    "second", "third", "fourth", "fifth", "sixth", "seventh", "eighth", "ninth", "tenth", "twelfth", "twentieth",
    "hundredth", "thousandth", "millionth", "half", "twice", "once", "full", "empty", "thick", "thin", "front",
    "back", "should", "must",
    "most", "least", "more", "less", "few", "fewer", "many", "much", "several", "all", "any", "some", "every", "each",
    "only", "both", "either", "same", "other", "first", "last", "next", "before", "after", "above", "below",
    "under", "over", "up", "down", "into", "onto", "out", "off", "top", "bottom", "former", "latter", "since",
    "until", "during", "within", "beyond", "behind", "beside", "besides", "between", "among", "again", "always",
    "sometimes", "seldom", "rarely", "often"])
LEAD_INS = frozenset(["please", "tell", "know", "like", "question", "quick", "wondering", "explain", "want", "wonder",
                      "curious"])
IGNORED = (english_stop_words() | LEAD_INS) - DECISIVE
CONTRACTIONS = [(re.compile(r"n['’]t\b"), " not"), (re.compile(r"['’](s|re|ve|ll|d|m)\b"), "")]
WORD = re.compile(r"[^\W_]+")
DIGIT = re.compile(r"\d")
SAME_WORD = {"which": "what"}  # "Which year..." and "What year..." ask the same
ENDINGS = frozenset(["", "s", "es", "e", "ed", "d", "ing", "er", "ers", "y", "ies", "ied", "ion", "ions", "ment",
                     "ments", "al", "ally", "ly", "ic", "ical", "ity", "ities", "ness", "ation", "ations", "ate",
                     "ated", "ating"])  # an inflection: the same stem of five letters or more, then these
RELATING = frozenset(["to", "from", "than", "into", "vs", "versus"])  # the words on each side say which way


@dataclass(frozen=True)
class Wording:
    """A question's words (lower case, contractions opened), which of them are names, the counts of its
    decisive words and of its words with a digit (those two wordings of one question must share), and
    per clause, its names in order and its relating words with the meaning words on either side."""

    words: Counter[str]
    names: frozenset[str]
    decisive: dict[str, int]
    clauses: tuple[tuple[tuple[str, ...], tuple[tuple[str, str, str], ...]], ...]


@lru_cache(maxsize=4096)
def wording(question: str) -> Wording:
    """The words of ``question``; kept for the questions guarded most recently (the entries a lookup finds
    again and again), not for every question ever asked: each kept wording is a few hundred objects'
    worth of heap that every full garbage collection walks."""
    text = question.replace("can't", "can not").replace("won't", "will not").replace("Can't", "Can not")
    for pattern, replacement in CONTRACTIONS:
        text = pattern.sub(replacement, text)
    tokens = WORD.findall(text)
    names = frozenset(t.lower() for t in tokens[1:] if t[0].isupper())
    words = Counter(SAME_WORD.get(t.lower(), t.lower()) for t in tokens)
    clauses = tuple(_clause(WORD.findall(part.lower()), names) for part in text.split(","))
    return Wording(words, names, {w: n for w, n in words.items() if w in DECISIVE or DIGIT.search(w)}, clauses)


def _clause(words: list[str], names: frozenset[str]) -> tuple[tuple[str, ...], tuple[tuple[str, str, str], ...]]:
    """A clause's names in order, and each relating word with the nearest meaning word before and after it."""
    meaning = [(i, w) for i, w in enumerate(words) if w not in IGNORED and w not in RELATING]
    relations = []
    for i, word in enumerate(words):
        if word in RELATING:
            before = next((w for j, w in reversed(meaning) if j < i), "")
            after = next((w for j, w in meaning if j > i), "")
            relations.append((before, word, after))
    return tuple(w for w in words if w in names), tuple(relations)


def _alike(a: str, b: str) -> bool:
    return a == b or close(a, b)


def _reversed(mine: Wording, theirs: Wording) -> bool:
    """Whether the two relate the same things the other way round: two shared names in one clause in
    one order on one side and in the other order on the other, or a relating word between the same
    two words, swapped."""
    shared = mine.names & theirs.names

    def name_pairs(wording: Wording) -> set[tuple[str, str]]:
        return {(a, b) for names, _ in wording.clauses for i, a in enumerate(names) for b in names[i + 1:]
                if a in shared and b in shared and a != b}

    def relations(wording: Wording) -> list[tuple[str, str, str]]:
        return [r for _, found in wording.clauses for r in found if r[0] and r[2]]

    ours, others = name_pairs(mine), name_pairs(theirs)
    if any((b, a) in others and (a, b) not in others for a, b in ours):
        return True
    theirs_relations = relations(theirs)
    return any(any(r == word and _alike(before, after2) and _alike(after, before2)
                   and not (_alike(before, before2) and _alike(after, after2))
                   for before2, r, after2 in theirs_relations)
               for before, word, after in relations(mine))


def close(a: str, b: str) -> bool:
    """One word is the other with a typo (one edit, or two neighbours swapped) or an inflection."""
    if any(c.isdigit() for c in a + b):
        return False  # 1066 and 1067 are different questions
    stem = next((k for k in range(min(len(a), len(b))) if a[k] != b[k]), min(len(a), len(b)))
    if stem >= 5 and a[stem:] in ENDINGS and b[stem:] in ENDINGS:
        return True
    if abs(len(a) - len(b)) > 1 or min(len(a), len(b)) < 4:
        return False
    if len(a) == len(b):
        diff = [i for i in range(len(a)) if a[i] != b[i]]
        return len(diff) == 1 or (len(diff) == 2 and diff[1] == diff[0] + 1
                                  and a[diff[0]] == b[diff[1]] and a[diff[1]] == b[diff[0]])
    short, long = (a, b) if len(a) < len(b) else (b, a)
    i = next((k for k in range(len(short)) if short[k] != long[k]), len(short))
    return short[i:] == long[i + 1:]


def _left_over(words: Counter[str], other: Counter[str]) -> dict[str, int]:
    """The words of ``words`` that ``other`` has fewer of, with how many more (``words - other``,
    without ``Counter``'s own subtraction, which costs several times more on the guard's path)."""
    return {w: n - other.get(w, 0) for w, n in words.items() if n > other.get(w, 0)}


def _matched(left: dict[str, int], names: frozenset[str], other_left: dict[str, int],
             other_names: frozenset[str]) -> bool:
    """Every meaning word left over on one side has a close partner left over on the other."""
    for word in left:
        if word in IGNORED or (len(word) == 1 and not word.isdigit()):
            continue
        if word in names or not any(close(word, v) and v not in other_names for v in other_left):
            return False
    return True


def same_question(question: str, other: str) -> bool:
    """Whether ``other`` asks what ``question`` asks, as far as its words tell (see the module)."""
    mine, theirs = wording(question), wording(other)
    if mine.decisive != theirs.decisive:
        return False
    if mine.clauses != theirs.clauses and _reversed(mine, theirs):
        return False
    if dict.__eq__(mine.words, theirs.words):  # as dicts: ``Counter``'s own ``==`` loops in Python
        return True
    left_mine, left_theirs = _left_over(mine.words, theirs.words), _left_over(theirs.words, mine.words)
    return (_matched(left_mine, mine.names, left_theirs, theirs.names)
            and _matched(left_theirs, theirs.names, left_mine, mine.names))
