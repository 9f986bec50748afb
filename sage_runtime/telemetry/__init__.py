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
"""

from __future__ import annotations

import glob
import logging
import math
import os
import threading
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Iterable, Literal, Mapping

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
_GPU_NAMES = ("gpu", "gm20b", "gp10b", "gv11b", "ga10b", "gb10b")
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


def _finish(provider: str, params: TelemetryParams, temps: dict[str, float], reasons: list[str],
            **fields: Any) -> TelemetrySample:
    """Common tail: max temperature, temperature-based throttling, finite-number hygiene."""
    temps = {k: v for k, v in temps.items() if _valid_temp(v)}
    hottest = max(temps.values(), default=None)
    if hottest is not None and hottest >= params.throttle_temp_c:
        name = max(temps, key=temps.__getitem__)
        reasons = [f"{name} {hottest:.1f} C >= {params.throttle_temp_c:g} C", *reasons]
    return TelemetrySample(provider=provider, ts=time.time(), max_temp_c=hottest, temps_c=temps,
                           throttled=bool(reasons), throttle_reasons=tuple(reasons), **fields)


def _valid_temp(value: float | None) -> bool:
    return value is not None and math.isfinite(value) and _VALID_TEMP_C[0] < value < _VALID_TEMP_C[1]


def _fraction(value: float | None) -> float | None:
    if value is None or not math.isfinite(value):
        return None
    return min(max(value, 0.0), 1.0)


def _total_power(rails: Mapping[str, float]) -> float | None:
    for name in TOTAL_RAILS:
        if name in rails:
            return rails[name]
    return sum(rails.values()) if rails else None


# --------------------------------------------------------------------------- null


class NullProvider(TelemetryProvider):
    """No telemetry: every field None, never throttled, derate 1.0."""

    name = "null"

    def __init__(self, reason: str = "no telemetry source") -> None:
        self.reason = reason

    def read(self) -> TelemetrySample:
        return TelemetrySample(provider=self.name, ts=time.time(), error=self.reason)


# --------------------------------------------------------------------------- sysfs / procfs


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
            return _finish(self.name, self.params, temps, reasons, cpu_load=self._cpu_load(),
                           mem_used_frac=_mem_used(self._meminfo), gpu_load=self._gpu_load(), power_w=rails,
                           total_power_w=_total_power(rails))
        except Exception as exc:  # noqa: BLE001 - a provider never takes the poller down
            log.warning("sysfs telemetry read failed: %r", exc)
            return TelemetrySample(provider=self.name, ts=time.time(), error=f"read failed: {exc!r}")

    def _thermal(self) -> tuple[dict[str, float], list[str]]:
        temps: dict[str, float] = {}
        reasons: list[str] = []
        for zone in self._zones:
            milli = _read_number(os.path.join(zone, "temp"))
            if milli is None or not _valid_temp(milli / 1000.0):
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
        return _fraction(busy / total) if total > 0 else None

    def _gpu_load(self) -> float | None:
        if self._gpu_load_path is None:
            return None
        raw = _read_number(self._gpu_load_path)
        return None if raw is None else _fraction(raw / 1000.0)  # nvgpu reports 0..1000

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
        if milli is not None and _valid_temp(milli / 1000.0) and milli > 0:
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
    return _fraction(1.0 - available / total)


def _find_gpu_load(sys_root: str) -> str | None:
    """The nvgpu `load` file: via devfreq (JetPack 5/6/7), else the platform device paths."""
    for dev in sorted(glob.glob(os.path.join(sys_root, "class/devfreq/*"))):
        names = {os.path.basename(dev).lower(), (_read_text(os.path.join(dev, "device/of_node/name")) or "").lower()}
        if any(g in n for n in names for g in _GPU_NAMES) and os.path.isfile(os.path.join(dev, "device/load")):
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


# --------------------------------------------------------------------------- jetson-stats


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
        return _finish(self.name, self.params, self._temps(), [], cpu_load=self._cpu_load(),
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
        return rails, total if total is not None else _total_power(rails)

    def _gpu_load(self) -> float | None:
        for _, gpu in _items(self._attr("gpu")):
            status = gpu.get("status") if isinstance(gpu, Mapping) else None
            load = _number(status.get("load")) if isinstance(status, Mapping) else None
            if load is not None:
                return _fraction(load / 100.0)  # jtop reports percent
        return None

    def _cpu_load(self) -> float | None:
        cpu = self._attr("cpu")
        total = cpu.get("total") if isinstance(cpu, Mapping) else None
        idle = _number(total.get("idle")) if isinstance(total, Mapping) else None
        return None if idle is None else _fraction(1.0 - idle / 100.0)

    def _mem_used(self) -> float | None:
        memory = self._attr("memory")
        ram = memory.get("RAM") if hasattr(memory, "get") else None
        if not isinstance(ram, Mapping):
            return None
        used, tot = _number(ram.get("used")), _number(ram.get("tot"))
        return _fraction(used / tot) if used is not None and tot else None


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
