"""The IRP plugin contract: what a plugin implements and what it is handed.

A plugin is an iterative refiner: `init_state` encodes inputs, `step` does one iteration of pure
compute, `energy` says how good the state is (lower is better), `halt` says when refinement has
converged, `outputs` says what is published. The plugin never decides how much compute it gets:
the runner (`sage_runtime.plugin.runner`) does.
"""

from __future__ import annotations

import collections
import logging
from abc import ABC, abstractmethod
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch
from pydantic import BaseModel, ConfigDict

from sage_runtime.records import Frame

HALT_REASONS: tuple[str, ...] = ("converged", "quota", "deadline", "max_steps", "error", "preempted")


class PluginOptions(BaseModel):
    """Base of every plugin's `Options`: unknown keys are refused, so a misspelt option fails at
    load (naming `plugins.options.<name>.<key>`) instead of being silently ignored."""

    model_config = ConfigDict(extra="forbid", frozen=True)


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
    """What the runtime hands a plugin at setup: where to compute, its validated options (an
    instance of the plugin's `Options`), where to persist, where to log."""

    device: torch.device
    options: PluginOptions
    state_dir: Path
    log: logging.Logger


class IRPPlugin(ABC):
    """Base class of every plugin; subclasses are registered under the `sage_runtime.plugins`
    entry-point group (or named as `module:Class` in config).

    `name` is required (the key of its results, options and status) and unique among the loaded
    plugins; `Options` is the pydantic model of `plugins.options.<name>` (default: no options).
    Outputs (`outputs`) map a name to a torch tensor or numpy array (published as a binary part),
    a str (published as text), or a JSON-able scalar/list/dict (published as a value).
    """

    name: ClassVar[str]
    Options: ClassVar[type[PluginOptions]] = PluginOptions
    accepts_kinds: ClassVar[frozenset[str]] = frozenset({"tensor"})
    #: A job serves one sensor's frames (vision restores one frame per job): the host picks the
    #: sensor by salience share (plugin/sensor_share.py) and keeps the others' for later jobs.
    one_sensor_per_job: ClassVar[bool] = False
    #: Its jobs answer requests someone waits on (a spoken command, a puzzle): while it has work,
    #: cognition grants its next step first each tick, up to cognition.request_share of the
    #: online budget, so an answer's latency is its compute, not its turn behind a camera.
    answers_requests: ClassVar[bool] = False
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
        """Run once on representative input so lazy init and allocator growth happen before READY
        (skipped by a plugin without sample inputs)."""
        inputs = self.sample_inputs(0)
        state = self.init_state(inputs) if inputs is not None else None
        if state is not None:
            self.energy(self.step(state))

    def sample_inputs(self, seed: int) -> PluginInputs | None:
        """Representative inputs for warmup, conformance and benchmarks; seeds differ. None: the
        plugin has none (the conformance check then takes inputs as an argument)."""
        return None

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

    def halt(self, state: Any, history: Sequence[float]) -> str | None:
        """Return a halt reason ("converged") or None to continue; `state` is the state after the
        last step, `history` the energies so far (initial state first).

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

    def health_reasons(self) -> list[str]:
        """Why this plugin runs impaired, for the daemon's health (e.g. its state was unreadable and
        set aside); empty when it is fine. Called from the event loop: keep it cheap."""
        return []

    def close(self) -> None:
        """Flush and release resources. Called once at shutdown."""

