"""Workload mixes drawn from the evaluation data: ``squad:0.7,hotpotqa:0.3``."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from pipelines.datasets import QARecord, load_qa


def parse_mix(spec: str) -> dict[str, float]:
    """``name:weight`` pairs, comma-separated; weights are normalized to sum to 1."""
    mix: dict[str, float] = {}
    for part in filter(None, (p.strip() for p in spec.split(","))):
        name, _, weight = part.partition(":")
        try:
            value = float(weight) if weight else 1.0
        except ValueError:
            raise ValueError(f"mix entry {part!r}: the weight after ':' must be a number") from None
        if value <= 0:
            raise ValueError(f"mix entry {part!r}: the weight must be positive")
        mix[name.strip()] = mix.get(name.strip(), 0.0) + value
    if not mix:
        raise ValueError(f"empty workload mix {spec!r}; e.g. squad:0.7,hotpotqa:0.3")
    total = sum(mix.values())
    return {name: weight / total for name, weight in mix.items()}


def sample_workload(mix: dict[str, float], n: int, data_dir: str | Path | None = None,
                    seed: int = 0) -> list[QARecord]:
    """``n`` questions drawn from the mix's datasets in proportion, shuffled; a dataset smaller than
    its share is drawn from again only after every one of its questions was used."""
    rng = np.random.default_rng(seed)
    counts = rng.multinomial(n, list(mix.values()))
    chosen: list[QARecord] = []
    for (name, _), count in zip(mix.items(), counts, strict=True):
        records = load_qa(name, data_dir)
        if not records:
            raise ValueError(f"dataset {name} has no questions")
        order = np.concatenate([rng.permutation(len(records)) for _ in range(-(-int(count) // len(records)))])
        chosen.extend(records[i] for i in order[:count])
    return [chosen[i] for i in rng.permutation(len(chosen))]
