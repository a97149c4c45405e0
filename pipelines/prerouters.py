"""Routers that pick a model before generation, from the query's embedding (RouterBench setting).

Every router estimates, per query and model, a quality score and a dollar cost:
``predict(features) -> Estimates``. The same two decision rules then turn any router's estimates
into a budget sweep of (settings, queries) model indices, tightest budget first:

- ``utility_sweep``: ``argmax_m quality - lambda * cost`` over a descending grid of lambda;
- ``budget_sweep`` (EquiRouter's rule): for a budget C, drop the models whose predicted cost
  exceeds C and take the highest score.

Ties go to the cheaper model under both rules.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from cascade.prerouter import cheapest_best, length_feature, sigmoid

LAMBDAS = np.concatenate([np.logspace(7, -1, 161), [0.0]])
MAX_BUDGETS = 100


@dataclass(frozen=True)
class Features:
    """What a pre-generation router sees of a query: its embedding, its length and its task label."""

    embeddings: np.ndarray  # (n, d) unit vectors
    prompt_chars: np.ndarray  # (n,)
    groups: tuple[str, ...] = field(default=())  # task of each query ("" or empty when unknown)

    def __len__(self) -> int:
        return len(self.prompt_chars)

    def design(self) -> np.ndarray:
        """Embedding plus log prompt length, for the regressors."""
        return np.column_stack([self.embeddings, length_feature(self.prompt_chars)])

    def subset(self, rows: np.ndarray) -> Features:
        """The features of some queries."""
        groups = tuple(np.asarray(self.groups, dtype=object)[rows]) if self.groups else ()
        return Features(self.embeddings[rows], self.prompt_chars[rows], groups)


@dataclass(frozen=True)
class Estimates:
    """A router's view of each (query, model): a quality score (higher is better) and a cost in dollars."""

    quality: np.ndarray  # (n, models)
    cost: np.ndarray  # (n, models)


class PreRouter(Protocol):
    name: str

    def fit(self, features: Features, scores: np.ndarray, costs: np.ndarray) -> None:
        """Learn from training outcomes: (n, models) scores and dollar costs."""
        ...

    def predict(self, features: Features) -> Estimates:
        """Quality and cost estimates for every query and model."""
        ...


def utility_sweep(quality: np.ndarray, cost: np.ndarray, lambdas: np.ndarray = LAMBDAS) -> np.ndarray:
    """argmax of quality - lambda * cost for every lambda at once: (len(lambdas), n)."""
    return cheapest_best(quality[None] - lambdas[:, None, None] * cost[None], np.broadcast_to(cost, (1, *cost.shape)))


def budget_grid(cost: np.ndarray, limit: int = MAX_BUDGETS) -> np.ndarray:
    """EquiRouter's budgets: the distinct predicted costs, or ``limit`` quantiles of them when there are more."""
    unique = np.unique(cost)
    return unique if len(unique) <= limit else np.quantile(unique, np.linspace(0.0, 1.0, limit))


def budget_sweep(quality: np.ndarray, cost: np.ndarray, budgets: np.ndarray | None = None) -> np.ndarray:
    """For each budget C (ascending): the best-scored model whose predicted cost is at most C: (budgets, n).

    A query with no model under the budget gets its cheapest predicted model.
    """
    grid = budget_grid(cost) if budgets is None else np.sort(budgets)
    allowed = cost[None] <= grid[:, None, None]
    picks = cheapest_best(np.where(allowed, quality[None], -np.inf), np.broadcast_to(cost, (1, *cost.shape)))
    return np.where(allowed.any(axis=2), picks, np.argmin(cost, axis=1)[None])


class CostPredictor:
    """Ridge regression of each model's log cost on the embedding and the prompt length."""

    def fit(self, features: Features, costs: np.ndarray) -> CostPredictor:
        from sklearn.linear_model import Ridge

        self.model = Ridge(alpha=1.0).fit(features.design(), np.log(np.maximum(costs, 1e-9)))
        return self

    def predict(self, features: Features) -> np.ndarray:
        return np.exp(self.model.predict(features.design()))


class SingleModelRouter:
    """No routing: every query gets the same model, the best one the budget allows (train means)."""

    name = "single_model"

    def fit(self, features: Features, scores: np.ndarray, costs: np.ndarray) -> None:
        self._quality, self._cost = scores.mean(axis=0), costs.mean(axis=0)

    def predict(self, features: Features) -> Estimates:
        n = len(features)
        return Estimates(np.tile(self._quality, (n, 1)), np.tile(self._cost, (n, 1)))


class PerTaskRouter:
    """One model per task: each model's mean train score and cost within the query's task."""

    name = "per_task"

    def fit(self, features: Features, scores: np.ndarray, costs: np.ndarray) -> None:
        groups = np.asarray(features.groups or [""] * len(features), dtype=object)
        self._overall = (scores.mean(axis=0), costs.mean(axis=0))
        self._by_task = {g: (scores[groups == g].mean(axis=0), costs[groups == g].mean(axis=0))
                         for g in np.unique(groups)}

    def predict(self, features: Features) -> Estimates:
        groups = features.groups or ("",) * len(features)
        rows = [self._by_task.get(g, self._overall) for g in groups]
        return Estimates(np.array([r[0] for r in rows]), np.array([r[1] for r in rows]))


class RandomRouter:
    """Random quality scores, mean train costs: a uniform pick among the models each budget allows."""

    name = "random"

    def __init__(self, seed: int = 0) -> None:
        self.seed = seed

    def fit(self, features: Features, scores: np.ndarray, costs: np.ndarray) -> None:
        self._cost = costs.mean(axis=0)

    def predict(self, features: Features) -> Estimates:
        n = len(features)
        quality = np.random.default_rng(self.seed).random((n, len(self._cost)))
        return Estimates(quality, np.tile(self._cost, (n, 1)))


class KNNRouter:
    """Quality and cost of each model averaged over the k most similar training queries."""

    name = "knn"

    def __init__(self, k: int = 20) -> None:
        self.k = k

    def fit(self, features: Features, scores: np.ndarray, costs: np.ndarray) -> None:
        self._train, self._scores, self._costs = features.embeddings, scores, costs

    def predict(self, features: Features) -> Estimates:
        k = min(self.k, len(self._train) - 1)
        similarity = features.embeddings @ self._train.T
        neighbours = np.argpartition(-similarity, k, axis=1)[:, :k]
        return Estimates(self._scores[neighbours].mean(axis=1), self._costs[neighbours].mean(axis=1))


class MLPRegressionRouter:
    """An MLP predicts every model's score; the cost predictor its cost."""

    name = "mlp_regression"

    def __init__(self, seed: int = 0) -> None:
        self.seed = seed

    def fit(self, features: Features, scores: np.ndarray, costs: np.ndarray) -> None:
        from sklearn.neural_network import MLPRegressor

        self._mlp = MLPRegressor(hidden_layer_sizes=(128,), alpha=1e-3, max_iter=400, early_stopping=True,
                                 random_state=self.seed).fit(features.design(), scores)
        self._cost = CostPredictor().fit(features, costs)

    def predict(self, features: Features) -> Estimates:
        return Estimates(self._mlp.predict(features.design()), self._cost.predict(features))


def preference_weights(scores: np.ndarray, costs: np.ndarray, tie_weight: float = 0.0) -> np.ndarray:
    """(n, models, models) weight of "model i should rank above model j" for each query.

    A correct model ranks above an incorrect one (weight 1); with ``tie_weight`` > 0 the cheaper of
    two equally scored models also ranks higher (the decision-aware variant).
    """
    better = scores[:, :, None] > scores[:, None, :]
    tied_cheaper = (scores[:, :, None] == scores[:, None, :]) & (costs[:, :, None] < costs[:, None, :])
    return better.astype(np.float32) + tie_weight * tied_cheaper.astype(np.float32)


def train_bilinear(x: np.ndarray, scores: np.ndarray, pairs: np.ndarray, *, weight_decay: float, rank: int,
                   rank_weight: float, steps: int, lr: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Fit logits ``x @ U @ E + b`` (query projection U, model identity vectors E) to the outcomes.

    Loss: binary cross-entropy of every (query, model) outcome, plus ``rank_weight`` times the
    pairwise softplus ranking loss weighted by ``pairs``, plus ``weight_decay`` times the squared
    norm of U and E. Full-batch Adam. Returns the collapsed weights ``U @ E`` (d, models) and ``b``.
    """
    import torch

    generator = torch.Generator().manual_seed(seed)
    inputs = torch.as_tensor(x, dtype=torch.float32)
    targets = torch.as_tensor(scores, dtype=torch.float32)
    weights = torch.as_tensor(pairs, dtype=torch.float32)
    total = weights.sum().clamp_min(1e-9)
    dims, models = inputs.shape[1], targets.shape[1]
    projection = torch.nn.Parameter(0.01 * torch.randn(dims, rank, generator=generator))
    identities = torch.nn.Parameter(0.1 * torch.randn(rank, models, generator=generator))
    bias = torch.nn.Parameter(torch.logit(targets.mean(dim=0).clamp(0.02, 0.98)))
    optimizer = torch.optim.Adam([projection, identities, bias], lr=lr)
    for _ in range(steps):
        optimizer.zero_grad()
        logits = inputs @ projection @ identities + bias
        loss = torch.nn.functional.binary_cross_entropy_with_logits(logits, targets)
        if rank_weight > 0:
            margin = logits[:, :, None] - logits[:, None, :]
            loss = loss + rank_weight * (weights * torch.nn.functional.softplus(-margin)).sum() / total
        loss = loss + weight_decay * (projection.square().sum() + identities.square().sum())
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        return (projection @ identities).numpy().astype(np.float64), bias.numpy().astype(np.float64)


class RankingRouter:
    """Ranking router (the EquiRouter idea, sized for ~1k training queries).

    A low-rank bilinear scorer over the query embedding and a learned identity vector per model,
    trained on per-model correctness (cross-entropy, so sigmoid(score) is a probability the
    utility rule can weigh against cost) plus a pairwise softplus ranking loss over pairs with
    strictly different outcomes. One scorer per weight decay in ``weight_decays``; their
    probabilities are averaged (choosing one by cross-validation flipped between near-equal
    strengths from seed to seed). A ridge regression predicts costs. Inference is numpy: the
    scorers collapse to one (d, models) matrix each.
    """

    name = "ranking"

    def __init__(self, seed: int = 0, rank: int = 16, rank_weight: float = 1.0, tie_weight: float = 0.0,
                 weight_decays: Sequence[float] = (1e-2, 3e-3, 1e-3), steps: int = 400, lr: float = 0.02,
                 name: str | None = None) -> None:
        self.seed, self.rank, self.rank_weight, self.tie_weight = seed, rank, rank_weight, tie_weight
        self.weight_decays, self.steps, self.lr = tuple(weight_decays), steps, lr
        if name is not None:
            self.name = name

    def fit(self, features: Features, scores: np.ndarray, costs: np.ndarray) -> None:
        pairs = preference_weights(scores, costs, self.tie_weight)
        fitted = [train_bilinear(features.embeddings, scores, pairs, weight_decay=w, rank=self.rank,
                                 rank_weight=self.rank_weight, steps=self.steps, lr=self.lr, seed=self.seed)
                  for w in self.weight_decays]
        self.weights = np.stack([w for w, _ in fitted])  # (members, d, models)
        self.biases = np.stack([b for _, b in fitted])  # (members, models)
        self.cost_model = CostPredictor().fit(features, costs)

    def probabilities(self, embeddings: np.ndarray) -> np.ndarray:
        """(n, models) mean predicted probability that each model answers correctly."""
        logits = np.einsum("nd,kdm->knm", np.asarray(embeddings, np.float64), self.weights) + self.biases[:, None]
        return np.asarray(sigmoid(logits).mean(axis=0))

    def predict(self, features: Features) -> Estimates:
        return Estimates(self.probabilities(features.embeddings), self.cost_model.predict(features))


class OracleRouter:
    """Knows the test outcomes: the true scores and costs."""

    name = "oracle"

    def __init__(self, scores: np.ndarray, costs: np.ndarray) -> None:
        self._scores, self._costs = scores, costs

    def fit(self, features: Features, scores: np.ndarray, costs: np.ndarray) -> None:
        return None

    def predict(self, features: Features) -> Estimates:
        return Estimates(self._scores, self._costs)
