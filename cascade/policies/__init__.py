"""Routing policies: vectorized accept/escalate decisions over a batch of signals."""

from cascade.policies.accept import AcceptAllPolicy
from cascade.policies.base import Policy, PolicyDecision
from cascade.policies.cascade import CascadePolicy
from cascade.policies.deferral import DeferralPolicy
from cascade.policies.io import PolicyFileError, load_policy, parse_policy, resolve_policy, save_policy
from cascade.policies.logistic import LogisticPolicy
from cascade.policies.threshold import PRESETS, ThresholdPolicy, ThresholdRule

__all__ = [
    "PRESETS",
    "AcceptAllPolicy",
    "CascadePolicy",
    "DeferralPolicy",
    "LogisticPolicy",
    "Policy",
    "PolicyDecision",
    "PolicyFileError",
    "ThresholdPolicy",
    "ThresholdRule",
    "load_policy",
    "parse_policy",
    "resolve_policy",
    "save_policy",
]
