"""Training and evaluation images: generated scenes and the photographs inside scikit-image's wheel.

Photos are read straight from the installed package's data folder (never through skimage.data's
fetchers, which may download), so nothing leaves the machine. Three colour photos are held out of
training for evaluation. scikit-image is a training/evaluation dependency only; the plugin never
imports this module.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

#: Real photographs shipped inside the scikit-image wheel (file names in skimage/data).
TRAIN_PHOTOS = (
    "astronaut.png", "brick.png", "camera.png", "cell.png", "clock_motion.png", "coins.png", "grass.png",
    "gravel.png", "hubble_deep_field.jpg", "ihc.png", "moon.png", "motorcycle_left.png", "motorcycle_right.png",
    "page.png", "retina.jpg", "text.png",
)
HELD_OUT_PHOTOS = ("chelsea.png", "coffee.png", "rocket.jpg")


def photo_dir() -> Path:
    import skimage.data

    return Path(skimage.data.__file__).resolve().parent


def load_photos(names: tuple[str, ...], short_side: int | None = None) -> list[torch.Tensor]:
    """Each photo as a 3 x H x W float tensor in [0, 1] (gray repeated to RGB, alpha dropped),
    downscaled so its short side is at most `short_side` when given (cheaper random crops)."""
    import skimage.io

    out = []
    for name in names:
        a = np.asarray(skimage.io.imread(photo_dir() / name))
        if a.ndim == 2:
            a = np.repeat(a[..., None], 3, axis=2)
        t = torch.from_numpy(a[..., :3].astype(np.float32) / 255.0).permute(2, 0, 1).contiguous()
        if short_side and min(t.shape[1:]) > short_side:
            k = short_side / min(t.shape[1:])
            hw = (round(t.shape[1] * k), round(t.shape[2] * k))
            t = F.interpolate(t[None], size=hw, mode="bilinear", antialias=True, align_corners=False)[0].clamp(0, 1)
        out.append(t)
    return out


def start_training(seed: int, threads: int) -> tuple[np.random.Generator, torch.Generator, list[torch.Tensor]]:
    """What both training scripts begin with: torch threads and seeds, the numpy and torch
    generators their batches draw from, and the training photos at a 512-pixel short side."""
    torch.set_num_threads(threads)
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    g = torch.Generator().manual_seed(seed + 1)
    return rng, g, load_photos(TRAIN_PHOTOS, short_side=512)


def crop(photo: torch.Tensor, size: int, side: int, top: int, left: int, flip: bool) -> torch.Tensor:
    """A side x side window resized (antialiased) to size x size, optionally mirrored."""
    win = photo[:, top: top + side, left: left + side][None]
    if side != size:
        win = F.interpolate(win, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    win = win.clamp(0.0, 1.0)
    return win.flip(-1) if flip else win


def random_crops(photos: list[torch.Tensor], n: int, size: int, rng: np.random.Generator,
                 min_side: int = 40, max_side: int | None = None) -> torch.Tensor:
    """n crops at random photo, scale (log-uniform side from min_side to max_side or the photo's
    short side), position and mirroring."""
    out = []
    for _ in range(n):
        p = photos[rng.integers(len(photos))]
        h, w = p.shape[1:]
        hi = min(h, w, max_side or min(h, w))
        side = int(round(math.exp(rng.uniform(math.log(min(min_side, hi)), math.log(hi)))))
        top, left = int(rng.integers(h - side + 1)), int(rng.integers(w - side + 1))
        out.append(crop(p, size, side, top, left, bool(rng.integers(2))))
    return torch.cat(out)


def scenes(n: int, size: int, rng: np.random.Generator) -> torch.Tensor:
    """n generated scenes: a gradient background with smooth noise, then 2-7 shapes (rectangles,
    ellipses, half-plane wedges, stripes) in flat or shaded colours, lightly blurred."""
    yy, xx = np.meshgrid(np.linspace(0, 1, size), np.linspace(0, 1, size), indexing="ij")
    imgs = np.empty((n, 3, size, size), np.float32)
    for i in range(n):
        a = rng.uniform(0, 2 * math.pi)
        t = (np.cos(a) * xx + np.sin(a) * yy)
        t = (t - t.min()) / max(t.max() - t.min(), 1e-6)
        c0, c1 = rng.uniform(0, 1, 3), rng.uniform(0, 1, 3)
        img = c0[:, None, None] * (1 - t) + c1[:, None, None] * t
        low = rng.normal(0, 1, (3, 4, 4))
        img += 0.15 * rng.uniform() * _upsample(low, size)
        for _ in range(rng.integers(2, 8)):
            cx, cy = rng.uniform(0, 1, 2)
            rx, ry = rng.uniform(0.05, 0.4, 2)
            kind = rng.integers(4)
            if kind == 0:
                m = (np.abs(xx - cx) < rx) & (np.abs(yy - cy) < ry)
            elif kind == 1:
                m = ((xx - cx) / rx) ** 2 + ((yy - cy) / ry) ** 2 < 1
            elif kind == 2:
                b = rng.uniform(0, 2 * math.pi)
                m = (np.cos(b) * (xx - cx) + np.sin(b) * (yy - cy) > 0) & (((xx - cx) ** 2 + (yy - cy) ** 2) < rx)
            else:
                b, f = rng.uniform(0, 2 * math.pi), rng.uniform(4, 20)
                stripes = np.sin(f * (np.cos(b) * xx + np.sin(b) * yy)) > 0
                m = stripes & (np.abs(xx - cx) < rx) & (np.abs(yy - cy) < ry)
            col = rng.uniform(0, 1, 3)[:, None, None]
            shade = 1 + rng.uniform(-0.3, 0.3) * (xx - cx + yy - cy)
            img = np.where(m[None], col * shade[None], img)
        imgs[i] = img
    x = torch.from_numpy(imgs)
    k = rng.integers(0, 2)
    if k:
        x = F.avg_pool2d(F.pad(x, (1, 1, 1, 1), mode="replicate"), 3, stride=1) * 0.5 + x * 0.5
    return x.clamp(0.0, 1.0)


def _upsample(a: np.ndarray, size: int) -> np.ndarray:
    t = torch.from_numpy(a.astype(np.float32))[None]
    return F.interpolate(t, size=(size, size), mode="bicubic", align_corners=False)[0].numpy()


def drop_pixels(x: torch.Tensor, share: float, g: torch.Generator) -> torch.Tensor:
    """Validity mask (B x 1 x S x S) with `share` of the pixels dropped uniformly at random."""
    return (torch.rand(x.shape[0], 1, *x.shape[2:], generator=g) >= share).float()


def add_noise(x: torch.Tensor, sigma: float, g: torch.Generator) -> torch.Tensor:
    """Gaussian pixel noise, clipped to [0, 1] as a camera's output would be."""
    return (x + sigma * torch.randn(x.shape, generator=g)).clamp(0.0, 1.0)


def block_mask(x: torch.Tensor, share: float, g: torch.Generator, block: int = 8) -> torch.Tensor:
    """Validity mask with block x block holes covering `share` of each image: that share of the
    cells of a block grid (at a random offset, so holes do not sit on the frame's own grid)."""
    b, _, h, w = x.shape
    gh, gw = -(-h // block) + 1, -(-w // block) + 1
    k = int(round(share * h * w / block ** 2))
    out = torch.ones(b, 1, h, w)
    for i in range(b):
        cells = torch.zeros(gh * gw)
        cells[torch.randperm(gh * gw, generator=g)[:k]] = 1
        holes = cells.view(1, 1, gh, gw).repeat_interleave(block, 2).repeat_interleave(block, 3)
        oy, ox = (int(v) for v in torch.randint(0, block, (2,), generator=g))
        out[i] = 1 - holes[0, :, oy: oy + h, ox: ox + w]
    return out


def quantise(x: torch.Tensor) -> torch.Tensor:
    """To uint8 levels, as a camera frame arrives."""
    return (x.clamp(0.0, 1.0) * 255).round() / 255


#: The judged corruptions: (dropped share, block holes share, noise sigma).
CONDITIONS = {"drop30": (0.3, 0.0, 0.0), "blocks20": (0.0, 0.2, 0.0), "noise05": (0.0, 0.0, 0.05),
              "noise10": (0.0, 0.0, 0.1), "clean": (0.0, 0.0, 0.0)}


def corrupt(clean: torch.Tensor, condition: str, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(observed B x 3 x H x W quantised to uint8 levels, validity B x 1 x H x W) for a named condition."""
    drop, blocks, sigma = CONDITIONS[condition]
    g = torch.Generator().manual_seed(seed)
    valid = torch.ones_like(clean[:, :1])
    if drop:
        valid = drop_pixels(clean, drop, g)
    if blocks:
        valid = block_mask(clean, blocks, g)
    y = add_noise(clean, sigma, g) if sigma else clean
    return quantise(y * valid), valid
