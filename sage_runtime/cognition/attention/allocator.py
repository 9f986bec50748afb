"""ATP allocator: the metabolic state is the query, the candidate targets are the keys.

Each state has a fixed, learning-free query (a non-negative weight per key column, pre-multiplied
by the state's inverse temperature). SDPA with identity values returns the softmax over targets;
a documented per-state anchor distribution is then mixed in (spread, top target, crisis target,
consolidation target). See docs/attention.md for the table and why a target's share can never
fall when its salience or trust rises.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from .sdpa import pick_backend

#: Named columns of the target feature tensor ``[N, len(FEATURES)]`` (float32).
FEATURES: tuple[str, ...] = (
    "surprise",  # SNARC S, in [0, 1]
    "novelty",  # SNARC N, in [0, 1]
    "arousal",  # SNARC A, in [0, 1]
    "reward",  # SNARC R, in [0, 1]
    "conflict",  # SNARC C, in [0, 1]
    "trust",  # trust ledger value, in [0, 1]
    "goal_relevance",  # in [0, 1]
    "cost_ms",  # measured cost per step in ms (ATP), >= 0
    "staleness_s",  # seconds since the target's input last changed, >= 0
    "is_consolidation",  # 1 for a memory-consolidation target, else 0
    "is_crisis",  # 1 for the target a crisis event names, else 0
)
COL: dict[str, int] = {name: i for i, name in enumerate(FEATURES)}
SALIENCE: tuple[str, ...] = FEATURES[:5]
#: Columns turned into penalties ``-log1p(x)`` in the key; all others are clamped to [0, 1].
_LOG_COLUMNS = ("cost_ms", "staleness_s")
_DEFAULTS = {"trust": 0.5}

STATES: tuple[str, ...] = ("WAKE", "FOCUS", "DREAM", "CRISIS", "REST")
ANCHORS = ("uniform", "top", "crisis", "consolidation")


@dataclass(frozen=True)
class StatePattern:
    """How one metabolic state allocates.

    ``weights``: the state's query, one non-negative weight per key column (``FEATURES`` order);
    ``scale``: inverse temperature of the softmax; ``anchor`` / ``mix``: the share ``mix`` of the
    ATP goes to the anchor distribution; ``noise``: std of seeded Gaussian noise on the logits.
    """

    weights: tuple[float, ...]
    scale: float
    anchor: str
    mix: float
    noise: float = 0.0

    def __post_init__(self) -> None:
        if len(self.weights) != len(FEATURES):
            raise ValueError(f"weights needs {len(FEATURES)} entries, got {len(self.weights)}")
        if min(self.weights) < 0:
            raise ValueError("query weights must be >= 0 (monotonicity in salience and trust)")
        if self.anchor not in ANCHORS:
            raise ValueError(f"anchor must be one of {ANCHORS}")
        if not (0.0 <= self.mix <= 1.0) or self.scale <= 0 or self.noise < 0:
            raise ValueError("need 0 <= mix <= 1, scale > 0, noise >= 0")


#                     S    N    A    R    C   trust goal cost stale consol crisis
DEFAULT_PATTERNS: dict[str, StatePattern] = {
    "WAKE": StatePattern((1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.5, 0.5, 0.5, 0.0, 0.0), 1.0, "uniform", 0.25),
    "FOCUS": StatePattern((1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 2.0, 0.25, 0.5, 0.0, 0.0), 3.0, "top", 0.6),
    "CRISIS": StatePattern((1.0, 0.5, 2.0, 1.0, 2.0, 1.0, 0.5, 0.0, 0.5, 0.0, 8.0), 3.0, "crisis", 0.9),
    "DREAM": StatePattern((0.5, 2.0, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.0, 1.0, 0.0), 0.5, "uniform", 0.35, 0.5),
    "REST": StatePattern((0.5, 0.5, 0.5, 0.5, 0.5, 1.0, 0.5, 1.0, 0.0, 4.0, 0.0), 1.0, "consolidation", 0.5),
}


def state_name(state: object) -> str:
    """Accept 'WAKE', 'wake' or an enum member whose name is a state."""
    name = str(getattr(state, "name", state)).upper()
    if name not in STATES:
        raise ValueError(f"unknown metabolic state {state!r}; expected one of {STATES}")
    return name


def build_features(
    targets: Sequence[Mapping[str, float]], device: str | torch.device = "cpu"
) -> torch.Tensor:
    """Feature tensor ``[N, F]`` from one dict per target; missing keys default to 0 (trust 0.5)."""
    rows = []
    for t in targets:
        unknown = set(t) - set(COL)
        if unknown:
            raise ValueError(f"unknown target feature(s) {sorted(unknown)}; known: {FEATURES}")
        rows.append([float(t.get(name, _DEFAULTS.get(name, 0.0))) for name in FEATURES])
    return torch.tensor(rows, dtype=torch.float32, device=device).reshape(len(rows), len(FEATURES))


class AtpAllocator(torch.nn.Module):
    """Split a tick's ATP over N targets (any N, no rebuild) according to the metabolic state.

    Has no trainable weights: the per-state queries are documented constants. ``seed`` seeds the
    DREAM noise used when ``allocate`` gets no seed of its own.
    """

    def __init__(
        self,
        patterns: Mapping[str, StatePattern] | None = None,
        rest_consolidation_share: float | None = None,
        seed: int = 0,
        device: str | torch.device = "cpu",
        backend: str = "auto",
    ) -> None:
        super().__init__()
        pats = dict(DEFAULT_PATTERNS if patterns is None else patterns)
        if set(pats) != set(STATES):
            raise ValueError(f"patterns must cover exactly {STATES}")
        if rest_consolidation_share is not None:
            p = pats["REST"]
            pats["REST"] = StatePattern(p.weights, p.scale, p.anchor, float(rest_consolidation_share), p.noise)
        self.patterns: dict[str, StatePattern] = pats
        self.device = torch.device(device)
        q = torch.tensor([[w * pats[s].scale for w in pats[s].weights] for s in STATES], dtype=torch.float32)
        self.register_buffer("queries", q.to(self.device), persistent=False)
        log_cols = torch.tensor([n in _LOG_COLUMNS for n in FEATURES], device=self.device)
        self.register_buffer("log_cols", log_cols, persistent=False)
        self._padded: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        self._gen = torch.Generator(device=self.device).manual_seed(seed)
        self._seeded = torch.Generator(device=self.device)
        self.backend = pick_backend(backend, self.device)
        self._np_queries = q.numpy()
        self._np_log = log_cols.cpu().numpy()
        self.eval()

    def keys(self, features: torch.Tensor) -> torch.Tensor:
        """Key per target: salience, trust, goal, flags clamped to [0, 1]; cost and staleness as -log1p."""
        x = torch.nan_to_num(features, nan=0.0).clamp(min=0.0)
        return torch.where(self.log_cols, -torch.log1p(x), x.clamp(max=1.0))

    def allocate(
        self, state: object, features: torch.Tensor, total_atp: float, seed: int | None = None
    ) -> torch.Tensor:
        """ATP per target ``[N]`` (float64, >= 0, sums to ``total_atp``) for ``features [N, F]``."""
        return self.allocate_batch(state, features.unsqueeze(0), total_atp, seed)[0]

    def allocate_batch(
        self,
        state: object,
        features: torch.Tensor,
        total_atp: float | torch.Tensor,
        seed: int | None = None,
        mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Batched ``allocate``: ``features [B, N, F]``, optional ``mask [B, N]`` (False = padding).

        Padding gets exactly 0; each row sums to its ``total_atp`` (a float or a ``[B]`` tensor) and
        needs at least one real target.
        """
        name = state_name(state)
        pat = self.patterns[name]
        if isinstance(total_atp, (int, float)) and total_atp < 0:
            raise ValueError("total_atp must be >= 0")
        b, n, _ = features.shape
        if n == 0:
            return torch.zeros(b, 0, dtype=torch.float64, device=self.device)
        if mask is not None and not bool(mask.any(-1).all()):
            raise ValueError("every row of mask needs at least one real target")
        if self.backend == "numpy":
            return self._allocate_numpy(name, pat, features, total_atp, seed, mask)
        with torch.inference_mode():
            k = self.keys(features.to(self.device, torch.float32))
            valid = None
            if mask is not None:
                mask = mask.to(self.device)
                valid = mask.to(k.dtype)
                k = k * valid.unsqueeze(-1)
            logit_bias = self._logit_bias(pat, b, n, mask, seed)
            width, queries, eye = self._padding(n)
            q = queries[STATES.index(name)].expand(b, 1, 1, width)
            k_pad = F.pad(k, (0, width - k.shape[-1])).unsqueeze(1)
            v = eye[:n].expand(b, 1, n, width)
            w = F.scaled_dot_product_attention(q, k_pad, v, attn_mask=logit_bias, scale=1.0)[..., :n].reshape(b, n)
            alloc = self._mix(pat, w, k, valid)
            if isinstance(total_atp, (int, float)):
                return alloc.mul_(float(total_atp) / alloc.sum(-1, keepdim=True))
            total = torch.as_tensor(total_atp, dtype=torch.float64, device=alloc.device).reshape(-1, 1)
            return alloc.mul_(total / alloc.sum(-1, keepdim=True))

    def _allocate_numpy(self, name: str, pat: StatePattern, features: torch.Tensor, total_atp: float | torch.Tensor,
                        seed: int | None, mask: torch.Tensor | None) -> torch.Tensor:
        """``allocate_batch`` in numpy (the CPU backend): the same keys, logits, noise and mix."""
        b, n, _ = features.shape
        x = np.fmax(features.detach().numpy().astype(np.float32, copy=False), 0.0)  # NaN -> 0, clamp at 0
        k = np.where(self._np_log, -np.log1p(x), np.minimum(x, 1.0))
        valid = None
        if mask is not None:
            valid = mask.numpy().astype(np.float64)
            k *= valid[..., None]
        z = k @ self._np_queries[STATES.index(name)]  # [B, N]
        bias = self._logit_bias(pat, b, n, mask, seed)
        if bias is not None:
            z += bias.numpy().reshape(b, n)
        z -= z.max(-1, keepdims=True)
        w = np.exp(z).astype(np.float64)
        w /= w.sum(-1, keepdims=True)
        alloc = _mix_numpy(pat, w, k, valid)
        total = float(total_atp) if isinstance(total_atp, (int, float)) else \
            torch.as_tensor(total_atp, dtype=torch.float64).numpy().reshape(-1, 1)
        alloc *= total / alloc.sum(-1, keepdims=True)
        return torch.from_numpy(alloc)

    def _padding(self, n: int) -> tuple[int, torch.Tensor, torch.Tensor]:
        """Queries and identity values zero-padded to a common width (a power of two >= 16, >= n).

        SDPA's fused CPU kernel needs equal q/k/v widths; zero columns leave q.k unchanged, and
        the identity values make SDPA return the softmax row. The width depends on n only.
        """
        width = max(16, len(FEATURES), 1 << (n - 1).bit_length())
        if width not in self._padded:
            queries = F.pad(self.queries, (0, width - self.queries.shape[1]))
            self._padded[width] = (queries, torch.eye(width, device=self.device))
        return (width, *self._padded[width])

    def _logit_bias(
        self, pat: StatePattern, b: int, n: int, mask: torch.Tensor | None, seed: int | None
    ) -> torch.Tensor | None:
        """Additive logit term: seeded noise (DREAM) and -inf on padding, shaped for SDPA."""
        bias = None
        if pat.noise > 0:
            gen = self._gen if seed is None else self._seeded.manual_seed(seed)
            bias = torch.randn(b, 1, 1, n, generator=gen, device=self.device).mul_(pat.noise)
        if mask is not None:
            pad = torch.zeros(b, 1, 1, n, device=self.device).masked_fill_(~mask.view(b, 1, 1, n), float("-inf"))
            bias = pad if bias is None else bias + pad
        return bias

    @staticmethod
    def _mix(pat: StatePattern, w: torch.Tensor, k: torch.Tensor, valid: torch.Tensor | None) -> torch.Tensor:
        """``(1 - mix) * softmax + mix * anchor``, in float64 so the final sum is exact to 1e-12."""
        w = w.double()
        if pat.anchor == "uniform":
            if valid is None:
                return w.mul_(1.0 - pat.mix).add_(pat.mix / w.shape[-1])
            v = valid.double()
            return w.mul_(1.0 - pat.mix).add_(v * (pat.mix / v.sum(-1, keepdim=True)))
        if pat.anchor in ("top", "crisis"):
            rank = w if pat.anchor == "top" else w + 2.0 * k[..., COL["is_crisis"]].double()
            idx = rank.argmax(-1, keepdim=True)
            return w.mul_(1.0 - pat.mix).scatter_add_(-1, idx, torch.full_like(idx, pat.mix, dtype=w.dtype))
        # consolidation: the share is reserved only when a consolidation target exists
        c = k[..., COL["is_consolidation"]].double()
        n_c = c.sum(-1, keepdim=True)
        mix = pat.mix * (n_c > 0).double()
        return w.mul_(1.0 - mix).add_(mix * c / n_c.clamp(min=1e-12))


def _mix_numpy(pat: StatePattern, w: np.ndarray, k: np.ndarray, valid: np.ndarray | None) -> np.ndarray:
    """``AtpAllocator._mix`` in numpy, float64 (``w [B, N]`` is modified)."""
    if pat.anchor == "uniform":
        anchor = pat.mix / w.shape[-1] if valid is None else valid * (pat.mix / valid.sum(-1, keepdims=True))
        w *= 1.0 - pat.mix
        w += anchor
        return w
    if pat.anchor in ("top", "crisis"):
        rank = w if pat.anchor == "top" else w + 2.0 * k[..., COL["is_crisis"]]
        idx = rank.argmax(-1)
        w *= 1.0 - pat.mix
        w[np.arange(w.shape[0]), idx] += pat.mix
        return w
    c = k[..., COL["is_consolidation"]].astype(np.float64)
    n_c = c.sum(-1, keepdims=True)
    mix = pat.mix * (n_c > 0)
    w *= 1.0 - mix
    w += mix * c / np.maximum(n_c, 1e-12)
    return w


class UniformAllocator:
    """A measured baseline, not a mode for production (`attention.allocator: uniform`): every
    target gets the same share whatever the state, salience or trust, so benchmarks can show what
    the state-driven allocator buys over it at the same total ATP."""

    def allocate(self, state: object, features: torch.Tensor, total_atp: float, seed: int | None = None
                 ) -> torch.Tensor:
        state_name(state)
        n = features.shape[0]
        if total_atp < 0:
            raise ValueError("total_atp must be >= 0")
        return torch.full((n,), float(total_atp) / n if n else 0.0, dtype=torch.float64)
