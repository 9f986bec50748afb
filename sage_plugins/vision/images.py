"""Image plumbing shared by the plugin, training and evaluation: frames to the working size (with
a validity mask), back to uint8, PSNR and the per-tile error map. Pure torch, no I/O.

Validity convention: a frame with 2 or 4 channels (gray+alpha, RGB+alpha) carries a validity
mask in its last channel, 0 = dropped/corrupted pixel, anything else = valid. The mask arrives
atomically with the pixels it describes, so no pairing of separate frames is needed.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

#: A working pixel is valid when at least this share of the source pixels it averages were valid.
MIN_VALID_SHARE = 0.5


def split_frame(data: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None, int]:
    """(H x W x C image, H x W mask or None, colour channels 1 or 3) from a frame tensor of shape
    H x W, H x W x {1, 3} or H x W x {2, 4} (last channel = validity)."""
    if data.dim() == 2:
        data = data[..., None]
    if data.dim() != 3 or data.shape[-1] not in (1, 2, 3, 4) or min(data.shape[:2]) < 1:
        raise ValueError(f"vision: expected H x W x {{1,2,3,4}} image, got shape {tuple(data.shape)}")
    c = data.shape[-1]
    if c in (2, 4):
        return data[..., : c - 1], data[..., c - 1] != 0, c - 1
    return data, None, c


def is_image(data: object) -> bool:
    """Whether a frame payload looks like an image this plugin can take (not a 1-D vector)."""
    if not isinstance(data, torch.Tensor) or data.dim() not in (2, 3):
        return False
    if data.dim() == 3 and data.shape[-1] not in (1, 2, 3, 4):
        return False
    return data.shape[0] >= 2 and data.shape[1] >= 2 and (data.dtype == torch.uint8 or data.is_floating_point())


def working_hw(h: int, w: int, max_side: int) -> tuple[int, int]:
    """The frame's own size, or scaled down (aspect kept) so its longer side is max_side."""
    if max(h, w) <= max_side:
        return h, w
    k = max_side / max(h, w)
    return max(2, round(h * k)), max(2, round(w * k))


def to_working(image: torch.Tensor, mask: torch.Tensor | None, hw: tuple[int, int] | int,
               device: torch.device | str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
    """(1 x 3 x H x W float in [0, 1], 1 x 1 x H x W validity in {0, 1}) at the working size hw
    (an int: square).

    uint8 is scaled by 1/255, float images are taken as [0, 1]. Gray is repeated to RGB. The
    image is resized (antialiased) with invalid pixels excluded from every average.
    """
    hw = (hw, hw) if isinstance(hw, int) else tuple(hw)
    x = image.to(device=device, dtype=torch.float32)
    if image.dtype == torch.uint8:
        x = x / 255.0
    x = x.permute(2, 0, 1)[None].clamp(0.0, 1.0)
    if x.shape[1] == 1:
        x = x.expand(1, 3, *x.shape[2:])
    m = torch.ones_like(x[:, :1]) if mask is None else mask.to(device=device, dtype=torch.float32)[None, None]
    x = torch.nan_to_num(x) * m
    if x.shape[-2:] != hw:
        xs = F.interpolate(x, size=hw, mode="bilinear", antialias=True, align_corners=False)
        ms = F.interpolate(m, size=hw, mode="bilinear", antialias=True, align_corners=False)
        x = xs / ms.clamp_min(1e-6)
        m = (ms >= MIN_VALID_SHARE).float()
    return (x * m).clamp(0.0, 1.0), m


def fill_invalid(x: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Invalid pixels replaced by their image's per-channel mean over valid pixels (0.5 if none):
    what the encoder sees, since it was trained on complete images only."""
    n = valid.sum(dim=(2, 3), keepdim=True)
    mean = torch.where(n > 0, (x * valid).sum(dim=(2, 3), keepdim=True) / n.clamp_min(1), torch.full_like(n, 0.5))
    return x * valid + mean * (1 - valid)


def to_uint8(x: torch.Tensor, channels: int) -> torch.Tensor:
    """1 x 3 x H x W float -> H x W x channels uint8 on the CPU (gray = channel mean)."""
    img = x[0].detach().clamp(0.0, 1.0)
    if channels == 1:
        img = img.mean(dim=0, keepdim=True)
    return (img * 255.0).round().to(torch.uint8).permute(1, 2, 0).contiguous().cpu()


def psnr(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per-image PSNR in dB of images in [0, 1] (a is clamped, as a published uint8 image would be)."""
    mse = (a.clamp(0.0, 1.0) - b).square().flatten(1).mean(dim=1)
    return 10.0 * torch.log10(1.0 / mse.clamp_min(1e-10))


def error_map(estimate: torch.Tensor, y: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """H x W float32: squared difference between the prior's estimate and the observation, mean
    over colour channels, at valid pixels (0 at invalid ones): what the model does not explain
    (noise it removes, or surprise), for salience. (Against the published image it would be 0
    wherever observed pixels are kept exactly.)"""
    err = (estimate.clamp(0.0, 1.0) - y).square().mean(dim=1) * valid[:, 0]
    return err[0].detach().to("cpu", torch.float32)
