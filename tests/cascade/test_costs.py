"""Prices: per-token and per-GPU-second, for one call or a batch."""

from __future__ import annotations

import numpy as np
import pytest

from cascade.costs import ModelPrice
from cascade.schemas import Generation


def generation(prompt_tokens: int, completion_tokens: int, ms: float) -> Generation:
    return Generation(model="m", text="", token_ids=[], token_logprobs=[], top_logprobs=np.zeros((0, 0)),
                      finish_reason="stop", prompt_tokens=prompt_tokens, completion_tokens=completion_tokens,
                      prompt_ms=ms / 2, decode_ms=ms / 2)


def test_per_token_prices() -> None:
    price = ModelPrice(input_per_million=3.0, output_per_million=15.0)
    assert float(price.cost(1000, 200)) == pytest.approx((1000 * 3 + 200 * 15) / 1e6)


def test_self_hosted_pools_pay_per_gpu_second() -> None:
    pool = ModelPrice(per_gpu_second=0.001, gpus=2)
    costs = pool.cost_of([generation(100, 10, 1500.0), generation(50, 5, 500.0)])
    assert costs.tolist() == pytest.approx([1.5 * 0.002, 0.5 * 0.002])


def test_a_batched_call_shares_its_pool_time() -> None:
    pool = ModelPrice(per_gpu_second=0.001, gpus=1, output_per_million=1.0)
    batch = [generation(100, 10, 900.0), generation(50, 1_000_000, 900.0), generation(10, 0, 900.0)]
    costs = pool.cost_of(batch, call_seconds=0.9)
    assert costs.tolist() == pytest.approx([0.3 * 0.001 + 1e-5, 0.3 * 0.001 + 1.0, 0.3 * 0.001])
    alone = pool.cost_of(batch[:1], call_seconds=0.9)
    assert float(alone[0]) > float(costs[0]), "the same call time shared by more queries costs each less"


def test_prices_cannot_be_negative() -> None:
    with pytest.raises(ValueError, match="greater than or equal to 0"):
        ModelPrice(input_per_million=-1)
