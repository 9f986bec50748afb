"""What vision's learned steps would do on the demo camera's frames: why `--demo` gets ~1 step.

`benchmarks/demo_steps.py` reads a median of 1 vision step per result in `sage-runtime --demo`
(issue 15's bar is 3). This asks whether that is the energy being too cautious or the steps not
helping: the demo's own camera generator (sage_plugins.demo.Camera: a disc over a colour gradient,
pixel noise sigma 0.04, now and then a block of dropped pixels) is rendered with and without its
noise, and each frame is restored three ways, scored against the clean frame:
- `floor`: the classical step 0 (harmonic fill + TV at the estimated sigma), what the plugin
  publishes when no step is accepted;
- `plugin`: the plugin's own refinement (held-out energy decides, up to max_steps);
- `forced_k`: k full steps (t = 1) of the prior net with the data blend, the energy ignored.
Also: how many of the plugin's steps were accepted, and how many of those raised the PSNR.
Writes benchmarks/results/vision_demo_frames.json.

Run: .venv/bin/python benchmarks/bench_vision_demo_frames.py [--frames 60]
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import machine, save  # noqa: E402
from sage_plugins.demo import Camera  # noqa: E402
from sage_plugins.vision import classical, refine  # noqa: E402
from sage_plugins.vision.config import VisionConfig  # noqa: E402
from sage_plugins.vision.images import split_frame, to_working  # noqa: E402
from sage_plugins.vision.model import PRIOR, load_prior  # noqa: E402

FORCED = 4


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(10 * torch.log10(1.0 / (a - b).square().mean()))


def clean_frame(cam: Camera, k: int) -> torch.Tensor:
    """Camera.frame(k) without its noise and dropouts (1 x 3 x H x W in [0, 1])."""
    cy, cx = cam.position(k)
    disc = (cam.yy - cy) ** 2 + (cam.xx - cx) ** 2 < cam.radius ** 2
    img = np.where(disc[..., None], cam.colour, cam.background).astype(np.float32)
    return torch.from_numpy(img).permute(2, 0, 1)[None]


def restore(net: torch.nn.Module, frame: np.ndarray, clean: torch.Tensor, cfg: refine.RefineConfig,
            max_steps: int) -> dict[str, float | int]:
    image, mask, _ = split_frame(torch.from_numpy(frame))
    y, valid = to_working(image, mask, tuple(image.shape[:2]), "cpu")
    sigma = classical.trusted_sigma(classical.estimate_sigma(y, valid))
    r = refine.start(net, y, valid, sigma, cfg)
    row: dict[str, float | int] = {"sigma": float(sigma[0]), "floor": psnr(r.x, clean), "accepted": 0, "helped": 0}
    before = row["floor"]
    for _ in range(max_steps):
        r = refine.step(net, r, cfg)
        if bool(r.stalled[0]):
            break
        now = psnr(r.x, clean)
        row["accepted"] += 1
        row["helped"] += int(now > before)
        before = now
    row["plugin"] = psnr(r.x, clean)
    x = refine.start(net, y, valid, sigma, cfg).x
    with torch.no_grad():
        for k in range(1, FORCED + 1):
            x = refine.consistent(net(x, y, valid, sigma), y, valid, sigma, cfg.prior_sigma)
            row[f"forced_{k}"] = psnr(x, clean)
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--frames", type=int, default=60)
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args()
    torch.manual_seed(0)
    torch.set_num_threads(1)
    opts = VisionConfig()
    cfg = refine.RefineConfig(prior_sigma=opts.prior_sigma, holdout=opts.holdout, min_z=opts.min_z,
                              tv_per_sigma=opts.tv_per_sigma)
    net = load_prior(PRIOR, "cpu")
    cam = Camera(np.random.default_rng(args.seed))
    rows = [restore(net, cam.frame(k), clean_frame(cam, k), cfg, opts.max_steps) for k in range(args.frames)]
    keys = ["floor", "plugin"] + [f"forced_{k}" for k in range(1, FORCED + 1)]
    summary = {k: round(statistics.fmean(r[k] for r in rows), 3) for k in keys}
    summary.update({
        "frames": len(rows), "sigma_mean": round(statistics.fmean(r["sigma"] for r in rows), 4),
        "steps_accepted": sum(int(r["accepted"]) for r in rows),
        "accepted_steps_that_helped": sum(int(r["helped"]) for r in rows),
        "frames_where_forced_1_beats_floor": sum(r["forced_1"] > r["floor"] for r in rows),
    })
    out = save("vision_demo_frames", {"machine": machine(), "args": vars(args), "psnr_db_mean": summary,
                                      "rows": [{k: round(float(v), 3) for k, v in r.items()} for r in rows]})
    print(summary)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
