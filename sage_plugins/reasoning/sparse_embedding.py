"""Upstream's sparse puzzle-id embedding: a zero-initialised table (a buffer, not a parameter)
whose rows used by a batch are copied into a local tensor that takes gradients, then updated per
unique id with SignSGD and decoupled weight decay (Adam acts like SignSGD on very sparse
gradients). Used only when a model has more than one puzzle id (ARC-style per-task training)."""

from __future__ import annotations

import torch
from torch import nn


class SparsePuzzleEmbedding(nn.Module):
    def __init__(self, num_embeddings: int, dim: int) -> None:
        super().__init__()
        self.register_buffer("weights", torch.zeros(num_embeddings, dim), persistent=True)
        self.local_weights: torch.Tensor | None = None
        self.local_ids: torch.Tensor | None = None

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return self.weights[ids]
        self.local_weights = self.weights[ids].detach().clone().requires_grad_(True)
        self.local_ids = ids
        return self.local_weights


class SignSGD(torch.optim.Optimizer):
    """Step the table of a SparsePuzzleEmbedding: p <- p * (1 - lr * wd) - lr * sign(sum of grads per id)."""

    def __init__(self, embedding: SparsePuzzleEmbedding, lr: float = 1e-2, weight_decay: float = 0.1) -> None:
        super().__init__([embedding.weights], {"lr": lr, "weight_decay": weight_decay})
        self.embedding = embedding

    @torch.no_grad()
    def step(self, closure=None):  # noqa: ANN001 - optimizer API
        emb = self.embedding
        if emb.local_weights is None or emb.local_weights.grad is None:
            return None
        group = self.param_groups[0]
        ids, grads = emb.local_ids, emb.local_weights.grad
        uniq, inverse = torch.unique(ids, return_inverse=True)
        summed = torch.zeros(len(uniq), grads.shape[-1], dtype=grads.dtype, device=grads.device)
        summed.index_add_(0, inverse, grads)
        rows = emb.weights[uniq]
        rows = rows * (1 - group["lr"] * group["weight_decay"]) - group["lr"] * summed.sign()
        emb.weights[uniq] = rows
        emb.local_weights = None
        return None

    def zero_grad(self, set_to_none: bool = True) -> None:
        if self.embedding.local_weights is not None:
            self.embedding.local_weights.grad = None
