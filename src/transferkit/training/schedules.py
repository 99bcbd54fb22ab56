"""Schedules of Ganin et al. 2016, §5.2.2, as functions of training progress p ∈ [0, 1]."""

from __future__ import annotations

import math


def annealed_learning_rate(progress: float, initial: float = 0.01, alpha: float = 10.0,
                           beta: float = 0.75) -> float:
    """μ_p = μ₀ / (1 + α·p)^β  (μ₀ = 0.01, α = 10, β = 0.75 in the paper)."""
    return initial / (1.0 + alpha * progress) ** beta


def grl_coefficient(progress: float, gamma: float = 10.0) -> float:
    """λ_p = 2 / (1 + exp(−γ·p)) − 1  (γ = 10): 0 at the start, → 1 at the end, which
    keeps the domain classifier's noisy early signal from disturbing the features."""
    return 2.0 / (1.0 + math.exp(-gamma * progress)) - 1.0
