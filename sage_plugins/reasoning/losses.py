"""HRM losses: softmax or stablemax token cross-entropy per sequence, q_halt BCE on exact
correctness, q_continue BCE on the bootstrapped target; plus the metrics upstream logs."""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F

IGNORE_INDEX = -100


def _stablemax_s(x: torch.Tensor) -> torch.Tensor:
    return torch.where(x < 0, 1 / (1 - x), x + 1)


def log_stablemax(x: torch.Tensor, dim: int = -1) -> torch.Tensor:
    s = _stablemax_s(x)
    return torch.log(s / s.sum(dim=dim, keepdim=True))


def stablemax_cross_entropy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Per-token stablemax CE in float64 (0 where label == IGNORE_INDEX)."""
    logprobs = log_stablemax(logits.to(torch.float64), dim=-1)
    mask = labels != IGNORE_INDEX
    safe = torch.where(mask, labels, 0)
    pred = torch.gather(logprobs, -1, safe.to(torch.long).unsqueeze(-1)).squeeze(-1)
    return -torch.where(mask, pred, 0)


def softmax_cross_entropy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Per-token softmax CE in float32 (0 where label == IGNORE_INDEX)."""
    return F.cross_entropy(logits.to(torch.float32).reshape(-1, logits.shape[-1]), labels.to(torch.long).reshape(-1),
                           ignore_index=IGNORE_INDEX, reduction="none").view(labels.shape)


def labels_from_tokens(labels: torch.Tensor, pad: int = 0) -> torch.Tensor:
    """Map the dataset's PAD label to the ignore index (upstream's loader does the same)."""
    return torch.where(labels == pad, IGNORE_INDEX, labels.to(torch.long))


def act_loss(out: dict[str, torch.Tensor], labels: torch.Tensor, halted: torch.Tensor,
             kind: Literal["softmax", "stablemax"] = "softmax") -> tuple[torch.Tensor, dict[str, float]]:
    """Total = lm + 0.5 (q_halt + q_continue), summed over the batch (upstream). `labels` already
    holds IGNORE_INDEX where unsupervised. Metrics are over halted rows, as upstream logs them."""
    logits = out["logits"]
    mask = labels != IGNORE_INDEX
    counts = mask.sum(-1)
    divisor = counts.clamp_min(1).unsqueeze(-1)
    ce = stablemax_cross_entropy(logits, labels) if kind == "stablemax" else softmax_cross_entropy(logits, labels)
    lm_loss = (ce / divisor).sum()
    with torch.no_grad():
        correct = mask & (logits.argmax(-1) == labels)
        seq_correct = correct.sum(-1) == counts
    q_halt_loss = F.binary_cross_entropy_with_logits(out["q_halt_logits"], seq_correct.to(torch.float32),
                                                     reduction="sum")
    total = lm_loss + 0.5 * q_halt_loss
    q_cont_loss = torch.zeros(())
    if "target_q_continue" in out:
        q_cont_loss = F.binary_cross_entropy_with_logits(out["q_continue_logits"], out["target_q_continue"],
                                                         reduction="sum")
        total = total + 0.5 * q_cont_loss
    with torch.no_grad():
        valid = halted & (counts > 0)
        n = int(valid.sum())
        metrics = {
            "count": float(n),
            "lm_loss": float(lm_loss),
            "q_halt_loss": float(q_halt_loss),
            "q_continue_loss": float(q_cont_loss),
            "accuracy": float(((correct.sum(-1) / divisor.squeeze(-1)) * valid).sum()) / max(n, 1),
            "exact_accuracy": float((seq_correct & valid).sum()) / max(n, 1),
            "q_halt_accuracy": float((((out["q_halt_logits"] >= 0) == seq_correct) & valid).sum()) / max(n, 1),
        }
    return total, metrics
