"""Latent refinement: quasi-Newton descent on E(z) through the decoder, monotone by backtracking.

E(z) = mean over valid pixels and channels of (decode(z) - x)^2 + lam * mean(z^2)

The masked data term lets the decoder fill dropped pixels from what it learned of images; the
prior keeps z where the decoder was trained. (Against sigma = 0.1 noise a larger lam does not
help: measured on validation crops it only slows the descent; see README.md, "Diagnosis".) Directions
are L-BFGS (a few curvature pairs per image; plain gradient descent crawls through a conv
decoder's ill-conditioned Jacobian), tried at step 1 and halved until E does not rise, so the
energy sequence never increases. Every tensor carries a batch dimension; images in a batch are
refined independently (per-image energies, histories and step sizes), so evaluation can batch
what the plugin does one image at a time.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch

from sage_plugins.vision.images import fill_invalid
from sage_plugins.vision.model import ConvAutoencoder


@dataclass(frozen=True)
class RefineConfig:
    lam: float = 1e-3          # weight of the latent prior mean(z^2)
    lr0: float = 3000.0        # scale of the first (gradient) step, before any curvature is known
    memory: int = 6            # L-BFGS curvature pairs kept per image
    max_halvings: int = 8      # backtracking trials per step; after them the latent stays put
    fill: str = "mean"         # what the encoder sees at invalid pixels: "mean" (of valid) or "zero"


@dataclass(frozen=True)
class Refinement:
    """Batch of latents being refined, with what the next step needs."""

    x: torch.Tensor            # B x 3 x S x S target in [0, 1] (invalid pixels arbitrary)
    valid: torch.Tensor        # B x 1 x S x S in {0, 1}
    z: torch.Tensor            # B x C x h x w
    energy: torch.Tensor       # B, E(z)
    grad: torch.Tensor         # dE/dz at z
    recon: torch.Tensor        # decode(z), B x 3 x S x S (unclamped)
    scale: torch.Tensor | None = None  # B, gradient-step scale where no curvature is known yet
    pairs: tuple[tuple[torch.Tensor, torch.Tensor], ...] = ()  # (s, y) per past step, B x D each
    steps: int = 0
    stalled: torch.Tensor | None = None  # B bool: the last step found no decrease


def energy_of(model: ConvAutoencoder, z: torch.Tensor, x: torch.Tensor, valid: torch.Tensor,
              lam: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(per-image E(z), decode(z))."""
    recon = model.decode(z)
    n = (valid.sum(dim=(1, 2, 3)) * recon.shape[1]).clamp_min(1.0)
    data = ((recon - x).square() * valid).sum(dim=(1, 2, 3)) / n
    return data + lam * z.square().mean(dim=(1, 2, 3)), recon


def start(model: ConvAutoencoder, x: torch.Tensor, valid: torch.Tensor, cfg: RefineConfig) -> Refinement:
    """Step 0: z is the encoder's code of the image with invalid pixels filled (cfg.fill)."""
    with torch.no_grad():
        z = model.encode(fill_invalid(x, valid) if cfg.fill == "mean" else x * valid)
    with torch.enable_grad():
        z = z.requires_grad_(True)
        e, recon = energy_of(model, z, x, valid, cfg.lam)
        (g,) = torch.autograd.grad(e.sum(), z)
    return Refinement(x, valid, z.detach(), e.detach(), g, recon.detach(), scale=torch.full_like(e, cfg.lr0),
                      stalled=torch.zeros_like(e, dtype=torch.bool))


def _dot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return (a * b).sum(dim=1)


def direction(r: Refinement) -> tuple[torch.Tensor, torch.Tensor]:
    """(B x D direction, B bool: it is a scaled gradient step): the L-BFGS two-loop recursion per
    image; -scale * grad where no curvature is known yet or where that would not descend."""
    g = r.grad.flatten(1)
    scale = r.scale[:, None]
    if not r.pairs:
        return -scale * g, torch.ones_like(r.energy, dtype=torch.bool)
    q = g.clone()
    alphas = []
    rhos = [torch.where(_dot(s, y) > 0, 1.0 / _dot(s, y).clamp_min(1e-30), torch.zeros_like(g[:, 0]))
            for s, y in r.pairs]
    for (s, y), rho in zip(reversed(r.pairs), reversed(rhos)):
        a = rho * _dot(s, q)
        q = q - a[:, None] * y
        alphas.append(a)
    s, y = r.pairs[-1]
    yy = _dot(y, y)
    known = torch.stack(rhos).gt(0).any(dim=0)
    gamma = torch.where((rhos[-1] > 0) & (yy > 0), _dot(s, y) / yy.clamp_min(1e-30), r.scale)
    d = gamma[:, None] * q
    for (s, y), rho, a in zip(r.pairs, rhos, reversed(alphas)):
        b = rho * _dot(y, d)
        d = d + (a - b)[:, None] * s
    use_grad = ~known | (_dot(d, g) >= 0)
    return torch.where(use_grad[:, None], -scale * g, -d), use_grad


def step(model: ConvAutoencoder, r: Refinement, cfg: RefineConfig) -> Refinement:
    """One monotone descent step for every image of the batch: the L-BFGS direction at step 1,
    halved until E does not rise (images that never get there keep their latent)."""
    shape = r.z.shape
    d, use_grad = direction(r)
    d = d.view(shape)
    t = torch.ones_like(r.energy)
    z, e, g, recon = r.z.clone(), r.energy.clone(), r.grad.clone(), r.recon.clone()
    pending = torch.ones_like(e, dtype=torch.bool)
    bshape = (-1,) + (1,) * (len(shape) - 1)
    for _ in range(cfg.max_halvings + 1):
        with torch.enable_grad():
            cand = (r.z + t.view(bshape) * d).detach().requires_grad_(True)
            e_c, recon_c = energy_of(model, cand, r.x, r.valid, cfg.lam)
            ok = pending & (e_c.detach() <= r.energy)
            if bool(ok.any()):
                (g_c,) = torch.autograd.grad((e_c * ok).sum(), cand)
                z[ok], e[ok], g[ok], recon[ok] = cand.detach()[ok], e_c.detach()[ok], g_c[ok], recon_c.detach()[ok]
        pending &= ~ok
        if not bool(pending.any()):
            break
        t = torch.where(pending, t * 0.5, t)
    s, y = (z - r.z).flatten(1), (g - r.grad).flatten(1)
    keep = (~pending)[:, None]
    pair = (torch.where(keep, s, torch.zeros_like(s)), torch.where(keep, y, torch.zeros_like(y)))
    pairs = (r.pairs + (pair,))[-cfg.memory:]
    # A gradient step that had to shrink (or failed) shrinks the next one from the start.
    scale = torch.where(pending, r.scale * 0.5 ** (cfg.max_halvings + 1), torch.where(use_grad, r.scale * t, r.scale))
    return replace(r, z=z, energy=e, grad=g, recon=recon, scale=scale, pairs=pairs, steps=r.steps + 1,
                   stalled=pending)


def refine(model: ConvAutoencoder, x: torch.Tensor, valid: torch.Tensor, cfg: RefineConfig,
           steps: int) -> tuple[Refinement, list[torch.Tensor]]:
    """`steps` steps from the encoder's code; returns the final state and the energy history."""
    r = start(model, x, valid, cfg)
    hist = [r.energy]
    for _ in range(steps):
        r = step(model, r, cfg)
        hist.append(r.energy)
    return r, hist
