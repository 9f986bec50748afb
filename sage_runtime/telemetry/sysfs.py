"""The sysfs/procfs telemetry provider: thermal zones, /proc/stat, /proc/meminfo, devfreq GPU load,
INA3221/INA238 hwmon rails and cooling devices, read from the kernel's own files."""

from __future__ import annotations

import glob
import math
import os
import time
from typing import Iterable

from sage_runtime.telemetry.base import (
    GPU_NAMES, finish_sample, fraction, log, ProviderUnavailable, TelemetryParams, TelemetryProvider,
    TelemetrySample, total_power, valid_temp,
)


def _read_text(path: str) -> str | None:
    try:
        with open(path, encoding="ascii", errors="replace") as fh:
            return fh.read(4096).strip()
    except (OSError, ValueError):
        return None


def _read_number(path: str) -> float | None:
    text = _read_text(path)
    if not text:
        return None
    try:
        value = float(text.split()[0])
    except ValueError:
        return None
    return value if math.isfinite(value) else None


class SysfsProvider(TelemetryProvider):
    """Reads the kernel's own files: thermal zones, /proc/stat, /proc/meminfo, devfreq GPU load,
    INA3221/INA238 hwmon rails, cooling-device throttling. Paths are found once at start; a file
    that disappears or holds garbage later gives None for its field."""

    name = "sysfs"

    def __init__(self, params: TelemetryParams) -> None:
        self.params = params
        sys_root, proc_root = params.sysfs_root, params.procfs_root
        self._zones = sorted(glob.glob(os.path.join(sys_root, "class/thermal/thermal_zone*")), key=_natural)
        self._cooling = sorted(glob.glob(os.path.join(sys_root, "class/thermal/cooling_device*")), key=_natural)
        self._gpu_load_path = _find_gpu_load(sys_root)
        self._hwmons = sorted(glob.glob(os.path.join(sys_root, "bus/i2c/drivers/ina3221/*/hwmon/hwmon*")) +
                              glob.glob(os.path.join(sys_root, "bus/i2c/drivers/ina238/*/hwmon/hwmon*")))
        self._stat = os.path.join(proc_root, "stat")
        self._meminfo = os.path.join(proc_root, "meminfo")
        self._cpu_prev = _cpu_times(self._stat)
        if not (self._zones or self._cpu_prev or _read_text(self._meminfo)):
            raise ProviderUnavailable(f"no thermal zones under {sys_root} and no readable {proc_root}/stat or meminfo")

    def read(self) -> TelemetrySample:
        try:
            temps, reasons = self._thermal()
            reasons += self._cooling_throttle()
            rails = self._rails()
            return finish_sample(self.name, self.params, temps, reasons, cpu_load=self._cpu_load(),
                           mem_used_frac=_mem_used(self._meminfo), gpu_load=self._gpu_load(), power_w=rails,
                           total_power_w=total_power(rails))
        except Exception as exc:  # noqa: BLE001 - a provider never takes the poller down
            log.warning("sysfs telemetry read failed: %r", exc)
            return TelemetrySample(provider=self.name, ts=time.time(), error=f"read failed: {exc!r}")

    def _thermal(self) -> tuple[dict[str, float], list[str]]:
        temps: dict[str, float] = {}
        reasons: list[str] = []
        for zone in self._zones:
            milli = _read_number(os.path.join(zone, "temp"))
            if milli is None or not valid_temp(milli / 1000.0):
                continue
            temp = milli / 1000.0
            kind = _read_text(os.path.join(zone, "type")) or os.path.basename(zone)
            key = kind if kind not in temps else f"{kind}/{os.path.basename(zone)}"
            temps[key] = temp
            trip = _passive_trip_c(zone)
            if trip is not None and temp >= trip:
                reasons.append(f"{key} {temp:.1f} C at its passive trip {trip:g} C")
        return temps, reasons

    def _cooling_throttle(self) -> list[str]:
        """Cooling devices that cap clocks (not fans) with a non-zero state mean throttling."""
        reasons = []
        for dev in self._cooling:
            kind = _read_text(os.path.join(dev, "type")) or os.path.basename(dev)
            if "fan" in kind.lower():
                continue
            state = _read_number(os.path.join(dev, "cur_state"))
            if state is not None and state > 0:
                reasons.append(f"cooling device {kind} state {state:g}")
        return reasons

    def _cpu_load(self) -> float | None:
        now = _cpu_times(self._stat)
        prev, self._cpu_prev = self._cpu_prev, now or self._cpu_prev
        if now is None or prev is None:
            return None
        busy, total = now[0] - prev[0], now[1] - prev[1]
        return fraction(busy / total) if total > 0 else None

    def _gpu_load(self) -> float | None:
        if self._gpu_load_path is None:
            return None
        raw = _read_number(self._gpu_load_path)
        return None if raw is None else fraction(raw / 1000.0)  # nvgpu reports 0..1000

    def _rails(self) -> dict[str, float]:
        rails: dict[str, float] = {}
        for hwmon in self._hwmons:
            for name, watts in _hwmon_rails(hwmon):
                rails[name if name not in rails else f"{name}/{os.path.basename(hwmon)}"] = watts
        return rails


def _natural(path: str) -> tuple[str, int]:
    base = path.rstrip("0123456789")
    digits = path[len(base):]
    return base, int(digits) if digits else -1


def _passive_trip_c(zone: str) -> float | None:
    """The lowest 'passive' trip point of a zone (where the kernel starts throttling), if any."""
    trips = []
    for type_path in glob.glob(os.path.join(zone, "trip_point_*_type")):
        if _read_text(type_path) != "passive":
            continue
        milli = _read_number(type_path[: -len("_type")] + "_temp")
        if milli is not None and valid_temp(milli / 1000.0) and milli > 0:
            trips.append(milli / 1000.0)
    return min(trips, default=None)


def _cpu_times(path: str) -> tuple[float, float] | None:
    """(busy, total) jiffies from the aggregate `cpu` line; guest time is already in user."""
    text = _read_text(path)
    if not text:
        return None
    first = text.splitlines()[0].split()
    if not first or first[0] != "cpu" or len(first) < 5:
        return None
    try:
        values = [float(x) for x in first[1:9]]
    except ValueError:
        return None
    idle = values[3] + (values[4] if len(values) > 4 else 0.0)
    total = sum(values)
    return total - idle, total


def _mem_used(path: str) -> float | None:
    text = _read_text(path)
    if not text:
        return None
    info: dict[str, float] = {}
    for line in text.splitlines():
        key, _, rest = line.partition(":")
        try:
            info[key.strip()] = float(rest.split()[0])
        except (ValueError, IndexError):
            continue
    total = info.get("MemTotal")
    if not total or total <= 0:
        return None
    available = info.get("MemAvailable")
    if available is None:
        parts = [info.get(k) for k in ("MemFree", "Buffers", "Cached")]
        if any(p is None for p in parts):
            return None
        available = sum(p for p in parts if p is not None)
    return fraction(1.0 - available / total)


def _find_gpu_load(sys_root: str) -> str | None:
    """The nvgpu `load` file: via devfreq (JetPack 5/6/7), else the platform device paths."""
    for dev in sorted(glob.glob(os.path.join(sys_root, "class/devfreq/*"))):
        names = {os.path.basename(dev).lower(), (_read_text(os.path.join(dev, "device/of_node/name")) or "").lower()}
        if any(g in n for n in names for g in GPU_NAMES) and os.path.isfile(os.path.join(dev, "device/load")):
            return os.path.join(dev, "device/load")
    for pattern in ("devices/platform/*/gpu.0/load", "devices/platform/bus@0/*.gpu/load", "devices/platform/*.gpu/load",
                    "devices/gpu.0/load", "devices/platform/*.ga10b/load", "devices/*.ga10b/load"):
        found = sorted(glob.glob(os.path.join(sys_root, pattern)))
        if found:
            return found[0]
    return None


def _hwmon_rails(hwmon: str) -> Iterable[tuple[str, float]]:
    """(label, watts) per channel: in*_label with in*_input (mV) x curr*_input (mA); INA238's
    power1_input (uW) when present. Unconnected ("NC") channels and INA3221's channel 7 (sum of
    shunt voltages) are skipped."""
    labels = glob.glob(os.path.join(hwmon, "in*_label"))
    if not labels and os.path.exists(os.path.join(hwmon, "power1_input")):
        micro = _read_number(os.path.join(hwmon, "power1_input"))
        if micro is not None and micro >= 0:
            yield "VIN", micro / 1e6
        return
    for label_path in sorted(labels, key=lambda p: _natural(p[: -len("_label")])):
        channel = os.path.basename(label_path)[2: -len("_label")]
        label = _read_text(label_path)
        if not label or not channel.isdigit() or channel == "7" or label.upper().startswith("NC") or "sum of shunt" in label:
            continue
        micro_w = _read_number(os.path.join(hwmon, f"power{channel}_input"))
        if micro_w is not None and micro_w >= 0:
            yield label, micro_w / 1e6
            continue
        mv = _read_number(os.path.join(hwmon, f"in{channel}_input"))
        ma = _read_number(os.path.join(hwmon, f"curr{channel}_input"))
        if mv is not None and ma is not None and mv >= 0 and ma >= 0:
            yield label, mv * ma / 1e6
