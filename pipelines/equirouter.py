"""EquiRouter (Lai & Ye, 2026, "When Routing Collapses") as its authors' ORBIT toolbox trains it.

Performance network: frozen MiniLM embedding (384) → trunk 1024 → 512 → 512 (GELU, LayerNorm
after each) → FiLM modulation by a learned 128-d model identity vector (gamma, beta projected from
it) → head over [h, m, h⊙m, |h−m|] (m = the identity projected to 512) → 512 → 1 score per model.
Loss: MSE on the 0/1 outcome + 50 × softplus pairwise loss over pairs with strictly different
outcomes. Adam 1e-4, 5 epochs, batch 128, Xavier initialisation. A separate cost network
(low-rank bottleneck 384 → 128 → 384, then 256 → 128 → models, ReLU) is trained with MSE on the
dollar cost, same optimiser and schedule. The published decision rule is the budget mask
(``prerouters.budget_sweep``).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from pipelines.prerouters import Estimates, Features


class PerformanceNet(nn.Module):
    """Trunk, FiLM by the model vector, interaction head: (batch, models) scores."""

    def __init__(self, inputs: int, models: int, trunk: tuple[int, ...] = (1024, 512), width: int = 512,
                 identity: int = 128, head: int = 512) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        previous = inputs
        for size in (*trunk, width):
            layers += [nn.Linear(previous, size), nn.GELU(), nn.LayerNorm(size)]
            previous = size
        self.trunk = nn.Sequential(*layers)
        self.width, self.models = width, models
        self.identities = nn.Parameter(0.02 * torch.randn(models, identity))
        self.film = nn.Linear(identity, 2 * width)
        self.project = nn.Linear(identity, width)
        self.head = nn.Sequential(nn.Linear(4 * width, head), nn.GELU(), nn.LayerNorm(head), nn.Linear(head, 1))
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                nn.init.zeros_(module.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.trunk(x)
        gamma, beta = self.film(self.identities).view(self.models, 2, self.width).unbind(dim=1)
        modulated = gamma[None] * h[:, None, :] + beta[None]
        m = self.project(self.identities)[None].expand_as(modulated)
        pair = torch.cat([modulated, m, modulated * m, (modulated - m).abs()], dim=-1)
        return self.head(pair).squeeze(-1)


class CostNet(nn.Module):
    """ORBIT's cost MLP: a low-rank reconstruction of the input, then 256 → 128 → models."""

    def __init__(self, inputs: int, models: int, bottleneck: int = 128) -> None:
        super().__init__()
        self.layers = nn.Sequential(nn.Linear(inputs, bottleneck), nn.Linear(bottleneck, inputs),
                                    nn.Linear(inputs, 256), nn.ReLU(), nn.Linear(256, 128), nn.ReLU(),
                                    nn.Linear(128, models))
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.normal_(module.weight, std=0.01)
                nn.init.zeros_(module.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


def pairwise_rank_loss(scores: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean softplus(-(s_i - s_j)) over the pairs with label_i > label_j (ties dropped)."""
    better = (labels[:, :, None] - labels[:, None, :]) > 0
    if not bool(better.any()):
        return scores.sum() * 0.0
    margin = (scores[:, :, None] - scores[:, None, :])[better]
    return nn.functional.softplus(-margin).mean()


class EquiRouter:
    """EquiRouter with the published architecture, loss and schedule."""

    name = "equirouter"

    def __init__(self, seed: int = 0, epochs: int = 5, batch_size: int = 128, lr: float = 1e-4,
                 rank_weight: float = 50.0, name: str | None = None) -> None:
        self.seed, self.epochs, self.batch_size, self.lr, self.rank_weight = seed, epochs, batch_size, lr, rank_weight
        if name is not None:
            self.name = name

    def _batches(self, n: int, generator: torch.Generator) -> list[torch.Tensor]:
        return [torch.randperm(n, generator=generator)[i: i + self.batch_size] for i in range(0, n, self.batch_size)]

    def fit(self, features: Features, scores: np.ndarray, costs: np.ndarray) -> None:
        torch.manual_seed(self.seed)
        generator = torch.Generator().manual_seed(self.seed)
        x = torch.as_tensor(features.embeddings, dtype=torch.float32)
        y = torch.as_tensor(scores, dtype=torch.float32)
        c = torch.as_tensor(costs, dtype=torch.float32)
        self.cost_net, self.performance_net = CostNet(x.shape[1], y.shape[1]), PerformanceNet(x.shape[1], y.shape[1])
        cost_optimizer = torch.optim.Adam(self.cost_net.parameters(), lr=self.lr)
        for _ in range(self.epochs):
            for rows in self._batches(len(x), generator):
                cost_optimizer.zero_grad()
                nn.functional.mse_loss(self.cost_net(x[rows]), c[rows]).backward()
                cost_optimizer.step()
        optimizer = torch.optim.Adam(self.performance_net.parameters(), lr=self.lr)
        self.performance_net.train()
        for _ in range(self.epochs):
            for rows in self._batches(len(x), generator):
                optimizer.zero_grad()
                out = self.performance_net(x[rows])
                loss = nn.functional.mse_loss(out, y[rows]) + self.rank_weight * pairwise_rank_loss(out, y[rows])
                loss.backward()
                optimizer.step()
        self.performance_net.eval()

    def predict(self, features: Features) -> Estimates:
        x = torch.as_tensor(features.embeddings, dtype=torch.float32)
        with torch.no_grad():
            quality = self.performance_net(x).numpy().astype(np.float64)
            cost = self.cost_net(x).numpy().astype(np.float64)
        return Estimates(quality, cost)
