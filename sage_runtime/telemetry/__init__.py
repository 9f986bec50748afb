"""Thermal, power and load telemetry: jetson-stats, else sysfs/procfs, else null.

Why here and not in the tick: reading sysfs or a jtop socket can stall, so a `TelemetryPoller`
reads the provider on its own thread and the tick only takes `latest()`. Every reading is
defensive: a missing file, garbage content or an empty dict (Thor's jtop GPU dict) leaves that
field None; a provider never raises out of `read()`.

Units: temperatures in degrees C, loads and memory as fractions in [0, 1], power in watts.

    provider, skipped = select_provider(TelemetryParams())
    poller = TelemetryPoller(provider, 1.0, skipped=skipped); poller.start()
    sample = poller.latest()                 # never blocks
    factor = derate(sample, params)          # ATP recharge factor in [0, 1]

Providers live one per module (jetson.py: jtop, sysfs.py, null.py); base.py holds what they share.
This module selects one, derates by its readings and polls it off the tick's thread.
"""

from __future__ import annotations

import math
import threading
import time
from typing import Any, Callable, Mapping

from sage_runtime.telemetry.base import (
    JTOP_SOCKET, JTOP_START_TIMEOUT_S, TOTAL_RAILS, ProviderName, ProviderUnavailable, TelemetryParams,
    TelemetryProvider, TelemetrySample, log,
)
from sage_runtime.telemetry.jetson import JtopProvider, default_jtop_factory
from sage_runtime.telemetry.null import NullProvider
from sage_runtime.telemetry.sysfs import SysfsProvider

__all__ = [
    "JTOP_SOCKET", "JTOP_START_TIMEOUT_S", "TOTAL_RAILS", "JtopProvider", "NullProvider", "ProviderName",
    "ProviderUnavailable", "SysfsProvider", "TelemetryParams", "TelemetryPoller", "TelemetryProvider",
    "TelemetrySample", "default_jtop_factory", "derate", "open_telemetry", "select_provider",
]

# --------------------------------------------------------------------------- selection, derating, polling


def select_provider(params: TelemetryParams,
                    jtop_factory: Callable[[TelemetryParams], Any] = default_jtop_factory,
                    ) -> tuple[TelemetryProvider, dict[str, str]]:
    """The first provider that works, in order jtop, sysfs, null (or only the one named), and
    why each one before it was skipped. A named provider that cannot run falls back to null."""
    order = ["jtop", "sysfs"] if params.provider == "auto" else [params.provider]
    skipped: dict[str, str] = {}
    for name in order:
        if name == "null":
            return NullProvider("telemetry disabled by config"), skipped
        try:
            provider: TelemetryProvider = (JtopProvider(params, jtop_factory) if name == "jtop"
                                           else SysfsProvider(params))
        except ProviderUnavailable as exc:
            skipped[name] = str(exc)
            continue
        return provider, skipped
    reasons = "; ".join(f"{k}: {v}" for k, v in skipped.items())
    return NullProvider(f"no provider answered ({reasons})"), skipped


def derate(sample: TelemetrySample, params: TelemetryParams) -> float:
    """ATP recharge factor in [0, 1]: 1.0 when cool or unknown; linear from 1.0 at hot_temp_c to
    min_derate at throttle_temp_c; min_derate while throttled; times budget/total above the
    power budget."""
    factor = 1.0
    temp = sample.max_temp_c
    if temp is not None and math.isfinite(temp) and temp > params.hot_temp_c:
        heat = min((temp - params.hot_temp_c) / (params.throttle_temp_c - params.hot_temp_c), 1.0)
        factor = 1.0 - heat * (1.0 - params.min_derate)
    if sample.throttled:
        factor = min(factor, params.min_derate)
    total = sample.total_power_w
    if params.power_budget_w is not None and total is not None and math.isfinite(total) \
            and total > params.power_budget_w:
        factor *= params.power_budget_w / total
    return min(max(factor, 0.0), 1.0)


class TelemetryPoller:
    """Runs provider.read() every interval_s on its own thread and keeps the latest sample.
    latest() is a lock-protected reference read, safe and cheap from the tick loop."""

    def __init__(self, provider: TelemetryProvider, interval_s: float, *,
                 skipped: Mapping[str, str] | None = None) -> None:
        self.provider = provider
        self.interval_s = interval_s
        self.skipped = dict(skipped or {})
        self.reads = 0
        self.errors = 0
        self._lock = threading.Lock()
        self._latest = TelemetrySample(provider=provider.name, ts=time.time(), error="no reading yet")
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        if self._thread is not None:
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="telemetry", daemon=True)
        self._thread.start()

    def stop(self, timeout_s: float = 2.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout_s)
            self._thread = None
        self.provider.close()

    def poll_once(self) -> TelemetrySample:
        """Read now on the caller's thread (the poll loop, or a test)."""
        try:
            sample = self.provider.read()
        except Exception as exc:  # noqa: BLE001 - providers should not raise; be sure anyway
            sample = TelemetrySample(provider=self.provider.name, ts=time.time(), error=f"read raised {exc!r}")
        with self._lock:
            self._latest = sample
            self.reads += 1
            self.errors += sample.error is not None
        return sample

    def latest(self) -> TelemetrySample:
        with self._lock:
            return self._latest

    def status(self, params: TelemetryParams | None = None) -> dict[str, Any]:
        """The `telemetry` block of `sagectl status`: provider, why others were skipped, sample."""
        sample = self.latest()
        skipped = "; ".join(f"{k} skipped: {v}" for k, v in self.skipped.items())
        out: dict[str, Any] = {
            "provider": self.provider.name, "skipped": dict(self.skipped),
            "summary": sample.summary() + (f" [{skipped}]" if skipped else ""),
            "interval_s": self.interval_s, "reads": self.reads, "errors": self.errors,
            "age_s": round(time.time() - sample.ts, 3), "sample": sample.to_dict(),
        }
        if params is not None:
            out["derate"] = round(derate(sample, params), 4)
        return out

    def _run(self) -> None:
        while not self._stop.is_set():
            self.poll_once()
            self._stop.wait(self.interval_s)


def open_telemetry(params: TelemetryParams,
                   jtop_factory: Callable[[TelemetryParams], Any] = default_jtop_factory) -> TelemetryPoller:
    """Select a provider and return its poller, not yet started."""
    provider, skipped = select_provider(params, jtop_factory)
    for name, reason in skipped.items():
        log.info("telemetry provider %s skipped: %s", name, reason)
    log.info("telemetry provider: %s", provider.name)
    return TelemetryPoller(provider, params.poll_interval_s, skipped=skipped)
