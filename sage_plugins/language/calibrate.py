"""Fit the confidence calibrator and its threshold: `python -m sage_plugins.language.calibrate`.

The calibration mix has its own seeds and generators, disjoint from evaluation's: in-grammar
commands from the calibration half of the evaluation-only split (grammar.heldout_part) at 0-20%
CER and with word-level recognizer errors, stop/cancel phrases, the `calibration` out-of-grammar
utterances and negations of oog.json. Each utterance goes through the plugin's path
(evaluate.plugin_readings); a logistic regression over understand.FEATURES predicts whether the
candidate read is the command said (out-of-grammar and negated utterances: never). The choices
made on this mix (nothing of the evaluation sets): the candidate is read from the denoiser's first
prediction (its intent was right more often than the refined text's here), and the `disagree` and
`real_word` features (with both changes, at 10% CER the threshold's recall here rose from 83.3% to
90.5% at 99.5% precision, and the out-of-grammar utterances accepted fell from 1 of 400 to 0). The threshold
is the lowest at which the accepted readings are >= 99.5% right on the part of the mix at the
operating point (10%-CER commands, stop phrases, out-of-grammar, negated). Writes calibration.json.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import random
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from sage_plugins.language import oog
from sage_plugins.language.evaluate import ece, heldout_set, plugin_readings
from sage_plugins.language.grammar import Grammar
from sage_plugins.language.model import load_checkpoint
from sage_plugins.language.noise import corrupt
from sage_plugins.language.understand import CALIBRATION_PATH, FEATURES, Calibrator
from sage_plugins.language.utterance import STOP_PHRASES

PACKAGE = Path(__file__).parent
SEEDS = {"char": 31001, "words": 31002, "stop": 31003, "oog": 31004, "negated": 31005, "char10": 31006}
TARGET_PRECISION = 0.995


def stop_set(n: int, seed: int) -> list[tuple[str, dict[str, Any], str]]:
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        phrase = rng.choice(sorted(STOP_PHRASES))
        intent = {"action": STOP_PHRASES[phrase], "object": None, "attributes": [], "place": None}
        out.append((phrase, intent, corrupt(phrase, rng.uniform(0.0, 0.15), rng)))
    return out


def calibration_mix(n: int, grammar: Grammar) -> list[tuple[str, dict[str, Any] | None, bool, str]]:
    """(raw utterance, the intent said or None, whether it picks the threshold, part name) for the
    calibration mix, about `n` utterances. The threshold is picked on the 10%-CER commands, the stop
    phrases, the out-of-grammar and the negated utterances (the operating point the bar is set at)."""
    rng = random.Random(SEEDS["oog"])
    mix: list[tuple[str, dict[str, Any] | None, bool, str]] = []
    mix += [(x, i, False, "commands_cer0_20")
            for _, i, x in heldout_set(n * 3 // 10, SEEDS["char"], (0.0, 0.2), part="calibration")]
    mix += [(x, i, True, "commands_cer10") for _, i, x in heldout_set(n * 2 // 10, SEEDS["char10"], 0.1,
                                                                         part="calibration")]
    mix += [(x, i, False, "commands_words") for _, i, x in heldout_set(n * 15 // 100, SEEDS["words"], (0.0, 0.05),
                                                                          words=0.15, part="calibration")]
    mix += [(x, i, True, "stop") for _, i, x in stop_set(n // 20, SEEDS["stop"])]
    said = oog.utterances("calibration", n * 2 // 10, SEEDS["oog"], grammar)
    mix += [(corrupt(t, rng.choice([0.0, 0.0, 0.05, 0.1]), rng), None, True, "out_of_grammar") for t in said]
    mix += [(corrupt(t, rng.uniform(0.0, 0.15), rng), None, True, "negated")
            for t, _ in oog.negated("calibration", n // 10, SEEDS["negated"], grammar, part="calibration")]
    return mix


def half_report(mix: list[tuple[str, dict[str, Any] | None, bool, str]], readings: list[Any], conf: list[float],
                threshold: float) -> dict[str, dict[str, float]]:
    """Per part of the calibration mix at `threshold`: candidate exact, share accepted, precision
    and recall (as evaluate reports them on the evaluation half). Comparing weights is done on
    these figures, never on the evaluation sets."""
    out: dict[str, dict[str, float]] = {}
    for name in dict.fromkeys(m[3] for m in mix):
        idx = [k for k, m in enumerate(mix) if m[3] == name]
        acc = [k for k in idx if readings[k].candidate is not None and conf[k] >= threshold]
        right = sum(readings[k].candidate == mix[k][1] for k in acc)
        out[name] = {"n": len(idx), "candidate_exact": round(sum(readings[k].candidate == mix[k][1] for k in idx)
                                                             / len(idx), 4),
                     "accepted": round(len(acc) / len(idx), 4), "precision": round(right / max(1, len(acc)), 4),
                     "recall": round(right / len(idx), 4)}
    return out


def fit_logistic(x: np.ndarray, y: np.ndarray, l2: float = 1e-3, iters: int = 50) -> np.ndarray:
    """Weights of a logistic regression by Newton's method (x has a bias column)."""
    w = np.zeros(x.shape[1])
    for _ in range(iters):
        p = 1.0 / (1.0 + np.exp(-np.clip(x @ w, -60, 60)))
        grad = x.T @ (p - y) + l2 * w
        hess = (x * (p * (1 - p))[:, None]).T @ x + l2 * np.eye(x.shape[1])
        step = np.linalg.solve(hess, grad)
        w -= step
        if np.abs(step).max() < 1e-8:
            break
    return w


def pick_threshold(conf: list[float], correct: list[bool], target: float = TARGET_PRECISION) -> float:
    """The lowest threshold whose accepted readings are >= `target` right."""
    for t in np.arange(0.30, 0.995, 0.005):
        acc = [c for p, c in zip(conf, correct) if p >= t]
        if acc and sum(acc) / len(acc) >= target:
            return round(float(t), 3)
    return 0.995


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--weights", type=Path, default=PACKAGE / "weights.pt")
    p.add_argument("--n", type=int, default=2000)
    p.add_argument("--out", type=Path, default=CALIBRATION_PATH)
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    t0 = time.perf_counter()
    grammar = Grammar.load()
    model = load_checkpoint(args.weights)
    mix = calibration_mix(args.n, grammar)
    blank = Calibrator(tuple(0.0 for _ in FEATURES), 0.5)
    readings = [r for r, _, _ in plugin_readings(model, grammar, blank, [m[0] for m in mix])]
    fit = [(r.features, r.candidate == m[1]) for r, m in zip(readings, mix) if r.features is not None]
    w = fit_logistic(np.array([f for f, _ in fit]), np.array([float(c) for _, c in fit]))
    cal = Calibrator(tuple(float(v) for v in w), 0.5)
    conf = [cal.probability(r.features) if r.features is not None else 0.0 for r in readings]
    correct = [r.candidate is not None and r.candidate == m[1] for r, m in zip(readings, mix)]
    picks = [k for k, m in enumerate(mix) if m[2]]
    threshold = pick_threshold([conf[k] for k in picks], [correct[k] for k in picks])
    spec = {"features": list(FEATURES), "weights": [round(float(v), 6) for v in w], "threshold": threshold,
            "meta": {"n": len(mix), "fitted_on": len(fit), "seeds": SEEDS, "target_precision": TARGET_PRECISION,
                     "calibration_ece": round(ece(conf, correct), 4),
                     "calibration_half": half_report(mix, readings, conf, threshold),
                     "weights_sha256": hashlib.sha256(args.weights.read_bytes()).hexdigest()[:16],
                     "wall_s": round(time.perf_counter() - t0)}}
    args.out.write_text(json.dumps(spec, indent=2) + "\n")
    print(json.dumps(spec, indent=2))


if __name__ == "__main__":
    main()
