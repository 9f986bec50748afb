"""Language plugin benchmark: time per mask-predict step, steps to halt, quality against ground truth.

Timing runs one command per plugin run through the real runner (init_state = the first masked
prediction, then re-masking steps until the text stops changing), on held-out commands at 10% CER,
twice: with the grammar constraint (the default: projection onto the nearest command when
refinement would halt, tolerant intent parser) and model only (`grammar_constraint: false`):
wall time (`latency_ms`) and this thread's CPU time (`cpu_ms`; on the shared 2-core box the
wall-time tail is mostly preemption), steps to halt, text and intent exact match. Quality is
evaluate.py's: exact-match text and intent accuracy on held-out commands (seed never used in
training), for the uncorrected noisy input (the baseline, same commands, same process), the input
snapped to the grammar without the model, the first prediction, model-only refinement with early
halting, the same with the grammar constraint, and the full fixed schedule of T steps.

    python benchmarks/plugins/language.py [--quick]     # prints JSON
"""

from __future__ import annotations

import json
import sys
import time
from collections import Counter
from typing import Any

import numpy as np
import torch

from sage_plugins.language import LanguagePlugin
from sage_plugins.language.evaluate import evaluate, heldout_set
from sage_runtime.conformance import FAR_FUTURE_NS, make_context
from sage_runtime.plugin.contract import PluginInputs
from sage_runtime.plugin.runner import StepCost, run_plugin
from sage_runtime.records import Frame


def _pct(values: list[float]) -> dict[str, float]:
    a = np.asarray(values)
    return {"p50": round(float(np.percentile(a, 50)), 3), "p99": round(float(np.percentile(a, 99)), 3),
            "max": round(float(a.max()), 3), "n": int(a.size)}


def _inputs(text: str, i: int) -> PluginInputs:
    return PluginInputs(tick=i, frames={"asr": Frame("asr", i, i, "text", text)}, salience={"asr": 0.5})


def _per_run(plugin: LanguagePlugin, data: list) -> dict[str, Any]:
    cost = StepCost()
    for _, _, noisy in data[:10]:
        run_plugin(plugin, _inputs(noisy, 0), atp_ms=1e9, deadline_ns=FAR_FUTURE_NS, cost=cost)
    latency, cpu, steps, halts, step_ms, intent_right, text_right = [], [], [], Counter(), [], 0, 0
    for i, (clean, intent, noisy) in enumerate(data):
        c0 = time.thread_time()
        res = run_plugin(plugin, _inputs(noisy, i), atp_ms=1e9, deadline_ns=FAR_FUTURE_NS, cost=cost)
        cpu.append((time.thread_time() - c0) * 1e3)
        latency.append(res.latency_ms)
        steps.append(res.steps)
        halts[res.halt] += 1
        intent_right += res.outputs["intent"] == intent
        text_right += res.outputs["text"] == clean
        state = plugin.init_state(_inputs(noisy, i))
        t0 = time.perf_counter()
        plugin.step(state)
        step_ms.append((time.perf_counter() - t0) * 1e3)
    return {"latency_ms": _pct(latency), "cpu_ms": _pct(cpu), "step_ms": _pct(step_ms),
            "steps_to_halt": {str(k): v for k, v in sorted(Counter(steps).items())},
            "halt": dict(halts), "text_exact": text_right / len(data), "intent_exact": intent_right / len(data),
            "n": len(data)}


def run(quick: bool = False) -> dict[str, Any]:
    torch.set_num_threads(1)
    data = heldout_set(60 if quick else 300, seed=4242, rate=0.1)
    per_run = {}
    for name, constrained in (("constrained", True), ("model_only", False)):
        plugin = LanguagePlugin()
        plugin.setup(make_context(plugin, {"grammar_constraint": constrained}))
        plugin.warmup()
        per_run[name] = _per_run(plugin, data)
        model = plugin.model
        plugin.close()
    quality = evaluate(model, n=200 if quick else 1000, full_schedule=True)
    return {
        "plugin": "language",
        "device": "cpu", "torch_threads": torch.get_num_threads(),
        "params": sum(p.numel() for p in model.parameters()),
        "per_run": per_run,
        "quality": quality,
    }


if __name__ == "__main__":
    print(json.dumps(run(quick="--quick" in sys.argv), indent=2))
