"""Vision plugin benchmark: time per refinement step, steps to halt, quality against ground truth.

Time per step: `VisionPlugin.step` on the plugin's own sample frames (96 x 128 RGB scenes), one
image at a time as in a tick, wall time and this thread's CPU time (the wall-time tail on a shared
2-core box is mostly preemption). Baselines measured in the same process: the encoder-only start
(`init_state`: resize + encode + first energy/gradient) and one bare decoder forward.
Steps to halt: the plugin's own halting rule through the real runner with an unlimited budget.
Quality: `sage_plugins.vision.evaluate` on held-out photos (30% dropped pixels, noise sigma = 0.1, and
the clean crop as a reference): PSNR against the clean crop at step 0, after early stop and after a
fixed 50 steps, with wall times, and an `early_stop_vs_fixed_50` summary per condition (wall-time
saved, PSNR given up, whether the judged 2 dB bar is met). Needs scikit-image (the photos) for the
quality part; without it that part is skipped.

    python benchmarks/plugins/vision.py [--quick]     # prints JSON
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

from benchmarks.common import machine, pct  # noqa: E402
from sage_plugins.vision import VisionPlugin  # noqa: E402
from sage_runtime.conformance import FAR_FUTURE_NS, make_context  # noqa: E402
from sage_runtime.plugin.runner import StepCost, run_plugin  # noqa: E402


def _timed(fn: Any) -> tuple[Any, float, float]:
    w, c = time.perf_counter_ns(), time.thread_time_ns()
    out = fn()
    return out, (time.perf_counter_ns() - w) / 1e6, (time.thread_time_ns() - c) / 1e6


def _step_times(plugin: VisionPlugin, seeds: range, steps: int) -> dict[str, Any]:
    wall: dict[str, list[float]] = {"step": [], "init_state": [], "decoder_forward": []}
    cpu: dict[str, list[float]] = {k: [] for k in wall}
    for seed in seeds:
        inputs = plugin.sample_inputs(seed)
        state, w, c = _timed(lambda: plugin.init_state(inputs))
        wall["init_state"].append(w)
        cpu["init_state"].append(c)
        with torch.no_grad():
            _, w, c = _timed(lambda: plugin.model.decode(state.r.z))
        wall["decoder_forward"].append(w)
        cpu["decoder_forward"].append(c)
        for _ in range(steps):
            state, w, c = _timed(lambda: plugin.step(state))
            wall["step"].append(w)
            cpu["step"].append(c)
    return {k: {"wall": pct(wall[k]), "cpu": pct(cpu[k])} for k in wall}


def _steps_to_halt(plugin: VisionPlugin, seeds: range) -> dict[str, Any]:
    steps, halts = [], Counter()
    for seed in seeds:
        res = run_plugin(plugin, plugin.sample_inputs(seed), atp_ms=1e9, deadline_ns=FAR_FUTURE_NS, cost=StepCost())
        steps.append(res.steps)
        halts[res.halt] += 1
    a = np.asarray(steps)
    return {"n": int(a.size), "min": int(a.min()), "p50": float(np.median(a)), "p90": float(np.percentile(a, 90)),
            "max": int(a.max()), "halt_reasons": dict(halts), "histogram": dict(sorted(Counter(steps).items()))}


def run(quick: bool = False) -> dict[str, Any]:
    torch.set_num_threads(1)
    plugin = VisionPlugin()
    plugin.setup(make_context(plugin, {}))
    plugin.warmup()
    result: dict[str, Any] = {"machine": machine(), "plugin": "vision", "quick": quick,
                              "working_size": plugin.size, "max_steps": plugin.max_steps}
    result["time_ms"] = _step_times(plugin, range(100, 104 if quick else 116), 10 if quick else 20)
    result["steps_to_halt_sample_frames"] = _steps_to_halt(plugin, range(200, 208 if quick else 240))
    plugin.close()
    try:
        import skimage  # noqa: F401
    except ImportError:
        result["quality"] = "skipped: scikit-image not installed"
        return result
    from sage_plugins.vision.evaluate import HELD_OUT_PHOTOS, crops, evaluate_condition

    clean = crops(HELD_OUT_PHOTOS, 2 if quick else 8, seed=2024)
    result["quality"] = {"held_out_photos": list(HELD_OUT_PHOTOS), "crops": int(clean.shape[0]),
                         "reference": "PSNR against the clean crop"}
    for i, condition in enumerate(("drop30", "noise10", "clean")):
        rep = evaluate_condition(clean, condition, 2025 + i)
        rep.pop("per_image_gain_db", None)
        rep["early_stop"].pop("steps", None)
        early, fixed = rep["early_stop"], rep["fixed_50"]
        rep["early_stop_vs_fixed_50"] = {
            "early_psnr_db": early["psnr_db"], "fixed_50_psnr_db": fixed["psnr_db"],
            "psnr_given_up_db": round(fixed["psnr_db"] - early["psnr_db"], 3),
            "early_wall_ms_median": early["wall_ms_median"], "fixed_50_wall_ms_median": fixed["wall_ms_median"],
            "wall_saved_ms_median": round(fixed["wall_ms_median"] - early["wall_ms_median"], 3),
            "early_steps_median": early["steps_median"],
            "gain_over_step0_db": early["gain_db"],
            "meets_2db_bar": None if condition == "clean" else bool(early["gain_db"] >= 2.0),
        }
        result["quality"][condition] = rep
    return result


if __name__ == "__main__":
    print(json.dumps(run(quick="--quick" in sys.argv), indent=2))
