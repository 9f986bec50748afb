"""Reasoning plugin benchmark: per-segment latency, steps to halt, exact accuracy vs ground truth.

Ground truth: the held-out 4x4 test split the shipped checkpoint never saw (1,000 generated puzzles,
4-11 blanks, unique solutions, seed 0; 200 with --quick). Quality is exact (whole-puzzle) accuracy
against the label, never early-exit output against full-run output. Latency is one ACT segment
(`plugin.step`) at batch 1 through the plugin, wall time and this thread's CPU time (the wall-time
tail on a shared CPU is mostly preemption); the baseline measured in the same process is the
classical bitmask backtracking solver on the same puzzles.

    python benchmarks/plugins/reasoning.py [--quick]     # prints JSON
"""

from __future__ import annotations

import json
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import torch

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from sage_plugins.reasoning import ReasoningPlugin, sudoku  # noqa: E402
from sage_plugins.reasoning.data import SudokuSplit, build_test_split  # noqa: E402
from sage_plugins.reasoning.evaluate import halt_segment, summarize, trace_segments  # noqa: E402
from sage_runtime.conformance import FAR_FUTURE_NS, make_context  # noqa: E402
from sage_runtime.plugin.contract import PluginInputs  # noqa: E402
from sage_runtime.plugin.runner import StepCost, run_plugin
from sage_runtime.records import Frame


def _pct(values: list[float]) -> dict[str, float]:
    a = np.asarray(values, dtype=np.float64)
    return {"p50": round(float(np.percentile(a, 50)), 4), "p99": round(float(np.percentile(a, 99)), 4),
            "max": round(float(a.max()), 4), "n": int(a.size)}


def test_split(quick: bool) -> SudokuSplit:
    split = build_test_split(4, 1000, (4, 11), seed=0)
    return split.subset(np.arange(200)) if quick else split


def step_latency(plugin: ReasoningPlugin, split: SudokuSplit, batch: int, reps: int) -> dict[str, Any]:
    """Wall and CPU ms of one segment for `batch` puzzles at once (rows never halted, so every
    measured step computes all rows)."""
    grids = np.stack([sudoku.from_tokens(t, 4) for t in split.inputs[:batch]])
    wall, cpu = [], []
    for r in range(reps + 3):
        state = plugin.fresh_state(grids)
        w0, c0 = time.perf_counter(), time.thread_time()
        plugin.step(state)
        if r >= 3:  # warm-up reps dropped
            wall.append((time.perf_counter() - w0) * 1e3)
            cpu.append((time.thread_time() - c0) * 1e3)
    return {"batch": batch, "wall_ms": _pct(wall), "cpu_ms": _pct(cpu),
            "wall_ms_per_puzzle_p50": round(float(np.median(wall)) / batch, 4)}


def solver_baseline(split: SudokuSplit, count: int) -> dict[str, Any]:
    wall = []
    for t in split.inputs[:count]:
        g = sudoku.from_tokens(t, 4)
        w0 = time.perf_counter()
        sudoku.solve(g)
        wall.append((time.perf_counter() - w0) * 1e3)
    return {"what": "bitmask backtracking solver, one puzzle", "wall_ms": _pct(wall), "exact": 1.0}


def plugin_runs(plugin: ReasoningPlugin, split: SudokuSplit, count: int) -> dict[str, Any]:
    """Whole runs through the real runner, one puzzle each, with the plugin's default halting."""
    cost = StepCost()
    steps, halts, exact, lat = [], Counter(), [], []
    for i, t in enumerate(split.inputs[:count]):
        grid = sudoku.from_tokens(t, 4)
        inputs = PluginInputs(tick=i, frames={"puzzle": Frame("puzzle", i, 0, "tensor", torch.from_numpy(grid))})
        res = run_plugin(plugin, inputs, atp_ms=1e9, deadline_ns=FAR_FUTURE_NS, cost=cost)
        steps.append(res.steps)
        halts[res.outputs["halt_detail"]] += 1
        exact.append(bool((res.outputs["solution"].reshape(-1).numpy() + 1 == split.labels[i]).all()))
        lat.append(res.latency_ms)
    return {"count": count, "exact": float(np.mean(exact)), "mean_steps": float(np.mean(steps)),
            "steps_to_halt": {str(k): v for k, v in sorted(Counter(steps).items())},
            "halt_detail": dict(halts), "run_latency_ms": _pct(lat)}


def run(quick: bool = False) -> dict[str, Any]:
    torch.set_num_threads(1)
    plugin = ReasoningPlugin()
    plugin.setup(make_context(plugin))
    plugin.warmup()
    split = test_split(quick)
    model = plugin.models[4]
    trace = trace_segments(model, split)
    learned = summarize(trace, split, model.cfg.halt_mode, plugin.taus[4], 0)
    policy = summarize(trace, split, model.cfg.halt_mode, plugin.taus[4], plugin.stable_steps)
    h = halt_segment(trace, model.cfg.halt_mode, plugin.taus[4], plugin.stable_steps)
    out = {
        "plugin": "reasoning",
        "checkpoint": {"config": model.cfg.to_dict(), "params": sum(p.numel() for p in model.parameters())},
        "test_split": {"count": len(split), "blanks": [4, 11], "seed": 0},
        "segment_latency_batch1": step_latency(plugin, split, 1, 30 if quick else 200),
        "baseline_solver": solver_baseline(split, 50 if quick else 300),
        "quality": {
            "exact_all_segments": learned["exact_all_segments"],
            "exact_by_segment": learned["exact_by_segment"],
            "learned_halt": {"exact": learned["exact_learned_halt"],
                             "mean_segments": learned["mean_segments_learned_halt"]},
            "plugin_halting": {"exact": policy["exact_learned_halt"],
                               "mean_segments": policy["mean_segments_learned_halt"],
                               "stable_steps": plugin.stable_steps, "tau": plugin.taus[4]},
            "mean_segments_by_blanks": {k: v["mean_segments"] for k, v in policy["by_blanks"].items()},
            "q_halt_accuracy": learned["q_halt_accuracy"],
            "baselines": learned["baselines"],
            "distinct_predictions": learned["diversity"]["distinct_predictions"],
        },
        "steps_to_halt": {str(k + 1): int(v) for k, v in sorted(Counter(h.tolist()).items())},
        "runner": plugin_runs(plugin, split, 50 if quick else 200),
    }
    plugin.close()
    return out


if __name__ == "__main__":
    print(json.dumps(run(quick="--quick" in sys.argv), indent=2))
