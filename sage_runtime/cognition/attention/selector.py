"""Trust-weighted expert selector: GQA attention of a context over expert embeddings.

The context is the query (``q_heads`` heads), the experts are keys and values (``kv_heads``
heads, grouped-query). Expert ``e``'s router logit is the similarity of its value to what the
context attended to: ``sum_h <o_h, v_{g(h), e}> / sqrt(q_heads * head_dim)``. The logits are
min-max normalised per row to [0, 1] and mixed with context-specific trust:
``score = (1 - alpha) * norm_router + alpha * trust``; the top-k scores win, ties to the lower index.

The weights are a seeded random init, not trained: the router is a fixed, input-sensitive
projection with no learned meaning until someone trains it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np
import torch

from .sdpa import HAS_ENABLE_GQA, gqa_attention, pick_backend, repeat_kv


def trust_for_context(
    table: Mapping[str, Sequence[float] | Mapping[int, float] | torch.Tensor | np.ndarray],
    context: str,
    n_experts: int,
    default: float = 0.5,
) -> torch.Tensor:
    """Trust vector ``[n_experts]`` for ``context`` from a per-context table.

    A table entry is either a full vector or a sparse ``{expert_index: trust}`` mapping; experts
    (or contexts) absent from the table get ``default``.
    """
    out = torch.full((n_experts,), float(default), dtype=torch.float64)
    entry = table.get(context)
    if entry is None:
        return out
    if isinstance(entry, Mapping):
        for idx, value in entry.items():
            out[int(idx)] = float(value)
        return out
    vec = torch.as_tensor(np.asarray(entry, dtype=np.float64))
    if vec.shape != (n_experts,):
        raise ValueError(f"trust vector for {context!r} has shape {tuple(vec.shape)}, expected ({n_experts},)")
    return vec


class TrustWeightedExpertSelector(torch.nn.Module):
    """Pick ``top_k`` of ``n_experts`` for a context, mixing router scores with trust by ``alpha``."""

    def __init__(
        self,
        d_model: int = 768,
        n_experts: int = 128,
        top_k: int = 8,
        q_heads: int = 12,
        kv_heads: int = 4,
        head_dim: int | None = None,
        alpha: float = 0.5,
        seed: int = 0,
        device: str | torch.device = "cpu",
        force_repeat_kv: bool = False,
        backend: str = "auto",
    ) -> None:
        super().__init__()
        if q_heads % kv_heads:
            raise ValueError("q_heads must be a multiple of kv_heads")
        if not 1 <= top_k <= n_experts:
            raise ValueError("need 1 <= top_k <= n_experts")
        self.d_model, self.n_experts, self.top_k = d_model, n_experts, top_k
        self.q_heads, self.kv_heads = q_heads, kv_heads
        self.head_dim = head_dim or max(8, d_model // q_heads)
        self.alpha = self._check_alpha(alpha)
        self.device = torch.device(device)
        self.repeat_kv = force_repeat_kv or not HAS_ENABLE_GQA
        hd, g = self.head_dim, q_heads // kv_heads
        gen = torch.Generator().manual_seed(seed)
        experts = torch.randn(n_experts, d_model, generator=gen)
        w_q = torch.randn(q_heads * hd, d_model, generator=gen) / math.sqrt(d_model)
        w_k = torch.randn(kv_heads * hd, d_model, generator=gen) / math.sqrt(d_model)
        w_v = torch.randn(kv_heads * hd, d_model, generator=gen) / math.sqrt(d_model)
        k = (experts @ w_k.T).view(n_experts, kv_heads, hd).transpose(0, 1).unsqueeze(0)
        v = (experts @ w_v.T).view(n_experts, kv_heads, hd).transpose(0, 1).unsqueeze(0)
        if self.repeat_kv:  # repeat once here, not per call
            k, v = repeat_kv(k, g), repeat_kv(v, g)
        # Only what calls need is kept (the expert embeddings live on in K, V and out_keys).
        # Expert e's value laid out per query head, to score it against every head's output.
        per_head = repeat_kv(v, g) if not self.repeat_kv else v
        out_keys = per_head[0].permute(1, 0, 2).reshape(n_experts, q_heads * hd)
        self.register_buffer("w_q_t", w_q.T.contiguous().to(self.device))
        self.register_buffer("k", k.contiguous().to(self.device))
        self.register_buffer("v", v.contiguous().to(self.device))
        self.register_buffer("out_keys_t", (out_keys.T / math.sqrt(q_heads * hd)).contiguous().to(self.device))
        self.backend = pick_backend(backend, self.device)
        kv_k, kv_v = (k[0, ::g], v[0, ::g]) if self.repeat_kv else (k[0], v[0])  # one per KV head
        self._np = (w_q.T.contiguous().numpy(), (kv_k.transpose(1, 2) / math.sqrt(hd)).contiguous().numpy(),
                    kv_v.contiguous().numpy(), self.out_keys_t.cpu().numpy())
        self.eval()

    @staticmethod
    def _check_alpha(alpha: float) -> float:
        if not 0.0 <= alpha <= 1.0:
            raise ValueError("alpha must be in [0, 1]")
        return float(alpha)

    def router_logits(self, x: torch.Tensor) -> torch.Tensor:
        """Router logits ``[B, n_experts]`` for contexts ``x [B, d_model]``."""
        if self.backend == "numpy":
            return torch.from_numpy(self._logits_numpy(x.detach().float().numpy()))
        with torch.inference_mode():
            b = x.shape[0]
            q = (x.to(self.device, self.w_q_t.dtype) @ self.w_q_t).view(b, self.q_heads, self.head_dim)
            # Contexts share the expert keys, so the batch rides in SDPA's query-length axis.
            q = q.transpose(0, 1).unsqueeze(0)
            o = gqa_attention(q, self.k, self.v, repeat_fallback=self.repeat_kv)
            return o[0].transpose(0, 1).reshape(b, -1) @ self.out_keys_t

    def _logits_numpy(self, x: np.ndarray) -> np.ndarray:
        """``router_logits`` in numpy (the CPU backend): query head h attends with KV head h // g."""
        w_q_t, k_t, v, out_keys_t = self._np
        b, g = x.shape[0], self.q_heads // self.kv_heads
        q = (x @ w_q_t).reshape(b, self.kv_heads, g, self.head_dim).transpose(1, 0, 2, 3)
        z = np.matmul(q.reshape(self.kv_heads, b * g, self.head_dim), k_t)  # [kv, b*g, N]
        z -= z.max(-1, keepdims=True)
        p = np.exp(z, out=z)
        p /= p.sum(-1, keepdims=True)
        o = np.matmul(p, v).reshape(self.kv_heads, b, g, self.head_dim).transpose(1, 0, 2, 3)
        return o.reshape(b, -1) @ out_keys_t

    def _scores_numpy(self, x: torch.Tensor, trust: torch.Tensor, a: float) -> torch.Tensor:
        logits = self._logits_numpy(x.detach().float().numpy()).astype(np.float64)
        lo = logits.min(-1, keepdims=True)
        norm = (logits - lo) / np.maximum(logits.max(-1, keepdims=True) - lo, 1e-300)
        t = np.clip(trust.numpy(), 0.0, 1.0)
        return torch.from_numpy(norm * (1.0 - a) + t * a)

    def scores(self, x: torch.Tensor, trust: torch.Tensor, alpha: float | None = None) -> torch.Tensor:
        """Mixed score per expert ``[B, n_experts]`` (float64): (1 - alpha) * minmax(router) + alpha * trust."""
        a = self.alpha if alpha is None else self._check_alpha(alpha)
        if self.backend == "numpy":
            trust = torch.as_tensor(trust, dtype=torch.float64)
            if trust.shape[-1] != self.n_experts:
                raise ValueError(f"trust needs {self.n_experts} entries per row, got {tuple(trust.shape)}")
            return self._scores_numpy(x, trust, a)
        trust = torch.as_tensor(trust, dtype=torch.float64, device=self.device)
        if trust.shape[-1] != self.n_experts:
            raise ValueError(f"trust needs {self.n_experts} entries per row, got {tuple(trust.shape)}")
        with torch.inference_mode():
            logits = self.router_logits(x).double()
            lo, hi = torch.aminmax(logits, dim=-1, keepdim=True)
            norm = logits.sub_(lo).div_((hi - lo).clamp_(min=1e-300))
            # (1 - a) * norm + a * trust, written so a = 0 and a = 1 give each term exactly
            return torch.add(norm.mul_(1.0 - a), trust.clamp(0.0, 1.0), alpha=a)

    def select(
        self, x: torch.Tensor, trust: torch.Tensor, alpha: float | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Top-k expert indices and their scores for ``x [B, d]`` (or ``[d]``) and trust ``[N]`` or ``[B, N]``.

        Returns ``(indices [B, k] int64, scores [B, k] float64)``, best first, ties to the lower
        index; 1-D input gives 1-D outputs.
        """
        squeeze = x.dim() == 1
        s = self.scores(x.unsqueeze(0) if squeeze else x, trust, alpha)
        if self.backend == "numpy":
            sn = s.numpy()
            order = np.argsort(-sn, axis=-1, kind="stable")[:, : self.top_k]
            idx, ordered = torch.from_numpy(order), torch.from_numpy(np.take_along_axis(sn, order, -1))
            return (idx[0], ordered[0]) if squeeze else (idx, ordered)
        with torch.inference_mode():
            ordered, idx = torch.sort(s, dim=-1, descending=True, stable=True)
            idx, ordered = idx[:, : self.top_k], ordered[:, : self.top_k]
        return (idx[0], ordered[0]) if squeeze else (idx, ordered)

    def select_numpy(
        self, x: np.ndarray, trust: np.ndarray, alpha: float | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """``select`` for numpy callers (e.g. routing an external MoE): numpy in, numpy out."""
        xt = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)).to(self.device)
        idx, sc = self.select(xt, torch.from_numpy(np.asarray(trust, dtype=np.float64)), alpha)
        return idx.cpu().numpy(), sc.cpu().numpy()
