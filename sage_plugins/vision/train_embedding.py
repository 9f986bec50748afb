"""Train the embedding autoencoder (weights.pt): `python -m sage_plugins.vision.train_embedding`.

Its encoder gives the plugin's 256-d embedding (the code of the restored image, pooled); the
restoration itself is the prior net's (train.py). Unchanged from the earlier latent-refinement
design, so the embedding keeps its meaning for memory and fusion. CPU, one thread, fixed seeds.

Images: generated scenes + training photos with random crops, scales and mirroring. Objective
(default `denoise`): the encoder sees each image clean, with Gaussian noise (sigma ~ U(0, 0.15)) or
with a share ~ U(0, 0.5) of its pixels dropped and mean-filled, a third each; the decoder must give
back the CLEAN image. Variational by default (`--kl 0.02`): the encoder gives a mean and a
log-variance, the decoder sees a sample, and the KL to N(0, I) makes mean(z^2) in the refinement
energy the model's own prior. 5,000 Adam steps, widths 32/64/128, fixed seeds, one thread (2,599 s).
Writes weights.pt.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import numpy as np
import torch

from sage_plugins.vision.data import TRAIN_PHOTOS, random_crops, scenes, start_training
from sage_plugins.vision.images import fill_invalid, psnr
from sage_plugins.vision.model import WEIGHTS, ConvAutoencoder, param_count, save_weights


def batch(photos: list[torch.Tensor], n: int, size: int, photo_share: float, rng: np.random.Generator) -> torch.Tensor:
    k = int(rng.binomial(n, photo_share))
    parts = [random_crops(photos, k, size, rng)] if k else []
    if n - k:
        parts.append(scenes(n - k, size, rng))
    x = torch.cat(parts)
    gain = torch.from_numpy(rng.uniform(0.8, 1.2, (n, 1, 1, 1)).astype(np.float32))
    return (x * gain).clamp(0.0, 1.0)


def corrupt_batch(x: torch.Tensor, rng: np.random.Generator, g: torch.Generator,
                  max_sigma: float, max_drop: float) -> torch.Tensor:
    """Denoising objective's encoder input: per image, a third stay clean, a third get Gaussian
    noise sigma ~ U(0, max_sigma) (clipped), a third lose a share ~ U(0, max_drop) of pixels, filled
    with the mean of the valid ones (what the plugin's encoder sees). The target stays clean."""
    n = x.shape[0]
    kind = torch.from_numpy(rng.integers(0, 3, n))
    sigma = torch.from_numpy(rng.uniform(0, max_sigma, n).astype(np.float32)).view(n, 1, 1, 1)
    share = torch.from_numpy(rng.uniform(0, max_drop, n).astype(np.float32)).view(n, 1, 1, 1)
    noisy = (x + sigma * torch.randn(x.shape, generator=g)).clamp(0.0, 1.0)
    valid = (torch.rand(n, 1, *x.shape[2:], generator=g) >= share).float()
    dropped = fill_invalid(x, valid)
    k = kind.view(n, 1, 1, 1)
    return torch.where(k == 1, noisy, torch.where(k == 2, dropped, x))


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--steps", type=int, default=5000)
    ap.add_argument("--batch", type=int, default=24)
    ap.add_argument("--lr", type=float, default=1.5e-3)
    ap.add_argument("--beta", type=float, default=1e-4, help="weight of mean(z^2) during training (--kl 0)")
    ap.add_argument("--kl", type=float, default=0.02,
                    help="> 0: variational (sampled latent, KL to N(0, I) per pixel value at this weight)")
    ap.add_argument("--photo-share", type=float, default=0.75)
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--latent-ch", type=int, default=16)
    ap.add_argument("--widths", type=int, nargs="+", default=[32, 64, 128])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--objective", choices=("denoise", "clean"), default="denoise",
                    help="denoise: corrupted encoder input (noise / dropped pixels), clean target; clean: "
                         "clean input and target")
    ap.add_argument("--max-sigma", type=float, default=0.15)
    ap.add_argument("--max-drop", type=float, default=0.5)
    ap.add_argument("--out", type=Path, default=WEIGHTS)
    args = ap.parse_args(argv)

    rng, g, photos = start_training(args.seed, args.threads)
    model = ConvAutoencoder(size=args.size, latent_ch=args.latent_ch, widths=tuple(args.widths),
                            variational=args.kl > 0)
    print(f"params {param_count(model):,}  training photos {len(photos)}", flush=True)
    opt = torch.optim.Adam(model.parameters(), lr=args.lr)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda i: min(1.0, (i + 1) / 50) * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * i / args.steps))))
    t0 = time.time()
    running = None
    for i in range(args.steps):
        x = batch(photos, args.batch, args.size, args.photo_share, rng)
        z, logvar = model.posterior(
            corrupt_batch(x, rng, g, args.max_sigma, args.max_drop) if args.objective == "denoise" else x)
        if logvar is None:
            recon = model.decode(z)
            prior = args.beta * z.square().mean()
        else:  # reparameterised sample; KL(q(z|x) || N(0, I)) per pixel value of the batch
            recon = model.decode(z + (0.5 * logvar).exp() * torch.randn(z.shape, generator=g))
            prior = args.kl * 0.5 * (z.square() + logvar.exp() - logvar - 1).sum() / x.numel()
        rec = (recon - x).square().mean()
        loss = rec + prior
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        p = float(psnr(recon.detach(), x).mean())
        running = p if running is None else 0.95 * running + 0.05 * p
        if i % 50 == 0 or i == args.steps - 1:
            print(f"step {i:5d}  loss {float(loss.detach()):.5f}  train PSNR {running:.2f} dB  |z|rms "
                  f"{float(z.detach().square().mean().sqrt()):.3f}  {time.time() - t0:.0f}s", flush=True)
    wall = time.time() - t0
    meta = {"steps": args.steps, "batch": args.batch, "lr": args.lr, "seed": args.seed,
            **({"kl": args.kl} if args.kl > 0 else {"beta": args.beta}),
            "photo_share": args.photo_share, "objective": args.objective,
            **({"max_sigma": args.max_sigma, "max_drop": args.max_drop} if args.objective == "denoise" else {}),
            "train_photos": list(TRAIN_PHOTOS), "wall_s": round(wall, 1),
            "threads": args.threads, "params": param_count(model), "final_train_psnr_db": round(running or 0.0, 2)}
    save_weights(model, args.out, meta)
    size_mb = args.out.stat().st_size / 1e6
    print(f"wrote {args.out} ({size_mb:.2f} MB) after {wall:.0f}s: {json.dumps(meta)}", flush=True)


if __name__ == "__main__":
    main()
