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

Each step is one product with X and one with X^T; the logits of the new state are computed
inside the step so `energy` is free and the next step reuses them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch



@dataclass(frozen=True)
class Recall:
    """One point of a retrieval: state q, its logits X q (excluded rows at -inf), energy."""

    q: torch.Tensor
    logits: torch.Tensor
    energy: float
    visible: int
    exclude: torch.Tensor | None


def _logits(patterns: torch.Tensor, q: torch.Tensor, exclude: torch.Tensor | None) -> torch.Tensor:
    s = q @ patterns
    return s.masked_fill_(exclude, -math.inf) if exclude is not None else s


def _energy(logits: torch.Tensor, q: torch.Tensor, beta: float, visible: int) -> float:
    quad = 0.5 * float(torch.dot(q, q))
    if visible == 0:
        return quad
    lse = float(torch.logsumexp(beta * logits, 0)) / beta
    return -lse + quad + math.log(visible) / beta + 0.5


def start(patterns: torch.Tensor, q: torch.Tensor, beta: float, exclude: np.ndarray | None = None) -> Recall:
    """The initial state for query q over `patterns`; rows where `exclude` is True take no part."""
    mask = None
    visible = patterns.shape[1]
    if exclude is not None and exclude.any():
        mask = torch.from_numpy(exclude).to(patterns.device)
        visible -= int(exclude.sum())
    q = q.to(patterns.device, torch.float32)
    logits = _logits(patterns, q, mask)
    return Recall(q, logits, _energy(logits, q, beta, visible), visible, mask)


def step(patterns: torch.Tensor, state: Recall, beta: float) -> Recall:
    """One update. With nothing visible the state is already a fixed point."""
    if state.visible == 0:
        return state
    weights = torch.softmax(beta * state.logits, 0)
    q = patterns @ weights
    logits = _logits(patterns, q, state.exclude)
    return Recall(q, logits, _energy(logits, q, beta, state.visible), state.visible, state.exclude)


def weights(state: Recall, beta: float) -> torch.Tensor:
    """Attention of the state over the stored patterns (zeros when nothing is visible)."""
    if state.visible == 0:
        return torch.zeros_like(state.logits)
    return torch.softmax(beta * state.logits, 0)
