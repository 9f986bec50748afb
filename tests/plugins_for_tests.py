"""Small plugins the integration tests load by import path (`tests.plugins_for_tests:Echo`)."""

from __future__ import annotations

import math
import time

import torch

from sage_runtime.irp import Frame, IRPPlugin, PluginInputs


class Echo(IRPPlugin):
    """Refines a summary of its inputs toward (mean, count, text length); converges geometrically."""

    name = "echo"
    accepts_kinds = frozenset({"tensor", "text", "event"})
    halt_eps = 1e-4

    def sample_inputs(self, seed: int) -> PluginInputs:
        frame = Frame("s", seed, 0, "tensor", torch.full((4,), float(seed)), {})
        return PluginInputs(tick=seed, frames={"s": frame})

    def init_state(self, inputs: PluginInputs):
        target = torch.zeros(3)
        texts = []
        for frame in inputs.frames.values():
            if frame.kind == "tensor":
                target[0] += frame.data.float().mean()
            elif frame.kind == "text":
                target[2] += len(frame.data)
                texts.append(frame.data)
            target[1] += 1
        return {"x": torch.zeros(3), "target": target, "sensors": sorted(inputs.frames), "texts": texts}

    def step(self, s):
        return {**s, "x": s["x"] + 0.5 * (s["target"] - s["x"])}

    def energy(self, s) -> float:
        return float((s["x"] - s["target"]).abs().sum())

    def outputs(self, s):
        return {"summary": s["x"].clone(), "sensors": s["sensors"], "text": " | ".join(s["texts"])}


class Faulty(Echo):
    """Misbehaves on demand: option `mode` is raise, hang, nan or ok; `after` good runs first."""

    name = "faulty"

    def setup(self, ctx) -> None:
        super().setup(ctx)
        self.mode = ctx.config.get("mode", "ok")
        self.after = int(ctx.config.get("after", 0))
        self.hang_s = float(ctx.config.get("hang_s", 2.0))
        self.calls = 0

    def init_state(self, inputs):
        self.calls += 1
        return super().init_state(inputs)

    def step(self, s):
        if self.calls > self.after:
            if self.mode == "raise":
                raise RuntimeError("injected failure")
            if self.mode == "hang":
                time.sleep(self.hang_s)
            if self.mode == "nan":
                return {**s, "x": torch.full((3,), math.nan)}
        return super().step(s)
