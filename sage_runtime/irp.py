"""The IRP plugin contract and the runner that holds plugins to their budget.

A plugin is an iterative refiner: `init_state` encodes inputs, `step` does one iteration of pure
compute, `energy` says how good the state is (lower is better), `halt` says when refinement has
converged, `outputs` says what is published. The plugin never decides how much compute it gets:
the runner turns an ATP allocation (1 ATP = 1 ms) into a step quota from the plugin's measured
cost per step, checks quota and deadline between steps, and turns exceptions and NaN energies
into a `halt="error"` result instead of letting them escape into the tick.
"""

from __future__ import annotations

import collections
import logging
import math
import time
from abc import ABC, abstractmethod
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, ClassVar, Literal

import torch

HaltReason = Literal["converged", "quota", "deadline", "max_steps", "error"]
HALT_REASONS: tuple[str, ...] = ("converged", "quota", "deadline", "max_steps", "error")


@dataclass(frozen=True)
class Frame:
    """One accepted sensor message, as a plugin sees it.

    `data` is a read-only torch tensor on the plugin's device for `tensor` frames, a str for
    `text`, and a dict for `event` and `reward`. Plugins must not keep `data` past the call that
    received it without copying: tensor storage belongs to the mailbox.
    """

    sensor: str
    seq: int
    ts_ns: int
    kind: Literal["tensor", "text", "event", "reward"]
    data: Any
    meta: Mapping[str, Any] = field(default_factory=dict)

    def detached(self) -> "Frame":
        """This frame with its tensor copied out of the mailbox, safe to keep past this tick."""
        return replace(self, data=self.data.clone()) if isinstance(self.data, torch.Tensor) else self


@dataclass(frozen=True)
class PluginInputs:
    """Everything a plugin may read in one tick.

    frames: the newest frame per sensor this plugin accepts (`IRPPlugin.accepts`) that it has not
        seen yet; fifo sensors deliver their queued frames in order in `backlog`, including
        frames that arrived in earlier ticks while the plugin was not scheduled.
    salience: SNARC total per sensor, in [0, 1].
    fused: the tick's fused context vector (multi-sensor fusion), or None.
    upstream: outputs of plugins that already ran this tick, by plugin name (memory reads
        the vision embedding from here).
    """

    tick: int = 0
    state: str = "WAKE"
    frames: Mapping[str, Frame] = field(default_factory=dict)
    backlog: Mapping[str, Sequence[Frame]] = field(default_factory=dict)
    salience: Mapping[str, float] = field(default_factory=dict)
    fused: torch.Tensor | None = None
    upstream: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)

    def every_frame(self) -> list[Frame]:
        """Every frame this run brings, backlog included, oldest first."""
        got = [f for sensor, newest in self.frames.items() for f in (self.backlog.get(sensor) or [newest])]
        return sorted(got, key=lambda f: (f.ts_ns, f.sensor, f.seq))


class InputQueue:
    """Inputs a plugin accepted and has not processed yet, oldest first, at most `limit`.

    A plugin that serves fewer inputs per run than arrive keeps the rest here and reports
    `len()` as `pending_input`, so the tick schedules it again; past the limit the oldest are
    dropped and counted. Tensor frames are copied out of the mailbox on the way in."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.dropped = 0
        self._frames: collections.deque[Frame] = collections.deque()

    def add(self, frames: Iterable[Frame]) -> None:
        self._frames.extend(f.detached() for f in frames)
        while len(self._frames) > self.limit:
            self._frames.popleft()
            self.dropped += 1

    def requeue(self, frame: Frame) -> None:
        """Put a frame whose processing was cut short back at the head, to continue next run."""
        self._frames.appendleft(frame)

    def take(self, n: int) -> list[Frame]:
        """The oldest `n` (or fewer), removed from the queue."""
        return [self._frames.popleft() for _ in range(min(n, len(self._frames)))]

    def __len__(self) -> int:
        return len(self._frames)

    def clear(self) -> None:
        self._frames.clear()


@dataclass(frozen=True)
class PluginContext:
    """What the runtime hands a plugin at setup: where to compute, its config, where to persist."""

    device: torch.device
    config: Mapping[str, Any]
    state_dir: Path
    log: logging.Logger


class IRPPlugin(ABC):
    """Base class of every plugin; subclasses are registered under the `sage_runtime.plugins`
    entry-point group (or named as `module:Class` in config).

    Outputs (`outputs`) map a name to a torch tensor or numpy array (published as a binary part),
    a str (published as text), or a JSON-able scalar/list/dict (published as a value).
    """

    name: ClassVar[str] = "plugin"
    accepts_kinds: ClassVar[frozenset[str]] = frozenset({"tensor"})
    #: Hard ceiling on steps per run; the runner's quota is usually lower.
    max_steps: int = 50
    #: Default halting rule: converged when every |dE| over the last `halt_window` intervals < eps.
    halt_eps: float = 1e-4
    halt_window: int = 3

    def setup(self, ctx: PluginContext) -> None:
        """Load weights, open resources. Called once, before warmup, on the compute thread."""
        self.ctx = ctx

    def accepts(self, frame: Frame) -> bool:
        """Whether this plugin wants a frame; the orchestrator only runs a plugin with new input."""
        return frame.kind in self.accepts_kinds

    def warmup(self) -> None:
        """Run once on representative input so lazy init and allocator growth happen before READY."""
        state = self.init_state(self.sample_inputs(0))
        self.energy(self.step(state))

    @abstractmethod
    def sample_inputs(self, seed: int) -> PluginInputs:
        """Representative inputs for warmup, conformance tests and benchmarks; seeds differ."""

    @abstractmethod
    def init_state(self, inputs: PluginInputs) -> Any:
        """Encode inputs into the refinement space. Returning None means: nothing to do."""

    @abstractmethod
    def step(self, state: Any) -> Any:
        """One iteration. Pure compute: no I/O, no sleeping, no waiting on other threads."""

    @abstractmethod
    def energy(self, state: Any) -> float:
        """Lower is better. Must be finite; NaN or inf is treated as a plugin error."""

    def project(self, state: Any) -> Any:
        """Enforce hard constraints after each step (identity by default)."""
        return state

    def halt(self, history: Sequence[float]) -> str | None:
        """Return a halt reason ("converged") or None to continue.

        The default needs `halt_window` full intervals and every one of them flat, so an energy
        that oscillates does not halt early and a constant energy halts only after the window.
        """
        k = self.halt_window
        if len(history) < k + 1:
            return None
        recent = history[-(k + 1):]
        if all(abs(b - a) < self.halt_eps for a, b in zip(recent, recent[1:])):
            return "converged"
        return None

    @abstractmethod
    def outputs(self, state: Any) -> dict[str, Any]:
        """What the result message carries."""

    def pending_input(self) -> int:
        """Inputs accepted in earlier ticks and not processed yet (a plugin that bounds its batch
        per run keeps the rest). While > 0 the tick schedules the plugin without new frames."""
        return 0

    def pending_consolidation(self) -> int:
        """Items waiting for offline work (memory); DREAM is entered only when some exist."""
        return 0

    def consolidate(self, budget_ms: float) -> dict[str, Any]:
        """Offline work in DREAM/REST, bounded by budget_ms; returns a summary of what was done."""
        return {}

    def close(self) -> None:
        """Flush and release resources. Called once at shutdown."""


@dataclass
class RunResult:
    """What one plugin run produced; the publisher turns it into a `result/<plugin>` message."""

    plugin: str
    halt: str
    steps: int
    energy: float | None
    energies: list[float]
    outputs: dict[str, Any]
    latency_ms: float
    atp_spent: float
    quota: int
    error: str | None = None
    detail: str | None = None


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
            halt = plugin.halt(energies) if steps > 0 else None
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
