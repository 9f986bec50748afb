"""Shared by the benchmark scripts: machine description, percentiles, JSON output."""

from __future__ import annotations

import json
import os
import platform
import time
from pathlib import Path
from typing import Any

import numpy as np

RESULTS = Path(__file__).resolve().parent / "results"


def machine() -> dict[str, Any]:
    import torch

    info: dict[str, Any] = {
        "hostname": platform.node(), "platform": platform.platform(), "python": platform.python_version(),
        "cpu_count": os.cpu_count(), "torch": torch.__version__, "torch_threads": torch.get_num_threads(),
        "cuda": torch.version.cuda if torch.cuda.is_available() else None,
        "device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu",
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    try:
        import zmq

        info["pyzmq"], info["libzmq"] = zmq.__version__, zmq.zmq_version()
    except ImportError:
        pass
    try:
        with open("/proc/cpuinfo") as f:
            info["cpu"] = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), None)
    except OSError:
        pass
    return info


def pct(samples_ms: list[float] | np.ndarray) -> dict[str, float]:
    a = np.asarray(samples_ms, dtype=np.float64)
    if not a.size:
        return {"n": 0}
    p50, p99 = np.percentile(a, [50, 99])
    return {"n": int(a.size), "p50_ms": round(float(p50), 4), "p99_ms": round(float(p99), 4),
            "max_ms": round(float(a.max()), 4), "mean_ms": round(float(a.mean()), 4)}


def save(name: str, data: dict[str, Any]) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps(data, indent=2))
    return path
