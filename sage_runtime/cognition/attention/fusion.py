"""Multi-sensor fusion: a goal query attends over per-sensor embeddings.

Each sensor is featurised by its modality's adapter (adapters.py: bounded, fixed-length features)
and projected linearly into one ``d``-dimensional space, where keys and values are taken. Attention logits are
``q.k / sqrt(head_dim) + log(trust + eps) + salience_gain * salience``, and ``-inf`` for stale or
missing sensors, all passed to SDPA as one additive ``attn_mask``. Identity columns appended to
the values make SDPA return each head's attention weights next to its output, so the reported
weights are exactly the ones that built the fused vector.

Backend (``backend="auto"``): on CPU the same math runs in numpy, on CUDA through SDPA. At these
sizes (a few sensors, d=64..256) torch's per-op dispatch costs more on CPU than the arithmetic;
bench_attention.py measures both against the numpy reference in one run.

The projections are a seeded random init, not trained: the goal changes the query
deterministically, but no goal "means" anything to a sensor until someone trains them.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F

from .adapters import MODALITIES, image_features, text_features, vector_features
from .sdpa import HAS_ENABLE_GQA, gqa_attention, pick_backend


def _unit(x: float) -> float:
    """Clamp to [0, 1]; NaN counts as 0 (no trust, no salience)."""
    x = float(x)
    return min(max(x, 0.0), 1.0) if x == x else 0.0


class Features(NamedTuple):
    """A sensor's adapter output, from ``SensorFusion.features``. Passed as ``Sensor.data`` it is
    used as is: a caller that keeps a sensor's last input between ticks keeps this small block
    instead of the frame, and featurises each frame once."""

    modality: str
    block: np.ndarray


class Sensor(NamedTuple):
    """One fusion input; a plain ``(modality, data, trust, salience, stale)`` tuple works too."""

    modality: str
    data: object  # None means missing: the sensor gets weight 0; a Features block skips the adapter
    trust: float = 1.0
    salience: float = 0.0
    stale: bool = False


class SensorFusion(torch.nn.Module):
    """Fuse 1..16 (or more) sensors of mixed modality into one ``d`` vector plus per-sensor weights."""

    def __init__(
        self,
        d: int = 256,
        q_heads: int = 8,
        kv_heads: int = 4,
        grid: int = 4,
        text_buckets: int = 256,
        vector_len: int = 32,
        salience_gain: float = 2.0,
        trust_eps: float = 1e-9,
        seed: int = 0,
        device: str | torch.device = "cpu",
        force_repeat_kv: bool = False,
        backend: str = "auto",
    ) -> None:
        super().__init__()
        if q_heads % kv_heads or d % q_heads:
            raise ValueError("need q_heads % kv_heads == 0 and d % q_heads == 0")
        if salience_gain <= 0 or trust_eps <= 0:
            raise ValueError("salience_gain and trust_eps must be > 0")
        self.d, self.q_heads, self.kv_heads, self.head_dim = d, q_heads, kv_heads, d // q_heads
        self.grid, self.text_buckets, self.vector_len = grid, text_buckets, vector_len
        self.salience_gain, self.trust_eps = float(salience_gain), float(trust_eps)
        self.device = torch.device(device)
        self.repeat_kv = force_repeat_kv or not HAS_ENABLE_GQA
        blocks = (3 * grid * grid, text_buckets, vector_len)
        self._offsets = dict(zip(MODALITIES, np.cumsum((0,) + blocks[:-1]).tolist()))
        self._onehot = sum(blocks)  # then one column per modality: a modality-specific bias
        raw_dim = self._onehot + len(MODALITIES)
        gen = torch.Generator().manual_seed(seed)
        scale_rows = torch.cat([torch.full((n,), 1.0 / math.sqrt(n)) for n in blocks] + [torch.ones(len(MODALITIES))])
        w_in = torch.randn(raw_dim, d, generator=gen) * scale_rows[:, None]
        w_q = torch.randn(d, d, generator=gen) / math.sqrt(d)
        w_kv = torch.randn(d, 2 * kv_heads * self.head_dim, generator=gen) / math.sqrt(d)
        # Adapters are linear in the (bounded) raw features, so raw -> K/V folds into one matrix.
        for name, w in (("w_in", w_in), ("w_q", w_q), ("w_raw_kv", w_in @ w_kv)):
            self.register_buffer(name, w.to(self.device))
        self._raw = np.zeros((16, self._onehot + len(MODALITIES)), dtype=np.float32)
        self._bias = np.zeros(16, dtype=np.float32)
        self._scratch: dict[int, torch.Tensor] = {}
        self._goal_q: dict[tuple[str, int], torch.Tensor] = {}
        self.backend = pick_backend(backend, self.device)
        self._np_kv = self.w_raw_kv.cpu().numpy()
        self._np_q: dict[str, np.ndarray] = {}
        self.eval()

    def _kv_scratch(self, n: int) -> tuple[int, torch.Tensor]:
        """K and V scratch ``[2, kv_heads, cap, head_dim + cap]`` for ``n`` sensors, ``cap`` a power of two >= 16.

        K, V and q are zero-padded to width ``head_dim + cap``; V's extra columns hold an
        identity, so one SDPA call returns each head's output and its attention weights (equal
        K/V/q widths keep SDPA on its fused CPU kernel; the zero padding leaves q.k unchanged).
        The width depends on ``n`` only, so results do not depend on what the module saw before.
        """
        cap = max(16, 1 << (n - 1).bit_length())
        if cap not in self._scratch:
            hd = self.head_dim
            kv = torch.zeros(2, self.kv_heads, cap, hd + cap, device=self.device)
            kv[1, :, :, hd:] = torch.eye(cap, device=self.device)
            self._scratch[cap] = kv
        return cap, self._scratch[cap]

    def features(self, modality: str, data: object) -> Features:
        """The modality adapter's output for one input (raises ValueError for a shape it cannot read)."""
        if modality == "image":
            return Features(modality, image_features(data, self.grid))
        if modality == "text":
            return Features(modality, text_features(data, self.text_buckets))
        if modality == "vector":
            return Features(modality, vector_features(data, self.vector_len))
        raise ValueError(f"unknown modality {modality!r}; expected one of {MODALITIES}")

    def _featurise(self, row: np.ndarray, modality: str, data: object) -> None:
        """Write one sensor's raw features (its modality block + one-hot) into ``row``."""
        if not isinstance(data, Features):
            data = self.features(modality, data)
        elif data.modality != modality:
            raise ValueError(f"features of a {data.modality} sensor given as {modality}")
        feats = data.block
        off = self._offsets[modality]
        row[:] = 0.0
        row[off : off + feats.size] = feats
        row[self._onehot + MODALITIES.index(modality)] = 1.0

    def _project(self, raw: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(raw).to(self.device) @ self.w_in

    def embed(self, sensors: Sequence[tuple]) -> torch.Tensor:
        """Sensor embeddings ``[n, d]`` in the shared space (missing sensors give a zero row).

        Keys and values are linear in these; ``forward`` uses the folded matrix, not this method.
        """
        with torch.inference_mode():
            raw = np.zeros((len(sensors), self._raw.shape[1]), dtype=np.float32)
            for i, s in enumerate(sensors):
                if s[1] is not None:
                    self._featurise(raw[i], s[0], s[1])
            return self._project(raw)

    def goal_vector(self, goal: str | torch.Tensor) -> torch.Tensor:
        """The query's source ``[d]``, RMS-normalised: a given vector, or a goal name via the text adapter."""
        with torch.inference_mode():
            if isinstance(goal, str):
                raw = np.zeros((1, self._raw.shape[1]), dtype=np.float32)
                self._featurise(raw[0], "text", goal)
                vec = self._project(raw)[0]
            else:
                vec = goal.to(self.device, torch.float32).reshape(self.d)
            return F.rms_norm(vec, (self.d,), eps=1e-12)

    def _query(self, goal: str | torch.Tensor, cap: int) -> torch.Tensor:
        """Padded query ``[1, q_heads, 1, head_dim + cap]``; cached for goal names (they repeat every tick)."""
        key = (goal, cap) if isinstance(goal, str) else None
        q = self._goal_q.get(key) if key else None
        if q is None:
            q = (self.goal_vector(goal) @ self.w_q).view(1, self.q_heads, 1, self.head_dim)
            q = F.pad(q, (0, cap))
            if key and len(self._goal_q) < 256:
                self._goal_q[key] = q
        return q

    def forward(self, goal: str | torch.Tensor, sensors: Sequence[tuple]) -> tuple[torch.Tensor, torch.Tensor]:
        """``(fused [d], weights [n])``; weights sum to 1 over usable sensors and are exactly 0 on stale/missing.

        ``sensors``: ``(modality, data, trust, salience, stale)`` tuples (or ``Sensor``). With no
        usable sensor (none given, or all stale/missing) the result is a zero vector and all-zero
        weights, never NaN.
        """
        n = len(sensors)
        if n > self._raw.shape[0]:
            self._raw = np.zeros((2 * n, self._raw.shape[1]), dtype=np.float32)
            self._bias = np.zeros(2 * n, dtype=np.float32)
        raw, bias = self._raw[:n], self._bias[:n]
        usable = 0
        for i, (modality, data, trust, salience, stale) in enumerate(sensors):
            if stale or data is None:
                bias[i] = -np.inf
                raw[i] = 0.0
                continue
            self._featurise(raw[i], modality, data)
            bias[i] = math.log(_unit(trust) + self.trust_eps) + self.salience_gain * _unit(salience)
            usable += 1
        with torch.inference_mode():
            if usable == 0:
                return torch.zeros(self.d, device=self.device), torch.zeros(n, device=self.device)
            if self.backend == "numpy":
                return self._forward_numpy(goal, raw, bias)
            hd = self.head_dim
            cap, scratch = self._kv_scratch(n)
            kv = (torch.from_numpy(raw).to(self.device) @ self.w_raw_kv).view(n, 2, self.kv_heads, hd)
            scratch[:, :, :n, :hd] = kv.permute(1, 2, 0, 3)
            mask = torch.from_numpy(bias).to(self.device).view(1, 1, 1, n)
            out = gqa_attention(
                self._query(goal, cap), scratch[:1, :, :n], scratch[1:, :, :n],
                attn_mask=mask, scale=hd**-0.5, repeat_fallback=self.repeat_kv,
            )[0, :, 0]
            return out[:, :hd].reshape(self.d), out[:, hd : hd + n].mean(0)

    def _forward_numpy(self, goal: str | torch.Tensor, raw: np.ndarray, bias: np.ndarray
                       ) -> tuple[torch.Tensor, torch.Tensor]:
        """``forward``'s attention in numpy (the CPU backend): the same logits, softmax and mean."""
        n, hd, g = raw.shape[0], self.head_dim, self.q_heads // self.kv_heads
        q = self._np_q.get(goal) if isinstance(goal, str) else None
        if q is None:
            q = self._query(goal, 0).numpy().reshape(self.kv_heads, g, hd) * np.float32(hd**-0.5)
            if isinstance(goal, str) and len(self._np_q) < 256:
                self._np_q[goal] = q
        kv = (raw @ self._np_kv).reshape(n, 2, self.kv_heads, hd)
        z = np.matmul(q, kv[:, 0].transpose(1, 2, 0)) + bias  # [kv, g, n]
        z -= z.max(-1, keepdims=True)
        p = np.exp(z, out=z)
        p /= p.sum(-1, keepdims=True)
        fused = np.matmul(p, kv[:, 1].transpose(1, 0, 2))  # [kv, g, hd]
        return torch.from_numpy(fused.reshape(self.d)), torch.from_numpy(p.reshape(self.q_heads, n).mean(0))

