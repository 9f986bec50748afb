"""Measure the shipped denoiser against ground truth: `python -m plugins.language.evaluate`.

Held-out commands (texts in the evaluation-only split, which training never draws) are generated
with EVAL_SEED, used nowhere else, and corrupted at 10% CER. Each metric is given for the
uncorrected noisy input (the parser applied to it), for the model's first prediction (step 0), and
after refinement to convergence (mask-predict re-masking and re-reads; batches of `batch` texts
halt together, `batch_steps`; per-command steps to halt are in the benchmark), and with every
step of the schedule run (no early halt). Writes plugins/language/quality.json.
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

from plugins.language.grammar import Grammar, normalize
from plugins.language.model import Denoiser, load_checkpoint
from plugins.language.noise import corrupt, levenshtein
from plugins.language.refine import first_pass, refine, texts

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


def _scores(grammar: Grammar, data: list[tuple[str, dict, str]], hyps: list[str]) -> dict[str, float]:
    chars = sum(len(c) for c, _, _ in data)
    return {
        "text_exact": sum(normalize(h) == c for (c, _, _), h in zip(data, hyps)) / len(data),
        "intent_exact": sum(grammar.parse(h) == i for (_, i, _), h in zip(data, hyps)) / len(data),
        "cer": sum(levenshtein(c, normalize(h)) for (c, _, _), h in zip(data, hyps)) / chars,
    }


def evaluate(model: Denoiser, n: int = 1000, seed: int = EVAL_SEED, rate: float = 0.1, total: int = 10,
             batch: int = 125, full_schedule: bool = False) -> dict[str, Any]:
    """Exact-match text and intent accuracy and CER: noisy input vs first pass vs refined (halting
    when the text stops changing), and optionally vs all T steps with no early halt."""
    grammar = Grammar.load()
    data = heldout_set(n, seed, rate)
    first, refined, full, steps = [], [], [], []
    wall = {"first_pass_s": 0.0, "refined_s": 0.0, "full_schedule_s": 0.0}
    for i in range(0, n, batch):
        noisy = [normalize(x) for _, _, x in data[i:i + batch]]
        t0 = time.perf_counter()
        first += texts(first_pass(model, noisy, total))
        t1 = time.perf_counter()
        state = refine(model, noisy, total=total)
        t2 = time.perf_counter()
        refined += texts(state)
        steps.append(state.step)
        if full_schedule:
            full += texts(refine(model, noisy, total=total, freeze=False))
        t3 = time.perf_counter()
        wall = {"first_pass_s": wall["first_pass_s"] + t1 - t0, "refined_s": wall["refined_s"] + t2 - t1,
                "full_schedule_s": wall["full_schedule_s"] + t3 - t2}
    out = {
        "n": n, "seed": seed, "target_cer": rate,
        "input_cer": sum(levenshtein(c, x) for c, _, x in data) / sum(len(c) for c, _, _ in data),
        "noisy_input": _scores(grammar, data, [x for _, _, x in data]),
        "first_pass": _scores(grammar, data, first),
        "refined": _scores(grammar, data, refined),
        "batch": batch,
        "batch_steps": steps,
        "wall_s": {k: round(v, 2) for k, v in wall.items() if v},
    }
    if full_schedule:
        out["full_schedule"] = _scores(grammar, data, full)
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
