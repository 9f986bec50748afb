"""Anytime restoration: a classical floor at step 0, then monotone steps with a learned prior.

State: the observation y with its validity mask and noise level sigma, and the current estimate x.
Step 0 is the classical floor (classical.py). Each step asks the prior net for a better image
z = N(x; y, mask, sigma), makes it consistent with the data and moves x towards it:

    T(x) = valid * (w y + (1 - w) z) + (1 - valid) * z,   w = tau^2 / (tau^2 + sigma^2)

(w = 1 when sigma = 0: observed pixels are kept exactly, the net only fills holes; under noise
an observed pixel counts as much as its noise level allows). T(x) is the minimiser, for that z, of

    E(x) = [ sum valid (x - y)^2 / (2 max(sigma, sigma_q)^2) + sum (x - N(x))^2 / (2 tau^2) ] / n

the negative log-posterior with the data's noise and a Gaussian of width tau (the prior's own
error) around the net's estimate. A step tries x + t (T(x) - x) at t = 1, 1/2, 1/4, ... and is
taken only where it lowers E; where none does, x stays put and the image is marked stalled (the
plugin halts). So E never rises, step 0 is the floor, and one step costs one net forward at the
working size (more when it backtracks). Every tensor carries a batch dimension; images are
independent (evaluation batches what the plugin does one image at a time).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch

from sage_plugins.vision import classical
from sage_plugins.vision.model import PriorNet

#: Quantisation noise of a uint8 frame (1/255/sqrt(12)): the data term's width when sigma is 0.
SIGMA_Q = 1.0 / 255.0 / 12 ** 0.5


@dataclass(frozen=True)
class RefineConfig:
    prior_sigma: float = 0.02   # tau: width of the prior around the net's estimate (its typical error)
    max_halvings: int = 2       # backtracking trials per step; after them the estimate stays put
    tv_per_sigma: float = 0.9   # the floor's TV weight per unit of noise sigma


@dataclass(frozen=True)
class Refinement:
    y: torch.Tensor            # B x 3 x H x W observation in [0, 1] (invalid pixels arbitrary)
    valid: torch.Tensor        # B x 1 x H x W in {0, 1}
    sigma: torch.Tensor        # B, noise level (0: observed pixels are exact)
    x: torch.Tensor            # B x 3 x H x W current estimate
    prior: torch.Tensor        # N(x), the net's estimate at x (the next step's target before data consistency)
    energy: torch.Tensor       # B, E(x)
    steps: int = 0
    stalled: torch.Tensor | None = None  # B bool: the last step found no decrease


def data_weight(sigma: torch.Tensor, tau: float) -> torch.Tensor:
    """w per image (B x 1 x 1 x 1): how much an observed pixel counts against the prior."""
    return (tau ** 2 / (tau ** 2 + sigma.square())).view(-1, 1, 1, 1)


def consistent(z: torch.Tensor, y: torch.Tensor, valid: torch.Tensor, sigma: torch.Tensor, tau: float) -> torch.Tensor:
    """T's data-consistency blend of the net's estimate z with the observation."""
    w = data_weight(sigma, tau)
    return (valid * (w * y + (1 - w) * z) + (1 - valid) * z).clamp(0.0, 1.0)


def energy_of(x: torch.Tensor, z: torch.Tensor, y: torch.Tensor, valid: torch.Tensor, sigma: torch.Tensor,
              tau: float) -> torch.Tensor:
    """Per-image E(x) given z = N(x)."""
    n = x[0].numel()
    sd = sigma.clamp_min(SIGMA_Q).view(-1, 1, 1, 1)
    data = (valid * (x - y).square() / (2 * sd.square())).flatten(1).sum(1)
    return (data + (x - z).square().flatten(1).sum(1) / (2 * tau ** 2)) / n


@torch.no_grad()
def start(net: PriorNet, y: torch.Tensor, valid: torch.Tensor, sigma: torch.Tensor, cfg: RefineConfig) -> Refinement:
    """Step 0: the classical floor, with the net's estimate there (for the energy and the first step)."""
    x = classical.floor(y, valid, sigma, cfg.tv_per_sigma)
    z = net(x, y, valid, sigma)
    e = energy_of(x, z, y, valid, sigma, cfg.prior_sigma)
    return Refinement(y, valid, sigma, x, z, e, stalled=torch.zeros_like(e, dtype=torch.bool))


@torch.no_grad()
def step(net: PriorNet, r: Refinement, cfg: RefineConfig) -> Refinement:
    """One monotone step for every image of the batch (see the module docstring)."""
    d = consistent(r.prior, r.y, r.valid, r.sigma, cfg.prior_sigma) - r.x
    x, z, e = r.x.clone(), r.prior.clone(), r.energy.clone()
    pending = torch.ones_like(e, dtype=torch.bool)
    t = 1.0
    for _ in range(cfg.max_halvings + 1):
        cand = r.x + t * d
        z_c = net(cand, r.y, r.valid, r.sigma)
        e_c = energy_of(cand, z_c, r.y, r.valid, r.sigma, cfg.prior_sigma)
        ok = pending & (e_c < r.energy)
        x[ok], z[ok], e[ok] = cand[ok], z_c[ok], e_c[ok]
        pending &= ~ok
        if not bool(pending.any()):
            break
        t *= 0.5
    return replace(r, x=x, prior=z, energy=e, steps=r.steps + 1, stalled=pending)


def refine(net: PriorNet, y: torch.Tensor, valid: torch.Tensor, sigma: torch.Tensor, cfg: RefineConfig,
           steps: int) -> tuple[Refinement, list[torch.Tensor]]:
    """`steps` steps from the floor; returns the final state and the estimates after each step
    (index 0 = the floor)."""
    r = start(net, y, valid, sigma, cfg)
    xs = [r.x]
    for _ in range(steps):
        r = step(net, r, cfg)
        xs.append(r.x)
    return r, xs
