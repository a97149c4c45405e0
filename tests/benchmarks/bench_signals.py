"""Signal-scoring throughput: the vectorized batch path against per-answer loops, in one run.

Batch: 256 answers x 64 tokens x top-20 logprobs. Prints answers per second for
  vectorized     pack the batch into padded arrays and score it (cascade.signals.signals_of)
  numpy loop     the same numpy code called once per answer (batch of one)
  python loop    the obvious per-answer reference implementation (tests/reference_signals.py)
and the ratios. Target: vectorized >= 100,000 answers/s on one core and >= 50x the per-answer
reference loop (the numpy-per-answer figure shows how much of that is batching alone). Then the
learned deferral policy on the same batch: signals, its features (token quantiles, task checks
against each query's context and question) and 200 boosted trees with the isotonic map, which must
stay at >= 100,000 answers/s too.
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Callable

import numpy as np

from cascade.policies import DeferralPolicy
from cascade.policies.features import FEATURE_NAMES
from cascade.schemas import Generation, Query
from cascade.signals import signals_of
from tests.reference_signals import reference_signals


def make_batch(answers: int, tokens: int, k: int, seed: int = 0) -> list[Generation]:
    rng = np.random.default_rng(seed)
    logits = rng.normal(size=(answers, tokens, k + 1)).astype(np.float32)
    logprobs = logits - np.log(np.exp(logits).sum(axis=-1, keepdims=True))
    top = -np.sort(-logprobs[..., :k], axis=-1)
    return [
        Generation(model="bench", text=" ".join(["word"] * int(rng.integers(1, 12))), token_ids=np.arange(tokens),
                   token_logprobs=top[i, :, 0], top_logprobs=top[i], finish_reason="stop", prompt_tokens=100,
                   completion_tokens=tokens)
        for i in range(answers)
    ]


CONTEXT = ("Paris is the capital of France. The Seine flows through the city from the east to the west, "
           "and its banks are a World Heritage Site. ") * 4


def learned_policy(batch: list[Generation], queries: list[Query]) -> DeferralPolicy:
    """A deferral policy of the size ``cascade fit`` makes (200 trees of depth 3), fitted on the batch's
    own features with labels that follow the least likely token."""
    from pipelines.deferral import DeferralModel

    features = signals_of(batch, queries).features
    wanted = (features[:, 0] < np.median(features[:, 0])).astype(np.int64)
    return DeferralModel.fit(features, wanted, "boosted", "small_wrong").calibrate(features, wanted).policy(0.5)


def best_rate(run: Callable[[], object], answers: int, seconds: float) -> float:
    """Answers per second, best of repeated runs within ``seconds``."""
    best = float("inf")
    deadline = time.perf_counter() + seconds
    while True:
        started = time.perf_counter()
        run()
        best = min(best, time.perf_counter() - started)
        if time.perf_counter() > deadline:
            return answers / best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--answers", type=int, default=256)
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--k", type=int, default=20)
    parser.add_argument("--seconds", type=float, default=3.0)
    args = parser.parse_args()
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})
    batch = make_batch(args.answers, args.tokens, args.k)
    vectorized = best_rate(lambda: signals_of(batch), args.answers, args.seconds)
    numpy_loop = best_rate(lambda: [signals_of([g]) for g in batch], args.answers, args.seconds)
    python_loop = best_rate(lambda: [reference_signals(g) for g in batch], args.answers, args.seconds)
    print(f"signal scoring, {args.answers} answers x {args.tokens} tokens x top-{args.k}, one core")
    print(f"  vectorized   {vectorized:>12,.0f} answers/s")
    print(f"  numpy loop   {numpy_loop:>12,.0f} answers/s   vectorized is {vectorized / numpy_loop:6.1f}x")
    print(f"  python loop  {python_loop:>12,.0f} answers/s   vectorized is {vectorized / python_loop:6.1f}x")
    target = vectorized >= 100_000 and vectorized / python_loop >= 50
    print(f"  target (>= 100,000 answers/s, >= 50x the per-answer loop): {'met' if target else 'NOT met'}")
    queries = [Query(prompt="Which river flows through Paris?", context=[f"{CONTEXT} ({i})"])  # one document each
               for i in range(len(batch))]
    policy = learned_policy(batch, queries)
    learned = best_rate(lambda: policy.decide(signals_of(batch, queries)), args.answers, args.seconds)
    print(f"  learned deferral (signals, {len(FEATURE_NAMES)} features, {len(policy.model.feature)} boosted trees, "
          f"isotonic) {learned:>10,.0f} answers/s   {'met' if learned >= 100_000 else 'NOT met'} (>= 100,000)")


if __name__ == "__main__":
    main()
