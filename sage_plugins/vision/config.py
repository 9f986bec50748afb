"""The vision plugin's options (the `config` mapping of its plugin section), with defaults."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any


@dataclass(frozen=True)
class VisionConfig:
    weights: str | None = None   # default: weights.pt shipped in this package
    lam: float = 1e-3            # latent prior weight in E(z)
    lr0: float = 3000.0          # scale of the first (gradient) step; later steps are L-BFGS
    memory: int = 6              # L-BFGS curvature pairs per image
    max_halvings: int = 8        # backtracking trials per step
    fill: str = "mean"           # encoder input at invalid pixels: "mean" of valid pixels, or "zero"
    max_steps: int = 50          # hard ceiling per run (the runner's quota is usually lower)
    rel_eps: float = 1e-3        # converged when E fell by less than this share over `window` steps
    window: int = 3
    tiles: int = 8               # error map is tiles x tiles

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any]) -> "VisionConfig":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"vision plugin: unknown config key(s) {unknown}; known: {sorted(known)}")
        cfg = cls(**dict(values))
        if (cfg.lam < 0 or cfg.lr0 <= 0 or cfg.memory < 1 or cfg.max_halvings < 0 or cfg.max_steps < 1
                or cfg.rel_eps < 0 or cfg.window < 1 or cfg.tiles < 1):
            raise ValueError("vision plugin: need lam >= 0, lr0 > 0, memory/max_steps/window/tiles >= 1, "
                             f"max_halvings >= 0, rel_eps >= 0: {cfg}")
        if cfg.fill not in ("mean", "zero"):
            raise ValueError(f"vision plugin: fill must be 'mean' or 'zero', not {cfg.fill!r}")
        return cfg
