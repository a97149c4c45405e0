"""The slow, obvious per-answer definition of every signal, to check the vectorized one against."""

from __future__ import annotations

import math

from cascade.schemas import Generation, Signals

REMAINDER_FLOOR = 1e-30


def token_entropy(top: list[float], full: float | None) -> float:
    if full is not None:
        return full
    probs = [math.exp(v) for v in top if v != -math.inf]
    entropy = -sum(p * math.log(p) for p in probs if p > 0)
    rest = min(max(1.0 - sum(probs), 0.0), 1.0)
    if rest > 0:
        entropy -= rest * math.log(rest)
    return entropy


def first_token_margin(generation: Generation) -> float:
    known = sorted((v for v in generation.top_logprobs[0].tolist() if v != -math.inf), reverse=True)
    top1 = known[0] if known else float(generation.token_logprobs[0])
    if len(known) >= 2:
        return top1 - known[1]
    return top1 - math.log(max(-math.expm1(top1), REMAINDER_FLOOR))


def reference_signals(generation: Generation) -> Signals:
    logprobs = generation.token_logprobs.tolist()
    n = len(logprobs)
    if n == 0:
        return Signals(n_tokens=0, n_words=len(generation.text.split()), mean_logprob=0, min_logprob=0,
                       mean_entropy=0, max_entropy=0, first_token_margin=0)
    entropies = [
        token_entropy(generation.top_logprobs[i].tolist(),
                      None if generation.entropy is None else float(generation.entropy[i]))
        for i in range(n)
    ]
    return Signals(
        n_tokens=n,
        n_words=len(generation.text.split()),
        mean_logprob=sum(logprobs) / n,
        min_logprob=min(logprobs),
        mean_entropy=sum(entropies) / n,
        max_entropy=max(entropies),
        first_token_margin=first_token_margin(generation),
    )
