"""Held-out evaluation against ground truth: exact (whole-puzzle) accuracy per segment, with
learned halting, halting by difficulty, calibration of P(halt), and collapse guards (prediction
diversity, z_H spread, baselines). Every sample runs all M_max segments once; the learned-halt
figures read off the segment where the halt would have fired, which is the same computation as
halting there because rows never interact."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from sage_plugins.reasoning.data import SudokuSplit
from sage_plugins.reasoning.model import HRMACT


@dataclass
class SegmentTrace:
    correct: np.ndarray  # [N, M] bool: exact match with the label after segment m+1
    p_halt: np.ndarray  # [N, M] sigmoid(q_halt)
    q_halt_beats_continue: np.ndarray  # [N, M] bool
    changed: np.ndarray  # [N, M] bool: prediction differs from the previous segment's (m=0: True)
    final_preds: np.ndarray  # [N, S] tokens after the last segment
    distinct_logits: float  # mean |logit difference| between consecutive rows after segment 1
    z_h_std: float  # std of z_H across the batch (near 0 means collapse)
    blanks: np.ndarray


@torch.inference_mode()
def trace_segments(model: HRMACT, split: SudokuSplit, batch_size: int = 256,
                   segments: int | None = None) -> SegmentTrace:
    model.eval()
    m = segments or model.cfg.halt_max_steps
    n = len(split)
    correct = np.zeros((n, m), dtype=bool)
    p_halt = np.zeros((n, m), dtype=np.float32)
    beats = np.zeros((n, m), dtype=bool)
    changed = np.zeros((n, m), dtype=bool)
    final = np.zeros_like(split.inputs)
    diffs, zstd = [], []
    inner = model.inner
    for start in range(0, n, batch_size):
        sl = slice(start, min(n, start + batch_size))
        batch = split.batch(sl)
        b = batch["inputs"].shape[0]
        carry = inner.reset_carry(torch.ones(b, dtype=torch.bool), inner.empty_carry(b))
        x = inner.input_embeddings(batch["inputs"], batch["puzzle_identifiers"])
        labels = batch["labels"].long()
        prev = None
        for k in range(m):
            carry, logits, (qh, qc) = inner(carry, batch, x=x)
            pred = logits.argmax(-1)
            correct[sl, k] = (pred == labels).all(-1).numpy()
            p_halt[sl, k] = torch.sigmoid(qh).numpy()
            beats[sl, k] = (qh > qc).numpy()
            changed[sl, k] = True if prev is None else (pred != prev).any(-1).numpy()
            prev = pred
            if k == 0 and b > 1:
                diffs.append(float((logits[1:] - logits[:-1]).abs().mean()))
                zstd.append(float(carry.z_H.std(0).mean()))
        final[sl] = prev.numpy()
    return SegmentTrace(correct, p_halt, beats, changed, final, float(np.mean(diffs)) if diffs else 0.0,
                        float(np.mean(zstd)) if zstd else 0.0, split.blanks.copy())


def halt_segment(trace: SegmentTrace, mode: str = "bce_halt", tau: float = 0.5, stable: int = 0) -> np.ndarray:
    """Index (0-based) of the segment where a run would stop: the first where the learned halt
    fires (P(halt) >= tau for bce_halt, q_halt > q_continue for q_learning) or, with stable = K > 0,
    the prediction has not changed for K consecutive segments; the last segment otherwise."""
    n, m = trace.correct.shape
    fire = trace.p_halt >= tau if mode == "bce_halt" else trace.q_halt_beats_continue
    if stable > 0:
        unchanged = ~trace.changed
        run = np.zeros_like(unchanged, dtype=np.int32)
        for k in range(m):
            run[:, k] = np.where(unchanged[:, k], (run[:, k - 1] if k else 0) + 1, 0)
        fire = fire | (run >= stable)
    fire[:, -1] = True
    return fire.argmax(1)


def calibration(p: np.ndarray, correct: np.ndarray, bins: int = 10) -> list[dict[str, float]]:
    """Reliability curve: per P bin, count, mean predicted P(correct), observed accuracy."""
    edges = np.linspace(0, 1, bins + 1)
    out = []
    for lo, hi in zip(edges[:-1], edges[1:]):
        sel = (p >= lo) & ((p < hi) if hi < 1 else (p <= hi))
        if sel.any():
            out.append({"lo": float(lo), "hi": float(hi), "count": int(sel.sum()),
                        "mean_p": float(p[sel].mean()), "accuracy": float(correct[sel].mean())})
    return out


def expected_calibration_error(p: np.ndarray, correct: np.ndarray, bins: int = 10) -> float:
    curve = calibration(p, correct, bins)
    return float(sum(c["count"] * abs(c["mean_p"] - c["accuracy"]) for c in curve) / max(len(p), 1))


def summarize(trace: SegmentTrace, split: SudokuSplit, mode: str = "bce_halt", tau: float = 0.5,
              stable: int = 0) -> dict:
    """The figures a training run and the benchmark report."""
    n, m = trace.correct.shape
    rows = np.arange(n)
    h = halt_segment(trace, mode, tau, stable)
    halted_correct = trace.correct[rows, h]
    p_at_halt = trace.p_halt[rows, h]
    preds = trace.final_preds
    per_blank = {}
    for k in np.unique(trace.blanks):
        sel = trace.blanks == k
        per_blank[int(k)] = {"count": int(sel.sum()), "mean_segments": float((h[sel] + 1).mean()),
                             "halt_exact": float(halted_correct[sel].mean()),
                             "all_segments_exact": float(trace.correct[sel, -1].mean()),
                             "mean_p_halt_first_segment": float(trace.p_halt[sel, 0].mean())}
    # Baselines on the same metric: copying the input is never exact (every puzzle has blanks);
    # filling every blank with the most common label digit.
    flat = split.labels.reshape(-1)
    majority = np.bincount(flat).argmax()
    filled = np.where(split.inputs == 1, majority, split.inputs)
    pred_hist = np.bincount(preds.reshape(-1), minlength=split.labels.max() + 1).astype(float) + 1
    true_hist = np.bincount(flat, minlength=split.labels.max() + 1).astype(float) + 1
    pred_hist, true_hist = pred_hist / pred_hist.sum(), true_hist / true_hist.sum()
    return {
        "count": int(n),
        "segments": int(m),
        "exact_by_segment": [float(v) for v in trace.correct.mean(0)],
        "exact_all_segments": float(trace.correct[:, -1].mean()),
        # Token-level, for reference only (never the selection metric): blank cells right after M segments.
        "blank_cell_accuracy_all_segments": float((preds == split.labels)[split.inputs == 1].mean()),
        "exact_learned_halt": float(halted_correct.mean()),
        "mean_segments_learned_halt": float((h + 1).mean()),
        "halt_mode": mode, "halt_tau": tau, "halt_stable": stable,
        "by_blanks": per_blank,
        "q_halt_accuracy": float(((trace.p_halt >= 0.5) == trace.correct).mean()),
        "calibration_at_halt": calibration(p_at_halt, halted_correct),
        "ece_at_halt": expected_calibration_error(p_at_halt, halted_correct),
        "baselines": {"copy_input_exact": float((split.inputs == split.labels).all(-1).mean()),
                      "majority_fill_exact": float((filled == split.labels).all(-1).mean())},
        "diversity": {"distinct_predictions": int(len({p.tobytes() for p in preds})),
                      "distinct_labels": int(len({p.tobytes() for p in split.labels})),
                      "kl_pred_vs_true_tokens": float((pred_hist * np.log(pred_hist / true_hist)).sum()),
                      "mean_abs_logit_diff_between_inputs": trace.distinct_logits,
                      "z_H_std_across_batch": trace.z_h_std},
    }


def evaluate(model: HRMACT, split: SudokuSplit, batch_size: int = 256, tau: float = 0.5, stable: int = 0) -> dict:
    return summarize(trace_segments(model, split, batch_size), split, model.cfg.halt_mode, tau, stable)


def choose_tau(trace: SegmentTrace, max_mean_segments: float = 3.0,
               taus: tuple[float, ...] = tuple(round(0.5 + 0.025 * i, 3) for i in range(20)) + (0.99, 0.995),
               ) -> float:
    """The halting threshold with the best exact accuracy whose mean segment count stays within
    `max_mean_segments` (bce_halt; pick it on validation data, never on the test split)."""
    rows = np.arange(trace.correct.shape[0])
    best_tau, best_acc = 0.5, -1.0
    for tau in taus:
        h = halt_segment(trace, "bce_halt", tau)
        acc = float(trace.correct[rows, h].mean())
        if (h + 1).mean() <= max_mean_segments and acc > best_acc:
            best_tau, best_acc = tau, acc
    return best_tau
