"""Parameter-light layers shared by the reasoning (HRM) and language models.

Weights are kept in fp32 and cast to the activation dtype at call time, so one checkpoint serves
fp32 on CPU and bf16/fp16 on GPU without a converted copy.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from sage_runtime.nn.init import trunc_normal_init_


def find_multiple(value: int, multiple: int) -> int:
    """Smallest multiple of `multiple` that is >= value."""
    return -(-value // multiple) * multiple


def rms_norm(x: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """RMSNorm without a learnable scale, computed in fp32 and returned in x's dtype."""
    dtype = x.dtype
    x32 = x.float()
    x32 = x32 * torch.rsqrt(x32.square().mean(-1, keepdim=True) + eps)
    return x32.to(dtype)


class RMSNorm(nn.Module):
    """Module form of `rms_norm` (no parameters)."""

    def __init__(self, eps: float = 1e-5) -> None:
        super().__init__()
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return rms_norm(x, self.eps)


class CastedLinear(nn.Module):
    """Linear layer with LeCun truncated-normal init (std 1/sqrt(fan_in)), zero bias, and weights
    cast to the input's dtype at call time."""

    def __init__(self, in_features: int, out_features: int, bias: bool = False) -> None:
        super().__init__()
        self.weight = nn.Parameter(trunc_normal_init_(torch.empty(out_features, in_features),
                                                      std=1.0 / math.sqrt(in_features)))
        self.bias = nn.Parameter(torch.zeros(out_features)) if bias else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        bias = self.bias.to(x.dtype) if self.bias is not None else None
        return F.linear(x, self.weight.to(x.dtype), bias)


class CastedEmbedding(nn.Module):
    """Embedding table initialised truncated-normal with `init_std`, looked up in `cast_to`'s dtype."""

    def __init__(self, num_embeddings: int, embedding_dim: int, init_std: float,
                 cast_to: torch.dtype = torch.float32) -> None:
        super().__init__()
        self.cast_to = cast_to
        self.weight = nn.Parameter(trunc_normal_init_(torch.empty(num_embeddings, embedding_dim), std=init_std))

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return F.embedding(ids, self.weight.to(self.cast_to))


class SwiGLU(nn.Module):
    """Gated MLP: down(silu(gate) * up). Hidden size round(expansion * d * 2/3) rounded up to a
    multiple of `multiple` (256 upstream; configurable so small models are not over-wide)."""

    def __init__(self, hidden_size: int, expansion: float, multiple: int = 256) -> None:
        super().__init__()
        inter = find_multiple(round(expansion * hidden_size * 2 / 3), multiple)
        self.intermediate_size = inter
        self.gate_up_proj = CastedLinear(hidden_size, inter * 2, bias=False)
        self.down_proj = CastedLinear(inter, hidden_size, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, up = self.gate_up_proj(x).chunk(2, dim=-1)
        return self.down_proj(F.silu(gate) * up)
