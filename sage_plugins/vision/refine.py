"""Anytime restoration: a classical floor at step 0, then monotone steps with a learned prior.

State: the observation y with its validity mask and noise level sigma, and the current estimate x.
Step 0 is the classical floor (classical.py). Each step asks the prior net for a better image
z = N(x; y, mask, sigma), makes it consistent with the data,

    T(x) = valid * (w y + (1 - w) z) + (1 - valid) * z,   w = tau^2 / (tau^2 + sigma^2)

(w = 1 when sigma = 0: observed pixels are kept exactly, the net only fills holes; under noise
an observed pixel counts as much as its noise level allows), and moves x to x + t (T(x) - x) for
the step size t that most lowers the energy, or stays put when none does.

The energy is a held-out estimate of the image's error, from the observation alone: a fixed random
share `holdout` of the observed pixels is hidden from a *shadow* restoration that runs the same
floor and the same steps (same step sizes) with those pixels marked invalid. E is the mean
squared difference, at the hidden pixels, between the shadow's estimate and the observation.
The shadow never saw those pixels, so under noise of level sigma E estimates (shadow's MSE
against the clean image) + sigma^2, and without noise the shadow's MSE in the hidden pixels:
a step that E says is better is, in expectation, better against the truth (which a fixed-point
residual |x - N(x)|^2 was not). So E never rises, step 0 is the floor, the plugin halts when no
step size lowers E, and one step costs one net forward on a batch of two (image and shadow) at the
working size, whatever the step size (the candidates are compared without a forward; `start`
makes none, so the floor is out before the net runs). Every tensor
carries a batch dimension; images are independent.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch

from sage_plugins.vision import classical
from sage_plugins.vision.model import PriorNet


@dataclass(frozen=True)
class RefineConfig:
    prior_sigma: float = 0.02   # tau: width of the prior around the net's estimate (the data blend's weight)
    step_sizes: tuple[float, ...] = (0.25, 0.5, 1.0)   # t tried per step; the one with the lowest E is taken
    holdout: float = 0.1        # share of observed pixels hidden from the shadow (the energy's sample)
    min_z: float = 1.0          # a step must lower E by this many standard errors of the decrease
    seed: int = 0               # of the held-out pixels (fixed: the same frame gives the same result)
    tv_per_sigma: float = 0.9   # the floor's TV weight per unit of noise sigma


@dataclass(frozen=True)
class Refinement:
    y: torch.Tensor            # B x 3 x H x W observation in [0, 1] (invalid pixels arbitrary)
    valid: torch.Tensor        # B x 1 x H x W in {0, 1}
    sigma: torch.Tensor        # B, noise level (0: observed pixels are exact)
    x: torch.Tensor            # B x 3 x H x W current estimate
    energy: torch.Tensor       # B, E: held-out squared error of the shadow (module docstring)
    held: torch.Tensor         # B x 1 x H x W: observed pixels hidden from the shadow
    shadow: torch.Tensor       # B x 3 x H x W: the shadow's estimate (same steps, held pixels invalid)
    prior: torch.Tensor | None = None         # the net's last estimate N (None before the first step)
    shadow_prior: torch.Tensor | None = None  # N at the shadow, from the same forward
    fresh: bool = False        # prior and shadow_prior are N at the current x and shadow
    steps: int = 0
    stalled: torch.Tensor | None = None  # B bool: the last step found no decrease


def data_weight(sigma: torch.Tensor, tau: float) -> torch.Tensor:
    """w per image (B x 1 x 1 x 1): how much an observed pixel counts against the prior."""
    return (tau ** 2 / (tau ** 2 + sigma.square())).view(-1, 1, 1, 1)


def consistent(z: torch.Tensor, y: torch.Tensor, valid: torch.Tensor, sigma: torch.Tensor, tau: float) -> torch.Tensor:
    """T's data-consistency blend of the net's estimate z with the observation."""
    w = data_weight(sigma, tau)
    return (valid * (w * y + (1 - w) * z) + (1 - valid) * z).clamp(0.0, 1.0)


def held_out_error(shadow: torch.Tensor, y: torch.Tensor, held: torch.Tensor) -> torch.Tensor:
    """Per-image E: mean squared shadow-vs-observation difference over the held pixels (0 if none)."""
    n = (held.flatten(1).sum(1) * shadow.shape[1]).clamp_min(1.0)
    return (held * (shadow - y).square()).flatten(1).sum(1) / n


def _gain_z(old: torch.Tensor, new: torch.Tensor, y: torch.Tensor, held: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per image: the decrease of E from shadow `old` to `new`, and that decrease over its
    standard error (the held pixels are a sample: a decrease within its noise is not evidence)."""
    diff = (held * ((old - y).square() - (new - y).square())).flatten(1)
    n = (held.flatten(1).sum(1) * old.shape[1]).clamp_min(1.0)
    gain = diff.sum(1) / n
    var = (diff.square().sum(1) / n - gain.square()).clamp_min(0.0)
    return gain, gain / (var / n).sqrt().clamp_min(1e-12)


def holdout_mask(valid: torch.Tensor, share: float, seed: int) -> torch.Tensor:
    """A fixed random `share` of the valid pixels (B x 1 x H x W)."""
    g = torch.Generator().manual_seed(seed)
    pick = torch.rand(valid.shape, generator=g).to(valid.device) < share
    return valid * pick.float()


def _both(net: PriorNet, x: torch.Tensor, xs: torch.Tensor, r_y: torch.Tensor, valid: torch.Tensor,
          shadow_valid: torch.Tensor, sigma: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """N at the image and at its shadow, one forward on the batch of both."""
    z = net(torch.cat([x, xs]), torch.cat([r_y, r_y]), torch.cat([valid, shadow_valid]), torch.cat([sigma, sigma]))
    return z[: x.shape[0]], z[x.shape[0]:]


@torch.no_grad()
def start(net: PriorNet, y: torch.Tensor, valid: torch.Tensor, sigma: torch.Tensor, cfg: RefineConfig) -> Refinement:
    """Step 0: the classical floor for the image and its shadow, and E there. No net forward: the
    first step makes it, so the floor is published as soon as it exists."""
    held = holdout_mask(valid, cfg.holdout, cfg.seed)
    b = y.shape[0]
    floors = classical.floor(torch.cat([y, y]), torch.cat([valid, valid - held]), torch.cat([sigma, sigma]),
                             cfg.tv_per_sigma)
    x, xs = floors[:b], floors[b:]
    return Refinement(y, valid, sigma, x, held_out_error(xs, y, held), held, xs,
                      stalled=torch.zeros(b, dtype=torch.bool, device=y.device))


@torch.no_grad()
def step(net: PriorNet, r: Refinement, cfg: RefineConfig) -> Refinement:
    """One monotone step for every image of the batch (see the module docstring)."""
    shadow_valid = r.valid - r.held
    z, zs = (r.prior, r.shadow_prior) if r.fresh else _both(net, r.x, r.shadow, r.y, r.valid, shadow_valid, r.sigma)
    d = consistent(z, r.y, r.valid, r.sigma, cfg.prior_sigma) - r.x
    ds = consistent(zs, r.y, shadow_valid, r.sigma, cfg.prior_sigma) - r.shadow
    ts = torch.tensor(cfg.step_sizes, device=r.y.device)
    scored = [_gain_z(r.shadow, (r.shadow + float(t) * ds).clamp(0.0, 1.0), r.y, r.held) for t in ts]
    gains, zscores = torch.stack([g for g, _ in scored]), torch.stack([z for _, z in scored])
    gains = torch.where((zscores > cfg.min_z) & (gains > 0), gains, torch.zeros_like(gains))
    best_gain, best = gains.max(0)
    ok = best_gain > 0
    keep = ok.view(-1, 1, 1, 1)
    t = torch.where(ok, ts[best], torch.zeros_like(ts[best])).view(-1, 1, 1, 1)
    x = torch.where(keep, (r.x + t * d).clamp(0.0, 1.0), r.x)
    xs = torch.where(keep, (r.shadow + t * ds).clamp(0.0, 1.0), r.shadow)
    return replace(r, x=x, shadow=xs, prior=z, shadow_prior=zs, fresh=not bool(ok.any()),
                   energy=torch.where(ok, r.energy - best_gain, r.energy), steps=r.steps + 1, stalled=~ok)


def frame_shift(prev: torch.Tensor, new: torch.Tensor, max_shift: int) -> tuple[int, int]:
    """The integer (dy, dx) that best maps `prev` onto `new` (B x 3 x H x W, first image), by
    phase correlation of their luminance; (0, 0) past max_shift. Written with torch.fft since
    scikit-image (phase_cross_correlation) is not a core dependency."""
    a, b = prev[0].mean(0), new[0].mean(0)
    window = torch.outer(torch.hann_window(a.shape[0], periodic=False, dtype=a.dtype, device=a.device),
                         torch.hann_window(a.shape[1], periodic=False, dtype=a.dtype, device=a.device))
    fa, fb = torch.fft.rfft2((a - a.mean()) * window), torch.fft.rfft2((b - b.mean()) * window)
    cross = fb * fa.conj()
    corr = torch.fft.irfft2(cross / cross.abs().clamp_min(1e-12), s=a.shape)
    peak = int(corr.argmax())
    dy, dx = divmod(peak, a.shape[1])
    dy, dx = (dy - a.shape[0] if dy > a.shape[0] // 2 else dy), (dx - a.shape[1] if dx > a.shape[1] // 2 else dx)
    return (dy, dx) if max(abs(dy), abs(dx)) <= max_shift else (0, 0)


def _carried(prev: torch.Tensor, fallback: torch.Tensor, dy: int, dx: int) -> torch.Tensor:
    """prev shifted by (dy, dx); where the shift exposes a border, the fallback."""
    out = torch.roll(prev, shifts=(dy, dx), dims=(2, 3))
    keep = torch.zeros_like(out[:, :1])
    h, w = out.shape[2:]
    keep[:, :, max(dy, 0):h + min(dy, 0), max(dx, 0):w + min(dx, 0)] = 1.0
    return keep * out + (1 - keep) * fallback


@torch.no_grad()
def warm(prev: Refinement, r: Refinement, cfg: RefineConfig, max_shift: int) -> Refinement | None:
    """Start `r` (a fresh `start`) from the previous frame's estimate instead of the floor: the
    previous estimate and its shadow, aligned to the new frame (frame_shift) and made consistent
    with the new observation (T's blend, the old estimate as the prior). Taken only if it lowers
    E against the new frame's held pixels (the shadow's start, too, never saw them: it carries
    the previous frame's pixels, an independent observation); else None (start from the floor)."""
    if prev.y.shape != r.y.shape:
        return None
    dy, dx = frame_shift(prev.x, r.x, max_shift)
    shadow_valid = r.valid - r.held
    x = consistent(_carried(prev.x, r.x, dy, dx), r.y, r.valid, r.sigma, cfg.prior_sigma)
    xs = consistent(_carried(prev.shadow, r.shadow, dy, dx), r.y, shadow_valid, r.sigma, cfg.prior_sigma)
    energy = held_out_error(xs, r.y, r.held)
    gain, zscore = _gain_z(r.shadow, xs, r.y, r.held)
    if not bool(((gain > 0) & (zscore > cfg.min_z)).all()):
        return None
    return replace(r, x=x, shadow=xs, energy=energy)


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
