"""Shared neural layers for the built-in models (HRM reasoning, the language denoiser).

Public API:
    attention(q, k, v, causal=False, attn_mask=None)   SDPA (flash-attn where usable), [B, S, H, D]
    Attention(hidden_size, num_heads, causal=False)     fused-qkv multi-head attention module
    RotaryEmbedding(dim, max_positions, base=1e4), apply_rotary(q, k, cos, sin)
    rms_norm(x, eps=1e-5), RMSNorm(eps)                 no learnable scale, fp32 inside
    SwiGLU(hidden_size, expansion, multiple=256)        hidden size rounded up to `multiple`
    CastedLinear(in, out, bias=False), CastedEmbedding(n, d, init_std, cast_to)
    trunc_normal_init_(tensor, std, lower=-2, upper=2)  post-truncation std equals `std`
    TransformerBlock(hidden_size, num_heads, expansion=4, causal=False, mlp_multiple=256)
"""

from sage_runtime.nn.attention import Attention, attention, reference_attention
from sage_runtime.nn.block import TransformerBlock
from sage_runtime.nn.init import trunc_normal_init_
from sage_runtime.nn.layers import CastedEmbedding, CastedLinear, RMSNorm, SwiGLU, find_multiple, rms_norm
from sage_runtime.nn.rope import RotaryEmbedding, apply_rotary, rotate_half

__all__ = [
    "Attention", "CastedEmbedding", "CastedLinear", "RMSNorm", "RotaryEmbedding", "SwiGLU", "TransformerBlock",
    "apply_rotary", "attention", "find_multiple", "reference_attention", "rms_norm", "rotate_half",
    "trunc_normal_init_",
]
