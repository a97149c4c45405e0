"""The cache's embedders side by side on this machine: speed, and the cache's quality on a paraphrase
set built from every SQuAD 2.0 question (``pipelines/paraphrases.py``). MiniLM in PyTorch, the same
model on ONNX Runtime (fp32 and int8 weights, exported here), and the static embedding distilled
from it (256 and 384 dimensions).

Speed: one question per call (p50 latency, as the ingress embeds a lone request) and batches of 64
(throughput), one thread. Quality: for each embedder, the distance threshold that keeps false hits
(negatives: another question about the same passage, and the question's opposite) at or below
1% and 0.1%, and the share of paraphrases that hit there, with and without the wording guard. The
default (``CacheConfig.embedder`` and ``distance_threshold``) is chosen from this table.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from cascade.cache import CacheConfig
from cascade.cache.wording import same_question
from cascade.embeddings import Embedder, MiniLMEmbedder, OnnxEmbedder, StaticEmbedder
from pipelines.datasets import load_squad
from pipelines.paraphrases import POSITIVE_KINDS, Pair, build_pairs, hit_rates, threshold_for

KINDS = [*POSITIVE_KINDS, "same-passage", "opposite"]


def speed(embedder: Embedder, questions: list[str]) -> tuple[float, float]:
    """p50 ms for one question per call, and questions/s in batches of 64."""
    embedder.embed(questions[:8])
    times = []
    for question in questions[:200]:
        started = time.perf_counter()
        embedder.embed([question])
        times.append((time.perf_counter() - started) * 1000)
    batch = questions[:1024]
    started = time.perf_counter()
    for i in range(0, len(batch), 64):
        embedder.embed(batch[i:i + 64])
    return float(np.median(times)), len(batch) / (time.perf_counter() - started)


def distances(embedder: Embedder, pairs: list[Pair]) -> np.ndarray:
    a = embedder.embed([p.question for p in pairs])
    b = embedder.embed([p.other for p in pairs])
    return np.asarray(1.0 - (a * b).sum(axis=1), np.float64)


def row(name: str, threshold: float, rates: dict[str, float], hit: float, false_hit: float) -> str:
    kinds = " ".join(f"{rates.get(k, 0.0):>7.3f}" for k in KINDS)
    return f"  {name:<28} {threshold:>6.3f} {hit:>7.3f} {false_hit:>7.4f} {kinds}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--limit", type=int, default=None, help="first N SQuAD 2.0 questions (default: all)")
    args = parser.parse_args()
    records = load_squad(limit=args.limit)
    pairs = build_pairs([(r.context[0], r.question) for r in records], seed=0)
    guard = np.array([same_question(p.question, p.other) for p in pairs])
    counts = {k: sum(p.kind == k for p in pairs) for k in KINDS}
    print(f"paraphrase set: {len(records)} SQuAD 2.0 questions, {len(pairs)} pairs: "
          + ", ".join(f"{k} {n}" for k, n in counts.items()))
    embedders: list[Embedder] = [MiniLMEmbedder(), OnnxEmbedder(), OnnxEmbedder(int8=True), StaticEmbedder(256),
                                 StaticEmbedder(384)]
    questions = [r.question for r in records]
    print("\nspeed, one thread           one question p50 ms   batches of 64 q/s")
    measured = {}
    for embedder in embedders:
        single, batched = speed(embedder, questions)
        measured[embedder.name] = single
        print(f"  {embedder.name:<28} {single:>10.3f}         {batched:>10.0f}")
    reference = measured[embedders[0].name]
    for embedder in embedders[1:]:
        print(f"  {embedder.name} is {reference / measured[embedder.name]:.0f}x faster than {embedders[0].name} "
              "per question")
    header = f"  {'embedder, guard':<28} {'thresh':>6} {'hits':>7} {'false':>7} " + " ".join(
        f"{k[:7]:>7}" for k in KINDS)
    default = CacheConfig()
    spreads = {embedder.name: distances(embedder, pairs) for embedder in embedders}
    for target in (0.01, 0.001):
        print(f"\nat most {target:.1%} false hits: paraphrase hit rate (hits) and each kind's hit rate")
        print(header)
        for embedder in embedders:
            spread = spreads[embedder.name]
            for guarded in (False, True):
                accepted = guard if guarded else None
                threshold = threshold_for(pairs, spread, target, accepted)
                rates = hit_rates(pairs, spread, threshold, accepted)
                print(row(f"{embedder.name}, {'guard' if guarded else 'no guard'}", threshold, rates.by_kind,
                          rates.hit_rate, rates.false_hit_rate))
    print(f"\nwith the guard, by distance threshold (the default: {default.embedder.kind} embedder, threshold "
          f"{default.distance_threshold}, guard {'on' if default.wording_guard else 'off'})")
    print(header)
    for embedder in embedders:
        for threshold in (0.1, 0.2, 0.3, 0.4, 0.5, 0.6):
            rates = hit_rates(pairs, spreads[embedder.name], threshold, guard)
            print(row(embedder.name, threshold, rates.by_kind, rates.hit_rate, rates.false_hit_rate))


if __name__ == "__main__":
    main()
