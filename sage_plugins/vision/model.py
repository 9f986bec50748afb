"""The vision plugin's convolutional autoencoder and how its shipped weights are loaded.

A 64x64 RGB image in [0, 1] maps to a 16x16x16 latent (4,096 numbers, a third of the pixel
values) and back. A variational model's encoder also gives a log-variance (used in training only;
refinement starts from the mean). No normalisation layers, so every image in a batch is
independent (batched refinement in evaluation gives the same per-image result as the plugin's
single-image path). The decoder output is linear (not squashed):
refinement takes gradients through it, and a sigmoid would flatten them at saturated pixels.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

WEIGHTS = Path(__file__).resolve().parent / "weights.pt"


def _down(cin: int, cout: int, refine: bool) -> nn.Sequential:
    layers = [nn.Conv2d(cin, cout, 4, 2, 1), nn.SiLU()]
    return nn.Sequential(*layers, nn.Conv2d(cout, cout, 3, 1, 1), nn.SiLU()) if refine else nn.Sequential(*layers)


def _up(cin: int, cout: int, refine: bool) -> nn.Sequential:
    layers = [nn.ConvTranspose2d(cin, cout, 4, 2, 1), nn.SiLU()]
    return nn.Sequential(*layers, nn.Conv2d(cout, cout, 3, 1, 1), nn.SiLU()) if refine else nn.Sequential(*layers)


class ConvAutoencoder(nn.Module):
    """size x size x 3 image <-> latent_ch x size/2^k x size/2^k latent (k = len(widths) - 1)."""

    def __init__(self, size: int = 64, latent_ch: int = 16, widths: tuple[int, ...] = (32, 64, 128),
                 variational: bool = False) -> None:
        super().__init__()
        self.size, self.latent_ch, self.widths, self.variational = size, latent_ch, tuple(widths), variational
        w = self.widths  # channels at full, 1/2, 1/4 (and 1/8) resolution: len(widths) - 1 halvings
        n = len(w) - 1
        # Full resolution is the costly one: a single conv there, extra 3x3 convs only at lower ones.
        self.encoder = nn.Sequential(
            nn.Conv2d(3, w[0], 3, 1, 1), nn.SiLU(),
            *[_down(w[i], w[i + 1], i + 1 < n or n < 3) for i in range(n)],
            nn.Conv2d(w[n], 2 * latent_ch if variational else latent_ch, 1),
        )
        self.decoder = nn.Sequential(
            nn.Conv2d(latent_ch, w[n], 3, 1, 1), nn.SiLU(),
            *[_up(w[i], w[i - 1], i > 1) for i in range(n, 0, -1)],
            nn.Conv2d(w[0], 3, 3, 1, 1),
        )

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        side = self.size >> (len(self.widths) - 1)
        return (self.latent_ch, side, side)

    def posterior(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(mean, log-variance) of q(z|x) for a variational model; (code, None) otherwise."""
        h = self.encoder(x)
        return (h[:, :self.latent_ch], h[:, self.latent_ch:]) if self.variational else (h, None)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """The code refinement starts from: the posterior mean of a variational model."""
        return self.posterior(x)[0]

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return self.decoder(z)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decode(self.encode(x))

    def hparams(self) -> dict[str, Any]:
        return {"size": self.size, "latent_ch": self.latent_ch, "widths": list(self.widths),
                "variational": self.variational}


def param_count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def save_weights(model: ConvAutoencoder, path: Path, meta: dict[str, Any]) -> None:
    """fp16 state dict (halves the file; decoding quality is unchanged to 0.01 dB) + hyperparameters."""
    state = {k: v.detach().to(torch.float16) for k, v in model.state_dict().items()}
    torch.save({"hparams": model.hparams(), "state_dict": state, "meta": meta}, path)


def load_pretrained(path: Path | str = WEIGHTS, device: torch.device | str = "cpu") -> ConvAutoencoder:
    """The shipped autoencoder in float32, eval mode, gradients off for its parameters."""
    blob = torch.load(Path(path), map_location="cpu", weights_only=True)
    model = ConvAutoencoder(**blob["hparams"])
    model.load_state_dict({k: v.float() for k, v in blob["state_dict"].items()})
    model.eval().requires_grad_(False)
    return model.to(device)


class PriorNet(nn.Module):
    """The learned prior: a small fully convolutional U-Net (any H x W) that maps the current
    estimate x, the observation y (zero where invalid), the validity mask and the noise level to a
    better estimate x + residual. One level of 2x downsampling gives a ~30 px receptive field
    (enough to see across an 8 x 8 hole) at a quarter of the full-resolution cost."""

    IN_CH = 8

    def __init__(self, width: int = 32, mid_blocks: int = 3) -> None:
        super().__init__()
        self.width, self.mid_blocks = width, mid_blocks
        w = width
        self.head = nn.Sequential(nn.Conv2d(self.IN_CH, w, 3, 1, 1), nn.SiLU())
        self.down = nn.Sequential(nn.Conv2d(w, 2 * w, 4, 2, 1), nn.SiLU())
        self.mid = nn.Sequential(*[m for _ in range(mid_blocks) for m in (nn.Conv2d(2 * w, 2 * w, 3, 1, 1), nn.SiLU())])
        self.up = nn.Sequential(nn.ConvTranspose2d(2 * w, w, 4, 2, 1), nn.SiLU())
        self.tail = nn.Sequential(nn.Conv2d(2 * w, w, 3, 1, 1), nn.SiLU(), nn.Conv2d(w, 3, 3, 1, 1))

    def forward(self, x: torch.Tensor, y: torch.Tensor, valid: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        s = (10.0 * sigma).view(-1, 1, 1, 1).expand(-1, 1, h, w)
        inp = torch.cat([x, y * valid, valid, s], dim=1)
        ph, pw = h % 2, w % 2
        if ph or pw:
            inp = nn.functional.pad(inp, (0, pw, 0, ph), mode="replicate")
        h0 = self.head(inp)
        m = self.down(h0)
        u = self.up(self.mid(m) + m)
        return x + self.tail(torch.cat([u, h0], dim=1))[..., :h, :w]

    def hparams(self) -> dict[str, Any]:
        return {"width": self.width, "mid_blocks": self.mid_blocks}


PRIOR = Path(__file__).resolve().parent / "prior.pt"


def save_prior(net: PriorNet, path: Path, meta: dict[str, Any]) -> None:
    """fp16 state dict + hyperparameters + training record."""
    state = {k: v.detach().to(torch.float16) for k, v in net.state_dict().items()}
    torch.save({"hparams": net.hparams(), "state_dict": state, "meta": meta}, path)


def load_prior(path: Path | str = PRIOR, device: torch.device | str = "cpu") -> PriorNet:
    """The shipped prior net in float32, eval mode, gradients off."""
    blob = torch.load(Path(path), map_location="cpu", weights_only=True)
    net = PriorNet(**blob["hparams"])
    net.load_state_dict({k: v.float() for k, v in blob["state_dict"].items()})
    net.eval().requires_grad_(False)
    return net.to(device)
