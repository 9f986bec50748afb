"""Mask-predict refinement (Ghazvininejad et al. 2019) over a batch of noisy commands.

Step 0 is the model's prediction with the whole canvas masked. Step t (of a planned T) re-masks
the floor(n * (T - t) / T) least confident slots of each text's canvas (n = its slots, 2 per input
byte) and re-predicts only those; every other slot keeps its token and the probability it had when
last predicted. Energy is the mean negative log-likelihood of the current canvas (the text and its
BLANKs) under those probabilities. A text has converged when a step changes none of its slots (or
there is nothing left to re-mask); converged texts are frozen.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch

from plugins.language.canvas import decode_slots, encode_bytes
from plugins.language.model import MASK, PAD, Denoiser


@dataclass(frozen=True)
class RefineState:
    src: torch.Tensor          # [B, S] noisy bytes, PAD-filled
    canvas: torch.Tensor       # [B, S * slots] current clean-text guess, PAD beyond each text's canvas
    probs: torch.Tensor        # [B, S * slots] probability of each slot's token when last predicted
    valid: torch.Tensor        # [B, S * slots] bool, slots inside each text's canvas
    embedding: torch.Tensor    # [B, E] meaning embedding from the latest forward pass
    done: torch.Tensor         # [B] bool, converged (frozen)
    changed: torch.Tensor      # [B] tokens changed by the latest step
    halted_at: torch.Tensor    # [B] step at which each text converged (0 while still refining)
    step: int
    total: int                 # T, the planned number of re-masking steps


def encode_batch(texts: list[str], max_len: int, slots: int, device: torch.device | str = "cpu"
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """Noisy texts to (src ids [B, S], canvas validity [B, S * slots])."""
    rows = [encode_bytes(t, max_len) or [ord(" ")] for t in texts]
    width = max(len(r) for r in rows)
    src = torch.full((len(rows), width), PAD, dtype=torch.long)
    for i, r in enumerate(rows):
        src[i, :len(r)] = torch.tensor(r, dtype=torch.long)
    valid = (src != PAD).repeat_interleave(slots, dim=1)
    return src.to(device), valid.to(device)


@torch.inference_mode()
def first_pass(model: Denoiser, src: torch.Tensor, valid: torch.Tensor, total: int) -> RefineState:
    canvas = torch.where(valid, torch.full_like(valid, MASK, dtype=torch.long), PAD)
    logits, emb = model(src, canvas)
    probs, pred = logits.float().softmax(-1).max(-1)
    canvas = torch.where(valid, pred, PAD)
    probs = torch.where(valid, probs, torch.ones_like(probs))
    n = src.shape[0]
    zeros = torch.zeros(n, dtype=torch.long, device=src.device)
    return RefineState(src, canvas, probs, valid, emb.float(), zeros.bool(), zeros, zeros, 0, total)


@torch.inference_mode()
def remask_step(model: Denoiser, state: RefineState, freeze: bool = True) -> RefineState:
    """One re-masking step. freeze=False keeps converged texts in the schedule (the fixed-T run
    the benchmark compares early halting against)."""
    t = state.step + 1
    lengths = state.valid.sum(1)
    n_mask = torch.div(lengths * max(0, state.total - t), state.total, rounding_mode="floor")
    if freeze:
        n_mask = torch.where(state.done, torch.zeros_like(n_mask), n_mask)
    score = torch.where(state.valid, state.probs, torch.full_like(state.probs, 2.0))
    order = score.argsort(dim=1, stable=True)
    rank = torch.empty_like(order).scatter_(1, order, torch.arange(order.shape[1], device=order.device)
                                            .expand_as(order).contiguous())
    masked = rank < n_mask[:, None]
    if not masked.any():
        halted_at = torch.where(state.done, state.halted_at, t)
        return replace(state, done=torch.ones_like(state.done), changed=torch.zeros_like(state.changed),
                       halted_at=halted_at, step=t)
    logits, emb = model(state.src, torch.where(masked, MASK, state.canvas))
    probs, pred = logits.float().softmax(-1).max(-1)
    canvas = torch.where(masked, pred, state.canvas)
    new_probs = torch.where(masked, probs, state.probs)
    changed = (canvas != state.canvas).sum(1)
    embedding = torch.where((n_mask > 0)[:, None], emb.float(), state.embedding)
    done = state.done | (changed == 0) | (n_mask == 0)
    halted_at = torch.where(done & ~state.done, t, state.halted_at)
    return replace(state, canvas=canvas, probs=new_probs, embedding=embedding, done=done,
                   changed=changed, halted_at=halted_at, step=t)


def energies(state: RefineState) -> torch.Tensor:
    """Per text: mean NLL of its canvas slots under the model."""
    nll = -state.probs.clamp_min(1e-12).log() * state.valid
    return nll.sum(1) / state.valid.sum(1)


def steps_taken(state: RefineState) -> list[int]:
    """Re-masking steps each text ran before it converged (the batch's step count if it did not)."""
    return torch.where(state.done, state.halted_at, state.step).tolist()


def texts(state: RefineState) -> list[str]:
    return [decode_slots(row) for row in state.canvas.tolist()]


def refine(model: Denoiser, noisy: list[str], total: int = 10, max_steps: int | None = None,
           freeze: bool = True) -> RefineState:
    """Refine a batch until every text converges (with freeze) or `max_steps` re-masking steps ran."""
    src, valid = encode_batch(noisy, model.cfg.max_len, model.cfg.slots, next(model.parameters()).device)
    state = first_pass(model, src, valid, total)
    limit = total if max_steps is None else max_steps
    while state.step < limit and not (freeze and bool(state.done.all())):
        state = remask_step(model, state, freeze)
    return state
