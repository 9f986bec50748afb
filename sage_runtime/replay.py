"""Deterministic replay: `sage-runtime --replay IN.mcap --deterministic [--record-results OUT.mcap]`.

The real daemon (control, results socket, plugins, cognition) runs over a recording made by
`sagectl record` instead of live ingest, on virtual time, so two runs over the same file publish
the same results (docs/operations.md, "Deterministic replay"):

- one `VirtualClock` for the tick and cognition, set from the recording's receive times: tick
  deadlines (`start + k * period`, and input ticks as `tick.wake_on_input` makes them), frame
  ages, ATP recharge and state timing come from the file, not the machine;
- each plugin host runs without its thread (`PluginHost(synchronous=True)`): after every tick
  its ready job units run on the replay's thread, on its own virtual lane (time as the plugin's
  thread would see it), and every step costs a fixed virtual time (`replay` config section, or
  the plugin's declared `step_cost_ms`) instead of the measured CPU time, so how many steps a
  job gets does not depend on the machine's load;
- frames go through the ingest's own validation (`IngestServer.handle`), byte for byte;
- torch is seeded, single-threaded and restricted to deterministic algorithms; Python's hash
  seed is fixed (cli.py re-executes with PYTHONHASHSEED=0); a fresh state dir per run, so no
  trust ledger or memory database from an earlier run leaks in; telemetry reads nothing.

Results go to the results socket as always, and with `--record-results` to an MCAP file in the
layout `sagectl record --results` writes (`/sage/results`, `/sage/state`, log time = virtual time).
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from sage_runtime.clock import VirtualClock
from sage_runtime.config import SageConfig, resolve_runtime_dir
from sage_runtime.errors import ConfigError
from sage_runtime.recording import McapRecorder, ingest_messages

log = logging.getLogger("sage.replay")

class CostedPlugin:
    """A plugin whose job calls cost fixed virtual time on its host's lane: init_state,
    warm_state and step `step_ns` each, consolidate its whole grant. Everything else is the
    plugin's own (attributes are read through, so what setup() sets is seen)."""

    def __init__(self, plugin: Any, lane: VirtualClock, step_ms: float) -> None:
        self._plugin = plugin
        self._lane = lane
        self._step_ns = int(step_ms * 1e6)

    def __getattr__(self, name: str) -> Any:
        value = getattr(self._plugin, name)
        return self._costed(value) if name == "warm_state" and callable(value) else value

    def _costed(self, fn: Callable[..., Any]) -> Callable[..., Any]:
        def call(*args: Any) -> Any:
            try:
                return fn(*args)
            finally:
                self._lane.advance(self._step_ns)
        return call

    def init_state(self, inputs: Any) -> Any:
        return self._costed(self._plugin.init_state)(inputs)

    def step(self, state: Any) -> Any:
        return self._costed(self._plugin.step)(state)

    def consolidate(self, budget_ms: float) -> Any:
        try:
            return self._plugin.consolidate(budget_ms)
        finally:
            self._lane.advance(int(budget_ms * 1e6))


def step_ms(cfg: SageConfig, plugin: Any) -> float:
    """A plugin's virtual step cost: `replay.step_ms.<name>`, else its declared `step_cost_ms`,
    else `replay.default_step_ms`."""
    declared = getattr(plugin, "step_cost_ms", None)
    fallback = float(declared) if isinstance(declared, (int, float)) and declared > 0 else cfg.replay.default_step_ms
    return float(cfg.replay.step_ms.get(plugin.name, fallback))


def replay_config(cfg: SageConfig, state_dir: str | Path) -> SageConfig:
    """The config a replay runs: a fresh state dir, no telemetry, one torch thread, and its own
    runtime dir (`<runtime_dir>/replay`), so it runs beside a live daemon."""
    data = cfg.model_dump()
    data["runtime"].update(state_dir=str(state_dir), torch_threads=1,
                           runtime_dir=str(resolve_runtime_dir(cfg) / "replay"))
    data["telemetry"]["provider"] = "null"
    return SageConfig.model_validate(data)


def make_deterministic(seed: int = 0) -> None:
    """Seeded, single-threaded torch with deterministic algorithms (warning where an op has none)."""
    import numpy as np
    import torch

    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True, warn_only=True)


class DeterministicReplay:
    """Drives the daemon's tick over a recording (daemon.py runs `run` instead of ingest + tick)."""

    def __init__(self, cfg: SageConfig, path: str | Path, record_results: str | Path | None = None) -> None:
        self.cfg = cfg
        self.path = Path(path)
        self.record_results = record_results
        self.first_ns = first = _first_log_time(self.path)
        self.clock = VirtualClock(first)
        self.lanes: dict[str, VirtualClock] = {}
        self.frames = self.ticks = self.input_ticks = 0
        self._last_tick = first
        self._input_at: int | None = None
        self._unpublished = False
        self._rec: McapRecorder | None = None

    def host_options(self, plugin: Any) -> dict[str, Any]:
        """PluginHost arguments for `plugin`: no thread, its own lane, fixed costs on the lane."""
        lane = self.lanes[plugin.name] = VirtualClock(self.clock.now_ns)
        return {"plugin": CostedPlugin(plugin, lane, step_ms(self.cfg, plugin)), "clock": lane,
                "cost_clock": lane.monotonic_ns, "synchronous": True}

    async def run(self, handle: Callable[[list[Any]], None], orch: Any, publisher: Any) -> None:
        """Feed every recorded frame at its time, tick on virtual deadlines, then until idle."""
        t0 = time.monotonic()
        if self.record_results is not None:
            self._rec = McapRecorder(self.record_results)
            publisher.add_tap(self._record)
        for name, host in orch.hosts.items():
            host.on_finished = lambda lane=self.lanes[name]: self._finished(lane.now_ns)
        try:
            next_tick = await self._feed(handle, orch)
            await self._tail(orch, next_tick)
        finally:
            if self._rec is not None:
                self._rec.close()
                self._rec = None
        log.info("replay of %s done: %d frames, %d ticks (%d on input), %d messages published, %.3f s "
                 "recorded in %.2f s", self.path, self.frames, self.ticks, self.input_ticks, publisher.sent,
                 (self.clock.now_ns - self.first_ns) / 1e9, time.monotonic() - t0)

    async def _feed(self, handle: Callable[[list[Any]], None], orch: Any) -> int:
        next_tick = self.clock.now_ns
        for log_ns, parts in ingest_messages(self.path):
            next_tick = await self._ticks_before(orch, log_ns, next_tick)
            self.clock.set(log_ns)
            handle(parts)
            self.frames += 1
            if orch.cfg.tick.wake_on_input and self._input_at is None:
                self._input_at = log_ns
        return next_tick

    async def _tail(self, orch: Any, next_tick: int) -> None:
        """Ticks after the last frame while a job runs or waits to be published, at most tail_s."""
        end = self.clock.now_ns + int(self.cfg.replay.tail_s * 1e9)
        while self._unpublished or any(h.wants_atp() for h in orch.hosts.values()):
            due, periodic = self._due(orch, next_tick)
            if due > end:
                break
            next_tick = await self._tick(orch, due, periodic, next_tick)

    async def _ticks_before(self, orch: Any, until_ns: int, next_tick: int) -> int:
        """Every tick due before `until_ns`: periodic deadlines, and input ticks (wake_on_input)."""
        while True:
            due, periodic = self._due(orch, next_tick)
            if due >= until_ns:
                return next_tick
            next_tick = await self._tick(orch, due, periodic, next_tick)

    def _due(self, orch: Any, next_tick: int) -> tuple[int, bool]:
        """(when the next tick runs, whether it is the periodic one)."""
        if self._input_at is not None:
            at = max(self._input_at, self._last_tick + int(1e9 / orch.cfg.tick.max_rate_hz))
            if at < next_tick:
                return at, False
        return next_tick, True

    async def _tick(self, orch: Any, at_ns: int, periodic: bool, next_tick: int) -> int:
        """One tick at virtual `at_ns`, then every plugin's ready units; the next periodic deadline."""
        self.clock.set(at_ns)
        for lane in self.lanes.values():
            lane.set(at_ns)  # a plugin thread that was idle is at the tick's time
        self._input_at, self._unpublished = None, False
        if not periodic:
            orch.books.input_ticks += 1
            self.input_ticks += 1
        await orch.tick(1.0 / orch.rate_hz)
        for host in orch.hosts.values():
            host.drain()
        self._last_tick = at_ns
        self.ticks += 1
        await asyncio.sleep(0)  # control (sagectl status) is answered during a replay
        return next_tick + int(1e9 / orch.rate_hz) if periodic else next_tick

    def _finished(self, at_ns: int) -> None:
        """A job ended on a lane at `at_ns`: publish it in the next tick (at once with wake_on_input)."""
        self._unpublished = True
        if self.cfg.tick.wake_on_input:
            self._input_at = at_ns if self._input_at is None else min(self._input_at, at_ns)

    def _record(self, parts: list[Any]) -> None:
        if self._rec is not None:
            self._rec.published(self.clock.time_ns(), [p if isinstance(p, bytes) else bytes(p) for p in parts])


def _first_log_time(path: Path) -> int:
    """The first recorded frame's receive time; ConfigError for a file that is not a recording."""
    try:
        messages: Iterator[tuple[int, list[bytes]]] = ingest_messages(path)
        return next(messages)[0]
    except ModuleNotFoundError as exc:
        if exc.name != "mcap":
            raise
        raise ConfigError("--replay needs the `mcap` extra: pip install 'sage-runtime[mcap]'") from None
    except StopIteration:
        raise ConfigError(f"--replay {path}: no recorded ingest frames (record with `sagectl record`)") from None
    except Exception as exc:  # noqa: BLE001 - OSError, or the mcap reader's own errors on a foreign file
        raise ConfigError(f"--replay {path}: not a readable recording: {exc}") from None


def serve_replay(cfg: SageConfig, config_path: str | None, path: str, record_results: str | None) -> int:
    """Run the daemon over the recording in a fresh state dir; 0 when the file has been played."""
    from sage_runtime.daemon import serve

    with tempfile.TemporaryDirectory(prefix="sage-replay-") as state:
        cfg = replay_config(cfg, state)
        source = DeterministicReplay(cfg, path, record_results)
        make_deterministic()
        return serve(cfg, config_path, replay=source)
