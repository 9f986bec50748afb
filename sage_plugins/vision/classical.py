"""The classical floor the plugin starts from (step 0), in batched torch, no I/O.

- `estimate_sigma`: the noise level, blind, from the finest Haar diagonal band (median absolute
  deviation / 0.6745 over 2 x 2 blocks whose four pixels are valid), as scikit-image's
  `estimate_sigma` does with wavelets.
- `fill_holes`: harmonic inpainting of invalid pixels (each is the mean of its four neighbours),
  started from a push-pull normalized-convolution pyramid so a few Jacobi sweeps converge even in
  8 x 8 holes. Valid pixels are untouched.
- `tv_denoise`: Chambolle's total-variation projection (the algorithm of scikit-image's
  `denoise_tv_chambolle`, per channel), weight proportional to sigma.

Why not scikit-image's biharmonic inpainting or non-local means here: they take tens to hundreds of
milliseconds at 128 x 128 on this CPU (measured in evaluate.py, where they are the baselines); the
floor must fit in `init_state` at the daemon's frame rates.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

#: Noise below this (in [0, 1] units, 2.5 grey levels) is not told apart from texture by the
#: estimator: such pixels are trusted as observed (see `trusted_sigma`).
TRUST_SIGMA = 0.01


def estimate_sigma(y: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Per-image noise standard deviation (B) of y (B x C x H x W in [0, 1]).

    The finest Haar diagonal band holds the noise plus the image's own fine texture, and texture
    is local while noise is everywhere: so the band's mean |coefficient| is taken per 16 x 16 pixel
    block (2 x 2 groups of pixels all valid and none saturated, which clipping would quieten),
    and the low quantile LOW_Q over blocks, scaled so pure Gaussian noise reads true, is the
    estimate."""
    h, w = (y.shape[2] // 2) * 2, (y.shape[3] // 2) * 2
    y, v = y[:, :, :h, :w], valid[:, :, :h, :w]
    a, b, c, d = y[:, :, 0::2, 0::2], y[:, :, 0::2, 1::2], y[:, :, 1::2, 0::2], y[:, :, 1::2, 1::2]
    hh = ((a - b - c + d) / 2).abs()
    quad = torch.stack([a, b, c, d])
    ok = ((v[:, :, 0::2, 0::2] * v[:, :, 0::2, 1::2] * v[:, :, 1::2, 0::2] * v[:, :, 1::2, 1::2] > 0)
          & (quad > 0).all(0) & (quad < 1).all(0)).float()
    num = F.avg_pool2d(hh * ok, 8, ceil_mode=True).mean(1)
    den = F.avg_pool2d(ok, 8, ceil_mode=True).mean(1)
    out = torch.zeros(y.shape[0], device=y.device)
    for i in range(y.shape[0]):
        good = den[i] >= 0.1
        if int(good.sum()) >= 4:
            out[i] = torch.quantile((num[i][good] / den[i][good]), LOW_Q) * LOW_Q_SCALE
    return out


#: Quantile of the per-block estimates, and the factor that makes it unbiased on pure Gaussian
#: noise (measured on 64 x 64 and 128 x 128 noise images: 0.76 without and 0.72 with 30% dropped
#: pixels; mean |N(0, 1)| is sqrt(2 / pi), the quantile sits below it).
LOW_Q = 0.2
LOW_Q_SCALE = 1.31


def trusted_sigma(sigma: torch.Tensor) -> torch.Tensor:
    """Estimates under TRUST_SIGMA become 0 (observed pixels kept exactly)."""
    return torch.where(sigma < TRUST_SIGMA, torch.zeros_like(sigma), sigma)


def _push_pull(x: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Normalized-convolution pyramid: coarser levels average valid pixels, finer levels take the
    coarser estimate where they have no valid pixel."""
    if min(x.shape[-2:]) < 2 or bool((valid > 0).all()):
        return x
    num = F.avg_pool2d(x * valid, 2, ceil_mode=True)
    den = F.avg_pool2d(valid, 2, ceil_mode=True)
    coarse = _push_pull(num / den.clamp_min(1e-6), (den > 0).float())
    up = F.interpolate(coarse, scale_factor=2, mode="bilinear", align_corners=False)[..., :x.shape[2], :x.shape[3]]
    return x * valid + up * (1 - valid)


def fill_holes(x: torch.Tensor, valid: torch.Tensor, sweeps: int = 30) -> torch.Tensor:
    """Harmonic inpainting: invalid pixels of x (B x C x H x W) from the valid ones; an image with no
    valid pixel becomes mid-grey."""
    none = valid.flatten(1).sum(1) == 0
    out = _push_pull(x * valid, valid)
    if bool((valid > 0).all()):
        return out
    hole = 1 - valid
    for _ in range(sweeps):
        p = F.pad(out, (1, 1, 1, 1), mode="replicate")
        avg = (p[..., :-2, 1:-1] + p[..., 2:, 1:-1] + p[..., 1:-1, :-2] + p[..., 1:-1, 2:]) / 4
        out = out + hole * (avg - out)
    return torch.where(none.view(-1, 1, 1, 1), torch.full_like(out, 0.5), out)


def tv_denoise(y: torch.Tensor, weight: torch.Tensor, iters: int = 30) -> torch.Tensor:
    """Chambolle TV denoising of each channel; weight is per image (B), 0 leaves an image as is."""
    wgt = weight.view(-1, 1, 1, 1).clamp_min(1e-8)
    px, py = torch.zeros_like(y), torch.zeros_like(y)
    out = y
    tau = 0.25
    for _ in range(iters):
        div = px - F.pad(px[..., :, :-1], (1, 0)) + py - F.pad(py[..., :-1, :], (0, 0, 1, 0))
        out = y - div
        gx = F.pad(out[..., :, 1:] - out[..., :, :-1], (0, 1))
        gy = F.pad(out[..., 1:, :] - out[..., :-1, :], (0, 0, 0, 1))
        norm = 1 + (tau / wgt) * (gx.square() + gy.square()).sqrt()
        px, py = (px - tau * gx) / norm, (py - tau * gy) / norm
    return torch.where(weight.view(-1, 1, 1, 1) > 0, out, y)


def floor(y: torch.Tensor, valid: torch.Tensor, sigma: torch.Tensor, tv_per_sigma: float = 0.9) -> torch.Tensor:
    """Step 0: holes filled harmonically, then TV-denoised at weight tv_per_sigma * sigma (nothing
    is denoised where sigma is 0, so observed pixels stay as they are)."""
    return tv_denoise(fill_holes(y, valid), tv_per_sigma * sigma).clamp(0.0, 1.0)
