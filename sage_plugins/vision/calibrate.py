"""How the step rule's settings were picked: `python -m sage_plugins.vision.calibrate` (one thread).

Calibration crops: 128 x 128 windows of the TRAINING photos at seed 4242 (neither evaluate.py's
held-out crops, which are only read to report, nor its validation crops at seed 777), corrupted
with seed 4243. For each setting given as JSON (RefineConfig fields; default: a small sweep) it
prints, per condition, the mean PSNR after 0..--steps steps, how many crops fall below the floor
at any step, and the CPU milliseconds per step per image (batched).
"""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

import torch

from sage_plugins.vision import classical, refine
from sage_plugins.vision.data import TRAIN_PHOTOS, corrupt, quantise
from sage_plugins.vision.evaluate import JUDGED, crops
from sage_plugins.vision.images import psnr
from sage_plugins.vision.model import PRIOR, load_prior

CALIBRATION_SEED = 4242
SWEEP = ({}, {"prior_sigma": 0.04}, {"prior_sigma": 0.06}, {"holdout": 0.05}, {"holdout": 0.2},
         {"step_sizes": [0.25, 0.5, 1.0, 1.5, 2.0]})


@torch.no_grad()
def curve(net: torch.nn.Module, clean: torch.Tensor, cond: str, setting: dict[str, Any], steps: int) -> dict[str, Any]:
    """Mean PSNR per step, crops below the floor, CPU ms per step per image, for one setting."""
    y, valid = corrupt(clean, cond, CALIBRATION_SEED + 1)
    sigma = classical.trusted_sigma(classical.estimate_sigma(y, valid))
    cfg = refine.RefineConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in setting.items()})
    t0 = time.process_time()
    _, xs = refine.refine(net, y, valid, sigma, cfg, steps)
    cpu_ms = (time.process_time() - t0) * 1e3 / steps / clean.shape[0]
    p = torch.stack([psnr(quantise(x), clean) for x in xs])
    above = p - p[0]
    return {"psnr_db": [round(float(v), 2) for v in p.mean(1)], "crops_below_floor": int((above < 0).any(0).sum()),
            "worst_db": round(float(above.min()), 3), "cpu_ms_per_step_image": round(cpu_ms, 1)}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--per-photo", type=int, default=1)
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("settings", nargs="*", help="JSON objects of RefineConfig fields (default: the sweep)")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    net = load_prior(PRIOR)
    clean = crops(TRAIN_PHOTOS, args.per_photo, CALIBRATION_SEED)
    for setting in [json.loads(s) for s in args.settings] or list(SWEEP):
        for cond in JUDGED:
            print(f"{cond} {json.dumps(setting)}: {json.dumps(curve(net, clean, cond, setting, args.steps))}", flush=True)


if __name__ == "__main__":
    main()
