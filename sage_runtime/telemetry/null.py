"""The null telemetry provider: nothing to read (no sysfs, no jetson-stats); never throttled."""

from __future__ import annotations

import time

from sage_runtime.telemetry.base import TelemetryProvider, TelemetrySample


class NullProvider(TelemetryProvider):
    """No telemetry: every field None, never throttled, derate 1.0."""

    name = "null"

    def __init__(self, reason: str = "no telemetry source") -> None:
        self.reason = reason

    def read(self) -> TelemetrySample:
        return TelemetrySample(provider=self.name, ts=time.time(), error=self.reason)
