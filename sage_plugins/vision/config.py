"""The vision plugin's options (`plugins.options.vision`), with defaults and ranges."""

from __future__ import annotations

from pydantic import Field

from sage_runtime.plugin import PluginOptions


class VisionConfig(PluginOptions):
    weights: str | None = None                # embedding encoder (VAE); default: weights.pt shipped in this package
    prior: str | None = None                  # prior net; default: prior.pt shipped in this package
    prior_sigma: float = Field(0.02, gt=0)    # tau: data weight tau^2 / (tau^2 + sigma^2) against the prior's estimate
    holdout: float = Field(0.1, gt=0, lt=1)   # share of observed pixels hidden from the shadow that scores steps (refine.py)
    tv_per_sigma: float = Field(0.9, ge=0)    # the floor's TV weight per unit of noise sigma
    max_side: int = Field(256, ge=8)          # working size: the frame's own, scaled down to this longer side if larger
    min_z: float = Field(1.0, ge=0)           # a step must lower the held-out energy by this many standard errors
    max_steps: int = Field(4, ge=1)           # calibrated (calibrate.py): later steps are mostly refused
    rel_eps: float = Field(1e-3, ge=0)        # converged when a step lowered E by less than this share of it
