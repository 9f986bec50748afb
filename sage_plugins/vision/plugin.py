"""`vision`: encodes a camera frame, then refines the latent against the observed pixels.

Per run: take the most salient new image frame, resize it to the model's working size (a
validity mask in a 2nd/4th channel marks dropped pixels, see images.py), start from the
encoder's code and lower E(z) (refine.py) until it stops falling, the quota or the deadline.
Outputs: a 256-d embedding, the reconstruction (uint8, working size, the frame's channel
count), and a tiles x tiles reconstruction-error map over valid pixels (for surprise).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from sage_plugins.vision import refine
from sage_plugins.vision.config import VisionConfig
from sage_plugins.vision.data import scenes
from sage_plugins.vision.images import is_image, psnr, split_frame, tile_errors, to_uint8, to_working
from sage_plugins.vision.model import WEIGHTS, load_pretrained
from sage_runtime.plugin.contract import IRPPlugin, PluginContext, PluginInputs
from sage_runtime.records import Frame

EMBEDDING_DIM = 256


@dataclass(frozen=True)
class VisionState:
    r: refine.Refinement
    sensor: str
    seq: int
    channels: int
    source_hw: tuple[int, int]


class VisionPlugin(IRPPlugin):
    """Autoencoder + monotone latent refinement over the newest image frame."""

    name = "vision"
    Options = VisionConfig
    accepts_kinds = frozenset({"tensor"})

    def setup(self, ctx: PluginContext) -> None:
        super().setup(ctx)
        cfg = self.cfg = ctx.options
        self.max_steps = cfg.max_steps
        self.refine_cfg = refine.RefineConfig(lam=cfg.lam, lr0=cfg.lr0, memory=cfg.memory,
                                              max_halvings=cfg.max_halvings, fill=cfg.fill)
        self.model = load_pretrained(Path(cfg.weights) if cfg.weights else WEIGHTS, ctx.device)
        self.size = self.model.size
        c, h, w = self.model.latent_shape
        if (c * h * w) % EMBEDDING_DIM:
            raise ValueError(f"vision: latent {c}x{h}x{w} does not pool to {EMBEDDING_DIM}")

    def accepts(self, frame: Frame) -> bool:
        return frame.kind == "tensor" and is_image(frame.data)

    def sample_inputs(self, seed: int) -> PluginInputs:
        """A generated 96 x 128 RGB scene (not the working size, so resizing is exercised) with
        mild noise; content depends on the seed."""
        rng = np.random.default_rng(seed)
        img = F.interpolate(scenes(1, 96, rng), size=(96, 128), mode="bilinear", align_corners=False)
        img = (img + 0.05 * torch.from_numpy(rng.standard_normal(img.shape).astype(np.float32))).clamp(0, 1)
        data = (img[0].permute(1, 2, 0) * 255).round().to(torch.uint8)
        frame = Frame("camera", seed, 0, "tensor", data, {})
        return PluginInputs(tick=seed, frames={"camera": frame}, salience={"camera": 0.5})

    def _pick(self, inputs: PluginInputs) -> Frame | None:
        frames = [f for f in inputs.frames.values() if self.accepts(f)]
        if not frames:
            return None
        return min(frames, key=lambda f: (-float(inputs.salience.get(f.sensor, 0.0)), f.sensor))

    def init_state(self, inputs: PluginInputs) -> VisionState | None:
        frame = self._pick(inputs)
        if frame is None:
            return None
        image, mask, channels = split_frame(frame.data)
        x, valid = to_working(image, mask, self.size, self.ctx.device)
        r = refine.start(self.model, x, valid, self.refine_cfg)
        return VisionState(r, frame.sensor, frame.seq, channels, (int(image.shape[0]), int(image.shape[1])))

    def step(self, state: VisionState) -> VisionState:
        return VisionState(refine.step(self.model, state.r, self.refine_cfg), state.sensor, state.seq,
                           state.channels, state.source_hw)

    def energy(self, state: VisionState) -> float:
        return float(state.r.energy[0])

    def halt(self, state: VisionState, history: Sequence[float]) -> str | None:
        """Converged when E fell by less than rel_eps of itself over the last `window` steps
        (E never rises, so this is a true plateau, and a stalled backtracking gives zero drop)."""
        k = self.cfg.window
        if len(history) < k + 1:
            return None
        drop = history[-k - 1] - history[-1]
        return "converged" if drop <= self.cfg.rel_eps * max(abs(history[-1]), 1e-12) else None

    def outputs(self, state: VisionState) -> dict[str, Any]:
        r = state.r
        recon = r.recon.clamp(0.0, 1.0)
        c = r.z.shape[1]
        side = int(round((EMBEDDING_DIM / c) ** 0.5))
        emb = F.adaptive_avg_pool2d(r.z, side).flatten().detach().to("cpu", torch.float32)
        n_valid = float(r.valid.sum())
        fit = psnr((recon - r.x) * r.valid + r.x, r.x) if n_valid else torch.zeros(1)
        return {
            "embedding": emb,
            "reconstruction": to_uint8(recon, state.channels),
            "error_map": tile_errors(recon, r.x, r.valid, self.cfg.tiles)[0].detach().cpu(),
            "fit_psnr_db": round(float(fit[0]) if n_valid else 0.0, 3),
            "valid_fraction": round(n_valid / r.valid.numel(), 4),
            "sensor": state.sensor,
            "seq": int(state.seq),
            "source_hw": list(state.source_hw),
        }
