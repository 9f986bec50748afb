"""Adam-atan2 (upstream's dense optimiser): Adam with atan2(m_hat, sqrt(v_hat)) in place of
m_hat / (sqrt(v_hat) + eps), so no eps; decoupled weight decay. Pure torch (CPU-friendly)."""

from __future__ import annotations

import math

import torch


class AdamAtan2(torch.optim.Optimizer):
    def __init__(self, params, lr: float = 1e-4, betas: tuple[float, float] = (0.9, 0.95),  # noqa: ANN001
                 weight_decay: float = 0.1, a: float = 1.27, b: float = 1.0) -> None:
        super().__init__(params, {"lr": lr, "betas": betas, "weight_decay": weight_decay, "a": a, "b": b})

    @torch.no_grad()
    def step(self, closure=None):  # noqa: ANN001 - optimizer API
        for group in self.param_groups:
            beta1, beta2 = group["betas"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if not state:
                    state["step"] = 0
                    state["m"] = torch.zeros_like(p)
                    state["v"] = torch.zeros_like(p)
                state["step"] += 1
                t = state["step"]
                p.mul_(1 - group["lr"] * group["weight_decay"])
                state["m"].lerp_(p.grad, 1 - beta1)
                state["v"].lerp_(p.grad.square(), 1 - beta2)
                m_hat = state["m"] / (1 - beta1 ** t)
                v_hat = state["v"] / (1 - beta2 ** t)
                update = torch.atan2(m_hat, group["b"] * v_hat.sqrt())
                p.add_(update, alpha=-group["lr"] * group["a"])
        return None


def lr_at(step: int, base_lr: float, warmup: int, total: int, min_ratio: float = 1.0) -> float:
    """Linear warmup then cosine to base_lr * min_ratio (constant when min_ratio = 1)."""
    if step < warmup:
        return base_lr * (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return base_lr * (min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))
