"""The records that cross the tick: an accepted sensor frame (ingest -> plugins) and one plugin
run's result (plugins -> publish). Neither edge needs the plugin contract to build or read them."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any, Literal

import torch


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
    warm: bool = False  # the job started from the previous job's state (input policy `warm`)
