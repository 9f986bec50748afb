"""The ablations behind the model card's noise diagnosis: `python -m sage_plugins.vision.ablation`.

Two questions the README's "Diagnosis" section answers with these figures. Both use the validation
crops of `evaluate.py` (training photos, seed 777; the held-out photos are used only where a
setting is already fixed):

1. `data-scale`: is the noise gain lost to fitting pixel-level noise? The data term is compared
   after k x k average pooling of the masked residual (the noise sigma falls by k), everything else
   as shipped. If pixel noise were what the latent absorbs, a coarser data term would gain more.
2. `classic`: how does the refined output compare with a classical denoiser on the same crops?
   Total-variation denoising (scikit-image, a training-only dependency) with its weight picked on
   validation, then measured on the held-out crops next to step 0 and the refined output.

Neither changes the plugin: the coarse energy is swapped in only inside this script.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any
from unittest import mock

import numpy as np
import torch
import torch.nn.functional as F

from sage_plugins.vision import refine
from sage_plugins.vision.evaluate import HELD_OUT_PHOTOS, TRAIN_PHOTOS, VALIDATION_SEED, corrupt, crops, trajectory
from sage_plugins.vision.images import psnr
from sage_plugins.vision.model import WEIGHTS, ConvAutoencoder, load_pretrained

MARKS = (0, 5, 10, 20, 30, 50)


Energy = Callable[[ConvAutoencoder, torch.Tensor, torch.Tensor, torch.Tensor, float],
                  tuple[torch.Tensor, torch.Tensor]]


def coarse_energy(k: int) -> Energy:
    """E(z) with the masked squared error measured after k x k average pooling of the residual."""

    def energy_of(model: ConvAutoencoder, z: torch.Tensor, x: torch.Tensor, valid: torch.Tensor,
                  lam: float) -> tuple[torch.Tensor, torch.Tensor]:
        recon = model.decode(z)
        pooled_valid = F.avg_pool2d(valid, k)
        residual = F.avg_pool2d((recon - x) * valid, k) / pooled_valid.clamp_min(1e-6)
        n = (pooled_valid.sum(dim=(1, 2, 3)) * recon.shape[1]).clamp_min(1e-6)
        data = (pooled_valid * residual.square()).sum(dim=(1, 2, 3)) / n
        return data + lam * z.square().mean(dim=(1, 2, 3)), recon

    return energy_of


def data_scale(model: ConvAutoencoder, scales: list[int]) -> dict[str, Any]:
    clean = crops(TRAIN_PHOTOS, 2, seed=VALIDATION_SEED)
    out: dict[str, Any] = {"marks": list(MARKS)}
    for k in scales:
        row = {}
        with mock.patch.object(refine, "energy_of", coarse_energy(k)):
            for condition in ("noise10", "drop30", "clean"):
                traj = trajectory(model, clean, condition, VALIDATION_SEED + 1, refine.RefineConfig())
                row[condition] = [round(traj[i], 2) for i in MARKS]
        out[f"pool{k}"] = row
        print(f"data term pooled {k}x{k}: {json.dumps(row)}", flush=True)
    return out


def _tv(x: torch.Tensor, weight: float) -> torch.Tensor:
    from skimage.restoration import denoise_tv_chambolle

    arr = x.permute(0, 2, 3, 1).numpy().astype(np.float64)
    den = np.stack([denoise_tv_chambolle(a, weight=weight, channel_axis=-1) for a in arr])
    return torch.from_numpy(den).permute(0, 3, 1, 2).float()


def classic(model: ConvAutoencoder, weights: list[float], steps: int = 50) -> dict[str, Any]:
    val = crops(TRAIN_PHOTOS, 2, seed=VALIDATION_SEED)
    xv, _ = corrupt(val, "noise10", VALIDATION_SEED + 1)
    by_weight = {w: float(psnr(_tv(xv, w), val).mean()) for w in weights}
    best = max(by_weight, key=by_weight.__getitem__)
    print(f"TV weight on validation: {json.dumps({f'{w:g}': round(p, 2) for w, p in by_weight.items()})}"
          f" -> {best:g}", flush=True)
    test = crops(HELD_OUT_PHOTOS, 16, seed=2024)
    x, _ = corrupt(test, "noise10", VALIDATION_SEED + 1)
    traj = trajectory(model, test, "noise10", VALIDATION_SEED + 1, refine.RefineConfig(), steps=steps)
    row = {"input": round(float(psnr(x, test).mean()), 2), "tv": round(float(psnr(_tv(x, best), test).mean()), 2),
           "tv_weight": best, "step0": round(traj[0], 2), f"refined_{steps}": round(traj[steps], 2)}
    print(f"held-out noise sigma 0.1, {test.shape[0]} crops: {json.dumps(row)}", flush=True)
    return row


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", choices=("data-scale", "classic"), help="run one of the two (default: both)")
    ap.add_argument("--weights", type=Path, default=WEIGHTS)
    ap.add_argument("--scales", type=int, nargs="+", default=[1, 2, 4, 8])
    ap.add_argument("--tv-weights", type=float, nargs="+", default=[0.02, 0.04, 0.06, 0.08, 0.12])
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    which = [args.only] if args.only else ["data-scale", "classic"]
    model = load_pretrained(args.weights)
    out: dict[str, Any] = {}
    if "data-scale" in which:
        out["data_scale"] = data_scale(model, args.scales)
    if "classic" in which:
        out["classic"] = classic(model, args.tv_weights)
    return out


if __name__ == "__main__":
    main()
