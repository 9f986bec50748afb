"""The conformance check every plugin passes (built-in and third-party alike).

It runs a plugin through the real runner and checks what the runtime relies on: finite energies,
quota and deadline respected, outputs of publishable types, determinism, and input sensitivity
(different inputs must give different outputs: the research code's trained model collapsed to a
constant function and nobody noticed).

    python -m sage_runtime.conformance pkg.module:Class [--options '{"key": 1}'] [--inputs pkg.mod:func]

exits 0 when the plugin passes, 1 naming the failed property, 2 when it cannot be loaded.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from sage_runtime.errors import ConfigError
from sage_runtime.plugin.contract import HALT_REASONS, IRPPlugin, PluginContext, PluginInputs
from sage_runtime.plugin.registry import load_plugin_class, validate_options
from sage_runtime.plugin.runner import StepCost, run_plugin
from sage_runtime.records import RunResult

FAR_FUTURE_NS = 1 << 62
SampleInputs = Callable[[int], PluginInputs]


def make_context(plugin: IRPPlugin | type[IRPPlugin], options: Mapping[str, Any] | None = None,
                 state_dir: Path | None = None, device: str = "cpu") -> PluginContext:
    """A plugin context for tests and benchmarks, its options validated as the daemon does."""
    cls = plugin if isinstance(plugin, type) else type(plugin)
    state = state_dir or Path(tempfile.mkdtemp(prefix="sage-plugin-"))
    return PluginContext(torch.device(device), validate_options(cls, options), state,
                         logging.getLogger(f"sage.plugin.{cls.name}"))


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
        assert isinstance(name, str) and name, "output types: output names are non-empty strings"
        ok = isinstance(value, (torch.Tensor, np.ndarray, str, int, float, bool, list, dict, type(None)))
        assert ok, f"output types: output {name!r} has unpublishable type {type(value).__name__}"


def _sample_source(plugin: IRPPlugin, sample_inputs: SampleInputs | None) -> SampleInputs:
    """The plugin's own sample inputs, else the ones given; a plugin with neither cannot be checked."""
    if sample_inputs is not None:
        return sample_inputs
    if plugin.sample_inputs(0) is None:
        raise AssertionError(f"{plugin.name}: sample_inputs returns None and no sample inputs were given "
                             "(pass sample_inputs=, or --inputs on the command line)")
    return plugin.sample_inputs


def check_plugin(factory: Callable[[], IRPPlugin], *, config: Mapping[str, Any] | None = None,
                 seeds: tuple[int, ...] = (1, 2, 3), sample_inputs: SampleInputs | None = None) -> None:
    """Raise AssertionError naming the first broken promise of the plugin made by `factory`.

    `sample_inputs(seed)` stands in for the plugin's own when it has none (or to test others)."""
    plugin = factory()
    plugin.setup(make_context(plugin, config))
    try:
        plugin.warmup()
        inputs = _sample_source(plugin, sample_inputs)
        cost = StepCost()
        results = []
        for seed in seeds:
            res = run_plugin(plugin, inputs(seed), atp_ms=1e9, deadline_ns=FAR_FUTURE_NS, cost=cost)
            assert res.halt in HALT_REASONS and res.halt != "error", f"runs: seed {seed}: {res.halt} {res.error}"
            assert res.steps >= 1, f"steps: seed {seed}: no refinement step ran"
            assert all(np.isfinite(res.energies)), "finite energies: energies must be finite"
            _check_output_types(res)
            results.append(res)

        # Determinism: the same input twice gives the same outputs.
        again = run_plugin(plugin, inputs(seeds[0]), atp_ms=1e9, deadline_ns=FAR_FUTURE_NS, cost=cost)
        assert not outputs_differ(results[0].outputs, again.outputs), "determinism: same input gave different outputs"

        # Input sensitivity: distinct inputs give distinct outputs, pairwise.
        for i in range(len(results)):
            for j in range(i + 1, len(results)):
                assert outputs_differ(results[i].outputs, results[j].outputs), (
                    f"input sensitivity: seeds {seeds[i]} and {seeds[j]} gave identical outputs: plugin ignores its input")

        # Quota: an allocation worth one step runs exactly one step.
        one = run_plugin(plugin, inputs(seeds[0]), atp_ms=cost.ms, deadline_ns=FAR_FUTURE_NS,
                         cost=StepCost(cost.ms, alpha=0.0))
        assert one.steps <= 1 and one.halt in ("quota", "converged", "max_steps"), \
            f"quota: an allocation worth one step ran {one.steps} steps (halt {one.halt})"
        # Deadline: a deadline already past stops before any step.
        late = run_plugin(plugin, inputs(seeds[0]), atp_ms=1e9, deadline_ns=time.perf_counter_ns() - 1,
                          cost=cost)
        assert late.steps == 0 and late.halt == "deadline", \
            f"deadline: a deadline already past ran {late.steps} steps (halt {late.halt})"
    finally:
        plugin.close()


def _load_callable(spec: str) -> Any:
    import importlib

    module_name, _, attr = spec.partition(":")
    return getattr(importlib.import_module(module_name), attr)


def main(argv: list[str] | None = None) -> int:
    """`python -m sage_runtime.conformance pkg:Class`: 0 passed, 1 a property failed, 2 not loadable."""
    p = argparse.ArgumentParser(prog="python -m sage_runtime.conformance",
                                description="Run the plugin conformance check on any plugin.")
    p.add_argument("plugin", help="a registered plugin name or module:Class")
    p.add_argument("--options", default="{}", help="the plugin's options as JSON (plugins.options.<name>)")
    p.add_argument("--inputs", metavar="MODULE:FUNC", help="sample_inputs(seed) for a plugin without its own")
    args = p.parse_args(argv)
    try:
        cls = load_plugin_class(args.plugin)
        options = json.loads(args.options)
        inputs = _load_callable(args.inputs) if args.inputs else None
        make_context(cls, options)  # refuse bad options before setup loads anything
    except (ConfigError, ValueError, ImportError, AttributeError) as exc:
        print(f"conformance: cannot load {args.plugin}: {exc}", file=sys.stderr)
        return 2
    try:
        check_plugin(cls, config=options, sample_inputs=inputs)
    except AssertionError as exc:
        print(f"conformance: {cls.name} FAILED: {exc}", file=sys.stderr)
        return 1
    print(f"conformance: {cls.name} passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
