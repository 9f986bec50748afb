"""Mask-predict refinement (Ghazvininejad et al. 2019) over a batch of noisy commands.

Step 0 is the model's prediction with the whole canvas masked. Step t (of a planned T) re-masks
the floor(n * (T - t) / T) least confident positions of each text (n = its predicted length + the
end marker) and re-predicts only those; every other position keeps its token and the probability
it had when last predicted. Energy is the mean negative log-likelihood of the current text under
those probabilities. A text has converged when a step changes none of its tokens (or there is
nothing left to re-mask); converged texts are frozen.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch

from plugins.language.model import MASK, PAD, Denoiser, canvas_length, decode_bytes, encode_bytes


@dataclass(frozen=True)
class RefineState:
    src: torch.Tensor          # [B, Ss] noisy bytes, PAD-filled
    canvas: torch.Tensor       # [B, Sc] current clean-text guess, PAD beyond each text's canvas
    probs: torch.Tensor        # [B, Sc] probability of each canvas token when it was last predicted
    valid: torch.Tensor        # [B, Sc] bool, positions inside each text's canvas
    embedding: torch.Tensor    # [B, E] meaning embedding from the latest forward pass
    done: torch.Tensor         # [B] bool, converged (frozen)
    changed: torch.Tensor      # [B] tokens changed by the latest step
    halted_at: torch.Tensor    # [B] step at which each text converged (0 while still refining)
    step: int
    total: int                 # T, the planned number of re-masking steps


def encode_batch(texts: list[str], max_len: int, device: torch.device | str = "cpu"
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """Noisy texts to (src ids [B, Ss], canvas validity [B, Sc])."""
    rows = [encode_bytes(t, max_len) for t in texts]
    ss = max(1, max(len(r) for r in rows))
    lens = [canvas_length(len(r), max_len) for r in rows]
    src = torch.full((len(rows), ss), PAD, dtype=torch.long)
    for i, r in enumerate(rows):
        src[i, :len(r)] = torch.tensor(r, dtype=torch.long)
    valid = torch.arange(max(lens))[None, :] < torch.tensor(lens)[:, None]
    return src.to(device), valid.to(device)


def text_lengths(canvas: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Per row: index of the first PAD inside the canvas + 1 (text plus its end marker)."""
    is_pad = (canvas == PAD) & valid
    first = torch.where(is_pad.any(1), is_pad.float().argmax(1), valid.sum(1) - 1)
    return first + 1


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
def remask_step(model: Denoiser, state: RefineState) -> RefineState:
    t = state.step + 1
    lengths = text_lengths(state.canvas, state.valid)
    n_mask = torch.div(lengths * max(0, state.total - t), state.total, rounding_mode="floor")
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
    active = ~state.done
    embedding = torch.where(active[:, None], emb.float(), state.embedding)
    done = state.done | (changed == 0) | (n_mask == 0)
    halted_at = torch.where(done & ~state.done, t, state.halted_at)
    return replace(state, canvas=canvas, probs=new_probs, embedding=embedding, done=done,
                   changed=changed, halted_at=halted_at, step=t)


def energies(state: RefineState) -> torch.Tensor:
    """Per text: mean NLL of its tokens (text plus end marker) under the model."""
    lengths = text_lengths(state.canvas, state.valid)
    inside = torch.arange(state.canvas.shape[1], device=lengths.device)[None, :] < lengths[:, None]
    nll = -state.probs.clamp_min(1e-12).log() * inside
    return nll.sum(1) / lengths


def steps_taken(state: RefineState) -> list[int]:
    """Re-masking steps each text ran before it converged (the batch's step count if it did not)."""
    return torch.where(state.done, state.halted_at, state.step).tolist()


def texts(state: RefineState) -> list[str]:
    return [decode_bytes(row) for row in state.canvas.tolist()]


def refine(model: Denoiser, noisy: list[str], total: int = 10, max_steps: int | None = None) -> RefineState:
    """Refine a batch until every text converges or `max_steps` re-masking steps ran."""
    src, valid = encode_batch(noisy, model.cfg.max_len, next(model.parameters()).device)
    state = first_pass(model, src, valid, total)
    limit = total if max_steps is None else max_steps
    while state.step < limit and not bool(state.done.all()):
        state = remask_step(model, state)
    return state
