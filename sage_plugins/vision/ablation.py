"""What each part of a step is worth: `python -m sage_plugins.vision.ablation` (validation crops only).

On the validation crops of evaluate.py (training photos, seed 777), mean PSNR after 1 and after
BUDGET steps, for the shipped step and for steps with one part taken out:

- `no_acceptance`: x <- T(x) every step, whether or not E falls (no backtracking, no halting);
- `no_data_consistency`: x <- N(x), the net's raw estimate (observed pixels not put back);
- and the share of crops that end below the classical floor with each.

It changes nothing in the plugin; the variants exist only inside this script.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import torch

from sage_plugins.vision import classical, refine
from sage_plugins.vision.data import TRAIN_PHOTOS, corrupt, quantise
from sage_plugins.vision.evaluate import BUDGET, JUDGED, VALIDATION_SEED, crops
from sage_plugins.vision.images import psnr
from sage_plugins.vision.model import PRIOR, PriorNet, load_prior

Variant = Callable[[PriorNet, refine.Refinement, refine.RefineConfig], torch.Tensor]


def _no_acceptance(net: PriorNet, r: refine.Refinement, cfg: refine.RefineConfig) -> torch.Tensor:
    return refine.consistent(net(r.x, r.y, r.valid, r.sigma), r.y, r.valid, r.sigma, cfg.prior_sigma)


def _no_data_consistency(net: PriorNet, r: refine.Refinement, cfg: refine.RefineConfig) -> torch.Tensor:
    return net(r.x, r.y, r.valid, r.sigma).clamp(0.0, 1.0)


VARIANTS: dict[str, Variant | None] = {"shipped": None, "no_acceptance": _no_acceptance,
                                       "no_data_consistency": _no_data_consistency}


@torch.no_grad()
def trajectory(net: PriorNet, clean: torch.Tensor, y: torch.Tensor, valid: torch.Tensor, variant: Variant | None,
               cfg: refine.RefineConfig, steps: int = BUDGET) -> list[torch.Tensor]:
    """Per-crop PSNR after 0..steps steps of one variant."""
    sigma = classical.trusted_sigma(classical.estimate_sigma(y, valid))
    r = refine.start(net, y, valid, sigma, cfg)
    out = [psnr(quantise(r.x), clean)]
    for _ in range(steps):
        r = refine.step(net, r, cfg) if variant is None else replace(r, x=variant(net, r, cfg))
        out.append(psnr(quantise(r.x), clean))
    return out


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--per-photo", type=int, default=1)
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    net, cfg = load_prior(PRIOR), refine.RefineConfig()
    val = crops(TRAIN_PHOTOS, args.per_photo, VALIDATION_SEED)
    report: dict[str, Any] = {}
    for cond in JUDGED:
        y, valid = corrupt(val, cond, VALIDATION_SEED + 1)
        report[cond] = {}
        for name, variant in VARIANTS.items():
            traj = trajectory(net, val, y, valid, variant, cfg)
            mean = [round(float(t.mean()), 3) for t in traj]
            report[cond][name] = {"floor_db": mean[0], "step1_db": mean[1], "full_budget_db": mean[-1],
                                  "crops_ending_below_floor": int((traj[-1] < traj[0]).sum())}
        print(f"{cond}: {json.dumps(report[cond])}", flush=True)
    return report


if __name__ == "__main__":
    main()
