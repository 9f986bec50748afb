"""Reasoning (HRM-ACT-v1 on 4x4 Sudoku) benchmark; writes benchmarks/results/reasoning.json.

- per-segment latency p50/p99 at batch 1 and 64 (wall and thread CPU time), against the classical
  backtracking solver measured in the same process;
- exact accuracy vs number of segments on the 1,000-puzzle held-out test split (ground truth);
- learned halting (at the threshold chosen on validation data and stored in the checkpoint, and
  at tau 0.5) and the plugin's halting (learned halt or 2 unchanged segments):
  exact accuracy, mean segments, mean segments per number of blanks;
- halting calibration: predicted P(correct) = sigmoid(q_halt) against verified correctness, as a
  reliability curve at the halting segment and over every (puzzle, segment) pair, with ECE.

    python benchmarks/bench_reasoning.py [--quick]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from common import machine, save  # noqa: E402

from benchmarks.plugins.reasoning import plugin_runs, solver_baseline, step_latency, test_split  # noqa: E402
from sage_plugins.reasoning import ReasoningPlugin  # noqa: E402
from sage_plugins.reasoning.evaluate import calibration, expected_calibration_error, summarize, trace_segments  # noqa: E402
from sage_runtime.conformance import make_context  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    plugin = ReasoningPlugin()
    plugin.setup(make_context(plugin))
    plugin.warmup()
    model = plugin.models[4]
    split = test_split(args.quick)
    reps = 30 if args.quick else 200

    trace = trace_segments(model, split)
    learned = summarize(trace, split, model.cfg.halt_mode, plugin.taus[4], 0)
    policy = summarize(trace, split, model.cfg.halt_mode, plugin.taus[4], plugin.stable_steps)
    at_half = summarize(trace, split, model.cfg.halt_mode, 0.5, 0)
    every = calibration(trace.p_halt.reshape(-1), trace.correct.reshape(-1))
    result = {
        "machine": machine(),
        "checkpoint": {"config": model.cfg.to_dict(), "params": sum(p.numel() for p in model.parameters())},
        "test_split": {"count": len(split), "blanks": [4, 11], "seed": 0, "unique_solutions": True},
        "latency": {
            "segment_batch1": step_latency(plugin, split, 1, reps),
            "segment_batch64": step_latency(plugin, split, 64, max(10, reps // 4)),
            "baseline_backtracking_solver": solver_baseline(split, 300 if not args.quick else 50),
        },
        "accuracy_vs_segments": learned["exact_by_segment"],
        "exact_all_segments": learned["exact_all_segments"],
        "learned_halt": {k: learned[k] for k in ("exact_learned_halt", "mean_segments_learned_halt", "halt_tau")},
        "learned_halt_tau_0.5": {k: at_half[k] for k in ("exact_learned_halt", "mean_segments_learned_halt")},
        "plugin_halting": {k: policy[k] for k in ("exact_learned_halt", "mean_segments_learned_halt", "halt_stable")},
        "by_blanks_learned_halt": learned["by_blanks"],
        "by_blanks_plugin_halting": policy["by_blanks"],
        "calibration": {
            "at_halt": learned["calibration_at_halt"], "ece_at_halt": learned["ece_at_halt"],
            "every_segment": every,
            "ece_every_segment": expected_calibration_error(trace.p_halt.reshape(-1), trace.correct.reshape(-1)),
            "q_halt_accuracy": learned["q_halt_accuracy"],
            "base_rate_correct": float(trace.correct.mean()),
        },
        "collapse_guards": {"baselines": learned["baselines"], "diversity": learned["diversity"]},
        "runner": plugin_runs(plugin, split, 50 if args.quick else 200),
    }
    path = save("reasoning", result)
    lat = result["latency"]
    print(f"segment latency b=1 p50/p99 {lat['segment_batch1']['wall_ms']['p50']}/"
          f"{lat['segment_batch1']['wall_ms']['p99']} ms, b=64 {lat['segment_batch64']['wall_ms']['p50']}/"
          f"{lat['segment_batch64']['wall_ms']['p99']} ms; solver p50 "
          f"{lat['baseline_backtracking_solver']['wall_ms']['p50']} ms")
    print("exact by segment", [round(v, 3) for v in result["accuracy_vs_segments"]])
    print(f"learned halt: exact {learned['exact_learned_halt']:.3f} at {learned['mean_segments_learned_halt']:.2f} "
          f"segments; plugin halting {policy['exact_learned_halt']:.3f} at {policy['mean_segments_learned_halt']:.2f}")
    print("mean segments by blanks", {k: round(v["mean_segments"], 2) for k, v in learned["by_blanks"].items()})
    print(f"ECE at halt {learned['ece_at_halt']:.3f}; q_halt_accuracy {learned['q_halt_accuracy']:.3f} "
          f"(base rate {np.mean(trace.correct):.3f})")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
