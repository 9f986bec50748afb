"""The runner that holds a plugin to its budget: an ATP allocation (1 ATP = 1 ms) becomes a step
quota from the plugin's measured cost per step; quota and deadline are checked between steps, and
exceptions and NaN energies become a `halt="error"` result instead of escaping into the tick."""

from __future__ import annotations

import math
import time
from typing import Any

from sage_runtime.plugin.contract import HALT_REASONS, IRPPlugin, PluginInputs
from sage_runtime.records import RunResult


class StepCost:
    """Running estimate of one step's wall time, so an ATP allocation becomes a step quota."""

    def __init__(self, initial_ms: float = 1.0, alpha: float = 0.2) -> None:
        self.ms = initial_ms
        self.alpha = alpha
        self.samples = 0

    def observe(self, ms: float) -> None:
        if not math.isfinite(ms) or ms < 0:
            return
        self.ms = ms if self.samples == 0 else (1 - self.alpha) * self.ms + self.alpha * ms
        self.samples += 1

    def quota(self, atp_ms: float, max_steps: int) -> int:
        """Whole steps affordable with atp_ms; a run is granted at least 1 step when atp covers
        half a step, because a zero-step run does no work and only wastes the init cost."""
        if atp_ms <= 0:
            return 0
        steps = int(atp_ms / max(self.ms, 1e-6))
        if steps == 0 and atp_ms >= 0.5 * self.ms:
            steps = 1
        return min(steps, max_steps)


def _finite_energy(value: Any) -> float:
    e = float(value)
    if not math.isfinite(e):
        raise FloatingPointError(f"energy is {e}")
    return e


def run_plugin(
    plugin: IRPPlugin,
    inputs: PluginInputs,
    *,
    atp_ms: float,
    deadline_ns: int,
    cost: StepCost,
    clock_ns: Any = time.perf_counter_ns,
) -> RunResult:
    """Refine until halt, quota or deadline. Runs on the plugin's compute thread.

    ATP spent is the measured wall time of init, steps and outputs (1 ATP = 1 ms); it may exceed
    atp_ms by at most one step, which the ledger accounts as overrun.
    """
    t0 = clock_ns()
    quota = cost.quota(atp_ms, plugin.max_steps)
    energies: list[float] = []
    steps = 0
    halt: str | None = None
    detail: str | None = None
    try:
        state = plugin.init_state(inputs)
        if state is None:
            return RunResult(plugin.name, "converged", 0, None, [], {}, 0.0, 0.0, quota, detail="no input")
        energies.append(_finite_energy(plugin.energy(state)))
        while True:
            halt = plugin.halt(state, energies) if steps > 0 else None
            if halt is not None:
                detail = detail or halt
                halt = halt if halt in HALT_REASONS else "converged"
                break
            if steps >= plugin.max_steps:
                halt = "max_steps"
                break
            if steps >= quota:
                halt = "quota"
                break
            now = clock_ns()
            if now + int(cost.ms * 1e6) > deadline_ns and steps > 0:
                halt = "deadline"
                break
            if now >= deadline_ns:
                halt = "deadline"
                break
            ts = clock_ns()
            state = plugin.project(plugin.step(state))
            cost.observe((clock_ns() - ts) / 1e6)
            steps += 1
            energies.append(_finite_energy(plugin.energy(state)))
        outputs = plugin.outputs(state)
    except Exception as exc:  # noqa: BLE001 - isolation is the point: no plugin error escapes
        spent = (clock_ns() - t0) / 1e6
        return RunResult(
            plugin.name, "error", steps, energies[-1] if energies else None, energies, {}, spent, spent,
            quota, error=f"{type(exc).__name__}: {exc}",
        )
    spent = (clock_ns() - t0) / 1e6
    return RunResult(plugin.name, halt, steps, energies[-1], energies, outputs, spent, spent, quota, detail=detail)
