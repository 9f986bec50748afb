"""Train the vision plugin's prior net: `python -m sage_plugins.vision.train` (CPU, one thread, fixed seeds).

Images: 64 x 64 patches, 80% random crops of the training photos (near native scale: window side
64..128 px, mirrored, gain 0.8..1.2) and 20% generated scenes. Each is corrupted the way the plugin
meets frames: random dropped pixels (share 0.1..0.5), 8 x 8 block holes (share 0.05..0.3), Gaussian
noise (sigma 0.02..0.15), dropped pixels and noise together, or nothing, then quantised to uint8.
The noise level the net is told is the plugin's own blind estimate (classical.estimate_sigma), and
its first input is the plugin's classical floor. The loss follows the plugin's own trajectory for
`--unroll` steps (x0 = floor, x_k+1 = T(x_k), gradients cut between steps): the mean squared error
of every T(x_k) against the clean patch, plus a hinge on each image whose T(x_k) is worse than x_k
(teaches the net not to undo the step before). Writes prior.pt (fp16), then runs evaluate.py.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import numpy as np
import torch

from sage_plugins.vision import classical, refine
from sage_plugins.vision.data import (TRAIN_PHOTOS, add_noise, block_mask, drop_pixels, quantise, start_training,
                                      random_crops, scenes)
from sage_plugins.vision.images import psnr
from sage_plugins.vision.model import PRIOR, PriorNet, param_count, save_prior


def clean_batch(photos: list[torch.Tensor], n: int, size: int, rng: np.random.Generator) -> torch.Tensor:
    k = int(rng.binomial(n, 0.8))
    parts = [random_crops(photos, k, size, rng, min_side=size, max_side=2 * size)] if k else []
    if n - k:
        parts.append(scenes(n - k, size, rng))
    gain = torch.from_numpy(rng.uniform(0.8, 1.2, (n, 1, 1, 1)).astype(np.float32))
    return (torch.cat(parts) * gain).clamp(0.0, 1.0)


def corrupt_batch(x: torch.Tensor, rng: np.random.Generator, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """(observed, validity): per image one of dropped pixels, block holes, noise, dropped + noise, clean."""
    ys, vs = [], []
    for i in range(x.shape[0]):
        xi = x[i: i + 1]
        kind = rng.choice(5, p=[0.25, 0.25, 0.3, 0.1, 0.1])
        v = torch.ones_like(xi[:, :1])
        if kind in (0, 3):
            v = drop_pixels(xi, float(rng.uniform(0.1, 0.5)), g)
        elif kind == 1:
            v = block_mask(xi, float(rng.uniform(0.05, 0.3)), g)
        y = add_noise(xi, float(rng.uniform(0.02, 0.15)), g) if kind in (2, 3) else xi
        ys.append(quantise(y * v))
        vs.append(v)
    return torch.cat(ys), torch.cat(vs)


def trajectory_loss(net: PriorNet, clean: torch.Tensor, y: torch.Tensor, valid: torch.Tensor,
                    cfg: refine.RefineConfig, unroll: int, hinge: float) -> tuple[torch.Tensor, list[float]]:
    """Loss along the plugin's own steps and the mean PSNR at each (floor first)."""
    with torch.no_grad():
        sigma = classical.trusted_sigma(classical.estimate_sigma(y, valid))
        x = classical.floor(y, valid, sigma, cfg.tv_per_sigma)
    prev = (x - clean).square().flatten(1).mean(1)
    marks = [float(psnr(x, clean).mean())]
    loss = torch.zeros(())
    for _ in range(unroll):
        out = refine.consistent(net(x, y, valid, sigma), y, valid, sigma, cfg.prior_sigma)
        mse = (out - clean).square().flatten(1).mean(1)
        loss = loss + mse.mean() + hinge * torch.relu(mse - prev).mean()
        prev, x = mse.detach(), out.detach()
        marks.append(float(psnr(x, clean).mean()))
    return loss / unroll, marks


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--minutes", type=float, default=38.0,
                    help="wall-clock cap (the schedule runs over the steps, or this cap when it comes first)")
    ap.add_argument("--steps", type=int, default=4000,
                    help="Adam steps (the --minutes cap ends training early on a slower or busier machine)")
    ap.add_argument("--batch", type=int, default=12)
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--width", type=int, default=32)
    ap.add_argument("--mid-blocks", type=int, default=3)
    ap.add_argument("--unroll", type=int, default=2)
    ap.add_argument("--hinge", type=float, default=4.0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", type=Path, default=PRIOR)
    ap.add_argument("--no-eval", action="store_true")
    args = ap.parse_args(argv)

    rng, g, photos = start_training(args.seed, args.threads)
    net = PriorNet(args.width, args.mid_blocks)
    cfg = refine.RefineConfig()
    print(f"params {param_count(net):,}  training photos {len(photos)}", flush=True)
    opt = torch.optim.Adam(net.parameters(), lr=args.lr)
    budget = args.minutes * 60
    t0 = time.time()
    running: list[float] | None = None
    i = 0
    while i < args.steps and time.time() - t0 < budget:
        frac = max(i / args.steps, (time.time() - t0) / budget)  # cosine schedule over steps or the cap
        for grp in opt.param_groups:
            grp["lr"] = args.lr * min(1.0, (i + 1) / 50) * (0.03 + 0.97 * 0.5 * (1 + math.cos(math.pi * frac)))
        clean = clean_batch(photos, args.batch, args.size, rng)
        y, valid = corrupt_batch(clean, rng, g)
        loss, marks = trajectory_loss(net, clean, y, valid, cfg, args.unroll, args.hinge)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
        opt.step()
        running = marks if running is None else [0.98 * r + 0.02 * m for r, m in zip(running, marks)]
        if i % 50 == 0:
            print(f"step {i:5d}  loss {float(loss.detach()):.5f}  PSNR floor -> steps " +
                  " -> ".join(f"{m:.2f}" for m in running) + f"  {time.time() - t0:.0f}s", flush=True)
        i += 1
    wall = time.time() - t0
    meta = {"steps": i, "batch": args.batch, "size": args.size, "lr": args.lr, "unroll": args.unroll,
            "hinge": args.hinge, "seed": args.seed, "threads": args.threads, "train_photos": list(TRAIN_PHOTOS),
            "wall_s": round(wall, 1), "params": param_count(net),
            "final_train_psnr_db": [round(m, 2) for m in (running or [])]}
    save_prior(net, args.out, meta)
    size_mb = args.out.stat().st_size / 1e6
    print(f"wrote {args.out} ({size_mb:.2f} MB) after {wall:.0f}s: {json.dumps(meta)}", flush=True)
    if not args.no_eval:
        from sage_plugins.vision import evaluate

        evaluate.main([])


if __name__ == "__main__":
    main()
