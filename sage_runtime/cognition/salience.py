"""SNARC salience: how much each sensor's input deserves attention this tick, each dim in [0, 1].

Pure logic, numpy only, no I/O. Every input becomes a fixed-length float32 feature vector
(`featurize`); `SnarcScorer.score` then scores all sensors of one tick together, vectorised over
sensors (per-sensor state lives in preallocated arrays, one row per sensor slot):

- Surprise: distance of the features from a running EMA prediction, relative to the sensor's own
  recent prediction error (pattern and statistics apart); an error no larger than usual scores
  0, a jump from a steady state ~1.
- Novelty: 1 - the best cosine similarity against the sensor's bounded memory of past feature
  vectors (one batched matmul), relative to how novel the sensor usually is (so a sensor whose
  every frame is fresh noise habituates instead of scoring high forever).
- Arousal: how far the frame's magnitude exceeds the sensor's recent range (last N frames).
- Reward: |EMA of `reward` messages| for that target, decaying with a half-life.
- Conflict: for pairs of sensors whose changes usually agree (slow running correlation), how far
  their recent (fast running) correlation has dropped below it.

Calibrated so that "nothing is happening" scores 0: no sigmoid offsets, every dim is 0 for a
constant input once it has been seen. total = weighted mean of the dims (weights in params).
"""

from __future__ import annotations

import itertools
import math
import zlib
from functools import lru_cache
from dataclasses import dataclass, field
from typing import Any, Mapping

import numpy as np
from pydantic import Field, model_validator
from pydantic.dataclasses import dataclass as pydantic_dataclass

from sage_runtime.params import PARAMS

#: Feature layout: [pattern (dim - N_STATS) | stats]. Stats are signed-log compressed.
N_STATS = 8
STAT_BIAS, STAT_LEVEL, STAT_SPREAD, STAT_MIN, STAT_MAX, STAT_MAG, STAT_SIZE, STAT_POS = range(N_STATS)
EVENT_PRIORITY_LEVEL = {"info": 0.0, "warning": 1.0, "critical": 2.0}


@pydantic_dataclass(frozen=True, config=PARAMS)
class SnarcWeights:
    surprise: float = Field(0.3, ge=0)
    novelty: float = Field(0.3, ge=0)
    arousal: float = Field(0.2, ge=0)
    reward: float = Field(0.1, ge=0)
    conflict: float = Field(0.1, ge=0)

    @model_validator(mode="after")
    def _some_weight(self) -> "SnarcWeights":
        if self.surprise + self.novelty + self.arousal + self.reward + self.conflict <= 0:
            raise ValueError("weights: at least one weight must be > 0")
        return self


@pydantic_dataclass(frozen=True, config=PARAMS)
class SalienceParams:
    """dim: feature length. max_sensors: slots (the least recently seen sensor is evicted beyond).
    memory_size: novelty memory rows per sensor; a frame is stored when its raw novelty exceeds
    store_above. predictor_alpha: EMA rate of the surprise predictor; error_rate: EMA rate of its
    error history; surprise_scale: error ratio (above 1) giving 1 - 1/e. rel_floor: a change below
    this share of the feature norm counts as none. novelty_rate: EMA rate of the usual novelty.
    arousal_window: recent magnitudes kept; arousal_floor: smallest range (log-magnitude units)
    arousal is measured against. reward_rate, reward_half_life_s: reward EMA and its decay.
    conflict_slow / conflict_fast: EMA rates of the usual and the recent correlation;
    conflict_gain: a drop of 1/gain of the usual correlation is full conflict.
    max_elements: large tensors are strided down to this many values before featurizing, and only
    the first this many characters of a text are."""

    dim: int = Field(64, ge=N_STATS + 8, le=4096)
    max_sensors: int = Field(64, ge=1, le=4096)
    memory_size: int = Field(128, ge=1, le=65536)
    store_above: float = Field(0.05, ge=0, lt=1)
    predictor_alpha: float = Field(0.3, gt=0, le=1)
    error_rate: float = Field(0.1, gt=0, le=1)
    surprise_scale: float = Field(2.0, gt=0)
    rel_floor: float = Field(1e-3, ge=0, lt=1)
    novelty_rate: float = Field(0.05, gt=0, le=1)
    arousal_window: int = Field(100, ge=2, le=100000)
    arousal_floor: float = Field(0.25, gt=0)
    reward_rate: float = Field(0.3, gt=0, le=1)
    reward_half_life_s: float = Field(60.0, gt=0)
    conflict_slow: float = Field(0.02, gt=0, le=1)
    conflict_fast: float = Field(0.25, gt=0, le=1)
    conflict_gain: float = Field(2.0, gt=0)
    max_elements: int = Field(16384, ge=64, le=1 << 30)
    weights: SnarcWeights = field(default_factory=SnarcWeights)

    @model_validator(mode="after")
    def _fast_above_slow(self) -> "SalienceParams":
        if self.conflict_fast <= self.conflict_slow:
            raise ValueError("conflict_fast must be larger than conflict_slow")
        return self


@dataclass(frozen=True)
class Snarc:
    surprise: float
    novelty: float
    arousal: float
    reward: float
    conflict: float
    total: float

    def to_dict(self) -> dict[str, float]:
        return {k: round(getattr(self, k), 4) for k in ("surprise", "novelty", "arousal", "reward", "conflict",
                                                          "total")}


def _slog(x: np.ndarray | float) -> np.ndarray | float:
    if isinstance(x, float):  # scalars: math is ~10x cheaper than numpy's ufunc dispatch
        return math.copysign(math.log1p(abs(x)), x) if x else 0.0
    return np.sign(x) * np.log1p(np.abs(x))


def torch_bfloat16() -> Any:
    """torch.bfloat16 when torch is loaded (a tensor exists only then); this module never imports it."""
    import sys

    torch = sys.modules.get("torch")
    return torch.bfloat16 if torch is not None else None


@lru_cache(maxsize=256)
def _pool_plan(n: int, bins: int) -> tuple[np.ndarray, np.ndarray]:
    edges = (np.arange(bins) * n) // bins
    return edges, np.diff(np.append(edges, n)).astype(np.float64)


def _pool(values: np.ndarray, bins: int) -> np.ndarray:
    """Resample a 1-d array to `bins` values: bin means when longer, interpolation when shorter."""
    n = values.size
    if n == 0:
        return np.zeros(bins)
    if n >= bins:
        edges, counts = _pool_plan(n, bins)
        return np.add.reduceat(values, edges) / counts
    return np.interp(np.linspace(0.0, n - 1, bins), np.arange(n), values)


def _sample(data: Any, max_elements: int) -> np.ndarray:
    """At most max_elements values of a tensor, evenly strided, as float64 with NaN/Inf -> 0."""
    if hasattr(data, "detach"):  # a torch tensor: stride on its device, then copy only the sample
        flat_t = data.detach().reshape(-1)
        if flat_t.numel() > max_elements:
            flat_t = flat_t[:: -(-flat_t.numel() // max_elements)]
        cpu = flat_t.cpu()
        data = cpu.float().numpy() if cpu.dtype == torch_bfloat16() else cpu.numpy()
    flat = np.asarray(data).reshape(-1)
    if flat.size > max_elements:
        flat = flat[:: -(-flat.size // max_elements)]
    v = flat.astype(np.float64)  # a copy: the sample is ours to clean
    if v.dtype.kind == "f" and not np.isfinite(v).all():
        v[~np.isfinite(v)] = 0.0
    return v


def _tensor_features(data: Any, dim: int, max_elements: int) -> np.ndarray:
    v = _sample(data, max_elements)
    out = np.zeros(dim)
    n = v.size
    if n == 0:
        out[STAT_BIAS] = 1.0
        return out
    mean = float(v.sum()) / n
    centred = v - mean
    # ufuncs, not np.dot: OpenBLAS threads a dot product over 10,000 elements, and its threads'
    # spin-waits cost milliseconds on a busy box (measured 13 ms per call under load)
    std = math.sqrt(float(np.multiply(centred, centred, out=centred).sum()) / n)
    rms = math.sqrt(mean * mean + std * std)
    pooled = _pool(v, dim - N_STATS)
    # Unit-variance shape, except that a shape tiny next to the frame's level (noise on a
    # steady reading) stays tiny instead of being blown up to full scale.
    pooled -= pooled.sum() / pooled.size
    p_std = math.sqrt(float(np.square(pooled).sum()) / pooled.size)
    stats = out[dim - N_STATS:]
    stats[:] = (1.0, _slog(mean), _slog(std), _slog(float(v.min())), _slog(float(v.max())), math.log1p(rms),
                math.log1p(n) / 4, np.count_nonzero(v > 0) / n)
    out[:dim - N_STATS] = pooled / (p_std + 0.05 * rms + 1e-12)
    return out


def _hashed(tokens: list[bytes], bins: int, values: np.ndarray | None = None) -> np.ndarray:
    idx = np.fromiter((zlib.crc32(t) % bins for t in tokens), dtype=np.int64, count=len(tokens))
    return np.bincount(idx, weights=values, minlength=bins).astype(np.float64)


def _text_features(text: str, dim: int, max_chars: int) -> np.ndarray:
    """Features of the first `max_chars` characters (the cost is bounded; a 30 MiB text once took a
    20 s tick); the length statistic still sees the whole text."""
    bins = dim - N_STATS
    head = text[:max_chars]
    b = np.frombuffer(head.encode("utf-8", "replace"), dtype=np.uint8).astype(np.uint64)
    out = np.zeros(dim)
    if b.size >= 3:
        grams = (b[:-2] * 1000003 ^ b[1:-1] * 10007 ^ b[2:] * 101) % np.uint64(bins)
        counts = np.bincount(grams.astype(np.int64), minlength=bins).astype(np.float64)
        out[:bins] = counts / np.linalg.norm(counts) * math.sqrt(bins) / 2
    words = len(head.split())
    out[bins:] = (1.0, _slog(words), 0.0, 0.0, 0.0, math.log1p(len(text)) / 2, math.log1p(b.size) / 4,
                  float(b.size > 0))
    return out


#: An event's first fields and their first bytes are featurized; the rest cannot stall the tick.
EVENT_MAX_FIELDS = 64
EVENT_TOKEN_BYTES = 256


def _event_features(body: Mapping[str, Any], dim: int) -> np.ndarray:
    bins = dim - N_STATS
    tokens, numeric_keys, numbers = [], [], []
    for key, value in itertools.islice(body.items(), EVENT_MAX_FIELDS):
        key = str(key)[:EVENT_TOKEN_BYTES]
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            shown = value[:EVENT_TOKEN_BYTES] if isinstance(value, (str, bytes)) else \
                (value if value is None or isinstance(value, bool) else type(value).__name__)
            tokens.append(f"{key}={shown}".encode("utf-8", "replace")[:EVENT_TOKEN_BYTES])
        elif math.isfinite(value):
            numeric_keys.append(f"#{key}".encode("utf-8", "replace"))
            numbers.append(float(value))
    out = np.zeros(dim)
    pattern = _hashed(tokens, bins)
    if numbers:
        pattern += _hashed(numeric_keys, bins, _slog(np.asarray(numbers)))
    norm = np.linalg.norm(pattern)
    out[:bins] = pattern / norm * math.sqrt(bins) / 2 if norm > 0 else 0.0
    level = EVENT_PRIORITY_LEVEL.get(str(body.get("priority")), 0.0)
    out[bins:] = (1.0, level, 0.0, 0.0, 0.0, level, math.log1p(len(body)) / 4, 1.0)
    return out


def featurize(kind: str, data: Any, dim: int = 64, max_elements: int = 16384) -> np.ndarray:
    """A fixed-length float32 feature vector for one input.

    tensor: any shape/dtype (numpy, torch or nested lists): the flattened values resampled to
        dim - 8 bins, centred and scaled to unit variance, plus statistics (level, spread,
        min, max, log magnitude, size, share positive).
    text: hashed character 3-grams of the first max_elements characters, plus word count and log
        length (its magnitude).
    event: hashed `key=value` tokens and numeric fields; priority is its magnitude.
    """
    if kind == "tensor":
        out = _tensor_features(data, dim, max_elements)
    elif kind == "text":
        out = _text_features(data if isinstance(data, str) else str(data)[:max_elements], dim, max_elements)
    elif kind == "event":
        if not isinstance(data, Mapping):
            raise ValueError("event features need a mapping payload")
        out = _event_features(data, dim)
    else:
        raise ValueError(f"cannot featurize kind {kind!r} (tensor, text or event)")
    return out.astype(np.float32)


class SnarcScorer:
    """Per-sensor SNARC state and scoring. Call score() once per tick with every sensor that
    produced a frame (features from featurize), and reward() for each `reward` message."""

    def __init__(self, params: SalienceParams | None = None) -> None:
        p = self.params = params or SalienceParams()
        s, d = p.max_sensors, p.dim
        self._slots: dict[str, int] = {}
        self._last_seen = np.full(s, -np.inf)
        self._pred = np.zeros((s, d))
        self._err = np.zeros((s, 2))
        self._seen = np.zeros(s, dtype=bool)
        self._memory = np.zeros((s, p.memory_size, d), dtype=np.float32)
        self._mem_count = np.zeros(s, dtype=np.int64)
        self._mem_next = np.zeros(s, dtype=np.int64)
        self._novelty_base = np.zeros(s)
        self._mags = np.zeros((s, p.arousal_window))
        self._mag_next = np.zeros(s, dtype=np.int64)
        self._level = np.zeros(s)
        self._d_mean = np.zeros(s)
        self._d_var = np.zeros(s)
        self._d_count = np.zeros(s, dtype=np.int64)
        self._c_slow = np.zeros((s, s))
        self._c_fast = np.zeros((s, s))
        self._pairs = np.zeros((s, s))
        self._rewards: dict[str, tuple[float, float]] = {}
        w = p.weights
        self._weights = np.array([w.surprise, w.novelty, w.arousal, w.reward, w.conflict])
        self._weights = self._weights / self._weights.sum()

    # ------------------------------------------------------------------ slots

    def _slot(self, name: str, now: float) -> int:
        slot = self._slots.get(name)
        if slot is None:
            if len(self._slots) < self.params.max_sensors:
                slot = len(self._slots)
            else:  # evict the least recently seen sensor
                slot = int(np.argmin(self._last_seen))
                del self._slots[next(k for k, v in self._slots.items() if v == slot)]
                self._reset(slot)
            self._slots[name] = slot
        self._last_seen[slot] = now
        return slot

    def _reset(self, slot: int) -> None:
        for arr in (self._pred, self._memory, self._mags):
            arr[slot] = 0
        for arr in (self._err, self._seen, self._mem_count, self._mem_next, self._novelty_base, self._mag_next,
                    self._level, self._d_mean, self._d_var, self._d_count):
            arr[slot] = 0
        for arr in (self._c_slow, self._c_fast, self._pairs):
            arr[slot, :] = 0
            arr[:, slot] = 0

    # ------------------------------------------------------------------ rewards

    def reward(self, target: str, value: float, now: float) -> None:
        """A `reward` message (value in [-1, 1]) for `target` (a sensor name). The learned value
        is an EMA of the rewards, decaying toward 0 with reward_half_life_s; the reward dim is its
        magnitude (a punished target is as salient as a rewarded one)."""
        if not (math.isfinite(value) and -1.0 <= value <= 1.0):
            raise ValueError("reward value must be in [-1, 1]")
        current = self._reward_value(target, now)
        rate = self.params.reward_rate
        self._rewards.pop(target, None)
        if len(self._rewards) >= self.params.max_sensors:  # bounded: forget the least recently rewarded
            del self._rewards[next(iter(self._rewards))]
        self._rewards[target] = (current + rate * (value - current), now)

    def _reward_value(self, target: str, now: float) -> float:
        value, at = self._rewards.get(target, (0.0, now))
        return value * 0.5 ** (max(now - at, 0.0) / self.params.reward_half_life_s)

    # ------------------------------------------------------------------ scoring

    def score(self, features: Mapping[str, np.ndarray], now: float) -> dict[str, Snarc]:
        """Score every sensor with a frame this tick; all together, since conflict is joint."""
        if not features:
            return {}
        names = list(features)
        if len(names) > self.params.max_sensors:
            raise ValueError(f"{len(names)} sensors in one tick, more than max_sensors={self.params.max_sensors}")
        idx = np.array([self._slot(n, now) for n in names])
        x = np.stack([np.asarray(features[n], dtype=np.float64).reshape(-1) for n in names])
        if x.shape[1] != self.params.dim:
            raise ValueError(f"features must have length {self.params.dim}, got {x.shape[1]}")
        bad = ~np.isfinite(x)
        if bad.any():
            x[bad] = 0.0
        first = ~self._seen[idx]
        surprise = self._surprise(idx, x, first)
        novelty = self._novelty(idx, x)
        arousal = self._arousal(idx, x, first)
        conflict = self._conflict(idx, x, first)
        reward = np.array([min(abs(self._reward_value(n, now)), 1.0) for n in names])
        self._seen[idx] = True
        dims = np.minimum(np.maximum(np.stack([surprise, novelty, arousal, reward, conflict], axis=1), 0.0), 1.0)
        total = np.minimum(dims @ self._weights, 1.0).tolist()
        return {n: Snarc(*row, total[i]) for i, (n, row) in enumerate(zip(names, dims.tolist()))}

    def _surprise(self, idx: np.ndarray, x: np.ndarray, first: np.ndarray) -> np.ndarray:
        """Scored separately for the pattern and the statistics part, each against its own error
        history, taking the larger: a level shift on a noisy sensor is buried in the pattern's
        frame-to-frame noise but stands out in the statistics."""
        p = self.params
        pred = np.where(first[:, None], x, self._pred[idx])
        split = p.dim - N_STATS
        cols = np.array([0, split])
        x_norm = np.sqrt(np.add.reduceat(x * x, cols, axis=1))  # (n, 2): pattern, statistics
        p_norm = np.sqrt(np.add.reduceat(pred * pred, cols, axis=1))
        diff = x - pred
        floor = p.rel_floor * 0.5 * (x_norm + p_norm) + 1e-12
        err = np.maximum(np.sqrt(np.add.reduceat(diff * diff, cols, axis=1)) - floor, 0.0)
        ratio = (err / (self._err[idx] + floor)).max(axis=1)
        surprise = np.where(first, 0.0, 1.0 - np.exp(-np.maximum(ratio - 1.0, 0.0) / p.surprise_scale))
        self._err[idx] = np.where(first[:, None], 0.0, (1 - p.error_rate) * self._err[idx] + p.error_rate * err)
        self._pred[idx] = (1 - p.predictor_alpha) * pred + p.predictor_alpha * x
        return surprise

    def _novelty(self, idx: np.ndarray, x: np.ndarray) -> np.ndarray:
        p = self.params
        norm = np.sqrt(np.einsum("ij,ij->i", x, x))[:, None]
        unit = (x / np.maximum(norm, 1e-12)).astype(np.float32)
        sims = np.matmul(self._memory[idx], unit[:, :, None])[:, :, 0]  # (n, memory_size): one matmul
        valid = np.arange(p.memory_size)[None, :] < self._mem_count[idx][:, None]
        best = np.where(valid, sims, -1.0).max(axis=1)
        raw = np.minimum(np.maximum(1.0 - best, 0.0), 1.0)
        base = self._novelty_base[idx]
        novelty = np.maximum(raw - base, 0.0) / np.maximum(1.0 - base, 1e-6)
        self._novelty_base[idx] = (1 - p.novelty_rate) * base + p.novelty_rate * raw
        store = raw > p.store_above
        rows, cols = idx[store], self._mem_next[idx[store]]
        self._memory[rows, cols] = unit[store]
        self._mem_next[rows] = (cols + 1) % p.memory_size
        self._mem_count[rows] = np.minimum(self._mem_count[rows] + 1, p.memory_size)
        return novelty

    def _arousal(self, idx: np.ndarray, x: np.ndarray, first: np.ndarray) -> np.ndarray:
        p = self.params
        mag = x[:, p.dim - N_STATS + STAT_MAG]
        self._mags[idx[first]] = mag[first][:, None]  # a new sensor's range starts at its first frame
        window = self._mags[idx]
        hi, lo = window.max(axis=1), window.min(axis=1)
        excess = np.maximum(mag - hi, 0.0)
        arousal = 1.0 - np.exp(-excess / np.maximum(hi - lo, p.arousal_floor))
        self._mags[idx, self._mag_next[idx]] = mag
        self._mag_next[idx] = (self._mag_next[idx] + 1) % p.arousal_window
        return arousal

    def _conflict(self, idx: np.ndarray, x: np.ndarray, first: np.ndarray) -> np.ndarray:
        """Change signal: the signed step of each sensor's level statistic, standardised by its
        own running mean and variance. Pairs seen together update an EMA of products (slow: the
        usual agreement; fast: the recent one); conflict = rho_slow+ * gain * (rho_slow - rho_fast)+,
        with the usual correlation trusted only after ~1/conflict_slow joint ticks."""
        p = self.params
        level = x[:, p.dim - N_STATS + STAT_LEVEL]
        d = np.where(first, 0.0, level - self._level[idx])
        self._level[idx] = level
        known = self._d_count[idx] > 1
        sd = np.sqrt(self._d_var[idx])
        z = np.where(known & (sd > 1e-9), (d - self._d_mean[idx]) / np.maximum(sd, 1e-9), 0.0)
        z = np.minimum(np.maximum(z, -6.0), 6.0)
        live = ~first
        delta = d - self._d_mean[idx]
        rate = np.maximum(p.conflict_slow, 1.0 / (self._d_count[idx] + 1))
        self._d_mean[idx] += np.where(live, rate * delta, 0.0)
        self._d_var[idx] = np.where(live, (1 - rate) * (self._d_var[idx] + rate * delta * delta), self._d_var[idx])
        self._d_count[idx] += live
        if len(idx) < 2:
            return np.zeros(len(idx))
        grid = np.ix_(idx, idx)
        outer = np.outer(z, z)
        pair_live = np.outer(live, live)
        slow, fast = self._c_slow[grid], self._c_fast[grid]
        slow = np.where(pair_live, (1 - p.conflict_slow) * slow + p.conflict_slow * outer, slow)
        fast = np.where(pair_live, (1 - p.conflict_fast) * fast + p.conflict_fast * outer, fast)
        self._c_slow[grid], self._c_fast[grid] = slow, fast
        self._pairs[grid] += pair_live
        rho_slow = _correlation(slow)
        rho_fast = _correlation(fast)
        confidence = np.minimum(self._pairs[grid] * p.conflict_slow, 1.0)
        pair = confidence * np.maximum(rho_slow, 0.0) * np.clip(p.conflict_gain * (rho_slow - rho_fast), 0.0, 1.0)
        np.fill_diagonal(pair, 0.0)
        return pair.max(axis=1)

    def status(self) -> dict[str, Any]:
        return {"sensors": len(self._slots), "memory_rows": int(self._mem_count.sum()),
                "rewards": {k: round(v[0], 4) for k, v in self._rewards.items()}}


def _correlation(cov: np.ndarray) -> np.ndarray:
    diag = np.sqrt(np.maximum(np.diag(cov), 0.0))
    denom = np.outer(diag, diag)
    return np.where(denom > 1e-9, cov / np.maximum(denom, 1e-9), 0.0)
