"""The jetson-stats (jtop) telemetry provider: reads the jtop service over its socket; the
handshake is bounded so a stuck service is skipped, not waited on."""

from __future__ import annotations

import math
import os
import threading
import time
from typing import Any, Callable, Mapping

from sage_runtime.telemetry.base import (
    JTOP_START_TIMEOUT_S, ProviderUnavailable, TelemetryParams, TelemetryProvider, TelemetrySample,
    finish_sample, fraction, total_power, log,
)


def default_jtop_factory(params: TelemetryParams) -> Any:
    """A jetson-stats client, or ProviderUnavailable with the reason it cannot be had."""
    if not os.path.exists(params.jtop_socket):
        raise ProviderUnavailable(f"jtop service socket {params.jtop_socket} not found")
    try:
        from jtop import jtop  # type: ignore[import-not-found]
    except ImportError:
        raise ProviderUnavailable("jetson-stats is not installed (pip install 'sage-runtime[jetson]')") from None
    return jtop(interval=max(params.poll_interval_s, 0.5))


class JtopProvider(TelemetryProvider):
    """jetson-stats 4.x-7.x through its service. The client's dicts are read with .get() at every
    level: rails, sensors and GPUs come and go between boards and releases (Thor: GPU dict empty)."""

    name = "jtop"

    def __init__(self, params: TelemetryParams,
                 factory: Callable[[TelemetryParams], Any] = default_jtop_factory,
                 start_timeout_s: float = JTOP_START_TIMEOUT_S) -> None:
        self.params = params
        client = factory(params)
        _start_within(client, start_timeout_s)
        self.client = client

    def read(self) -> TelemetrySample:
        try:
            if not self.client.ok(spin=True):
                return TelemetrySample(provider=self.name, ts=time.time(), error="jtop client stopped")
        except Exception as exc:  # noqa: BLE001
            return TelemetrySample(provider=self.name, ts=time.time(), error=f"jtop: {_one_line(exc)}")
        rails, total = self._power()
        return finish_sample(self.name, self.params, self._temps(), [], cpu_load=self._cpu_load(),
                       mem_used_frac=self._mem_used(), gpu_load=self._gpu_load(), power_w=rails,
                       total_power_w=total)

    def close(self) -> None:
        try:
            self.client.close()
        except Exception as exc:  # noqa: BLE001 - closing must not fail shutdown
            log.debug("jtop close: %r", exc)

    def _attr(self, name: str) -> Any:
        try:
            return getattr(self.client, name)
        except Exception:  # noqa: BLE001 - jtop properties index their own dicts and can raise
            return None

    def _temps(self) -> dict[str, float]:
        temps: dict[str, float] = {}
        data = self._attr("temperature")
        for name, value in _items(data):
            if isinstance(value, Mapping):  # 4.x+: {'temp': 45.5, 'online': True, ...}
                if value.get("online") is False:
                    continue
                value = value.get("temp")
            number = _number(value)  # 3.x: a bare float
            if number is not None:
                temps[str(name)] = number
        return temps

    def _power(self) -> tuple[dict[str, float], float | None]:
        data = self._attr("power")
        if not isinstance(data, Mapping):
            return {}, None
        rails = {}
        for name, rail in _items(data.get("rail")):
            if isinstance(rail, Mapping) and rail.get("online") is not False:
                mw = _number(rail.get("power"))
                if mw is not None and mw >= 0:
                    rails[str(name)] = mw / 1000.0
        tot = data.get("tot")
        total = None
        if isinstance(tot, Mapping):
            mw = _number(tot.get("power"))
            total = mw / 1000.0 if mw is not None and mw >= 0 else None
            if total is not None and isinstance(tot.get("name"), str):
                rails[tot["name"]] = total  # jtop moves VDD_IN/VIN out of 'rail' into 'tot'
        return rails, total if total is not None else total_power(rails)

    def _gpu_load(self) -> float | None:
        for _, gpu in _items(self._attr("gpu")):
            status = gpu.get("status") if isinstance(gpu, Mapping) else None
            load = _number(status.get("load")) if isinstance(status, Mapping) else None
            if load is not None:
                return fraction(load / 100.0)  # jtop reports percent
        return None

    def _cpu_load(self) -> float | None:
        cpu = self._attr("cpu")
        total = cpu.get("total") if isinstance(cpu, Mapping) else None
        idle = _number(total.get("idle")) if isinstance(total, Mapping) else None
        return None if idle is None else fraction(1.0 - idle / 100.0)

    def _mem_used(self) -> float | None:
        memory = self._attr("memory")
        ram = memory.get("RAM") if hasattr(memory, "get") else None
        if not isinstance(ram, Mapping):
            return None
        used, tot = _number(ram.get("used")), _number(ram.get("tot"))
        return fraction(used / tot) if used is not None and tot else None


def _start_within(client: Any, timeout_s: float) -> None:
    """client.start() on a helper thread: a wedged service (socket there, nobody answering the
    handshake) must not hang the daemon's start. A start that times out is left to finish alone."""
    failure: list[BaseException] = []

    def start() -> None:
        try:
            client.start()
        except BaseException as exc:  # noqa: BLE001 - jtop raises JtopException and OS errors
            failure.append(exc)

    thread = threading.Thread(target=start, name="jtop-start", daemon=True)
    thread.start()
    thread.join(timeout_s)
    if thread.is_alive():
        raise ProviderUnavailable(f"jtop service did not answer within {timeout_s:g} s")
    if failure:
        raise ProviderUnavailable(f"jtop service did not answer: {_one_line(failure[0])}")


def _items(data: Any) -> list[tuple[Any, Any]]:
    """Items of a dict or of jtop's dict-like objects; [] for anything else."""
    try:
        return list(data.items()) if data is not None and hasattr(data, "items") else []
    except Exception:  # noqa: BLE001
        return []


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if math.isfinite(value) else None


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__
