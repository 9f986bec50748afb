"""Telemetry providers against an Orin-shaped sysfs tree (real files) and a fake jetson-stats
client with the dict shapes jetson-stats 4.x-7.x return; selection, derating, polling."""

from __future__ import annotations

import os
import shutil
import threading
import time
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import BaseModel, ValidationError

from sage_runtime.telemetry import (
    JtopProvider, NullProvider, ProviderUnavailable, SysfsProvider, TelemetryParams, TelemetryPoller,
    TelemetryProvider, TelemetrySample, derate, open_telemetry, select_provider,
)
from tests.jetson_fixture import ORIN_RAILS, OrinTree, make_orin_tree, write


@pytest.fixture
def orin(tmp_path) -> OrinTree:
    return make_orin_tree(tmp_path)


def params_for(tree: OrinTree, **kw: Any) -> TelemetryParams:
    return TelemetryParams(**{"provider": "sysfs", "sysfs_root": tree.sys, "procfs_root": tree.proc, **kw})


# --------------------------------------------------------------------------- sysfs


def test_orin_tree_reads_every_field(orin):
    provider = SysfsProvider(params_for(orin))
    orin.set_cpu_jiffies(user=1300, system=600, idle=8600)  # +300 user, +100 system, +100 idle
    s = provider.read()
    assert s.error is None and s.provider == "sysfs"
    assert "cv0-thermal" not in s.temps_c, "Orin's -256 C offline zones are not temperatures"
    assert s.temps_c["tj-thermal"] == pytest.approx(49.0)
    assert s.max_temp_c == pytest.approx(max(s.temps_c.values()))
    assert s.cpu_load == pytest.approx(400 / 500)
    assert s.mem_used_frac == pytest.approx(1 - 5850000 / 7800000)
    assert s.gpu_load == pytest.approx(0.347)
    for label, mv, ma in ORIN_RAILS.values():
        assert s.power_w[label] == pytest.approx(mv * ma / 1e6)
    assert not any("shunt" in k for k in s.power_w), "INA3221 channel 7 is a sum, not a rail"
    assert s.total_power_w == pytest.approx(s.power_w["VDD_IN"]), "VDD_IN is the module input, not summed"
    assert not s.throttled, "a spinning fan cooling device is not throttling"


def test_cpu_load_follows_proc_stat_deltas(orin):
    provider = SysfsProvider(params_for(orin))
    orin.set_cpu_jiffies(user=1000, system=500, idle=9500)
    assert provider.read().cpu_load == pytest.approx(0.0)
    orin.set_cpu_jiffies(user=2000, system=500, idle=9500)
    assert provider.read().cpu_load == pytest.approx(1.0)
    assert provider.read().cpu_load is None, "no jiffies elapsed: unknown, not zero"


def test_temperature_at_configured_trip_throttles(orin):
    params = params_for(orin, hot_temp_c=70.0, throttle_temp_c=90.0)
    provider = SysfsProvider(params)
    cool = provider.read()
    orin.set_temp("tj-thermal", 92.5)
    hot = provider.read()
    assert hot.throttled and not cool.throttled
    assert any("tj-thermal" in r for r in hot.throttle_reasons)
    assert derate(hot, params) < derate(cool, params) == 1.0
    assert "THROTTLED" in hot.summary()


def test_passive_trip_point_throttles_below_configured_temp(orin):
    provider = SysfsProvider(params_for(orin, hot_temp_c=100.0, throttle_temp_c=120.0))
    orin.set_temp("cpu-thermal", 99.5)
    s = provider.read()
    assert s.throttled and any("passive trip" in r for r in s.throttle_reasons)


def test_clock_capping_cooling_device_throttles(orin):
    provider = SysfsProvider(params_for(orin))
    write(orin.root / "sys/class/thermal/cooling_device1/cur_state", "2\n")
    s = provider.read()
    assert s.throttled and any("cpufreq-cpu0" in r for r in s.throttle_reasons)


def test_malformed_files_give_none_never_raise(orin):
    provider = SysfsProvider(params_for(orin))
    write(orin.zone("tj-thermal") / "temp", "garbage\n")
    write(orin.zone("cpu-thermal") / "temp", "")
    write(orin.zone("gpu-thermal") / "temp", "nan\n")
    write(orin.zone("soc0-thermal") / "trip_point_0_temp", "hot\n")
    orin.set_gpu_load("\x00\x01binary")
    write(orin.hwmon / "curr2_input", "-\n")
    os.remove(orin.hwmon / "in3_input")
    write(orin.root / "proc/stat", "cpu  a b c d\n")
    write(orin.root / "proc/meminfo", "MemTotal: 0 kB\n")
    write(orin.root / "sys/class/thermal/cooling_device1/cur_state", "lots\n")
    s = provider.read()
    assert s.error is None
    assert set(s.temps_c) == {"soc0-thermal", "soc1-thermal", "soc2-thermal"}
    assert s.gpu_load is None and s.cpu_load is None and s.mem_used_frac is None
    assert set(s.power_w) == {"VDD_IN"} and s.total_power_w == pytest.approx(s.power_w["VDD_IN"])
    assert not s.throttled


def test_files_that_vanish_after_start_give_none(orin):
    provider = SysfsProvider(params_for(orin))
    shutil.rmtree(orin.root / "sys/class/thermal")
    shutil.rmtree(orin.root / "sys/bus")
    os.remove(orin.gpu_device / "load")
    os.remove(orin.root / "proc/stat")
    os.remove(orin.root / "proc/meminfo")
    s = provider.read()
    assert s.error is None
    assert (s.max_temp_c, s.cpu_load, s.mem_used_frac, s.gpu_load, s.total_power_w) == (None,) * 5
    assert s.temps_c == {} and s.power_w == {} and not s.throttled
    assert "max - C" in s.summary()


def test_meminfo_without_memavailable_uses_free_buffers_cached(orin):
    write(orin.root / "proc/meminfo", "MemTotal: 1000 kB\nMemFree: 200 kB\nBuffers: 100 kB\nCached: 300 kB\n")
    assert SysfsProvider(params_for(orin)).read().mem_used_frac == pytest.approx(0.4)


def test_gpu_load_from_platform_path_without_devfreq(tmp_path):
    write(tmp_path / "sys/devices/platform/17000000.ga10b/gpu.0/load", "1000\n")
    write(tmp_path / "proc/stat", "cpu  1 0 1 8 0 0 0 0 0 0\n")
    s = SysfsProvider(TelemetryParams(sysfs_root=str(tmp_path / "sys"), procfs_root=str(tmp_path / "proc"))).read()
    assert s.gpu_load == pytest.approx(1.0)


def test_thor_ina238_power_and_sum_without_vdd_in(tmp_path):
    hw = tmp_path / "sys/bus/i2c/drivers/ina238/2-0044/hwmon/hwmon1"
    write(hw / "power1_input", "41250000\n")  # microwatts
    write(tmp_path / "proc/stat", "cpu  1 0 1 8 0 0 0 0 0 0\n")
    s = SysfsProvider(TelemetryParams(sysfs_root=str(tmp_path / "sys"), procfs_root=str(tmp_path / "proc"))).read()
    assert s.power_w == {"VIN": pytest.approx(41.25)} and s.total_power_w == pytest.approx(41.25)
    # AGX Orin has no VDD_IN rail and labels unconnected channels NC: total is the sum of the rest.
    agx = tmp_path / "agx"
    hw = agx / "sys/bus/i2c/drivers/ina3221/1-0041/hwmon/hwmon4"
    for ch, (label, mv, ma) in {1: ("NC", 0, 5), 2: ("VDDQ_VDD2_1V8AO", 5000, 100), 3: ("VDD_GPU_SOC", 5000, 900)}.items():
        write(hw / f"in{ch}_label", label)
        write(hw / f"in{ch}_input", str(mv))
        write(hw / f"curr{ch}_input", str(ma))
    write(agx / "proc/stat", "cpu  1 0 1 8 0 0 0 0 0 0\n")
    s = SysfsProvider(TelemetryParams(sysfs_root=str(agx / "sys"), procfs_root=str(agx / "proc"))).read()
    assert set(s.power_w) == {"VDDQ_VDD2_1V8AO", "VDD_GPU_SOC"}
    assert s.total_power_w == pytest.approx(sum(s.power_w.values()))


def test_empty_tree_is_unavailable_with_reason(tmp_path):
    with pytest.raises(ProviderUnavailable, match="no thermal zones"):
        SysfsProvider(TelemetryParams(sysfs_root=str(tmp_path / "sys"), procfs_root=str(tmp_path / "proc")))


# --------------------------------------------------------------------------- jetson-stats


def _rail(mv: int, ma: int, **extra: Any) -> dict[str, Any]:
    power = mv * ma // 1000
    return {"online": True, "type": "INA3221", "status": "ok", "volt": mv, "curr": ma, "power": power,
            "avg": power, "warn": 32760, "crit": 32760, **extra}


def _gpu(load: float, name: str) -> dict[str, Any]:
    return {name: {"type": "integrated",
                   "status": {"railgate": False, "tpc_pg_mask": False, "3d_scaling": True, "load": load},
                   "freq": {"governor": "nvhost_podgov", "cur": 624750, "max": 918000, "min": 0, "GPC": [624750]},
                   "power_control": "auto"}}


def _cpu(idle: float, cores: int) -> dict[str, Any]:
    core = {"online": True, "governor": "schedutil", "freq": {"min": 729600, "max": 1510400, "cur": 1190400},
            "user": 100 - idle, "nice": 0.0, "system": 0.0, "idle": idle, "model": "ARMv8 Processor rev 1 (v8l)"}
    return {"total": {"user": 100 - idle, "nice": 0.0, "system": 0.0, "idle": idle}, "cpu": [core] * cores}


#: jetson-stats 4.2 on an AGX Orin (JetPack 5): upper-case sensor names, no VDD_IN rail, so 'tot'
#: is the sum of rails and carries no 'name'.
JTOP_4_AGX_ORIN = {
    "temperature": {"CPU": {"online": True, "temp": 51.2, "max": 99.0, "crit": 104.5},
                    "CV0": {"online": False, "temp": -256.0}, "GPU": {"online": True, "temp": 49.9},
                    "Tj": {"online": True, "temp": 52.0}},
    "power": {"rail": {"VDD_GPU_SOC": _rail(5008, 1144), "VDD_CPU_CV": _rail(5008, 436),
                       "VIN_SYS_5V0": _rail(5000, 880)},
              "tot": {"power": 15000, "avg": 14800}},
    "gpu": _gpu(23.5, "ga10b"),
    "cpu": _cpu(80.0, 12),
    "memory": {"RAM": {"tot": 31000000, "used": 7750000, "free": 20000000, "buffers": 1, "cached": 1, "shared": 0,
                       "lfb": 512}, "SWAP": {"tot": 15000000, "used": 0, "cached": 0}},
}
#: jetson-stats 6.x/7.x on an Orin Nano (JetPack 6): jtop moves VDD_IN out of 'rail' into 'tot'.
JTOP_7_ORIN_NANO = {
    "temperature": {"cpu": {"online": True, "temp": 47.5}, "cv0": {"online": False, "temp": -256},
                    "gpu": {"online": True, "temp": 46.0}, "soc0": {"online": True, "temp": 45.2},
                    "tj": {"online": True, "temp": 48.0}},
    "power": {"rail": {"VDD_CPU_GPU_CV": _rail(5080, 420), "VDD_SOC": _rail(5080, 610)},
              "tot": {**_rail(5080, 1400), "name": "VDD_IN"}},
    "gpu": _gpu(34.7, "gpu"),
    "cpu": _cpu(62.5, 6),
    "memory": {"RAM": {"tot": 7800000, "used": 1950000}},
}
#: jetson-stats 7.x on AGX Thor (JetPack 7): the GPU dict is empty, the INA238 input is 'VIN'.
JTOP_7_THOR = {
    "temperature": {"cpu": {"online": True, "temp": 55.0}, "gpu": {"online": True, "temp": 53.0},
                    "soc012": {"online": False, "temp": -256}, "tj": {"online": True, "temp": 56.5}},
    "power": {"rail": {}, "tot": {"online": True, "type": "INA238", "volt": 19800, "curr": 2100, "power": 41580,
                                  "avg": 41000, "name": "VIN"}},
    "gpu": {},
    "cpu": _cpu(90.0, 14),
    "memory": {"RAM": {"tot": 128000000, "used": 32000000}},
}


class FakeJtop:
    """The jetson-stats client surface the provider uses: start/ok/close and the dict properties."""

    def __init__(self, shape: dict[str, Any], *, start_error: Exception | None = None) -> None:
        self.shape = shape
        self.start_error = start_error
        self.running = True
        self.closed = False

    def start(self) -> None:
        if self.start_error is not None:
            raise self.start_error

    def ok(self, spin: bool = False) -> bool:
        return self.running

    def close(self) -> None:
        self.closed = True

    def __getattr__(self, name: str) -> Any:
        if name in ("temperature", "power", "gpu", "cpu", "memory"):
            return self.shape[name]  # KeyError for a missing section, as jtop's own properties do
        raise AttributeError(name)


def jtop_params(**kw: Any) -> TelemetryParams:
    return TelemetryParams(provider="jtop", **kw)


@pytest.mark.parametrize("shape", [JTOP_4_AGX_ORIN, JTOP_7_ORIN_NANO, JTOP_7_THOR], ids=["4.x-agx-orin", "7.x-orin-nano", "7.x-thor"])
def test_jtop_shapes(shape):
    provider = JtopProvider(jtop_params(), lambda p: FakeJtop(shape))
    s = provider.read()
    assert s.error is None and s.provider == "jtop"
    online = {k: v["temp"] for k, v in shape["temperature"].items() if v["online"]}
    assert s.temps_c == pytest.approx(online)
    assert s.max_temp_c == pytest.approx(max(online.values()))
    assert s.cpu_load == pytest.approx(1 - shape["cpu"]["total"]["idle"] / 100)
    ram = shape["memory"]["RAM"]
    assert s.mem_used_frac == pytest.approx(ram["used"] / ram["tot"])
    assert s.total_power_w == pytest.approx(shape["power"]["tot"]["power"] / 1000)
    for name, rail in shape["power"]["rail"].items():
        assert s.power_w[name] == pytest.approx(rail["power"] / 1000)
    if shape["gpu"]:
        assert s.gpu_load == pytest.approx(next(iter(shape["gpu"].values()))["status"]["load"] / 100)
    else:
        assert s.gpu_load is None, "Thor's empty GPU dict is unknown load, not an error"
    assert not s.throttled


def test_jtop_names_the_input_rail():
    s = JtopProvider(jtop_params(), lambda p: FakeJtop(JTOP_7_ORIN_NANO)).read()
    assert s.power_w["VDD_IN"] == pytest.approx(s.total_power_w)


def test_jtop_missing_and_garbage_sections():
    shape = {"temperature": {"cpu": {"online": True, "temp": "hot"}, "gpu": {"temp": None}, "tj": 50.0,
                             "bad": ["x"]},
             "power": {}, "gpu": {"gpu": {"type": "integrated"}, "x": None}, "cpu": {"total": {}},
             }  # no 'memory' at all: the property raises KeyError
    s = JtopProvider(jtop_params(), lambda p: FakeJtop(shape)).read()
    assert s.error is None
    assert s.temps_c == {"tj": 50.0}, "a bare float (3.x style) is accepted, garbage is dropped"
    assert (s.gpu_load, s.cpu_load, s.mem_used_frac, s.total_power_w) == (None,) * 4
    assert s.power_w == {}


def test_jtop_hot_sensor_throttles():
    shape = {**JTOP_7_ORIN_NANO, "temperature": {"tj": {"online": True, "temp": 97.0}}}
    params = jtop_params(throttle_temp_c=95.0)
    s = JtopProvider(params, lambda p: FakeJtop(shape)).read()
    assert s.throttled and derate(s, params) == pytest.approx(params.min_derate)


def test_jtop_lost_connection_is_an_error_sample_not_an_exception():
    client = FakeJtop(JTOP_7_ORIN_NANO)
    provider = JtopProvider(jtop_params(), lambda p: client)
    client.running = False
    s = provider.read()
    assert s.error and s.max_temp_c is None and derate(s, jtop_params()) == 1.0

    def boom(spin: bool = False) -> bool:
        raise RuntimeError("Lost connection with jtop server")

    client.ok = boom
    assert "Lost connection" in (provider.read().error or "")
    provider.close()
    assert client.closed


def test_jtop_service_not_answering_is_skipped_with_reason(orin):
    err = RuntimeError("The jtop.service is not active. Please run:\nsudo jtop --install-service")
    provider, skipped = select_provider(params_for(orin, provider="auto"),
                                        lambda p: FakeJtop(JTOP_7_ORIN_NANO, start_error=err))
    assert provider.name == "sysfs"
    assert "not active" in skipped["jtop"] and "\n" not in skipped["jtop"]


def test_wedged_jtop_service_is_skipped_after_a_timeout():
    release = threading.Event()

    class Wedged(FakeJtop):
        def start(self) -> None:
            release.wait(10)  # a socket that accepts but never completes the handshake

    t0 = time.monotonic()
    with pytest.raises(ProviderUnavailable, match="within 0.2 s"):
        JtopProvider(jtop_params(), lambda p: Wedged(JTOP_7_THOR), start_timeout_s=0.2)
    assert time.monotonic() - t0 < 5
    release.set()


def test_auto_prefers_jtop_when_it_answers(orin):
    provider, skipped = select_provider(params_for(orin, provider="auto"), lambda p: FakeJtop(JTOP_7_THOR))
    assert provider.name == "jtop" and skipped == {}


def test_default_factory_without_socket_is_skipped(orin, tmp_path):
    provider, skipped = select_provider(params_for(orin, provider="auto", jtop_socket=str(tmp_path / "none.sock")))
    assert provider.name == "sysfs" and "not found" in skipped["jtop"]


def test_nothing_answers_falls_back_to_null_with_every_reason(tmp_path):
    params = TelemetryParams(sysfs_root=str(tmp_path / "sys"), procfs_root=str(tmp_path / "proc"),
                             jtop_socket=str(tmp_path / "jtop.sock"))
    provider, skipped = select_provider(params)
    assert isinstance(provider, NullProvider) and set(skipped) == {"jtop", "sysfs"}
    s = provider.read()
    assert s.error and "sysfs" in s.error and derate(s, params) == 1.0 and not s.throttled


def test_null_by_config():
    provider, skipped = select_provider(TelemetryParams(provider="null"))
    assert provider.name == "null" and skipped == {}


# --------------------------------------------------------------------------- derate and params


def test_derate_power_budget(orin):
    params = params_for(orin, power_budget_w=5.0)
    s = SysfsProvider(params).read()
    assert s.total_power_w > 5.0
    assert derate(s, params) == pytest.approx(5.0 / s.total_power_w)
    assert derate(s, params_for(orin)) == 1.0


@settings(max_examples=60, deadline=None)
@given(t1=st.floats(-30, 140), t2=st.floats(-30, 140), throttled=st.booleans(),
       power=st.one_of(st.none(), st.floats(0, 100)))
def test_derate_bounded_and_monotone_in_temperature(t1, t2, throttled, power):
    params = TelemetryParams(power_budget_w=20.0)
    lo, hi = sorted((t1, t2))
    a = derate(TelemetrySample("x", 0.0, max_temp_c=lo, throttled=throttled, total_power_w=power), params)
    b = derate(TelemetrySample("x", 0.0, max_temp_c=hi, throttled=throttled, total_power_w=power), params)
    assert 0.0 <= b <= a <= 1.0


def test_params_validate_and_work_as_a_pydantic_field():
    class Cfg(BaseModel):
        telemetry: TelemetryParams = TelemetryParams()

    assert Cfg().telemetry.provider == "auto"
    cfg = Cfg.model_validate({"telemetry": {"provider": "sysfs", "throttle_temp_c": 90, "power_budget_w": 15}})
    assert cfg.telemetry == TelemetryParams(provider="sysfs", throttle_temp_c=90.0, power_budget_w=15.0)
    for bad in ({"provider": "tegrastats"}, {"hot_temp_c": 99, "throttle_temp_c": 90}, {"poll_interval_s": 0},
                {"throttle_temp": 90}):
        with pytest.raises(ValidationError):
            Cfg.model_validate({"telemetry": bad})


# --------------------------------------------------------------------------- poller


def test_poller_polls_off_thread_and_keeps_latest(orin):
    params = params_for(orin, provider="auto", poll_interval_s=0.05, jtop_socket=str(orin.root / "jtop.sock"))
    poller = open_telemetry(params)
    assert poller.latest().error == "no reading yet"
    poller.start()
    try:
        deadline = time.monotonic() + 5
        while poller.reads < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert poller.reads >= 2
        orin.set_temp("tj-thermal", 99.0)
        deadline = time.monotonic() + 5
        while not poller.latest().throttled and time.monotonic() < deadline:
            time.sleep(0.01)
        assert poller.latest().throttled
        status = poller.status(params)
        assert status["provider"] == "sysfs" and status["derate"] < 1.0
        assert "jtop skipped" in status["summary"], "sagectl shows why jtop was not used"
        assert status["sample"]["max_temp_c"] == pytest.approx(99.0)
    finally:
        poller.stop()
    assert not any(t.name == "telemetry" for t in threading.enumerate())


class _Exploding(TelemetryProvider):
    name = "exploding"

    def __init__(self) -> None:
        self.closed = False

    def read(self) -> TelemetrySample:
        raise OSError("sensor bus gone")

    def close(self) -> None:
        self.closed = True


def test_poller_survives_a_provider_that_raises():
    provider = _Exploding()
    poller = TelemetryPoller(provider, 0.05)
    s = poller.poll_once()
    assert "sensor bus gone" in (s.error or "") and poller.errors == 1
    assert poller.status()["summary"].startswith("unavailable")
    poller.stop()
    assert provider.closed
