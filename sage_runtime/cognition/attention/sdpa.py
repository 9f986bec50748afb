"""One call site for scaled_dot_product_attention with grouped-query heads.

Uses ``enable_gqa=True`` where this torch has it (2.5+); otherwise, or when asked, repeats each
KV head ``q_heads // kv_heads`` times first (the "repeat-KV" fallback). Both give the same
result; the fallback costs a copy of K and V per call unless the caller passes pre-repeated ones.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

#: Whether this torch's SDPA accepts ``enable_gqa`` (added in torch 2.5).
HAS_ENABLE_GQA: bool = torch.__version__ >= "2.5"  # TorchVersion compares as a version


def repeat_kv(t: torch.Tensor, groups: int) -> torch.Tensor:
    """Repeat each KV head ``groups`` times along dim 1, matching SDPA's GQA head mapping."""
    return t if groups == 1 else t.repeat_interleave(groups, dim=1)


def gqa_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    attn_mask: torch.Tensor | None = None,
    scale: float | None = None,
    repeat_fallback: bool = False,
) -> torch.Tensor:
    """SDPA where ``q`` has a multiple of ``k``'s heads: q (B,Hq,L,E), k (B,Hkv,S,E), v (B,Hkv,S,Ev)."""
    groups = q.shape[1] // k.shape[1]
    if groups == 1:
        return F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, scale=scale)
    if repeat_fallback or not HAS_ENABLE_GQA:
        return F.scaled_dot_product_attention(
            q, repeat_kv(k, groups), repeat_kv(v, groups), attn_mask=attn_mask, scale=scale
        )
    return F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, scale=scale, enable_gqa=True)


def pick_backend(backend: str, device: torch.device) -> str:
    """``auto``: numpy on CPU (cheaper than torch dispatch at these sizes), SDPA on CUDA."""
    if backend not in ("auto", "numpy", "sdpa"):
        raise ValueError(f"backend must be auto, numpy or sdpa, got {backend!r}")
    if backend == "auto":
        return "numpy" if device.type == "cpu" else "sdpa"
    if backend == "numpy" and device.type != "cpu":
        raise ValueError("the numpy backend runs on CPU only")
    return backend
