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

Writes sage_plugins/language/quality.json.
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import time
from pathlib import Path
from typing import Any

import torch

from sage_plugins.language.grammar import MAX_NORMALIZED, Grammar, normalize
from sage_plugins.language.model import Denoiser, load_checkpoint
from sage_plugins.language.noise import corrupt, levenshtein
from sage_plugins.language.refine import first_pass, grammar_projection, refine, texts

PACKAGE = Path(__file__).parent
EVAL_SEED = 20261122
QUALITY = PACKAGE / "quality.json"


def heldout_set(n: int, seed: int, rate: float) -> list[tuple[str, dict[str, Any], str]]:
    """(clean text, intent, noisy text) triples from the evaluation split."""
    grammar = Grammar.load()
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        cmd = grammar.sample_split(rng, heldout=True)
        out.append((cmd.text, cmd.intent, corrupt(cmd.text, rate, rng)))
    return out


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
    near = grammar.nearest(text)
    return near.text if near is not None and near.normalized(text) <= max_normalized else normalize(text)


def evaluate(model: Denoiser, n: int = 1000, seed: int = EVAL_SEED, rate: float = 0.1, total: int = 10,
             batch: int = 125, full_schedule: bool = False, grammar_only: bool = True,
             max_normalized: float = MAX_NORMALIZED, max_reads: int = 3) -> dict[str, Any]:
    """Exact-match text and intent accuracy and CER: noisy input (and, with grammar_only, the input
    snapped to the grammar) vs first pass vs refined (model only, halting when the text stops
    changing) vs refined with the grammar projection, and optionally vs all T steps with no early
    halt."""
    grammar = Grammar.load()
    data = heldout_set(n, seed, rate)
    project = grammar_projection(model, grammar, max_normalized, max_reads)
    first, refined, constrained, full, steps, csteps = [], [], [], [], [], []
    wall = {"first_pass_s": 0.0, "refined_s": 0.0, "projection_s": 0.0, "full_schedule_s": 0.0}
    for i in range(0, n, batch):
        noisy = [normalize(x) for _, _, x in data[i:i + batch]]
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
        snapped = [snap(grammar, x, max_normalized) for _, _, x in data]
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


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--weights", type=Path, default=PACKAGE / "weights.pt")
    p.add_argument("--n", type=int, default=1000)
    p.add_argument("--out", type=Path, default=QUALITY)
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    model = load_checkpoint(args.weights)
    result = evaluate(model, n=args.n, full_schedule=True)
    result["params"] = sum(p.numel() for p in model.parameters())
    result["machine"] = {"python": platform.python_version(), "torch": torch.__version__,
                         "cpu": platform.processor() or platform.machine(), "threads": 1}
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
