"""The paraphrase set and its rates: built without a model, every kind present, thresholds honest."""

from __future__ import annotations

import numpy as np

from pipelines.paraphrases import Pair, build_pairs, hit_rates, opposite, reorder, threshold_for


def test_pairs_of_every_kind_from_questions_about_shared_passages() -> None:
    questions = [("p1", "What is the largest city in France?"), ("p1", "Who founded Paris, in the old days?"),
                 ("p2", "When did the war begin?")]
    pairs = build_pairs(questions, seed=1)
    kinds = {p.kind for p in pairs}
    assert {"typo", "reword", "lead-in", "reorder", "same-passage", "opposite"} <= kinds
    assert all(p.question != p.other for p in pairs)
    assert all(p.same_answer == (p.kind not in {"same-passage", "opposite"}) for p in pairs)
    same_passage = [p for p in pairs if p.kind == "same-passage"]
    assert {(p.question, p.other) for p in same_passage} == {
        ("What is the largest city in France?", "Who founded Paris, in the old days?"),
        ("Who founded Paris, in the old days?", "What is the largest city in France?")}, "p2 has no other question"
    assert build_pairs(questions, seed=1) == pairs, "deterministic for a seed"


def test_opposites_and_reorders() -> None:
    import random

    assert opposite("What is the largest city?", random.Random(0)) == "What is the smallest city?"
    assert opposite("Where was he born?", random.Random(0)) == "Where was not he born?"
    assert opposite("Why can't it fly?", random.Random(0)) is None, "no double negation of a contraction"
    assert reorder("In 1066, who invaded England?") == "Who invaded England, in 1066?"


def test_threshold_keeps_false_hits_at_or_below_the_target() -> None:
    pairs = [Pair("q", f"p{i}", "typo", True) for i in range(4)] + [Pair("q", f"n{i}", "opposite", False)
                                                                    for i in range(10)]
    positives, negatives = [0.05, 0.1, 0.3, 0.5], [0.02, 0.2, 0.25, 0.4, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99]
    distances = np.array([*positives, *negatives])
    threshold = threshold_for(pairs, distances, 0.1)  # one false hit of ten allowed
    assert 0.02 <= threshold < 0.2
    rates = hit_rates(pairs, distances, threshold)
    assert rates.false_hit_rate == 0.1 and rates.hit_rate == 0.5
    guarded = np.array([True] * 4 + [False] + [True] * 9)  # the guard refuses the nearest negative
    assert 0.2 <= threshold_for(pairs, distances, 0.1, guarded) < 0.25
