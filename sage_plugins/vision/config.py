"""The vision plugin's options (`plugins.options.vision`), with defaults and ranges."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from sage_runtime.plugin import PluginOptions


class VisionConfig(PluginOptions):
    weights: str | None = None                # default: weights.pt shipped in this package
    lam: float = Field(1e-3, ge=0)            # latent prior weight in E(z)
    lr0: float = Field(3000.0, gt=0)          # scale of the first (gradient) step; later steps are L-BFGS
    memory: int = Field(6, ge=1)              # L-BFGS curvature pairs per image
    max_halvings: int = Field(8, ge=0)        # backtracking trials per step
    fill: Literal["mean", "zero"] = "mean"    # encoder input at invalid pixels: mean of valid pixels, or zero
    max_steps: int = Field(50, ge=1)          # hard ceiling per run (the runner's quota is usually lower)
    rel_eps: float = Field(1e-3, ge=0)        # converged when E fell by less than this share over `window` steps
    window: int = Field(3, ge=1)
    tiles: int = Field(8, ge=1)               # error map is tiles x tiles
