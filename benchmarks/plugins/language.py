"""Language plugin benchmark: time per mask-predict step, steps to halt, quality against ground truth.

Timing runs one command per plugin run through the real runner (init_state = the first masked
prediction, then re-masking steps until the text stops changing), on held-out commands at 10% CER:
wall time (`latency_ms`) and this thread's CPU time (`cpu_ms`; on the shared 2-core box the
wall-time tail is mostly preemption). Quality is evaluate.py's: exact-match text and intent
accuracy on held-out commands (seed never used in training), for the uncorrected noisy input (the
baseline, same commands, same process), the first prediction, refinement with early halting, and
the full fixed schedule of T steps.

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

from plugins.language import LanguagePlugin
from plugins.language.evaluate import evaluate, heldout_set
from sage_runtime.conformance import FAR_FUTURE_NS, make_context
from sage_runtime.irp import Frame, PluginInputs, StepCost, run_plugin


def _pct(values: list[float]) -> dict[str, float]:
    a = np.asarray(values)
    return {"p50": round(float(np.percentile(a, 50)), 3), "p99": round(float(np.percentile(a, 99)), 3),
            "max": round(float(a.max()), 3), "n": int(a.size)}


def _inputs(text: str, i: int) -> PluginInputs:
    return PluginInputs(tick=i, frames={"asr": Frame("asr", i, i, "text", text)}, salience={"asr": 0.5})


def run(quick: bool = False) -> dict[str, Any]:
    torch.set_num_threads(1)
    plugin = LanguagePlugin()
    plugin.setup(make_context())
    plugin.warmup()
    data = heldout_set(60 if quick else 300, seed=4242, rate=0.1)
    cost = StepCost()
    for _, _, noisy in data[:10]:
        run_plugin(plugin, _inputs(noisy, 0), atp_ms=1e9, deadline_ns=FAR_FUTURE_NS, cost=cost)
    latency, cpu, steps, halts, step_ms, right = [], [], [], Counter(), [], 0
    for i, (clean, intent, noisy) in enumerate(data):
        c0 = time.thread_time()
        res = run_plugin(plugin, _inputs(noisy, i), atp_ms=1e9, deadline_ns=FAR_FUTURE_NS, cost=cost)
        cpu.append((time.thread_time() - c0) * 1e3)
        latency.append(res.latency_ms)
        steps.append(res.steps)
        halts[res.halt] += 1
        right += res.outputs["intent"] == intent
        state = plugin.init_state(_inputs(noisy, i))
        t0 = time.perf_counter()
        plugin.step(state)
        step_ms.append((time.perf_counter() - t0) * 1e3)
    plugin.close()
    quality = evaluate(plugin.model, n=200 if quick else 1000, full_schedule=True)
    return {
        "plugin": "language",
        "device": "cpu", "torch_threads": torch.get_num_threads(),
        "params": sum(p.numel() for p in plugin.model.parameters()),
        "per_run": {"latency_ms": _pct(latency), "cpu_ms": _pct(cpu), "step_ms": _pct(step_ms),
                    "steps_to_halt": {str(k): v for k, v in sorted(Counter(steps).items())},
                    "halt": dict(halts), "intent_exact": right / len(data), "n": len(data)},
        "quality": quality,
    }


if __name__ == "__main__":
    print(json.dumps(run(quick="--quick" in sys.argv), indent=2))
