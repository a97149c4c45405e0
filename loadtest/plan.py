"""Capacity planning: replicas and hourly cost of each pool for a target load, from measured
per-replica throughput (a load test's ``summary.json``) and prices."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any


def plan_capacity(qps: float, escalation_rate: float, per_replica_rps: Mapping[str, float],
                  hourly_price: Mapping[str, float], *, utilization: float = 0.7,
                  min_replicas: int = 1, cost_per_1k: float | None = None) -> dict[str, Any]:
    """Replicas per pool so that each runs at ``utilization`` of its measured throughput: the first
    tier sees every query, the others the escalated share; hourly cost adds each pool's replicas."""
    if qps <= 0 or not 0.0 <= escalation_rate <= 1.0 or not 0.0 < utilization <= 1.0:
        raise ValueError("need qps > 0, escalation rate within [0, 1] and utilization within (0, 1]")
    tiers = list(per_replica_rps)
    if not tiers:
        raise ValueError("no per-replica throughput given; run a load test first or pass --tier-rps")
    missing = [t for t in tiers if t not in hourly_price]
    if missing:
        raise ValueError(f"no hourly price for {missing}; pass --price tier=dollars_per_replica_hour")
    pools: list[dict[str, Any]] = []
    for i, tier in enumerate(tiers):
        load = qps if i == 0 else qps * escalation_rate
        capacity = per_replica_rps[tier] * utilization
        replicas = max(min_replicas, math.ceil(load / capacity)) if capacity > 0 else min_replicas
        pools.append({"tier": tier, "load_qps": round(load, 4), "per_replica_rps": per_replica_rps[tier],
                      "replicas": replicas, "hourly_cost": round(replicas * hourly_price[tier], 4)})
    hourly = sum(p["hourly_cost"] for p in pools)
    result: dict[str, Any] = {
        "qps": qps, "escalation_rate": escalation_rate, "utilization": utilization, "pools": pools,
        "hourly_cost": round(hourly, 4),
        "infrastructure_cost_per_1k": round(hourly / (qps * 3.6), 6),
    }
    if cost_per_1k is not None:
        result["model_cost_per_1k"] = cost_per_1k
    return result


def plan_from_summary(qps: float, summary: Mapping[str, Any], *, escalation_rate: float | None = None,
                      tier_rps: Mapping[str, float] | None = None, hourly_price: Mapping[str, float] | None = None,
                      utilization: float = 0.7) -> dict[str, Any]:
    """``plan_capacity`` on a load test's ``summary.json``: its mean escalation rate, per-replica
    throughput and cost per 1,000 queries, each overridden by the argument given."""
    runs = summary.get("runs", [])
    rates = [r["escalation_rate"] for r in runs if r.get("escalation_rate") is not None]
    if escalation_rate is None:
        if not rates:
            raise ValueError("give --escalation-rate or a --summary with measured runs")
        escalation_rate = sum(rates) / len(rates)
    costs = [r["cost_per_1k"] for r in runs if r.get("cost_per_1k") is not None]
    return plan_capacity(qps, escalation_rate, {**summary.get("per_replica_rps", {}), **(tier_rps or {})},
                         hourly_price or {}, utilization=utilization,
                         cost_per_1k=sum(costs) / len(costs) if costs else None)
