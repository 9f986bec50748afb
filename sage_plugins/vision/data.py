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


def crop(photo: torch.Tensor, size: int, side: int, top: int, left: int, flip: bool) -> torch.Tensor:
    """A side x side window resized (antialiased) to size x size, optionally mirrored."""
    win = photo[:, top: top + side, left: left + side][None]
    if side != size:
        win = F.interpolate(win, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    win = win.clamp(0.0, 1.0)
    return win.flip(-1) if flip else win


def random_crops(photos: list[torch.Tensor], n: int, size: int, rng: np.random.Generator,
                 min_side: int = 40) -> torch.Tensor:
    """n crops at random photo, scale (log-uniform side from min_side to the photo's short side),
    position and mirroring."""
    out = []
    for _ in range(n):
        p = photos[rng.integers(len(photos))]
        h, w = p.shape[1:]
        side = int(round(math.exp(rng.uniform(math.log(min_side), math.log(min(h, w))))))
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
