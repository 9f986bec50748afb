"""The conformance check every plugin passes (built-in and third-party alike).

It runs a plugin through the real runner and checks what the runtime relies on: finite energies,
quota and deadline respected, outputs of publishable types, determinism, and input sensitivity
(different inputs must give different outputs: the research code's trained model collapsed to a
constant function and nobody noticed).
"""

from __future__ import annotations

import logging
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from sage_runtime.plugin.contract import HALT_REASONS, IRPPlugin, PluginContext
from sage_runtime.plugin.runner import StepCost, run_plugin
from sage_runtime.records import RunResult

FAR_FUTURE_NS = 1 << 62


def make_context(config: dict[str, Any] | None = None, state_dir: Path | None = None,
                 device: str = "cpu") -> PluginContext:
    """A plugin context for tests and benchmarks."""
    state = state_dir or Path(tempfile.mkdtemp(prefix="sage-plugin-"))
    return PluginContext(torch.device(device), config or {}, state, logging.getLogger("sage.plugin"))


def _as_comparable(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.detach().cpu().numpy()
    return value


def outputs_differ(a: dict[str, Any], b: dict[str, Any]) -> bool:
    """True when any output differs between two runs (tensor values, text or values)."""
    for key in set(a) | set(b):
        if key not in a or key not in b:
            return True
        x, y = _as_comparable(a[key]), _as_comparable(b[key])
        if isinstance(x, np.ndarray) or isinstance(y, np.ndarray):
            x, y = np.asarray(x), np.asarray(y)
            if x.shape != y.shape or not np.array_equal(x, y):
                return True
        elif x != y:
            return True
    return False


def _check_output_types(result: RunResult) -> None:
    for name, value in result.outputs.items():
        assert isinstance(name, str) and name, "output names are non-empty strings"
        ok = isinstance(value, (torch.Tensor, np.ndarray, str, int, float, bool, list, dict, type(None)))
        assert ok, f"output {name!r} has unpublishable type {type(value).__name__}"


def check_plugin(factory: Callable[[], IRPPlugin], *, config: dict[str, Any] | None = None,
                 seeds: tuple[int, ...] = (1, 2, 3)) -> None:
    """Raise AssertionError naming the first broken promise of the plugin made by `factory`."""
    plugin = factory()
    plugin.setup(make_context(config))
    try:
        plugin.warmup()
        cost = StepCost()
        results = []
        for seed in seeds:
            res = run_plugin(plugin, plugin.sample_inputs(seed), atp_ms=1e9, deadline_ns=FAR_FUTURE_NS, cost=cost)
            assert res.halt in HALT_REASONS and res.halt != "error", f"seed {seed}: {res.halt} {res.error}"
            assert res.steps >= 1, f"seed {seed}: no refinement step ran"
            assert all(np.isfinite(res.energies)), "energies must be finite"
            _check_output_types(res)
            results.append(res)

        # Determinism: the same input twice gives the same outputs.
        again = run_plugin(plugin, plugin.sample_inputs(seeds[0]), atp_ms=1e9, deadline_ns=FAR_FUTURE_NS, cost=cost)
        assert not outputs_differ(results[0].outputs, again.outputs), "same input gave different outputs"

        # Input sensitivity: distinct inputs give distinct outputs, pairwise.
        for i in range(len(results)):
            for j in range(i + 1, len(results)):
                assert outputs_differ(results[i].outputs, results[j].outputs), (
                    f"seeds {seeds[i]} and {seeds[j]} gave identical outputs: plugin ignores its input")

        # Quota: an allocation worth one step runs exactly one step.
        one = run_plugin(plugin, plugin.sample_inputs(seeds[0]), atp_ms=cost.ms, deadline_ns=FAR_FUTURE_NS,
                         cost=StepCost(cost.ms, alpha=0.0))
        assert one.steps <= 1 and one.halt in ("quota", "converged", "max_steps"), one
        # Deadline: a deadline already past stops before any step.
        late = run_plugin(plugin, plugin.sample_inputs(seeds[0]), atp_ms=1e9, deadline_ns=time.perf_counter_ns() - 1,
                          cost=cost)
        assert late.steps == 0 and late.halt == "deadline", late
    finally:
        plugin.close()
