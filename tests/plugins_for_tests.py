"""Small plugins the integration tests load by import path (`tests.plugins_for_tests:Echo`)."""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable

import torch

from typing import Literal

from pydantic import Field

from sage_runtime.plugin import Frame, IRPPlugin, PluginInputs, PluginOptions


def busy_wait(seconds: float, clock: Callable[[], float] = time.perf_counter) -> None:
    """Spin in Python until `clock` has advanced `seconds` (wall time, or the thread's CPU time)."""
    end = clock() + seconds
    while clock() < end:
        pass


class Echo(IRPPlugin):
    """Refines a summary of its inputs toward (mean, count, text length); converges geometrically."""

    class Options(PluginOptions):
        output_kb: int = Field(0, ge=0)  # a zero tensor this big rides on each result

    name = "echo"
    accepts_kinds = frozenset({"tensor", "text", "event"})
    halt_eps = 1e-4
    output_kb = 0

    def setup(self, ctx) -> None:
        super().setup(ctx)
        self.output_kb = ctx.options.output_kb

    def sample_inputs(self, seed: int) -> PluginInputs:
        frame = Frame("s", seed, 0, "tensor", torch.full((4,), float(seed)), {})
        return PluginInputs(tick=seed, frames={"s": frame})

    def init_state(self, inputs: PluginInputs):
        target = torch.zeros(3)
        texts = []
        for frame in inputs.frames.values():
            if frame.kind == "tensor":
                target[0] += frame.data.float().mean()
            target[1] += 1
        for frame in inputs.every_frame():  # fifo text queued behind a running job comes in the backlog
            if frame.kind == "text":
                target[2] += len(frame.data)
                texts.append(frame.data)
        return {"x": torch.zeros(3), "target": target, "sensors": sorted(inputs.frames), "texts": texts}

    def step(self, s):
        return {**s, "x": s["x"] + 0.5 * (s["target"] - s["x"])}

    def energy(self, s) -> float:
        return float((s["x"] - s["target"]).abs().sum())

    def outputs(self, s):
        out = {"summary": s["x"].clone(), "sensors": s["sensors"], "text": " | ".join(s["texts"])}
        if self.output_kb:
            out["pad"] = torch.zeros(self.output_kb * 256)
        return out


class Faulty(Echo):
    """Misbehaves on demand: option `mode` is raise, hang, spin, nan, leak or ok; `after` good runs
    first. spin: a Python busy loop for `hang_s` in a step (a runaway that keeps moving).

    hang: sleeps `hang_s` in a step, then checks the tensor frames it was given still hold what they
    held when it started, appending "same" or "changed" to `hang_check.txt` in its state dir (the
    mailbox must not hand their slots to a writer meanwhile). leak: keeps `leak_mb` more MiB on
    every run, up to `leak_max_mb`."""

    class Options(Echo.Options):
        mode: Literal["raise", "hang", "spin", "nan", "leak", "ok"] | None = None  # None: the class's default_mode
        after: int = Field(0, ge=0)
        hang_s: float = Field(2.0, ge=0)
        leak_mb: float = Field(1.0, ge=0)
        leak_max_mb: float = Field(64.0, ge=0)

    name = "faulty"
    default_mode = "ok"

    def setup(self, ctx) -> None:
        super().setup(ctx)
        o = ctx.options
        self.mode = o.mode or self.default_mode
        self.after, self.hang_s, self.leak_mb, self.leak_max_mb = o.after, o.hang_s, o.leak_mb, o.leak_max_mb
        self.leaked: list[bytearray] = []
        self.calls = 0

    def init_state(self, inputs):
        self.calls += 1
        self.held = [(f.data, f.data.clone()) for f in inputs.frames.values() if f.kind == "tensor"]
        if self.mode == "leak" and self.calls > self.after and len(self.leaked) * self.leak_mb < self.leak_max_mb:
            self.leaked.append(bytearray(b"\1" * int(self.leak_mb * (1 << 20))))  # touched, so it is resident
        return super().init_state(inputs)

    def step(self, s):
        if self.calls > self.after:
            if self.mode == "raise":
                raise RuntimeError("injected failure")
            if self.mode == "hang":
                time.sleep(self.hang_s)
                same = all(torch.equal(view, copy) for view, copy in self.held)
                with open(self.ctx.state_dir / "hang_check.txt", "a") as f:
                    f.write("same\n" if same else "changed\n")
            if self.mode == "spin":
                busy_wait(self.hang_s)
            if self.mode == "nan":
                return {**s, "x": torch.full((3,), math.nan)}
        return super().step(s)


class Raiser(Faulty):
    name, default_mode = "raiser", "raise"


class Hanger(Faulty):
    name, default_mode = "hanger", "hang"


class Spinner(Faulty):
    name, default_mode = "spinner", "spin"


class NaNer(Faulty):
    name, default_mode = "naner", "nan"


class Leaky(Faulty):
    name, default_mode = "leaky", "leak"


class Recorder(Echo):
    """Appends `sensor seq` for every frame a run is handed (the fifo backlog included) to
    `delivered.txt` in its state dir, so a test can count what reached a plugin."""

    name = "recorder"

    def init_state(self, inputs):
        with open(self.ctx.state_dir / "delivered.txt", "a") as f:
            for sensor, frame in inputs.frames.items():
                for got in inputs.backlog.get(sensor, [frame]):
                    f.write(f"{sensor} {got.seq}\n")
        return super().init_state(inputs)


class Burner(Echo):
    """Spends its whole allocation: each step busy-waits `step_ms` and barely lowers the energy,
    so it never converges. Drains the ATP reservoir in state-machine tests."""

    class Options(Echo.Options):
        step_ms: float = Field(1.0, ge=0)

    name = "burner"
    accepts_kinds = frozenset({"tensor"})
    max_steps = 10_000

    def setup(self, ctx) -> None:
        super().setup(ctx)
        self.step_ms = ctx.options.step_ms

    def init_state(self, inputs):
        return {**super().init_state(inputs), "e": 1.0}

    def step(self, s):
        busy_wait(self.step_ms / 1e3)
        return {**s, "e": s["e"] * 0.999}

    def energy(self, s) -> float:
        return s["e"]


class Mirror(Echo):
    """Hands back the newest uint8 H x W x C frame it was given as output `image`: a stand-in for
    a vision reconstruction, so the Zenoh bridge's ROS 2 Image topic can be checked pixel for pixel."""

    name = "mirror"
    accepts_kinds = frozenset({"tensor"})

    def init_state(self, inputs):
        images = [f.data for f in inputs.frames.values() if f.data.dtype == torch.uint8 and f.data.dim() == 3]
        image = images[-1].clone() if images else torch.zeros((2, 2, 3), dtype=torch.uint8)
        return {**super().init_state(inputs), "image": image}

    def outputs(self, s):
        return {**super().outputs(s), "image": s["image"]}


class OneCamera(Burner):
    """A camera plugin that serves one sensor per job (like vision): each step busy-waits
    `step_ms`, and a job converges in a few steps, so frames of several cameras queue up."""

    name = "one_camera"
    one_sensor_per_job = True
    max_steps = 4

    def step(self, s):
        return {**super().step(s), "e": s["e"] * 0.5}


class Starved(Echo):
    """Each step needs `step_cpu_ms` of its own thread's CPU time. Its setup (on the plugin
    thread) pins that thread to CPU `cpu` under SCHED_IDLE, so a busy process pinned there
    starves it: its steps take far longer in wall time than they compute."""

    class Options(Echo.Options):
        step_cpu_ms: float = Field(2.0, ge=0)
        cpu: int = Field(0, ge=0)

    name = "starved"
    accepts_kinds = frozenset({"tensor"})
    max_steps = 2

    def setup(self, ctx) -> None:
        super().setup(ctx)
        self.step_cpu_ms = ctx.options.step_cpu_ms
        os.sched_setaffinity(0, {ctx.options.cpu})
        os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))

    def step(self, s):
        # in 0.1 ms pieces with the GIL let go between them (as torch ops do): the tick's hang
        # check then runs while this thread waits for a CPU without the GIL, the case where the
        # kernel has not yet counted the wait in progress
        end = time.thread_time() + self.step_cpu_ms / 1e3
        while time.thread_time() < end:
            busy_wait(1e-4, time.thread_time)
            os.sched_yield()
        return super().step(s)
