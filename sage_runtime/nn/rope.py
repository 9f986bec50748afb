"""Rotary position embeddings (rotate-half form, theta 10,000 by default) for [B, S, H, D] tensors."""

from __future__ import annotations

import torch
from torch import nn


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    """(x1, x2) -> (-x2, x1) over the last dimension's two halves."""
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def apply_rotary(q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor,
                 sin: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Rotate q and k ([B, S, H, D]) by position; cos/sin are [S, D] (or broadcastable)."""
    dtype = q.dtype
    cos = cos[..., :, None, :].to(torch.float32)
    sin = sin[..., :, None, :].to(torch.float32)
    q32, k32 = q.float(), k.float()
    q_out = q32 * cos + rotate_half(q32) * sin
    k_out = k32 * cos + rotate_half(k32) * sin
    return q_out.to(dtype), k_out.to(dtype)


class RotaryEmbedding(nn.Module):
    """Precomputed cos/sin tables for positions 0..max_positions-1 (non-persistent buffers, so they
    are not stored in checkpoints and are rebuilt exactly on load)."""

    def __init__(self, dim: int, max_positions: int, base: float = 10000.0) -> None:
        super().__init__()
        inv_freq = 1.0 / (base ** (torch.arange(0, dim, 2, dtype=torch.float32) / dim))
        t = torch.arange(max_positions, dtype=torch.float32)
        freqs = torch.outer(t, inv_freq)
        emb = torch.cat((freqs, freqs), dim=-1)
        self.register_buffer("cos", emb.cos(), persistent=False)
        self.register_buffer("sin", emb.sin(), persistent=False)

    def forward(self, seq_len: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(cos, sin), each [seq_len, dim]."""
        n = self.cos.shape[0] if seq_len is None else seq_len
        return self.cos[:n], self.sin[:n]
