"""Per-modality featurisers: any image, string or vector -> a fixed-length float32 row.

They are cheap numpy code (a few microseconds each) so that fusion can stack all sensors and
project them with one matmul. The learned-free part ends here; the projection into the shared
embedding space lives in fusion.py.
"""

from __future__ import annotations

import collections
import hashlib
import threading
from functools import lru_cache

import numpy as np
import torch

MODALITIES: tuple[str, ...] = ("image", "text", "vector")
_SAMPLES = 4  # pixels sampled per grid cell along each axis
_MAX_TEXT_BYTES = 1024
_HASH_MUL = np.uint64(2654435761)  # Knuth's multiplicative hash


def _as_numpy(data: object) -> np.ndarray:
    if isinstance(data, torch.Tensor):
        return data.detach().to("cpu").numpy()
    return np.asarray(data)


@lru_cache(maxsize=64)
def _sample_index(h: int, w: int, c: int, grid: int) -> np.ndarray:
    """Flat pixel indices ``[3*grid*grid, _SAMPLES**2]``: per output (channel, cell), the pixels averaged."""
    pos = (np.arange(grid * _SAMPLES) + 0.5) / (grid * _SAMPLES)
    rows = np.minimum((pos * h).astype(np.intp), h - 1).reshape(grid, _SAMPLES)
    cols = np.minimum((pos * w).astype(np.intp), w - 1).reshape(grid, _SAMPLES)
    chans = np.arange(3) if c >= 3 else np.zeros(3, dtype=np.intp)
    # axes: channel, cell row, cell col, sample row, sample col
    flat = (rows[None, :, None, :, None] * w + cols[None, None, :, None, :]) * c + chans[:, None, None, None, None]
    return flat.reshape(3 * grid * grid, _SAMPLES * _SAMPLES)


def image_features(data: object, grid: int) -> np.ndarray:
    """HxW, HxWx1, HxWx3 or HxWx4 image (uint8 0..255 or float 0..1) -> ``3*grid*grid`` values in [-0.5, 0.5].

    A ``grid x grid`` RGB thumbnail: each cell is the mean of ``_SAMPLES x _SAMPLES`` evenly
    spaced pixels inside it (stratified sampling, so the cost does not grow with the image size).
    Grey is replicated to RGB, alpha is dropped.
    """
    img = _as_numpy(data)
    if img.ndim == 2:
        img = img[:, :, None]
    if img.ndim != 3 or 0 in img.shape:
        raise ValueError(f"image must be HxW or HxWxC, got shape {img.shape}")
    idx = _sample_index(img.shape[0], img.shape[1], img.shape[2], grid)
    scale = 1.0 / (idx.shape[1] * (255.0 if img.dtype == np.uint8 else 1.0))
    out = np.ascontiguousarray(img).reshape(-1)[idx].sum(1, dtype=np.float32)
    out *= scale
    out -= 0.5
    return out


def _text_prefix(text: str) -> bytes:
    """The bytes featurized: the first _MAX_TEXT_BYTES of the UTF-8 text, encoded from a bounded slice
    (a 30 MiB string costs what a 1 KiB one does)."""
    return text[:_MAX_TEXT_BYTES].encode("utf-8", "replace")[:_MAX_TEXT_BYTES]


#: Hashed texts by (digest of the featurized prefix, buckets): goal names and labels repeat. Keys are
#: 16-byte digests, never the text, so the cache's memory does not grow with what clients send.
_TEXT_CACHE: collections.OrderedDict[tuple[bytes, int], np.ndarray] = collections.OrderedDict()
_TEXT_CACHE_SIZE = 1024
_TEXT_CACHE_LOCK = threading.Lock()


def _text_hash(text: str, buckets: int) -> np.ndarray:
    prefix = _text_prefix(text)
    key = (hashlib.blake2b(prefix, digest_size=16).digest(), buckets)
    with _TEXT_CACHE_LOCK:
        hit = _TEXT_CACHE.get(key)
        if hit is not None:
            _TEXT_CACHE.move_to_end(key)
            return hit
    out = _hash_prefix(prefix, buckets)
    with _TEXT_CACHE_LOCK:
        _TEXT_CACHE[key] = out
        while len(_TEXT_CACHE) > _TEXT_CACHE_SIZE:
            _TEXT_CACHE.popitem(last=False)
    return out


def _hash_prefix(prefix: bytes, buckets: int) -> np.ndarray:
    raw = np.frombuffer(prefix, dtype=np.uint8).astype(np.uint64)
    out = np.zeros(buckets, dtype=np.float32)
    if raw.size == 0:
        out.flags.writeable = False
        return out
    grams = [raw, (raw[:-1] << np.uint64(8) | raw[1:]) + np.uint64(1 << 8)]
    if raw.size > 2:
        grams.append((raw[:-2] << np.uint64(16) | raw[1:-1] << np.uint64(8) | raw[2:]) + np.uint64(1 << 24))
    codes = np.concatenate(grams)
    h = ((codes * _HASH_MUL) & np.uint64(0xFFFFFFFF)) % np.uint64(buckets)
    out += np.bincount(h.astype(np.int64), minlength=buckets).astype(np.float32)
    out /= np.sqrt(np.dot(out, out))
    out.flags.writeable = False
    return out


def text_features(data: object, buckets: int) -> np.ndarray:
    """String -> L2-normalised counts of hashed UTF-8 byte 1-, 2- and 3-grams (``buckets`` values).

    A precomputed embedding (1-D array/tensor of any length) is resampled to ``buckets`` values
    and L2-normalised instead. Strings are cached (goal names and labels repeat).
    """
    if isinstance(data, str):
        return _text_hash(data, buckets)
    vec = resample(_as_numpy(data).astype(np.float32, copy=False).reshape(-1), buckets)
    norm = float(np.sqrt(np.dot(vec, vec)))
    return vec / norm if norm > 0 else vec


@lru_cache(maxsize=256)
def _interp_plan(n: int, length: int) -> tuple[np.ndarray, np.ndarray]:
    pos = np.linspace(0.0, n - 1, length)
    lo = np.minimum(pos.astype(np.intp), n - 2)
    return lo, (pos - lo).astype(np.float32)


def resample(vec: np.ndarray, length: int) -> np.ndarray:
    """Linear resampling of a 1-D array to ``length`` points (a single value is repeated, NaN -> 0)."""
    vec = np.nan_to_num(vec.astype(np.float32, copy=False))
    n = vec.size
    if n == length:
        return vec
    if n == 0:
        return np.zeros(length, dtype=np.float32)
    if n == 1:
        return np.full(length, vec[0], dtype=np.float32)
    lo, frac = _interp_plan(n, length)
    left = vec[lo]
    return left + (vec[lo + 1] - left) * frac


def vector_features(data: object, length: int) -> np.ndarray:
    """Any-length 1-D float vector -> ``length`` values: linear resampling, then ``v / (1 + rms(v))``.

    The squashing bounds the features (|value| rms < 1) while keeping them monotone in scale.
    """
    vec = resample(_as_numpy(data).reshape(-1), length)
    return vec / np.float32(1.0 + np.sqrt(np.dot(vec, vec) / length))
