"""Which sensor a one-sensor plugin's next job serves: salience-weighted stride scheduling.

A plugin that restores one frame per job (vision) is offered every camera's newest frame.
Picking the most salient each time starved the others (measured: a static camera beside a
changing one got 0 results in 12 s). Stride scheduling gives each sensor jobs in proportion to
its salience, floored so a static camera is still refreshed at a low rate; a sensor that was
absent or lagging rejoins at the current virtual time, so it gets no catch-up burst. Pure logic:
the host calls it under its lock. Written by hand because it is a dozen lines of arithmetic.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import replace

from sage_runtime.plugin.contract import PluginInputs

#: Added to every sensor's salience: a salience-0 sensor gets one job per ~100 of a salience-1
#: sensor's; SNARC totals of a steady stream sit near 0.01-0.1, so a larger floor would flatten them.
FLOOR = 0.01


class SensorShare:
    """Stride scheduler over sensors, weighted by SNARC salience + floor at each pick; with
    `uniform` every sensor weighs the same (the uniform allocator's baseline: equal turns)."""

    def __init__(self, floor: float = FLOOR, uniform: bool = False) -> None:
        self.floor = floor
        self.uniform = uniform
        self._pass: dict[str, float] = {}
        self._vtime = 0.0

    def pick(self, sensors: Sequence[str], salience: Mapping[str, float]) -> str:
        """The sensor to serve next among `sensors` (non-empty); advances its pass by 1/weight."""
        if self.uniform:
            salience = {}
        for s in sensors:
            self._pass[s] = max(self._pass.get(s, self._vtime), self._vtime)
        chosen = min(sensors, key=lambda s: (self._pass[s], -float(salience.get(s, 0.0)), s))
        self._vtime = self._pass[chosen]
        self._pass[chosen] += 1.0 / (max(float(salience.get(chosen, 0.0)), 0.0) + self.floor)
        return chosen


def split_sensor(inputs: PluginInputs, sensor: str) -> tuple[PluginInputs, PluginInputs | None]:
    """(`inputs` reduced to `sensor`'s frames, the rest or None): the rest waits for a later job."""
    def only(keep: bool) -> PluginInputs:
        frames = {s: f for s, f in inputs.frames.items() if (s == sensor) == keep}
        backlog = {s: b for s, b in inputs.backlog.items() if (s == sensor) == keep}
        return replace(inputs, frames=frames, backlog=backlog)

    rest = only(False)
    return only(True), (rest if rest.frames else None)
