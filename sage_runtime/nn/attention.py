"""Multi-head attention on torch SDPA, with flash-attn used only where it is importable and runs.

Both paths compute the same function; flash-attn is an optional speed-up on CUDA with fp16/bf16 and
no mask. Tensors use the [B, S, H, D] layout of upstream HRM.
"""

from __future__ import annotations

import importlib
import math

import torch
import torch.nn.functional as F
from torch import nn

from sage_runtime.nn.layers import CastedLinear
from sage_runtime.nn.rope import apply_rotary


def _load_flash_attn():
    for name in ("flash_attn_interface", "flash_attn"):
        try:
            return importlib.import_module(name).flash_attn_func
        except (ImportError, AttributeError, OSError):
            continue
    return None


_FLASH_FUNC = None
_FLASH_PROBED = False


def flash_attn_func():
    """flash-attn's `flash_attn_func` when installed, else None (probed once, lazily)."""
    global _FLASH_FUNC, _FLASH_PROBED
    if not _FLASH_PROBED:
        _FLASH_FUNC = _load_flash_attn()
        _FLASH_PROBED = True
    return _FLASH_FUNC


def _flash_usable(q: torch.Tensor, attn_mask: torch.Tensor | None) -> bool:
    if attn_mask is not None or not q.is_cuda or q.dtype not in (torch.float16, torch.bfloat16):
        return False
    if torch.cuda.get_device_capability(q.device)[0] < 8:
        return False
    return flash_attn_func() is not None


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, causal: bool = False,
              attn_mask: torch.Tensor | None = None, use_flash: bool = True) -> torch.Tensor:
    """Scaled dot-product attention over [B, S, H, D] tensors, returning [B, S, H, D].

    attn_mask: optional boolean (True = attend) or additive mask broadcastable to [B, H, S, S].
    """
    if use_flash and _flash_usable(q, attn_mask):
        out = flash_attn_func()(q, k, v, causal=causal)
        return out[0] if isinstance(out, tuple) else out
    o = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                                       attn_mask=attn_mask, is_causal=causal and attn_mask is None)
    return o.transpose(1, 2)


class Attention(nn.Module):
    """Fused-qkv multi-head attention with optional rotary positions; no biases, no qk-norm."""

    def __init__(self, hidden_size: int, num_heads: int, causal: bool = False) -> None:
        super().__init__()
        if hidden_size % num_heads:
            raise ValueError(f"hidden_size {hidden_size} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.head_dim = hidden_size // num_heads
        self.causal = causal
        self.qkv_proj = CastedLinear(hidden_size, 3 * hidden_size, bias=False)
        self.o_proj = CastedLinear(hidden_size, hidden_size, bias=False)

    def forward(self, x: torch.Tensor, cos_sin: tuple[torch.Tensor, torch.Tensor] | None = None,
                attn_mask: torch.Tensor | None = None) -> torch.Tensor:
        b, s, _ = x.shape
        qkv = self.qkv_proj(x).view(b, s, 3, self.num_heads, self.head_dim)
        q, k, v = qkv.unbind(dim=2)
        if cos_sin is not None:
            q, k = apply_rotary(q, k, *cos_sin)
        out = attention(q, k, v, causal=self.causal, attn_mask=attn_mask)
        return self.o_proj(out.reshape(b, s, self.num_heads * self.head_dim))


def reference_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool = False) -> torch.Tensor:
    """Naive softmax attention over [B, S, H, D]: the baseline tests and benchmarks compare against."""
    scores = torch.einsum("bqhd,bkhd->bhqk", q.float(), k.float()) / math.sqrt(q.shape[-1])
    if causal:
        s_q, s_k = scores.shape[-2:]
        mask = torch.ones(s_q, s_k, dtype=torch.bool, device=q.device).tril()
        scores = scores.masked_fill(~mask, float("-inf"))
    return torch.einsum("bhqk,bkhd->bqhd", scores.softmax(-1), v.float()).to(q.dtype)
