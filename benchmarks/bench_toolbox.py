"""Toolbox costs: what the ingest tap costs the daemon's ingest with and without a recorder
subscribed, and how long `SensorPublisher()` takes to see the daemon's subscription (the
handshake that replaced the slow-joiner loss).

Run: .venv/bin/python benchmarks/bench_toolbox.py [--quick]   (writes benchmarks/results/toolbox.json)
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import machine, pct, save  # noqa: E402
from sage_runtime.client import SensorPublisher  # noqa: E402
from tests.harness import SAGECTL, DaemonProcess, wait_for  # noqa: E402


def ingest_rate(d: DaemonProcess, n: int, sensor: str) -> float:
    """Frames per second admitted for a burst of n 64-float frames (time until the last is counted;
    `received` counts every admitted frame, superseded `latest` ones included)."""
    pub = SensorPublisher(d.ingest, sndhwm=n + 10)
    frame = np.zeros(64, np.float32)
    t0 = time.perf_counter()
    for i in range(n):
        pub.tensor(sensor, frame)
    ctl = d.control(timeout_s=30)
    wait_for(lambda: ctl.status()["ingest"]["sensors"].get(sensor, {}).get("received") == n, timeout_s=120,
             interval_s=0.005)
    took = time.perf_counter() - t0
    pub.close()
    return n / took


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    n, reps = (2000, 3) if args.quick else (5000, 5)
    # Bursts of thousands of small frames: a deep receive queue, paid for by a small message limit.
    cfg = {"ingest": {"max_message_bytes": 4096}, "capacity": {"rcvhwm": 100000}}
    with tempfile.TemporaryDirectory() as tmp:
        d = DaemonProcess(Path(tmp), cfg).start()
        try:
            connect_ms = []
            for _ in range(20):
                t0 = time.perf_counter()
                SensorPublisher(d.ingest).close()
                connect_ms.append((time.perf_counter() - t0) * 1e3)
            off, on = [], []
            for r in range(reps):  # interleaved, so load drift hits both alike
                off.append(ingest_rate(d, n, f"off{r}"))
                rec = subprocess.Popen([SAGECTL, "--socket", d.control_endpoint, "record", f"{tmp}/r{r}.mcap"],
                                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=d.env)
                wait_for(lambda: d.control().call("tap")["subscriptions"] == 1, timeout_s=20)
                on.append(ingest_rate(d, n, f"on{r}"))
                rec.send_signal(2)
                rec.wait(timeout=60)
            tap = d.control().call("tap")
        finally:
            d.kill()
    result = {
        "machine": machine(), "frames_per_burst": n, "reps": reps,
        "publisher_connect_ms": pct(connect_ms),
        "ingest_fps_no_recorder": {"median": float(np.median(off)), "all": off},
        "ingest_fps_recording": {"median": float(np.median(on)), "all": on},
        "recording_over_no_recorder": float(np.median(on) / np.median(off)),
        "tap": tap,
    }
    print(save("toolbox", result))
    print({k: result[k] for k in ("publisher_connect_ms", "recording_over_no_recorder")},
          "fps off/on", round(result["ingest_fps_no_recorder"]["median"]), round(result["ingest_fps_recording"]["median"]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
