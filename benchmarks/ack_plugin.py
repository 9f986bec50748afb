"""The trivial plugin the transport benchmark runs: one step, outputs the seq it saw."""

from __future__ import annotations

from sage_runtime.plugin import Frame, IRPPlugin, PluginInputs


class Ack(IRPPlugin):
    name = "ack"
    accepts_kinds = frozenset({"tensor"})
    max_steps = 1

    def sample_inputs(self, seed: int) -> PluginInputs:
        import torch

        return PluginInputs(tick=seed, frames={"s": Frame("s", seed, 0, "tensor", torch.zeros(1), {})})

    def init_state(self, inputs: PluginInputs):
        return {s: f.seq for s, f in inputs.frames.items()}

    def step(self, state):
        return state

    def energy(self, state) -> float:
        return 0.0

    def outputs(self, state):
        return {"seen": state}
