"""Per-tick cognition: salience, metabolic state, ATP, allocation, fusion. (first cut: even split)"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import torch

from sage_runtime.irp import Frame, RunResult


@dataclass
class TickPlan:
    state: str
    allocation: dict[str, float]
    order: list[str]
    salience: dict[str, float] = field(default_factory=dict)
    fused: torch.Tensor | None = None
    transitions: list[dict[str, Any]] = field(default_factory=list)
    offline: dict[str, float] = field(default_factory=dict)
    timings_ms: dict[str, float] = field(default_factory=dict)


class Cognition:
    def __init__(self) -> None:
        self.state = "WAKE"
        self.since = time.monotonic()
        self.reason = "start"

    def tick_rate_hz(self, base: float) -> float:
        return base

    def wants_tick(self) -> bool:
        return False

    def plan(self, frames: dict[str, list[Frame]], wanting: dict[str, Any], budget_ms: float,
             health: dict[str, float]) -> TickPlan:
        share = budget_ms / max(len(wanting), 1)
        return TickPlan(self.state, {n: share for n in wanting}, list(wanting))

    def idle_plan(self) -> TickPlan:
        return TickPlan(self.state, {}, [])

    def settle(self, name: str, atp: float, result: RunResult) -> None:
        pass

    def settle_offline(self, name: str, spent_ms: float, summary: dict[str, Any]) -> None:
        pass

    def status(self) -> dict[str, Any]:
        return {"state": {"name": self.state, "since_s": round(time.monotonic() - self.since, 3),
                          "reason": self.reason}}
