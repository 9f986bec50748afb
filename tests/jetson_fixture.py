"""A sysfs/procfs tree laid out like a Jetson Orin Nano's (JetPack 6), written as real files.

Shared by the telemetry tests and the daemon's thermal integration test: point
TelemetryParams(sysfs_root=tree.sys, procfs_root=tree.proc) at it, then heat a zone with
tree.set_temp("tj-thermal", 97.0).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

#: (type, temperature in C; None writes Orin's offline value -256 C), in thermal_zone order.
ORIN_ZONES = (("cpu-thermal", 48.5), ("gpu-thermal", 46.0), ("cv0-thermal", None), ("cv1-thermal", None),
              ("cv2-thermal", None), ("soc0-thermal", 45.2), ("soc1-thermal", 46.1), ("soc2-thermal", 44.9),
              ("tj-thermal", 49.0))
#: INA3221 at 1-0040 on the Orin Nano carrier: channel -> (label, mV, mA). Channel 7 is the sum of shunts.
ORIN_RAILS = {1: ("VDD_IN", 5080, 1400), 2: ("VDD_CPU_GPU_CV", 5080, 420), 3: ("VDD_SOC", 5080, 610)}
STAT_FIELDS = 10  # user nice system idle iowait irq softirq steal guest guest_nice


def write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


@dataclass
class OrinTree:
    root: Path

    @property
    def sys(self) -> str:
        return str(self.root / "sys")

    @property
    def proc(self) -> str:
        return str(self.root / "proc")

    def zone(self, kind: str) -> Path:
        for zone in sorted((self.root / "sys/class/thermal").glob("thermal_zone*")):
            if (zone / "type").read_text().strip() == kind:
                return zone
        raise KeyError(kind)

    def set_temp(self, kind: str, celsius: float) -> None:
        write(self.zone(kind) / "temp", f"{round(celsius * 1000)}\n")

    def set_cpu_jiffies(self, user: int, system: int, idle: int) -> None:
        fields = [user, 0, system, idle] + [0] * (STAT_FIELDS - 4)
        cores = "".join(f"cpu{i} " + " ".join("0" for _ in fields) + "\n" for i in range(6))
        write(self.root / "proc/stat", "cpu  " + " ".join(map(str, fields)) + "\n" + cores + "intr 0\nctxt 0\n")

    def set_rail(self, channel: int, mv: int, ma: int) -> None:
        write(self.hwmon / f"in{channel}_input", f"{mv}\n")
        write(self.hwmon / f"curr{channel}_input", f"{ma}\n")

    def set_gpu_load(self, raw: str) -> None:
        write(self.gpu_device / "load", raw)

    @property
    def hwmon(self) -> Path:
        return self.root / "sys/bus/i2c/drivers/ina3221/1-0040/hwmon/hwmon3"

    @property
    def gpu_device(self) -> Path:
        return self.root / "sys/devices/platform/bus@0/17000000.gpu"


def make_orin_tree(root: Path) -> OrinTree:
    """Thermal zones (with trip points), cooling devices, devfreq GPU, INA3221 rails, /proc."""
    tree = OrinTree(root)
    thermal = root / "sys/class/thermal"
    for i, (kind, temp) in enumerate(ORIN_ZONES):
        zone = thermal / f"thermal_zone{i}"
        write(zone / "type", kind + "\n")
        write(zone / "temp", f"{-256000 if temp is None else round(temp * 1000)}\n")
        if kind in ("cpu-thermal", "gpu-thermal", "soc0-thermal"):
            write(zone / "trip_point_0_type", "passive\n")
            write(zone / "trip_point_0_temp", "99000\n")
            write(zone / "trip_point_1_type", "critical\n")
            write(zone / "trip_point_1_temp", "104500\n")
    write(thermal / "cooling_device0/type", "pwm-fan\n")
    write(thermal / "cooling_device0/cur_state", "3\n")  # a spinning fan is not throttling
    write(thermal / "cooling_device1/type", "cpufreq-cpu0\n")
    write(thermal / "cooling_device1/cur_state", "0\n")
    # devfreq entry links to the platform device that holds `load` (0..1000), as on JetPack 6.
    write(tree.gpu_device / "load", "347\n")
    write(tree.gpu_device / "of_node/name", "gpu\n")
    devfreq = root / "sys/class/devfreq/17000000.gpu"
    devfreq.mkdir(parents=True)
    os.symlink(os.path.relpath(tree.gpu_device, devfreq), devfreq / "device")
    write(devfreq / "cur_freq", "306000000\n")
    write(root / "sys/class/devfreq/3d00000.host1x/cur_freq", "0\n")  # a non-GPU devfreq device
    for channel, (label, mv, ma) in ORIN_RAILS.items():
        write(tree.hwmon / f"in{channel}_label", label + "\n")
        tree.set_rail(channel, mv, ma)
    write(tree.hwmon / "in7_label", "sum of shunt voltages\n")
    write(tree.hwmon / "in7_input", "9999\n")
    write(tree.hwmon / "name", "ina3221\n")
    tree.set_cpu_jiffies(user=1000, system=500, idle=8500)
    write(root / "proc/meminfo", "MemTotal:        7800000 kB\nMemFree:         3000000 kB\n"
                                 "MemAvailable:    5850000 kB\nBuffers:           10000 kB\nCached:          900000 kB\n")
    return tree
