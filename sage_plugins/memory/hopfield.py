"""Retrieval as refinement: the modern Hopfield update (Ramsauer et al. 2020, "Hopfield Networks
is All You Need").

With unit patterns X (n x d, passed here as its transpose `patterns` = X^T, d x n), inverse
temperature beta and state q:

    update:  q <- X^T softmax(beta * X q)
    energy:  E(q) = -lse(beta, X q) + 0.5 q.q + log(n) / beta + 0.5,
             lse(beta, z) = log(sum_i exp(beta * z_i)) / beta

The update is the concave-convex procedure for E, so E never increases from one step to the
next (up to float rounding), and for well-separated patterns it reaches a fixed point next to one
stored pattern in one or two steps. E >= 0 for unit patterns. (The research memory's energy was
a hard-coded constant within a level, so it halted before doing anything.)

Each step is one product with X^T (often over a handful of columns, see `_readout`) and one with
X; the logits and attention of the new state are computed inside the step, so `energy` is free,
the next step reuses them, and the step can tell how far the next one would move
(`Recall.move`), which lets the plugin halt after one step when the state is already at a fixed
point.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

SKIP_EACH = 1e-12  # attention below this may be skipped in the readout ...
SKIP_MASS = 1e-7  # ... when all of it together (at most n x SKIP_EACH) stays below this
SPARSE_MAX = 64  # beyond this many columns the full product is as cheap


@dataclass(frozen=True)
class Recall:
    """One point of a retrieval: state q, its logits X q (excluded items at -inf), the attention
    p = softmax(beta * logits), the energy, and `move`: an upper bound on how far the *next*
    step would move q, |X^T p_new - X^T p_old| <= |p_new - p_old|_1 for unit patterns (inf at
    the start; the readout may add at most SKIP_MASS). A move below tolerance certifies a fixed
    point without paying for another step."""

    q: torch.Tensor
    logits: torch.Tensor
    weights: torch.Tensor
    energy: float
    move: float
    visible: int
    exclude: torch.Tensor | None
    best: int = 0  # the item with the largest attention ...
    best_weight: float = 0.0  # ... and that attention


def _point(patterns: torch.Tensor, q: torch.Tensor, beta: float, visible: int,
           exclude: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor, float, int, float]:
    """Logits, attention, energy, best item and its attention for state q: one product with
    the patterns."""
    logits = q @ patterns
    if exclude is not None:
        logits.masked_fill_(exclude, -math.inf)
    quad = 0.5 * float(torch.dot(q, q))
    if visible == 0:
        return logits, torch.zeros_like(logits), quad, 0, 0.0
    weights = torch.softmax(logits * beta, 0)
    top, best = logits.max(0)
    best_weight = float(weights[best])
    # log sum exp(beta z) = beta z_j - log p_j for any j; at the largest logit p_j >= 1/n is exact enough
    lse = float(top) - math.log(best_weight) / beta
    return logits, weights, -lse + quad + math.log(visible) / beta + 0.5, int(best), best_weight


def _readout(patterns: torch.Tensor, state: Recall) -> torch.Tensor:
    """X^T p. When few patterns hold attention (the usual case once a query is near a stored
    item) only those columns are summed: for unit patterns the result differs from the full
    product by at most the skipped mass, allowed below SKIP_MASS (float32 resolution of a
    unit-norm sum). One item holding all but SKIP_MASS is the cheapest case; else the columns
    above SKIP_EACH when their skipped mass is provably small (< n x SKIP_EACH); else all."""
    if state.best_weight > 1.0 - SKIP_MASS:
        return patterns[:, state.best] * state.best_weight
    cols = (state.weights > SKIP_EACH).nonzero().squeeze(1)
    if cols.numel() <= SPARSE_MAX and state.visible * SKIP_EACH < SKIP_MASS:
        return patterns[:, cols] @ state.weights[cols]  # (index_select would copy the strided view)
    return patterns @ state.weights


def start(patterns: torch.Tensor, q: torch.Tensor, beta: float, exclude: np.ndarray | None = None) -> Recall:
    """The initial state for query q over `patterns`; items where `exclude` is True take no part."""
    mask = None
    visible = patterns.shape[1]
    if exclude is not None and exclude.any():
        mask = torch.from_numpy(exclude).to(patterns.device)
        visible -= int(exclude.sum())
    q = q.to(patterns.device, torch.float32)
    logits, weights, energy, best, best_weight = _point(patterns, q, beta, visible, mask)
    return Recall(q, logits, weights, energy, math.inf if visible else 0.0, visible, mask, best, best_weight)


def step(patterns: torch.Tensor, state: Recall, beta: float) -> Recall:
    """One update: q <- X^T p, then the new state's logits. With nothing visible the state is
    already a fixed point."""
    if state.visible == 0:
        return state
    q = _readout(patterns, state)
    logits, weights, energy, best, best_weight = _point(patterns, q, beta, state.visible, state.exclude)
    move = float(torch.dist(weights, state.weights, p=1))
    return Recall(q, logits, weights, energy, move, state.visible, state.exclude, best, best_weight)
