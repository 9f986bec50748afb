"""The runner that holds a plugin to its budget, one step at a time.

A plugin's refinement is a `Job` (its inputs, state, energy history and deadline) that may run
across many ticks: the host thread (`plugin.host`) calls `begin`, then `advance` while the
plugin's ATP account covers the next step's measured cost and `next_halt` says go on, then
`finish`. Exceptions and NaN energies become a `halt="error"` result instead of escaping. Each
call returns the measured ms it took, which the host charges to the plugin's account
(1 ATP = 1 ms). `run_plugin` is the same loop in one call with a step quota (tests, conformance,
benchmarks): a job resumed across ticks runs exactly the steps an uninterrupted run would.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from sage_runtime.plugin.contract import HALT_REASONS, IRPPlugin, PluginInputs
from sage_runtime.records import RunResult

Clock = Callable[[], int]


class StepCost:
    """Running estimate of one step's wall time, so an ATP allocation becomes steps."""

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
        """Whole steps affordable with atp_ms; at least 1 step when atp covers half a step,
        because a zero-step run does no work and only wastes the init cost."""
        if atp_ms <= 0:
            return 0
        steps = int(atp_ms / max(self.ms, 1e-6))
        if steps == 0 and atp_ms >= 0.5 * self.ms:
            steps = 1
        return min(steps, max_steps)


@dataclass
class Job:
    """One refinement in progress. `deadline_ns` (by `wall_ns`, the host's monotonic clock) is
    when its input is too old: a step predicted to end after it is not started. `max_atp` caps what the job may spend
    (halt `quota`). `preempt` is set from another thread and honoured between steps."""

    inputs: PluginInputs
    deadline_ns: int
    max_atp: float = math.inf
    warm: bool = False
    state: Any = None
    energies: list[float] = field(default_factory=list)
    steps: int = 0
    spent_ms: float = 0.0
    preempt: bool = False
    abandoned: bool = False
    detail: str | None = None
    started_ns: int = 0
    init_ms: float = 0.0
    wall_ns: Clock = time.perf_counter_ns


def _finite_energy(value: Any) -> float:
    e = float(value)
    if not math.isfinite(e):
        raise FloatingPointError(f"energy is {e}")
    return e


def begin(plugin: IRPPlugin, job: Job, warm_from: Any = None, clock_ns: Clock = time.perf_counter_ns) -> float:
    """Encode the job's inputs (from `warm_from`, the previous job's state, when the plugin has
    `warm_state` and one is given); ms spent by `clock_ns` (the cost clock). job.state stays None when there is nothing to do."""
    t0 = clock_ns()
    job.started_ns = job.wall_ns()
    warm = getattr(plugin, "warm_state", None) if warm_from is not None else None
    state = warm(warm_from, job.inputs) if warm is not None else None
    job.warm = state is not None
    if state is None:
        state = plugin.init_state(job.inputs)
    job.state = state
    if state is not None:
        job.energies.append(_finite_energy(plugin.energy(state)))
    ms = job.init_ms = (clock_ns() - t0) / 1e6
    job.spent_ms += ms
    return ms


def next_halt(plugin: IRPPlugin, job: Job, cost: StepCost, clock_ns: Clock = time.perf_counter_ns,
              wall: StepCost | None = None) -> str | None:
    """Why the job must stop before its next step, or None: the plugin's halting rule, max_steps,
    the job's ATP cap, preemption, and the deadline: a step predicted (by its measured wall
    time, `wall`, else `cost`) to end past it is not started."""
    if job.steps > 0:
        reason = plugin.halt(job.state, job.energies)
        if reason is not None:
            job.detail = job.detail or reason
            return reason if reason in HALT_REASONS else "converged"
    if job.steps >= plugin.max_steps:
        return "max_steps"
    if job.spent_ms + cost.ms > job.max_atp:
        return "quota"
    if job.preempt:
        return "preempted"
    if clock_ns() + int((wall or cost).ms * 1e6) > job.deadline_ns:
        return "deadline"
    return None


def advance(plugin: IRPPlugin, job: Job, cost: StepCost, clock_ns: Clock = time.perf_counter_ns,
            wall: StepCost | None = None) -> float:
    """One step (step, project, energy); its measured ms by `clock_ns` (the cost clock: thread
    CPU time or wall time), which updates `cost`; `wall` learns the step's wall time."""
    t0, w0 = clock_ns(), job.wall_ns()
    state = plugin.project(plugin.step(job.state))
    cost.observe((clock_ns() - t0) / 1e6)
    if wall is not None:
        wall.observe((job.wall_ns() - w0) / 1e6)
    job.state = state
    job.steps += 1
    job.energies.append(_finite_energy(plugin.energy(state)))
    ms = (clock_ns() - t0) / 1e6
    job.spent_ms += ms
    return ms


def finish(plugin: IRPPlugin, job: Job, halt: str, clock_ns: Clock = time.perf_counter_ns) -> RunResult:
    """The result of a job that stopped for `halt`: its outputs, steps and measured spend."""
    t0 = clock_ns()
    if job.state is None:
        return RunResult(plugin.name, "converged", 0, None, [], {}, 0.0, job.spent_ms, job.steps, detail="no input")
    outputs = plugin.outputs(job.state)
    job.spent_ms += (clock_ns() - t0) / 1e6
    latency = (job.wall_ns() - job.started_ns) / 1e6
    return RunResult(plugin.name, halt, job.steps, job.energies[-1], list(job.energies), outputs, latency,
                     job.spent_ms, job.steps, detail=job.detail, warm=job.warm, init_ms=job.init_ms)


def failed(plugin: IRPPlugin, job: Job, exc: BaseException, clock_ns: Clock = time.perf_counter_ns) -> RunResult:
    """The `error` result of a job whose plugin raised (or returned a non-finite energy)."""
    latency = (job.wall_ns() - job.started_ns) / 1e6 if job.started_ns else 0.0
    return RunResult(plugin.name, "error", job.steps, job.energies[-1] if job.energies else None,
                     list(job.energies), {}, latency, job.spent_ms, job.steps, error=f"{type(exc).__name__}: {exc}",
                     warm=job.warm)


def run_plugin(plugin: IRPPlugin, inputs: PluginInputs, *, atp_ms: float, deadline_ns: int, cost: StepCost,
               clock_ns: Clock = time.perf_counter_ns, max_steps: int | None = None) -> RunResult:
    """Refine until halt, a step quota of atp_ms at the measured step cost (at most max_steps), or
    the deadline, in one call on the calling thread. ATP spent is the measured time of init, steps
    and outputs."""
    quota = cost.quota(atp_ms, min(plugin.max_steps, max_steps or plugin.max_steps))
    job = Job(inputs, deadline_ns)
    try:
        begin(plugin, job, clock_ns=clock_ns)
        halt = None
        while job.state is not None:
            halt = next_halt(plugin, job, cost, clock_ns)
            if halt is None and job.steps >= quota:
                halt = "quota"
            if halt is not None:
                break
            advance(plugin, job, cost, clock_ns)
        res = finish(plugin, job, halt or "converged", clock_ns)
    except Exception as exc:  # noqa: BLE001 - isolation is the point: no plugin error escapes
        res = failed(plugin, job, exc, clock_ns)
    res.quota = quota
    res.latency_ms = res.atp_spent
    return res
