"""Checkpoints that carry their architecture: loading into a different architecture is refused."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from sage_plugins.reasoning.model import HRMACT, HRMConfig

FORMAT = "sage-hrm-act-v1"


def save_checkpoint(model: HRMACT, path: Path, extra: dict[str, Any] | None = None) -> None:
    """Write weights + architecture config (+ training metadata) atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
    blob = {"format": FORMAT, "config": model.cfg.to_dict(), "state_dict": state, "extra": extra or {}}
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save(blob, tmp)
    tmp.replace(path)


def load_checkpoint(path: Path, expected: HRMConfig | None = None,
                    map_location: str | torch.device = "cpu") -> tuple[HRMACT, dict[str, Any]]:
    """Build the model the checkpoint describes and load its weights strictly. With `expected`,
    refuse (ValueError) a checkpoint whose architecture differs in any field."""
    blob = torch.load(Path(path), map_location=map_location, weights_only=True)
    if blob.get("format") != FORMAT:
        raise ValueError(f"{path}: not a {FORMAT} checkpoint")
    cfg = HRMConfig.from_dict(blob["config"])
    if expected is not None and cfg != expected:
        diff = {k: (v, getattr(expected, k)) for k, v in cfg.to_dict().items() if getattr(expected, k) != v}
        raise ValueError(f"{path}: architecture differs from the expected one: {diff}")
    model = HRMACT(cfg)
    model.load_state_dict(blob["state_dict"], strict=True)
    model.eval()
    return model, blob.get("extra", {})
