"""Telemetry records and parameters shared by every provider: TelemetryParams (the config
section), TelemetrySample (one reading), the provider base class and the helpers that finish a
reading (validity of temperatures, fractions, total power)."""

from __future__ import annotations

import logging
import math
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Literal, Mapping

from pydantic import Field, model_validator
from pydantic.dataclasses import dataclass as pydantic_dataclass

from sage_runtime.params import PARAMS

log = logging.getLogger("sage.telemetry")

#: jetson-stats' service socket; the container needs it mounted to use the jtop provider.
JTOP_SOCKET = "/run/jtop.sock"
#: How long the jetson-stats handshake may take before the provider is skipped.
JTOP_START_TIMEOUT_S = 5.0
#: Rails that measure the whole module input; preferred over summing the others (Orin: VDD_IN,
#: Nano/Xavier: POM_5V_IN, Thor carrier INA238: VIN).
TOTAL_RAILS = ("VDD_IN", "POM_5V_IN", "VIN")
#: Readings outside this range are offline sensors (Orin reports -256 C for power-gated zones).
_VALID_TEMP_C = (-40.0, 150.0)
#: devfreq device names that are the integrated GPU (Nano gm20b, Xavier gv11b, Orin ga10b, Thor gb10b).
GPU_NAMES = ("gpu", "gm20b", "gp10b", "gv11b", "ga10b", "gb10b")
ProviderName = Literal["auto", "jtop", "sysfs", "null"]


@pydantic_dataclass(frozen=True, config=PARAMS)
class TelemetryParams:
    """provider: "auto" tries jtop, then sysfs, then null. sysfs_root/procfs_root: where to read
    (tests point them at fixture trees). throttle_temp_c: at or above it the board counts as
    throttled (feeds REST/CRISIS). hot_temp_c: recharge derating starts here and falls linearly
    to min_derate at throttle_temp_c. power_budget_w: recharge scales by budget/total above it."""

    provider: ProviderName = "auto"
    sysfs_root: str = "/sys"
    procfs_root: str = "/proc"
    jtop_socket: str = JTOP_SOCKET
    poll_interval_s: float = Field(1.0, ge=0.05, le=60)
    hot_temp_c: float = 80.0
    throttle_temp_c: float = 95.0
    power_budget_w: float | None = Field(None, gt=0)
    min_derate: float = Field(0.2, ge=0, le=1)

    @model_validator(mode="after")
    def _hot_below_throttle(self) -> "TelemetryParams":
        if not self.hot_temp_c < self.throttle_temp_c:
            raise ValueError("hot_temp_c must be below throttle_temp_c")
        return self


@dataclass(frozen=True)
class TelemetrySample:
    """One reading. None means unavailable, never zero."""

    provider: str
    ts: float
    max_temp_c: float | None = None
    temps_c: Mapping[str, float] = field(default_factory=dict)
    cpu_load: float | None = None
    mem_used_frac: float | None = None
    gpu_load: float | None = None
    power_w: Mapping[str, float] = field(default_factory=dict)
    total_power_w: float | None = None
    throttled: bool = False
    throttle_reasons: tuple[str, ...] = ()
    error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["throttle_reasons"] = list(self.throttle_reasons)
        return out

    def summary(self) -> str:
        """One line for `sagectl status` and the systemd STATUS=."""
        if self.error:
            return f"unavailable ({self.error})"
        parts = [f"max {_fmt(self.max_temp_c, '.1f')} C", f"cpu {_pct(self.cpu_load)}", f"mem {_pct(self.mem_used_frac)}",
                 f"gpu {_pct(self.gpu_load)}", f"power {_fmt(self.total_power_w, '.2f')} W"]
        parts.append("THROTTLED (" + "; ".join(self.throttle_reasons) + ")" if self.throttled else "not throttled")
        return ", ".join(parts)


def _fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value * 100:.0f}%"


class ProviderUnavailable(RuntimeError):
    """A provider cannot run here; the message is the reason shown in `sagectl status`."""


class TelemetryProvider:
    """The interface: `read()` returns a sample and never raises; `close()` frees what it holds."""

    name = "base"

    def read(self) -> TelemetrySample:
        raise NotImplementedError

    def close(self) -> None:
        """Nothing to free by default."""


def finish_sample(provider: str, params: TelemetryParams, temps: dict[str, float], reasons: list[str],
            **fields: Any) -> TelemetrySample:
    """Common tail: max temperature, temperature-based throttling, finite-number hygiene."""
    temps = {k: v for k, v in temps.items() if valid_temp(v)}
    hottest = max(temps.values(), default=None)
    if hottest is not None and hottest >= params.throttle_temp_c:
        name = max(temps, key=temps.__getitem__)
        reasons = [f"{name} {hottest:.1f} C >= {params.throttle_temp_c:g} C", *reasons]
    return TelemetrySample(provider=provider, ts=time.time(), max_temp_c=hottest, temps_c=temps,
                           throttled=bool(reasons), throttle_reasons=tuple(reasons), **fields)


def valid_temp(value: float | None) -> bool:
    return value is not None and math.isfinite(value) and _VALID_TEMP_C[0] < value < _VALID_TEMP_C[1]


def fraction(value: float | None) -> float | None:
    if value is None or not math.isfinite(value):
        return None
    return min(max(value, 0.0), 1.0)


def total_power(rails: Mapping[str, float]) -> float | None:
    for name in TOTAL_RAILS:
        if name in rails:
            return rails[name]
    return sum(rails.values()) if rails else None
