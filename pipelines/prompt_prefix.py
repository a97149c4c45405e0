"""What distinguishes a request: prompts without the blocks they share with other prompts.

Few-shot blocks, system prompts and fixed instructions repeat across many requests; an encoder that
reads 256 tokens (MiniLM) sees only them when they come first. Two general tools, neither specific
to a benchmark:

- ``strip_common``: per group of prompts (a task, a tenant, a conversation), cut the longest
  common prefix and suffix at a line boundary (a word boundary for long one-line prefixes).
- ``SharedLines``: fitted on any prompt set without labels, it learns the lines that recur in many
  prompts and removes them from any prompt, including ones it has not seen (usable when serving).
"""

from __future__ import annotations

import ast
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

from cascade.prerouter import strip_shared_lines


def unwrap(prompt: str) -> str:
    """A prompt stored as a Python list literal of strings (RouterBench's CSVs) as its joined text."""
    text = prompt.strip()
    if len(text) < 4 or text[0] != "[" or text[-1] != "]" or text[1] not in "'\"":
        return prompt
    try:
        parts = ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return prompt
    if not isinstance(parts, list) or not all(isinstance(p, str) for p in parts):
        return prompt
    return "\n".join(parts)


def _cut_prefix(prefix: str, min_word_cut: int) -> str:
    """The part of a common prefix that ends at a line break, or at a space for long one-line ones."""
    line = prefix.rfind("\n")
    if line >= 0:
        return prefix[: line + 1]
    space = prefix.rfind(" ")
    return prefix[: space + 1] if len(prefix) >= min_word_cut and space >= 0 else ""


def _shared_start(texts: Sequence[str]) -> str:
    """The longest string every text starts with (that of the lexicographic minimum and maximum)."""
    low, high = min(texts), max(texts)
    length = next((i for i, (a, b) in enumerate(zip(low, high, strict=False)) if a != b), min(len(low), len(high)))
    return low[:length]


def common_prefix(texts: Sequence[str], min_word_cut: int = 200) -> str:
    """Longest prefix every text shares, cut back to a line (or, past ``min_word_cut`` chars, word) boundary."""
    if len(set(texts)) < 2:
        return ""
    return _cut_prefix(_shared_start(texts), min_word_cut)


def common_suffix(texts: Sequence[str], min_word_cut: int = 200) -> str:
    """Longest suffix every text shares, starting at a line (or word) boundary."""
    return common_prefix([t[::-1] for t in texts], min_word_cut)[::-1]


def strip_common(prompts: Sequence[str], groups: Sequence[str] | None = None, min_word_cut: int = 200) -> list[str]:
    """Each prompt without the prefix and suffix shared by its group (all prompts if no groups).

    A prompt left empty keeps its full text.
    """
    keys = list(groups) if groups is not None else [""] * len(prompts)
    if len(keys) != len(prompts):
        raise ValueError(f"{len(prompts)} prompts but {len(keys)} group labels")
    members: dict[str, list[int]] = {}
    for index, key in enumerate(keys):
        members.setdefault(key, []).append(index)
    tails = list(prompts)
    for indices in members.values():
        texts = [prompts[i] for i in indices]
        head = len(common_prefix(texts, min_word_cut))
        rest = [t[head:] for t in texts]
        tail = len(common_suffix(rest, min_word_cut))
        for i, text in zip(indices, rest, strict=True):
            core = text[: len(text) - tail].strip()
            tails[i] = core or prompts[i]
    return tails


def _lines(prompt: str) -> list[str]:
    return [line.strip() for line in prompt.splitlines()]


@dataclass(frozen=True)
class SharedLines:
    """Lines that recur across prompts (few-shot examples, instructions, system prompts)."""

    lines: frozenset[str]

    @classmethod
    def fit(cls, prompts: Iterable[str], min_share: float = 0.02, min_count: int = 3) -> SharedLines:
        """Lines found in at least ``min_count`` prompts and at least ``min_share`` of them."""
        counts: Counter[str] = Counter()
        total = 0
        for prompt in prompts:
            counts.update({line for line in _lines(prompt) if line})
            total += 1
        floor = max(min_count, int(np.ceil(min_share * total)))
        return cls(frozenset(line for line, count in counts.items() if count >= floor))

    def strip(self, prompts: Sequence[str]) -> list[str]:
        """Each prompt without the shared lines; a prompt made only of shared lines keeps its text."""
        return [strip_shared_lines(prompt, self.lines) for prompt in prompts]


def mean_pairwise_cosine_distance(vectors: np.ndarray) -> float:
    """Mean of 1 - cos over distinct pairs of rows."""
    units = vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
    n = len(units)
    if n < 2:
        return 0.0
    total = units.sum(axis=0)
    similarity_sum = float(total @ total) - n  # sum over i != j of cos, the diagonal is n
    return 1.0 - similarity_sum / (n * (n - 1))
