"""Confidence signals for a whole batch of ragged generations, as padded numpy arrays.

Definitions (per answer; an empty answer has 0 for every signal):

- ``n_tokens``: generated tokens; ``n_words``: whitespace-separated words, as ``str.split()``.
- ``mean_logprob`` / ``min_logprob``: of the chosen tokens' log-probabilities.
- ``mean_entropy`` / ``max_entropy``: per-token entropy in nats. Engines that see the full
  distribution (llama.cpp here) report it exactly. Where only the top-k log-probabilities are known
  (vLLM, OpenAI-compatible servers), entropy is computed over the k known tokens plus one bucket
  holding the remaining mass ``1 - sum(p_topk)``. Lumping the tail into one outcome makes this a
  lower bound of the true entropy, tight when the top-k hold most of the mass.
- ``first_token_margin``: top-1 minus top-2 log-probability of the first token. When the runner-up
  is unknown (k < 2), the remainder bucket ``log(1 - p_top1)`` stands in for it.

Nothing here runs Python code per answer or per token. The batch is packed once into flat token
arrays, one row per generated token of any answer (the ragged, CSR-like layout: ``lengths`` says
which rows belong to which answer), and every signal is a segment reduction over them
(``reduceat``); word counts are ``str.split``'s, mapped over the texts in C. ``TokenBatch.padded``
gives the (B, T, ...) padded view with its mask where a caller wants one; scoring does not, since
the flat layout skips the scatter into padding (measured faster in
``tests/benchmarks/bench_signals.py``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property

import numpy as np

from cascade.schemas import Generation, Query, Signals

SIGNAL_NAMES: tuple[str, ...] = (
    "n_tokens",
    "n_words",
    "mean_logprob",
    "min_logprob",
    "mean_entropy",
    "max_entropy",
    "first_token_margin",
)

_REMAINDER_FLOOR = 1e-30
# Unknown and padded alternatives hold this finite stand-in for log(0): exp() gives exactly 0 in
# float32 and 0 * LOG_FLOOR is 0, so entropy needs no masked arithmetic.
LOG_FLOOR = np.float32(-1e4)


@dataclass(frozen=True)
class TokenBatch:
    """A batch of ragged generations as flat token arrays (answer i owns ``lengths[i]`` rows)."""

    lengths: np.ndarray  # (B,) tokens per answer
    logprobs: np.ndarray  # (N,) chosen-token logprob, N = lengths.sum()
    top_logprobs: np.ndarray  # (N, K) top-k logprobs, LOG_FLOOR where unknown
    entropy: np.ndarray  # (N,) full-vocabulary entropy, NaN where the engine did not give it
    texts: Sequence[str]

    @property
    def starts(self) -> np.ndarray:
        """(B,) index of each answer's first token row."""
        return np.cumsum(self.lengths) - self.lengths

    @property
    def mask(self) -> np.ndarray:
        """(B, T) padded view: True where answer i has a token t."""
        return np.arange(int(self.lengths.max(initial=0))) < self.lengths[:, None]

    def padded(self, flat: np.ndarray, fill: float) -> np.ndarray:
        """A per-token array spread into (B, T, ...) with ``fill`` where answers are shorter."""
        mask = self.mask
        out = np.full((*mask.shape, *flat.shape[1:]), fill, flat.dtype)
        out[mask] = flat
        return out

    @classmethod
    def from_generations(cls, generations: Sequence[Generation]) -> TokenBatch:
        """Pack ragged generations with one concatenation per field."""
        lengths = np.fromiter((len(g.token_logprobs) for g in generations), np.int64, len(generations))
        total = int(lengths.sum())
        k = max((g.top_logprobs.shape[1] for g in generations), default=0)
        top = np.full((total, k), LOG_FLOOR, np.float32)
        logprobs = np.zeros(total, np.float32)
        entropy = np.full(total, np.nan, np.float32)
        if total:
            np.concatenate([g.token_logprobs for g in generations], out=logprobs)
            if k:
                np.concatenate([_pad_columns(g.top_logprobs, k) for g in generations], out=top)
                np.maximum(top, LOG_FLOOR, out=top)
            if any(g.entropy is not None for g in generations):
                np.concatenate([g.entropy if g.entropy is not None else np.full(n, np.nan, np.float32)
                                for g, n in zip(generations, lengths, strict=True)], out=entropy)
        return cls(lengths, logprobs, top, entropy, [g.text for g in generations])


def _pad_columns(top: np.ndarray, k: int) -> np.ndarray:
    if top.shape[1] == k:
        return top
    padded = np.full((top.shape[0], k), LOG_FLOOR, np.float32)
    padded[:, : top.shape[1]] = top
    return padded


@dataclass(frozen=True)
class AnswerContext:
    """What a learned policy reads besides the signals: the batch's tokens and the queries answered."""

    tokens: TokenBatch
    queries: Sequence[Query]


@dataclass(frozen=True)
class SignalBatch:
    """Signals of a batch: ``values`` has one row per answer and one column per signal name; with
    ``context``, also the learned deferral policy's features (computed on first use, then kept)."""

    values: np.ndarray  # (B, len(SIGNAL_NAMES)) float64
    context: AnswerContext | None = None
    known_features: np.ndarray | None = None  # the deferral features, computed elsewhere (calibration records)

    def __len__(self) -> int:
        return int(self.values.shape[0])

    @cached_property
    def features(self) -> np.ndarray:
        """(B, len(FEATURE_NAMES)) deferral features (``cascade.policies.features``)."""
        from cascade.policies.features import deferral_features

        if self.known_features is not None:
            return self.known_features
        if self.context is None:
            raise ValueError("these signals carry no tokens or questions: the deferral features need them")
        tokens = self.context.tokens
        top = tokens.top_logprobs
        margin = top[:, 0] - top[:, 1] if top.shape[1] >= 2 else None
        queries = self.context.queries
        return deferral_features(tokens.lengths, tokens.logprobs, token_entropy(tokens), margin,
                                 self.column("first_token_margin"), tokens.texts, [q.question for q in queries],
                                 ["\n\n".join(q.context) if q.context else None for q in queries])

    def column(self, name: str) -> np.ndarray:
        """One signal for every answer in the batch."""
        return self.values[:, SIGNAL_NAMES.index(name)]

    def row(self, index: int) -> Signals:
        """One answer's signals as a schema object (for responses, not for the hot path)."""
        return Signals(**dict(zip(SIGNAL_NAMES, self.values[index].tolist(), strict=True)))

    def take(self, indices: np.ndarray) -> SignalBatch:
        """The signals of a subset of the batch (with their features where they are known)."""
        features = self.known_features if self.known_features is not None else (
            self.features if "features" in self.__dict__ else None)
        return SignalBatch(self.values[indices], known_features=None if features is None else features[indices])

    @classmethod
    def from_rows(cls, rows: Sequence[Signals]) -> SignalBatch:
        """Rebuild a batch from schema objects (e.g. records read back from disk)."""
        return cls(np.array([[getattr(r, n) for n in SIGNAL_NAMES] for r in rows], np.float64)
                   .reshape(len(rows), len(SIGNAL_NAMES)))


def word_counts(texts: Sequence[str]) -> np.ndarray:
    """Words per text, ``len(text.split())``: str.split mapped in C, with no Python frame per text.
    Faster than counting on a code-point array at every size tried: 0.7 against 10.5 µs for one
    answer of 8 words, 681 against 757 µs for 256 answers of 64."""
    return np.fromiter(map(len, map(str.split, texts)), np.int64, len(texts))


def token_entropy(batch: TokenBatch) -> np.ndarray:
    """(N,) entropy per token: the engine's full-vocabulary value, else top-k plus remainder."""
    top = batch.top_logprobs
    probs = np.exp(top)
    known_entropy = -np.einsum("nk,nk->n", probs, top)
    remainder = np.clip(1.0 - probs.sum(axis=1), 0.0, 1.0)
    estimated = known_entropy - remainder * np.log(np.maximum(remainder, _REMAINDER_FLOOR))
    return np.where(np.isnan(batch.entropy), estimated, batch.entropy)


def _first_token_margin(batch: TokenBatch, firsts: np.ndarray) -> np.ndarray:
    """Margin for the answers whose first token row is ``firsts``."""
    first = batch.top_logprobs[firsts]
    k = first.shape[1]
    ordered = np.sort(first, axis=1) if k > 1 else first  # ascending: the best is last
    top1 = ordered[:, -1] if k else np.full(len(firsts), LOG_FLOOR, np.float32)
    top1 = np.where(top1 > LOG_FLOOR, top1, batch.logprobs[firsts])
    top2 = ordered[:, -2] if k > 1 else np.full(len(firsts), LOG_FLOOR, np.float32)
    remainder = np.maximum(-np.expm1(top1.astype(np.float64)), _REMAINDER_FLOOR)  # 1 - p, exact near p = 1
    return top1 - np.where(top2 > LOG_FLOOR, top2, np.log(remainder))


def compute_signals(batch: TokenBatch) -> SignalBatch:
    """All signals for the batch as one (B, n_signals) array: segment reductions over the tokens, each
    over the answers that have tokens (an empty answer keeps 0 for every signal but its word count).
    The chosen tokens' logprobs and the entropies are reduced together, as the two rows of one array."""
    lengths = batch.lengths
    values = np.zeros((len(lengths), len(SIGNAL_NAMES)), np.float64)
    values[:, 0] = lengths
    values[:, 1] = word_counts(batch.texts)
    nonempty = np.flatnonzero(lengths)
    if not nonempty.size:
        return SignalBatch(values)
    firsts = batch.starts[nonempty]
    per_token = np.stack([batch.logprobs, token_entropy(batch)]).astype(np.float64)
    sums = np.add.reduceat(per_token, firsts, axis=1) / lengths[nonempty]
    values[nonempty, 2] = sums[0]
    values[nonempty, 3] = np.minimum.reduceat(per_token[0], firsts)
    values[nonempty, 4] = sums[1]
    values[nonempty, 5] = np.maximum.reduceat(per_token[1], firsts)
    values[nonempty, 6] = _first_token_margin(batch, firsts)
    return SignalBatch(values)


def signals_of(generations: Sequence[Generation], queries: Sequence[Query] | None = None) -> SignalBatch:
    """Pack and score a batch of generations; given their queries, the signals also carry what the
    learned deferral policy reads (its features are computed only if a policy asks for them)."""
    tokens = TokenBatch.from_generations(generations)
    values = compute_signals(tokens).values
    if queries is None:
        return SignalBatch(values)
    return SignalBatch(values, AnswerContext(tokens, queries))
