"""The vision plugin's options (the `config` mapping of its plugin section), with defaults."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any


@dataclass(frozen=True)
class VisionConfig:
    weights: str | None = None   # embedding encoder (VAE); default: weights.pt shipped in this package
    prior: str | None = None     # prior net; default: prior.pt shipped in this package
    prior_sigma: float = 0.02    # tau: how far the prior's estimate is trusted (data weight tau^2 / (tau^2 + sigma^2))
    max_halvings: int = 2        # backtracking trials per step
    tv_per_sigma: float = 0.9    # the floor's TV weight per unit of noise sigma
    max_side: int = 256          # working size: the frame's own, scaled down to this longer side if larger
    max_steps: int = 10          # hard ceiling per run (the runner's quota is usually lower)
    rel_eps: float = 1e-3        # converged when a step lowered E by less than this share of it

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any]) -> "VisionConfig":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"vision plugin: unknown config key(s) {unknown}; known: {sorted(known)}")
        cfg = cls(**dict(values))
        if (cfg.prior_sigma <= 0 or cfg.max_halvings < 0 or cfg.tv_per_sigma < 0 or cfg.max_side < 8
                or cfg.max_steps < 1 or cfg.rel_eps < 0):
            raise ValueError("vision plugin: need prior_sigma > 0, max_halvings >= 0, tv_per_sigma >= 0, "
                             f"max_side >= 8, max_steps >= 1, rel_eps >= 0: {cfg}")
        return cfg
