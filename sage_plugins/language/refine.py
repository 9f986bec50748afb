"""Mask-predict refinement (Ghazvininejad et al. 2019) over a batch of noisy commands.

Step 0 is the model's prediction with the whole canvas masked. Step t (of a planned T) re-masks
the floor(n * (T - t) / T) least confident slots of each text's canvas (n = its slots, 2 per input
byte) and re-predicts only those; every other slot keeps its token and the probability it had when
last predicted. Energy is the mean negative log-likelihood of the current canvas (the text and its
BLANKs) under those probabilities. A text's read has converged when a step changes none of its
slots (or there is nothing left to re-mask); converged texts are frozen.

When every text's read has converged and some text differs from what was read, the corrected
texts are read again as a new, less noisy input (a new first pass, counted as a step): the model
was trained on inputs from clean to 25% CER, and a second look fixes errors the first left. The
batch has converged when a read returns exactly what it read (a fixed point of the denoiser) or
after `max_reads` reads.

Grammar constraint (optional, `project`): when refinement would halt, each text that is not a
command of the grammar is snapped to the nearest one (grammar.Grammar.nearest) if it is close
enough, written back onto the slot canvas aligned to its input the way training targets are, and
the changed slots are scored by the model, so the energy stays the mean NLL of the text on the
canvas. What changed is read once more (within `max_reads`), as any corrected text is.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace

import torch

from sage_plugins.language.canvas import decode_slots, encode_bytes, slot_targets
from sage_plugins.language.grammar import Grammar
from sage_plugins.language.model import MASK, PAD, Denoiser


#: Inputs are PAD-padded to at least this many bytes. The model attends to padding (it was trained
#: on batches padded to their longest text, about 60-80 bytes, without a key-padding mask), and a
#: lone unpadded command reads differently: 40% exact match unpadded vs 72% padded to 80 on 60
#: held-out commands with the first weights. Padding to the training width removes that shift.
MIN_WIDTH = 80


@dataclass(frozen=True)
class RefineState:
    src: torch.Tensor          # [B, S] noisy bytes, PAD-filled
    canvas: torch.Tensor       # [B, S * slots] current clean-text guess, PAD beyond each text's canvas
    probs: torch.Tensor        # [B, S * slots] probability of each slot's token when last predicted
    valid: torch.Tensor        # [B, S * slots] bool, slots inside each text's canvas
    embedding: torch.Tensor    # [B, E] meaning embedding from the latest forward pass
    done: torch.Tensor         # [B] bool, converged (frozen)
    changed: torch.Tensor      # [B] tokens changed by the latest step
    read_input: tuple[str, ...]  # the texts this read started from
    step: int                  # forward passes after the first (re-mask steps and re-reads)
    read_step: int             # re-mask steps in the current read
    reads: int
    total: int                 # T, the planned number of re-masking steps per read


def encode_batch(texts: list[str], max_len: int, slots: int, device: torch.device | str = "cpu"
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """Noisy texts to (src ids [B, S], canvas validity [B, S * slots]), padded to at least MIN_WIDTH."""
    rows = [encode_bytes(t, max_len) or [ord(" ")] for t in texts]
    width = max(MIN_WIDTH, max(len(r) for r in rows))
    src = torch.full((len(rows), width), PAD, dtype=torch.long)
    for i, r in enumerate(rows):
        src[i, :len(r)] = torch.tensor(r, dtype=torch.long)
    valid = (src != PAD).repeat_interleave(slots, dim=1)
    return src.to(device), valid.to(device)


@torch.inference_mode()
def first_pass(model: Denoiser, texts_in: list[str], total: int) -> RefineState:
    """Read `texts_in`: one forward pass with every slot masked."""
    src, valid = encode_batch(texts_in, model.cfg.max_len, model.cfg.slots, next(model.parameters()).device)
    canvas = torch.where(valid, torch.full_like(valid, MASK, dtype=torch.long), PAD)
    logits, emb = model(src, canvas)
    probs, pred = logits.float().softmax(-1).max(-1)
    canvas = torch.where(valid, pred, PAD)
    probs = torch.where(valid, probs, torch.ones_like(probs))
    n = src.shape[0]
    zeros = torch.zeros(n, dtype=torch.long, device=src.device)
    return RefineState(src, canvas, probs, valid, emb.float(), zeros.bool(), zeros, tuple(texts_in), 0, 0, 1, total)


@torch.inference_mode()
def remask_step(model: Denoiser, state: RefineState, freeze: bool = True) -> RefineState:
    """One re-masking step. freeze=False keeps converged texts in the schedule (the fixed-T run
    the benchmark compares early halting against)."""
    t = state.read_step + 1
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
        return replace(state, done=torch.ones_like(state.done), changed=torch.zeros_like(state.changed),
                       read_step=t)
    logits, emb = model(state.src, torch.where(masked, MASK, state.canvas))
    probs, pred = logits.float().softmax(-1).max(-1)
    canvas = torch.where(masked, pred, state.canvas)
    new_probs = torch.where(masked, probs, state.probs)
    changed = (canvas != state.canvas).sum(1)
    embedding = torch.where((n_mask > 0)[:, None], emb.float(), state.embedding)
    done = state.done | (changed == 0) | (n_mask == 0)
    return replace(state, canvas=canvas, probs=new_probs, embedding=embedding, done=done,
                   changed=changed, step=state.step + 1, read_step=t)


def converged(state: RefineState, max_reads: int) -> bool:
    """Every read converged and the last read changed no text (or reads are used up)."""
    return bool(state.done.all()) and (state.reads >= max_reads or tuple(texts(state)) == state.read_input)


def advance(model: Denoiser, state: RefineState, freeze: bool = True) -> RefineState:
    """One step: re-mask within the current read, or, when it has converged, read the corrected
    texts again."""
    read_finished = bool(state.done.all()) if freeze else state.read_step >= state.total
    if not read_finished:
        return remask_step(model, state, freeze)
    new = first_pass(model, texts(state), state.total)
    return replace(new, step=state.step + 1, reads=state.reads + 1)


def energies(state: RefineState) -> torch.Tensor:
    """Per text: mean NLL of its canvas slots under the model."""
    nll = -state.probs.clamp_min(1e-12).log() * state.valid
    return nll.sum(1) / state.valid.sum(1)


def texts(state: RefineState) -> list[str]:
    return [" ".join(decode_slots(row).split()) for row in state.canvas.tolist()]


@torch.inference_mode()
def write_texts(model: Denoiser, state: RefineState, targets: list[str | None]) -> RefineState:
    """Put `targets[i]` (None: leave as is) on text i's canvas, aligned to its input as training
    targets are (canvas.slot_targets). The changed slots are scored by one forward pass with them
    masked: each gets the model's probability of its new token (not of its argmax), so `energies`
    stays the mean NLL of the text on the canvas. A text the canvas cannot spell stays as it is."""
    canvas = state.canvas.clone()
    slots = model.cfg.slots
    for i, target in enumerate(targets):
        if target is None:
            continue
        src = bytes(t for t in state.src[i].tolist() if t != PAD)
        row = slot_targets(target.encode(), src, slots)
        if row is not None:
            canvas[i, :len(row)] = torch.tensor(row, dtype=canvas.dtype, device=canvas.device)
    changed = (canvas != state.canvas) & state.valid
    if not changed.any():
        return state
    logits, emb = model(state.src, torch.where(changed, MASK, canvas))
    scored = logits.float().softmax(-1).gather(-1, canvas.clamp_max(logits.shape[-1] - 1)[..., None])[..., 0]
    rows = changed.any(1)
    return replace(state, canvas=canvas, probs=torch.where(changed, scored, state.probs),
                   embedding=torch.where(rows[:, None], emb.float(), state.embedding),
                   changed=state.changed + changed.sum(1))


def grammar_projection(model: Denoiser, grammar: Grammar, max_normalized: float, max_reads: int
                       ) -> Callable[[RefineState], RefineState]:
    """The grammar constraint as a projection, applied when refinement would halt (`converged`: a
    fixed point of the denoiser, or reads used up): a text that is not a command is replaced by the
    nearest command when that is within `max_normalized` edits per character (else it is left
    alone: text far from every command is not made one). Snapping earlier, after every read, was
    worse on validation (the model's later reads fix more than the snap of a rougher text)."""
    def project(state: RefineState) -> RefineState:
        if not converged(state, max_reads):
            return state
        targets: list[str | None] = []
        for text in texts(state):
            near = grammar.nearest(text, max_normalized)
            close = near is not None and near.distance > 0
            targets.append(near.text if close else None)
        return write_texts(model, state, targets) if any(t is not None for t in targets) else state
    return project


def refine(model: Denoiser, noisy: list[str], total: int = 10, max_reads: int = 3, max_steps: int = 40,
           freeze: bool = True, project: Callable[[RefineState], RefineState] | None = None,
           start: RefineState | None = None) -> RefineState:
    """Refine a batch until it converges or `max_steps` steps ran, applying `project` after each
    step as the IRP runner does. freeze=False runs every read's full schedule of T re-mask steps
    and all `max_reads` reads (the no-early-halt comparison). `start`: continue from this state of
    the same texts instead of a first pass (projecting it first), e.g. a model-only run, whose
    steps a constrained run repeats exactly up to the projection."""
    state = first_pass(model, noisy, total) if start is None else start
    if project is not None:
        state = project(state)
    while state.step < max_steps:
        if freeze and converged(state, max_reads):
            break
        if not freeze and state.read_step >= total and state.reads >= max_reads:
            break
        state = advance(model, state, freeze)
        if project is not None:
            state = project(state)
    return state
