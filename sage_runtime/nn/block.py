"""Post-norm transformer block as in HRM: x <- norm(x + attn(x)); x <- norm(x + mlp(x))."""

from __future__ import annotations

import torch
from torch import nn

from sage_runtime.nn.attention import Attention
from sage_runtime.nn.layers import SwiGLU, rms_norm


class TransformerBlock(nn.Module):
    """One post-norm block: attention (SDPA, optional RoPE) and SwiGLU, RMSNorm without scale."""

    def __init__(self, hidden_size: int, num_heads: int, expansion: float = 4.0, causal: bool = False,
                 mlp_multiple: int = 256, norm_eps: float = 1e-5) -> None:
        super().__init__()
        self.self_attn = Attention(hidden_size, num_heads, causal=causal)
        self.mlp = SwiGLU(hidden_size, expansion, multiple=mlp_multiple)
        self.norm_eps = norm_eps

    def forward(self, x: torch.Tensor, cos_sin: tuple[torch.Tensor, torch.Tensor] | None = None,
                attn_mask: torch.Tensor | None = None) -> torch.Tensor:
        x = rms_norm(x + self.self_attn(x, cos_sin=cos_sin, attn_mask=attn_mask), self.norm_eps)
        return rms_norm(x + self.mlp(x), self.norm_eps)
