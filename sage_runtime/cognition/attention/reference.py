"""Plain numpy versions of the three modules' math, reading the same weights.

They are the in-process baselines of benchmarks/bench_attention.py and the oracles the tests
compare the SDPA paths against. Fusion featurises sensors with the module's own (numpy) adapters,
so only the projection and attention differ between the two.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from .allocator import COL, FEATURES, STATES, AtpAllocator, state_name
from .fusion import SensorFusion, _unit
from .selector import TrustWeightedExpertSelector

_LOG = np.array([n in ("cost_ms", "staleness_s") for n in FEATURES])


def _softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


class NumpyAllocator:
    """``AtpAllocator.allocate`` in numpy; DREAM noise is an argument (``[N]`` standard normals)."""

    def __init__(self, module: AtpAllocator) -> None:
        self.patterns = module.patterns
        self.queries = module.queries.cpu().numpy()

    def allocate(
        self, state: object, features: np.ndarray, total_atp: float, noise: np.ndarray | None = None
    ) -> np.ndarray:
        name = state_name(state)
        pat = self.patterns[name]
        x = np.nan_to_num(features, nan=0.0).clip(min=0.0)
        k = np.where(_LOG, -np.log1p(x), np.minimum(x, 1.0))
        z = k @ self.queries[STATES.index(name)]
        if pat.noise > 0 and noise is not None:
            z = z + pat.noise * noise
        w = _softmax(z).astype(np.float64)
        mix = pat.mix
        if pat.anchor == "uniform":
            anchor = np.full_like(w, 1.0 / w.size)
        elif pat.anchor in ("top", "crisis"):
            rank = w if pat.anchor == "top" else w + 2.0 * k[:, COL["is_crisis"]]
            anchor = np.zeros_like(w)
            anchor[np.argmax(rank)] = 1.0
        else:
            c = k[:, COL["is_consolidation"]].astype(np.float64)
            anchor = c / max(c.sum(), 1e-12)
            mix = mix if c.sum() > 0 else 0.0
        alloc = (1.0 - mix) * w + mix * anchor
        return alloc * (total_atp / alloc.sum())


class NumpySelector:
    """``TrustWeightedExpertSelector.select`` in numpy (same weights, same tie rule)."""

    def __init__(self, module: TrustWeightedExpertSelector) -> None:
        self.m = module
        g = module.q_heads // module.kv_heads
        k, v = module.k[0].cpu().numpy(), module.v[0].cpu().numpy()
        self.k = np.ascontiguousarray(k[::g] if module.repeat_kv else k)  # [kv, N, hd]
        self.v = np.ascontiguousarray(v[::g] if module.repeat_kv else v)
        self.kt = np.ascontiguousarray(self.k.transpose(0, 2, 1))
        self.w_q_t = module.w_q_t.cpu().numpy()
        self.out_keys_t = module.out_keys_t.cpu().numpy()

    def router_logits(self, x: np.ndarray) -> np.ndarray:
        m = self.m
        b, g = x.shape[0], m.q_heads // m.kv_heads
        q = (x @ self.w_q_t).reshape(b, m.kv_heads, g, m.head_dim).transpose(1, 0, 2, 3)
        p = _softmax(q.reshape(m.kv_heads, b * g, m.head_dim) @ self.kt / math.sqrt(m.head_dim))
        o = (p @ self.v).reshape(m.kv_heads, b, g, m.head_dim).transpose(1, 0, 2, 3)
        return o.reshape(b, -1) @ self.out_keys_t

    def select(self, x: np.ndarray, trust: np.ndarray, alpha: float | None = None) -> tuple[np.ndarray, np.ndarray]:
        a = self.m.alpha if alpha is None else alpha
        logits = self.router_logits(x).astype(np.float64)
        lo = logits.min(-1, keepdims=True)
        span = np.maximum(logits.max(-1, keepdims=True) - lo, 1e-300)
        score = (1.0 - a) * ((logits - lo) / span) + a * np.clip(np.asarray(trust, np.float64), 0.0, 1.0)
        idx = np.argsort(-score, axis=-1, kind="stable")[:, : self.m.top_k]
        return idx, np.take_along_axis(score, idx, -1)


class NumpyFusion:
    """``SensorFusion.forward`` in numpy, featurising with the module's own adapters."""

    def __init__(self, module: SensorFusion) -> None:
        self.m = module
        self.w_raw_kv = module.w_raw_kv.cpu().numpy()
        self.w_in = module.w_in.cpu().numpy()
        self.w_q = module.w_q.cpu().numpy()
        self._goal: dict[str, np.ndarray] = {}

    def _query(self, goal: str) -> np.ndarray:
        q = self._goal.get(goal)
        if q is None:
            raw = np.zeros(self.w_in.shape[0], dtype=np.float32)
            self.m._featurise(raw, "text", goal)
            e = raw @ self.w_in
            q = self._goal[goal] = (e / np.sqrt(np.mean(e * e) + 1e-12)) @ self.w_q
        return q

    def forward(self, goal: str, sensors: Sequence[tuple]) -> tuple[np.ndarray, np.ndarray]:
        m, n = self.m, len(sensors)
        raw = np.zeros((n, self.w_in.shape[0]), dtype=np.float32)
        bias = np.full(n, -np.inf, dtype=np.float32)
        for i, (modality, data, trust, salience, stale) in enumerate(sensors):
            if not stale and data is not None:
                m._featurise(raw[i], modality, data)
                bias[i] = math.log(_unit(trust) + m.trust_eps) + m.salience_gain * _unit(salience)
        if not np.isfinite(bias).any():
            return np.zeros(m.d, dtype=np.float32), np.zeros(n, dtype=np.float32)
        hd, g = m.head_dim, m.q_heads // m.kv_heads
        kv = (raw @ self.w_raw_kv).reshape(n, 2, m.kv_heads, hd)
        k, v = kv[:, 0].transpose(1, 0, 2), kv[:, 1].transpose(1, 0, 2)  # [kv, n, hd]
        q = self._query(goal).reshape(m.kv_heads, g, hd)
        p = _softmax(q @ k.transpose(0, 2, 1) / math.sqrt(hd) + bias)  # [kv, g, n]
        return (p @ v).reshape(m.d), p.reshape(m.q_heads, n).mean(0)
