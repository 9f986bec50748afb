"""Measure the shipped denoiser against ground truth: `python -m sage_plugins.language.evaluate`.

Held-out commands (texts in the evaluation-only split, which training never draws) are generated
with EVAL_SEED, used nowhere else, and corrupted at 10% CER. Rows, each with text exact match,
intent exact match by the exact parser (`intent_exact`) and by the grammar-constrained,
edit-distance-tolerant parser (`intent_fuzzy`), and CER:

- `noisy_input`: the uncorrected input;
- `grammar_only`: no model, the input snapped to its nearest command (Grammar.nearest): what the
  grammar does alone;
- `first_pass`: the model's first prediction (step 0);
- `refined`: model only, mask-predict refinement to convergence (re-masking and re-reads; batches of
  `batch` texts halt together, `batch_steps`; per-command steps to halt are in the benchmark);
- `constrained`: the plugin's default, `refined` plus the grammar projection when refinement would
  halt (refine.grammar_projection; its run repeats the model-only steps, then continues);
- `full_schedule` (main): model only, every step of the schedule run (no early halt).

The same rows for word-level recognizer noise (`word_noise`: noise.corrupt_words, rate 0.15 per
word + 2% CER, EVAL_WORD_SEED), and `understanding`: the plugin's readings (understand.read:
stop/cancel, negation, unknown slots, calibrated confidence and threshold) on every held-out set:
in-grammar at 10% CER, with word-level noise and at 0-20% CER (candidate exact match, precision and
recall of the intents accepted at the threshold), the `evaluation` out-of-grammar utterances of
oog.json clean and at 10% CER (share with no command, next to the exact parser on the input, the
grammar alone and the refined text read by the grammar without the understanding layer), negated
commands at 0/10/20% CER (how many yield the negated action, same baselines), and the expected
calibration error (10 bins) over the mix of all of them. Every set has its own seed, used nowhere
else; command texts come from the evaluation half of the evaluation-only split.

Writes sage_plugins/language/quality.json.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import random
import time
from pathlib import Path
from typing import Any

import torch

from sage_plugins.language import oog
from sage_plugins.language.grammar import MAX_NORMALIZED, Grammar, normalize
from sage_plugins.language.model import Denoiser, load_checkpoint
from sage_plugins.language.noise import corrupt, corrupt_words, levenshtein
from sage_plugins.language.refine import energies, first_pass, grammar_projection, refine, texts
from sage_plugins.language.understand import CALIBRATION_PATH, Calibrator, Reading, read
from sage_plugins.language.utterance import clean_words

PACKAGE = Path(__file__).parent
EVAL_SEED = 20261122
QUALITY = PACKAGE / "quality.json"


def heldout_set(n: int, seed: int, rate: float | tuple[float, float], words: float = 0.0,
                part: str = "evaluation") -> list[tuple[str, dict[str, Any], str]]:
    """(clean text, intent, noisy text) triples from the evaluation-only split (`part`: its
    "evaluation" or "calibration" half). `rate`: the CER, or a (low, high) range drawn per text;
    `words` > 0 adds word-level recognizer errors at that rate per word (noise.corrupt_words)."""
    grammar = Grammar.load()
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        cmd = grammar.sample_split(rng, heldout=True, part=part)
        cer = rng.uniform(*rate) if isinstance(rate, tuple) else rate
        noisy = corrupt_words(cmd.text, words, rng, cer) if words else corrupt(cmd.text, cer, rng)
        out.append((cmd.text, cmd.intent, noisy))
    return out


def plugin_readings(model: Denoiser, grammar: Grammar, calibrator: Calibrator, raws: list[str], total: int = 10,
                    max_reads: int = 3, batch: int = 125, max_normalized: float = MAX_NORMALIZED
                    ) -> list[tuple[Reading, str, float]]:
    """(reading, refined text, model confidence) per raw utterance, by the plugin's path: fillers removed, mask-predict
    refinement with the grammar projection, then understand.read (with the first prediction too)."""
    project = grammar_projection(model, grammar, max_normalized, max_reads)
    out = []
    for i in range(0, len(raws), batch):
        chunk = raws[i:i + batch]
        cleaned = [clean_words(normalize(x)) or normalize(x) or " " for x in chunk]
        start = first_pass(model, cleaned, total)
        state = refine(model, cleaned, total=total, max_reads=max_reads, project=project, start=start)
        for x, f, t, e in zip(chunk, texts(start), texts(state), energies(state).tolist()):
            out.append((read(grammar, calibrator, x, t, math.exp(-e), max_normalized, first=f), t, math.exp(-e)))
    return out


def ece(confidence: list[float], correct: list[bool], bins: int = 10) -> float:
    """Expected calibration error over `bins` equal-width confidence bins."""
    total, n = 0.0, len(confidence)
    for b in range(bins):
        lo, hi = b / bins, (b + 1) / bins
        idx = [i for i, c in enumerate(confidence) if lo <= c < hi or (b == bins - 1 and c == 1.0)]
        if idx:
            acc = sum(correct[i] for i in idx) / len(idx)
            conf = sum(confidence[i] for i in idx) / len(idx)
            total += abs(acc - conf) * len(idx) / n
    return total


def _scores(grammar: Grammar, data: list[tuple[str, dict, str]], hyps: list[str],
            max_normalized: float = MAX_NORMALIZED) -> dict[str, float]:
    chars = sum(len(c) for c, _, _ in data)
    return {
        "text_exact": sum(normalize(h) == c for (c, _, _), h in zip(data, hyps)) / len(data),
        "intent_exact": sum(grammar.parse(h) == i for (_, i, _), h in zip(data, hyps)) / len(data),
        "intent_fuzzy": sum(grammar.parse_fuzzy(h, max_normalized) == i for (_, i, _), h in zip(data, hyps))
        / len(data),
        "cer": sum(levenshtein(c, normalize(h)) for (c, _, _), h in zip(data, hyps)) / chars,
    }


def snap(grammar: Grammar, text: str, max_normalized: float = MAX_NORMALIZED) -> str:
    """`text` replaced by its nearest command when within `max_normalized`, else unchanged."""
    near = grammar.nearest(text, max_normalized)
    return near.text if near is not None else normalize(text)


def evaluate(model: Denoiser, n: int = 1000, seed: int = EVAL_SEED, rate: float = 0.1, total: int = 10,
             batch: int = 125, full_schedule: bool = False, grammar_only: bool = True,
             max_normalized: float = MAX_NORMALIZED, max_reads: int = 3,
             data: list[tuple[str, dict[str, Any], str]] | None = None) -> dict[str, Any]:
    """Exact-match text and intent accuracy and CER: noisy input (and, with grammar_only, the input
    snapped to the grammar) vs first pass vs refined (model only, halting when the text stops
    changing) vs refined with the grammar projection, and optionally vs all T steps with no early
    halt."""
    grammar = Grammar.load()
    data = heldout_set(n, seed, rate) if data is None else data
    n = len(data)
    project = grammar_projection(model, grammar, max_normalized, max_reads)
    first, refined, constrained, full, steps, csteps = [], [], [], [], [], []
    wall = {"first_pass_s": 0.0, "refined_s": 0.0, "projection_s": 0.0, "full_schedule_s": 0.0}
    for i in range(0, n, batch):
        noisy = [clean_words(normalize(x)) or normalize(x) for _, _, x in data[i:i + batch]]
        t0 = time.perf_counter()
        first += texts(first_pass(model, noisy, total))
        t1 = time.perf_counter()
        state = refine(model, noisy, total=total, max_reads=max_reads)
        t2 = time.perf_counter()
        refined += texts(state)
        steps.append(state.step)
        cstate = refine(model, noisy, total=total, max_reads=max_reads, project=project, start=state)
        t3 = time.perf_counter()
        constrained += texts(cstate)
        csteps.append(cstate.step)
        if full_schedule:
            full += texts(refine(model, noisy, total=total, max_reads=max_reads, freeze=False))
        t4 = time.perf_counter()
        for k, dt in (("first_pass_s", t1 - t0), ("refined_s", t2 - t1), ("projection_s", t3 - t2),
                      ("full_schedule_s", t4 - t3)):
            wall[k] += dt
    out: dict[str, Any] = {
        "n": n, "seed": seed, "target_cer": rate, "max_normalized": max_normalized,
        "input_cer": sum(levenshtein(c, x) for c, _, x in data) / sum(len(c) for c, _, _ in data),
    }
    if grammar_only:
        t0 = time.perf_counter()
        snapped = [snap(grammar, clean_words(normalize(x)), max_normalized) for _, _, x in data]
        wall["grammar_only_s"] = time.perf_counter() - t0
    out["noisy_input"] = _scores(grammar, data, [x for _, _, x in data], max_normalized)
    if grammar_only:
        out["grammar_only"] = _scores(grammar, data, snapped, max_normalized)
    out.update({
        "first_pass": _scores(grammar, data, first, max_normalized),
        "refined": _scores(grammar, data, refined, max_normalized),
        "constrained": _scores(grammar, data, constrained, max_normalized),
        "batch": batch,
        "batch_steps": steps,
        "constrained_batch_steps": csteps,
        "wall_s": {k: round(v, 2) for k, v in wall.items() if round(v, 2)},
    })
    if full_schedule:
        out["full_schedule"] = _scores(grammar, data, full, max_normalized)
    return out


EVAL_WORD_SEED = 20261123     # in-grammar commands with word-level recognizer errors
EVAL_OOG_SEED = 20261124      # the `evaluation` out-of-grammar utterances of oog.json
EVAL_NEGATED_SEED = 20261125  # the `evaluation` negations of oog.json
EVAL_MIX_SEED = 20261126      # in-grammar commands at 0-20% CER for the calibration measure
WORD_RATE, WORD_CER = 0.15, 0.02


def word_noise_set(n: int) -> list[tuple[str, dict[str, Any], str]]:
    return heldout_set(n, EVAL_WORD_SEED, WORD_CER, words=WORD_RATE)


def _accepting(readings: list[Reading], truths: list[dict[str, Any] | None]) -> dict[str, float]:
    """Candidate exact match, and precision / recall of the intents the threshold accepts."""
    n = len(readings)
    accepted = [(r, t) for r, t in zip(readings, truths) if r.intent is not None]
    right = sum(r.intent == t for r, t in accepted)
    reasons: dict[str, int] = {}
    for r in readings:
        reasons[str(r.reason)] = reasons.get(str(r.reason), 0) + 1
    return {"n": n, "candidate_exact": sum(r.candidate == t for r, t in zip(readings, truths)) / n,
            "accepted": len(accepted) / n, "precision": right / max(1, len(accepted)), "recall": right / n,
            "reasons": reasons}


def _no_command(grammar: Grammar, raws: list[str], got: list[tuple[Reading, str, float]],
                max_normalized: float) -> dict[str, float]:
    """Share of utterances that yield no command: the plugin, the grammar alone on the raw input,
    and the refined + projected text read by the grammar without the understanding layer."""
    n = len(raws)
    return {"n": n,
            "plugin": sum(r.intent is None for r, _, _ in got) / n,
            "exact_parser_on_input": sum(grammar.parse(x) is None for x in raws) / n,
            "grammar_only": sum(grammar.parse_fuzzy(clean_words(normalize(x)), max_normalized) is None
                                for x in raws) / n,
            "refined_constrained": sum(grammar.parse_fuzzy(t, max_normalized) is None for _, t, _ in got) / n}


def _negated(grammar: Grammar, pairs: list[tuple[str, dict[str, Any]]], got: list[tuple[Reading, str, float]],
             max_normalized: float) -> dict[str, Any]:
    """How many negated commands yield the negated action: plugin, grammar alone, refined text."""
    def yields(intent: dict[str, Any] | None, negated: dict[str, Any]) -> bool:
        return intent is not None and intent.get("action") == negated["action"]

    return {"n": len(pairs),
            "plugin_yields_negated_action": sum(yields(r.intent, i) for (r, _, _), (_, i) in zip(got, pairs)),
            "grammar_only_yields": sum(yields(grammar.parse_fuzzy(clean_words(normalize(x)), max_normalized), i)
                                       for x, i in pairs),
            "refined_constrained_yields": sum(yields(grammar.parse_fuzzy(t, max_normalized), i)
                                              for (_, t, _), (_, i) in zip(got, pairs)),
            "plugin_reasons": {k: sum(r.reason == k for r, _, _ in got) for k in ("negated", "out_of_grammar",
                                                                                 "low_confidence")}}


PARTS = ("commands", "out_of_grammar", "negated")


def understanding(model: Denoiser, calibrator: Calibrator, n: int = 1000, n_oog: int = 600, n_neg: int = 300,
                  max_normalized: float = MAX_NORMALIZED, parts: tuple[str, ...] = PARTS) -> dict[str, Any]:
    """The plugin's readings on every held-out set: in-grammar at 10% CER and with word-level
    errors (precision / recall at the threshold), out-of-grammar (clean and 10% CER), negated (0,
    10, 20% CER), and the calibration of the confidence on a mix of all of them. `parts` computes
    some of them (the rest can run in another process; `merge_understanding` joins them)."""
    grammar = Grammar.load()
    out: dict[str, Any] = {"threshold": calibrator.threshold, "mix_confidence": [], "mix_right": []}

    def readings(raws: list[str]) -> list[tuple[Reading, str, float]]:
        return plugin_readings(model, grammar, calibrator, raws, max_normalized=max_normalized)

    def add_mix(got: list[tuple[Reading, str, float]], truths: list[dict[str, Any] | None]) -> None:
        out["mix_confidence"].extend(r.confidence for r, _, _ in got)
        out["mix_right"].extend(r.candidate is not None and r.candidate == t for (r, _, _), t in zip(got, truths))

    if "commands" in parts:
        for name, data in (("commands_cer10", heldout_set(n, EVAL_SEED, 0.1)), ("commands_words", word_noise_set(n)),
                           ("commands_cer0_20", heldout_set(n // 2, EVAL_MIX_SEED, (0.0, 0.2)))):
            got = readings([x for _, _, x in data])
            out[name] = _accepting([r for r, _, _ in got], [i for _, i, _ in data])
            if name != "commands_words":
                add_mix(got, [i for _, i, _ in data])
    rng = random.Random(EVAL_OOG_SEED)
    if "out_of_grammar" in parts:
        said = oog.utterances("evaluation", n_oog, EVAL_OOG_SEED, grammar)
        for name, raws in (("out_of_grammar", said), ("out_of_grammar_cer10", [corrupt(t, 0.1, rng) for t in said])):
            got = readings(raws)
            out[name] = _no_command(grammar, raws, got, max_normalized)
            add_mix(got, [None] * len(raws))
    if "negated" in parts:
        pairs = oog.negated("evaluation", n_neg, EVAL_NEGATED_SEED, grammar, part="evaluation")
        for rate in (0.0, 0.1, 0.2):
            noisy = [(corrupt(x, rate, rng), i) for x, i in pairs]
            got = readings([x for x, _ in noisy])
            out[f"negated_cer{int(rate * 100)}"] = _negated(grammar, noisy, got, max_normalized)
            add_mix(got, [None] * len(noisy))
    return out


def merge_understanding(pieces: list[dict[str, Any]]) -> dict[str, Any]:
    """Join `understanding` results computed in parts; the calibration error is over the joined mix
    (in-grammar at 10% and 0-20% CER, out-of-grammar clean and at 10% CER, negated at 0/10/20%)."""
    out: dict[str, Any] = {}
    conf: list[float] = []
    right: list[bool] = []
    for piece in pieces:
        conf += piece.get("mix_confidence", [])
        right += piece.get("mix_right", [])
        out.update({k: v for k, v in piece.items() if not k.startswith("mix_")})
    out["calibration"] = {"n": len(conf), "ece_10_bins": ece(conf, right), "mean_confidence": sum(conf) / len(conf),
                          "accuracy": sum(right) / len(right),
                          "sets": "commands_cer10 + commands_cer0_20 + out_of_grammar (clean, cer10) + negated"}
    return out


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--weights", type=Path, default=PACKAGE / "weights.pt")
    p.add_argument("--calibration", type=Path, default=CALIBRATION_PATH, help="the calibrator the readings use")
    p.add_argument("--n", type=int, default=1000, help="in-grammar commands per set")
    p.add_argument("--n-oog", type=int, default=600)
    p.add_argument("--n-neg", type=int, default=300)
    p.add_argument("--sets", choices=("rows", "understanding", "all", *PARTS), default="all",
                   help="rows: the denoiser rows (character and word noise); understanding: the plugin's "
                        "readings on every set, or one part of them (commands, out_of_grammar, negated)")
    p.add_argument("--full-schedule", action="store_true", help="also the no-early-halt row (slow)")
    p.add_argument("--merge", type=Path, nargs="*", default=[], help="join these partial results into --out")
    p.add_argument("--out", type=Path, default=QUALITY)
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    model = load_checkpoint(args.weights)
    result: dict[str, Any] = {}
    if args.merge:
        parts = [json.loads(path.read_text()) for path in args.merge]
        for piece in parts:
            result.update({k: v for k, v in piece.items() if k != "understanding"})
        result["understanding"] = merge_understanding([p["understanding"] for p in parts if "understanding" in p])
    if args.sets in ("rows", "all") and not args.merge:
        result.update(evaluate(model, n=args.n, full_schedule=args.full_schedule))
        result["word_noise"] = evaluate(model, data=word_noise_set(args.n))
        result["word_noise"].update({"word_rate": WORD_RATE, "word_cer": WORD_CER, "seed": EVAL_WORD_SEED})
    if args.sets != "rows" and not args.merge:
        parts_ = PARTS if args.sets in ("understanding", "all") else (args.sets,)
        t0 = time.perf_counter()
        result["understanding"] = understanding(model, Calibrator.load(args.calibration), n=args.n, n_oog=args.n_oog,
                                                n_neg=args.n_neg, parts=parts_)
        result["understanding"]["wall_s"] = round(time.perf_counter() - t0)
        if args.sets in ("understanding", "all"):
            result["understanding"] = merge_understanding([result["understanding"]])
    result["params"] = sum(p.numel() for p in model.parameters())
    result["machine"] = {"python": platform.python_version(), "torch": torch.__version__,
                         "cpu": platform.processor() or platform.machine(), "threads": 1}
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
