"""The learned deferral policy's features, for a whole batch at once: one function used both to fit
the policy on calibration records (``pipelines/deferral.py``) and by the router on live answers, so
the two never disagree.

Per answer: the quantiles 0, .1, .25, .5, .75 and 1 of each per-token series (the chosen token's
logprob, the entropy, the top-1 minus top-2 margin capped at 30), the sum of logprobs, the answer's
length in tokens and in words, the first token's margin, where its least likely token sits (0 =
first, 1 = last), and cheap task checks: the answer is a span of the context, it abstains ("unanswerable"
or empty), and the shares of its words found in the context and in the question (an answer that
repeats the question is rarely right). Series are flat (CSR-like: answer i owns ``lengths[i]`` rows);
quantiles are taken per answer from one sort of the padded rows, as ``np.quantile`` (linear) would.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from cascade.answers import normalize_answer

QUANTILES = (0.0, 0.1, 0.25, 0.5, 0.75, 1.0)
SERIES = ("logprob", "entropy", "margin")
MARGIN_CAP = 30.0  # an unknown runner-up leaves a huge margin; every margin above this one counts as certain
FEATURE_NAMES: tuple[str, ...] = (
    *(f"{series}_q{round(q * 100):02d}" for series in SERIES for q in QUANTILES),
    "sum_logprob", "n_tokens", "n_words", "first_token_margin", "argmin_position", "span_of_context",
    "says_unanswerable", "words_in_context", "words_in_question",
)


def _padded(values: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """(B, T) rows of each answer's values, +inf where an answer is shorter than the longest."""
    width = int(lengths.max(initial=0))
    rows = np.full((len(lengths), width), np.inf)
    rows[np.arange(width) < lengths[:, None]] = values
    return rows


def segment_quantiles(values: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """(B, len(QUANTILES)) linear-interpolated quantiles of each answer's segment; 0 for empty ones."""
    out = np.zeros((len(lengths), len(QUANTILES)))
    if not len(values):
        return out
    ordered = np.sort(_padded(np.asarray(values, np.float64), lengths), axis=1)  # padding sorts last
    ordered[lengths == 0] = 0.0  # an empty answer reads no padding
    rows = np.arange(len(lengths))
    last = np.maximum(lengths - 1, 0)
    for column, q in enumerate(QUANTILES):
        position = q * last
        low = np.floor(position).astype(np.int64)
        high = np.minimum(low + 1, last)
        low_values, high_values = ordered[rows, low], ordered[rows, high]
        out[:, column] = low_values + (position - low) * (high_values - low_values)
    return out


def _argmin_positions(logprob: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """Where each answer's least likely token sits, 0 (first) to 1 (last); 0 for short answers."""
    if not len(logprob):
        return np.zeros(len(lengths))
    first = np.argmin(_padded(np.asarray(logprob, np.float64), lengths), axis=1)  # the earliest of equal minima
    return np.where(lengths > 0, first / np.maximum(lengths - 1, 1), 0.0)


def _task_checks(answers: Sequence[str], questions: Sequence[str], contexts: Sequence[str | None]) -> np.ndarray:
    """(B, 4): span of the context, abstains, share of words in the context, share in the question."""
    rows = np.zeros((len(answers), 4))
    documents: dict[str, tuple[str, set[str]]] = {}  # a context shared by several answers is read once
    for i, (answer, question, context) in enumerate(zip(answers, questions, contexts, strict=True)):
        normalized = normalize_answer(answer)
        words = normalized.split()
        if context and context not in documents:
            text = normalize_answer(context)
            documents[context] = (text, set(text.split()))
        context_text, context_words = documents[context] if context else ("", set())
        question_words = set(normalize_answer(question).split())
        rows[i] = (float(bool(normalized) and bool(context_text) and normalized in context_text),
                   float(not normalized or normalized == "unanswerable"),
                   sum(w in context_words for w in words) / len(words) if words else 0.0,
                   sum(w in question_words for w in words) / len(words) if words else 0.0)
    return rows


def deferral_features(lengths: np.ndarray, logprob: np.ndarray, entropy: np.ndarray | None,
                      margin: np.ndarray | None, first_token_margin: np.ndarray, answers: Sequence[str],
                      questions: Sequence[str], contexts: Sequence[str | None]) -> np.ndarray:
    """(B, len(FEATURE_NAMES)) features of a batch of answers (see the module docstring); a series an
    engine does not give (None) counts as zeros."""
    lengths = np.asarray(lengths, np.int64)
    size = len(lengths)
    zeros = np.zeros((size, len(QUANTILES)))
    blocks = [segment_quantiles(np.asarray(logprob, np.float64), lengths),
              zeros if entropy is None else segment_quantiles(np.nan_to_num(np.asarray(entropy, np.float64)), lengths),
              zeros if margin is None else segment_quantiles(
                  np.minimum(np.nan_to_num(np.asarray(margin, np.float64), posinf=MARGIN_CAP), MARGIN_CAP), lengths)]
    owner = np.repeat(np.arange(size), lengths)
    words = np.fromiter((len(a.split()) for a in answers), np.float64, size)
    scalars = np.column_stack([
        np.bincount(owner, weights=np.asarray(logprob, np.float64), minlength=size), lengths.astype(np.float64),
        words, np.asarray(first_token_margin, np.float64), _argmin_positions(np.asarray(logprob), lengths)])
    features = np.hstack([*blocks, scalars, _task_checks(answers, questions, contexts)])
    return np.nan_to_num(features, nan=0.0, posinf=MARGIN_CAP, neginf=-MARGIN_CAP)
