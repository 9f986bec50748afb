"""Vision plugin benchmark: cost of the floor (init_state) and of one step, per working size.

Frames: generated scenes with 30% dropped pixels (alpha mask) or sigma 0.1 noise, at 128 x 128
(the daemon's test camera), 192 x 256 (a 480 x 640 frame at the default max_side 256) and
480 x 640 itself (max_side 640). One image at a time as in a tick, wall and this thread's CPU
time (the wall-time tail on a shared 2-core box is mostly preemption). Baseline in the same
process: one bare forward of the prior net at that size (a step is one forward when it is
accepted at once, more when it backtracks). Also: steps to halt through the real runner.

    python benchmarks/plugins/vision.py [--quick]     # prints JSON

`--daemon`: the user's view instead. A real daemon (vision only, state forced to FOCUS) gets
128 x 128 held-out crops (noise sigma 0.05 / 0.1, 30% dropped pixels, 8 x 8 block holes) at 5
frames/s from a SensorPublisher; each published result is matched to its clean crop by seq:
PSNR of the delivered reconstruction, steps per result, halt reasons.
"""

from __future__ import annotations

import json
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import torch

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from benchmarks.common import machine, pct  # noqa: E402
from sage_plugins.vision import VisionPlugin  # noqa: E402
from sage_plugins.vision.data import scenes  # noqa: E402
from sage_runtime.conformance import FAR_FUTURE_NS, make_context  # noqa: E402
from sage_runtime.plugin.contract import PluginInputs  # noqa: E402
from sage_runtime.plugin.runner import StepCost, run_plugin  # noqa: E402
from sage_runtime.records import Frame  # noqa: E402

SIZES = {"128x128": ((128, 128), 256), "192x256 (480x640 in)": ((480, 640), 256), "480x640": ((480, 640), 640)}


def _timed(fn: Any) -> tuple[Any, float, float]:
    w, c = time.perf_counter_ns(), time.thread_time_ns()
    out = fn()
    return out, (time.perf_counter_ns() - w) / 1e6, (time.thread_time_ns() - c) / 1e6


def _frame(seed: int, hw: tuple[int, int], kind: str) -> PluginInputs:
    g = torch.Generator().manual_seed(seed)
    img = torch.nn.functional.interpolate(scenes(1, 128, np.random.default_rng(seed)), size=hw, mode="bilinear")[0]
    if kind == "noise":
        img = (img + 0.1 * torch.randn(img.shape, generator=g)).clamp(0, 1)
    data = (img.permute(1, 2, 0) * 255).round().to(torch.uint8)
    if kind == "drop":
        alpha = torch.where(torch.rand(hw, generator=g) < 0.3, 0, 255).to(torch.uint8)
        data = torch.cat([data, alpha[..., None]], -1)
    return PluginInputs(frames={"camera": Frame("camera", seed, 0, "tensor", data, {})})


def _costs(plugin: VisionPlugin, hw: tuple[int, int], seeds: range, steps: int) -> dict[str, Any]:
    wall: dict[str, list[float]] = {"init_state": [], "step": [], "net_forward": [], "outputs": []}
    cpu: dict[str, list[float]] = {k: [] for k in wall}

    def add(key: str, w: float, c: float) -> None:
        wall[key].append(w)
        cpu[key].append(c)

    for seed in seeds:
        for kind in ("drop", "noise"):
            state, w, c = _timed(lambda: plugin.init_state(_frame(seed, hw, kind)))
            add("init_state", w, c)
            r = state.r
            with torch.no_grad():
                add("net_forward", *_timed(lambda: plugin.net(r.x, r.y, r.valid, r.sigma))[1:])
            for _ in range(steps):
                state, w, c = _timed(lambda: plugin.step(state))
                add("step", w, c)
            add("outputs", *_timed(lambda: plugin.outputs(state))[1:])
    return {k: {"wall": pct(wall[k]), "cpu": pct(cpu[k])} for k in wall}


def _steps_to_halt(plugin: VisionPlugin, seeds: range) -> dict[str, Any]:
    steps, halts = [], Counter()
    for seed in seeds:
        for kind in ("drop", "noise"):
            res = run_plugin(plugin, _frame(seed, (128, 128), kind), atp_ms=1e9, deadline_ns=FAR_FUTURE_NS,
                             cost=StepCost())
            steps.append(res.steps)
            halts[res.halt] += 1
    a = np.asarray(steps)
    return {"n": int(a.size), "min": int(a.min()), "p50": float(np.median(a)), "max": int(a.max()),
            "halt_reasons": dict(halts), "histogram": dict(sorted(Counter(steps).items()))}


def run(quick: bool = False) -> dict[str, Any]:
    torch.set_num_threads(1)
    result: dict[str, Any] = {"machine": machine(), "plugin": "vision", "quick": quick, "time_ms": {}}
    for name, (hw, max_side) in SIZES.items():
        plugin = VisionPlugin()
        plugin.setup(make_context(plugin, {"max_side": max_side}))
        plugin.warmup()
        n = 2 if quick or max_side > 256 else 6
        result["time_ms"][name] = _costs(plugin, hw, range(100, 100 + n), 3 if quick else 5)
        if name == "128x128":
            result["max_steps"] = plugin.max_steps
            result["steps_to_halt_128"] = _steps_to_halt(plugin, range(200, 204 if quick else 216))
        plugin.close()
    return result


def _collect(sub: Any, until: float, sent: dict[int, tuple[str, int]], got: list[dict[str, Any]]) -> None:
    while (left := until - time.monotonic()) > 0:
        msg = sub.recv(timeout_s=left)
        if msg is None or "seq" not in msg.outputs:
            continue
        got.append({"seq": int(msg.outputs["seq"]), "steps": int(msg.header["steps"]), "halt": msg.header["halt"],
                    "reconstruction": msg.outputs["reconstruction"]})


def daemon(per_photo: int = 4, fps: float = 5.0) -> dict[str, Any]:
    """Held-out crops through a real daemon in FOCUS (see the module docstring)."""
    import tempfile

    from sage_plugins.vision.data import HELD_OUT_PHOTOS, corrupt
    from sage_plugins.vision.evaluate import JUDGED, TEST_SEED, crops
    from sage_plugins.vision.images import psnr
    from sage_runtime.client import ResultSubscriber, SensorPublisher
    from tests.harness import DaemonProcess, wait_for

    clean = crops(HELD_OUT_PHOTOS, per_photo, TEST_SEED)
    config = {"plugins": {"enabled": ["vision"], "inputs": {"vision": ["camera"]}},
              "ingest": {"sensors": {"camera": {"kind": "tensor", "modality": "image"}}}}
    out: dict[str, Any] = {"machine": machine(), "fps": fps, "crops": int(clean.shape[0]), "size": 128}
    with tempfile.TemporaryDirectory() as td:
        d = DaemonProcess(Path(td), config).start(timeout_s=120)
        try:
            d.control().call("state", action="set", state="FOCUS", duration_s=3600)
            pub, sub = SensorPublisher(d.ingest), ResultSubscriber(d.results, topics=("result/vision",))
            probe = np.zeros((128, 128, 3), np.uint8)  # handshake: probes until a first result
            wait_for(lambda: (pub.tensor("camera", probe), sub.recv(timeout_s=0.5))[1], timeout_s=120)
            seq, sent, got = 1_000_000, {}, []
            for k, cond in enumerate(JUDGED):
                y, valid = corrupt(clean, cond, TEST_SEED + 1 + k)
                for i in range(clean.shape[0]):
                    img = (y[i] * 255).round().to(torch.uint8).permute(1, 2, 0)
                    if bool((valid[i] < 1).any()):
                        img = torch.cat([img, (valid[i, 0] * 255).to(torch.uint8)[..., None]], -1)
                    pub.tensor("camera", img.contiguous().numpy(), seq=seq)
                    sent[seq] = (cond, i)
                    seq += 1
                    _collect(sub, time.monotonic() + 1.0 / fps, sent, got)
            _collect(sub, time.monotonic() + 2.0, sent, got)
            out["daemon_status_plugins"] = d.control().status().get("plugins")
        finally:
            d.stop()
    for cond in JUDGED:
        rows = [g for g in got if g["seq"] in sent and sent[g["seq"]][0] == cond]
        p = [float(psnr(torch.from_numpy(np.array(g["reconstruction"], np.float32)).permute(2, 0, 1)[None] / 255,
                        clean[sent[g["seq"]][1]][None])[0]) for g in rows]
        steps = [g["steps"] for g in rows]
        out[cond] = {"frames_sent": clean.shape[0], "results": len(rows),
                     "psnr_db": round(float(np.mean(p)), 3) if p else None,
                     "steps_median": float(np.median(steps)) if steps else None,
                     "halts": dict(Counter(g["halt"] for g in rows))}
    return out


if __name__ == "__main__":
    if "--daemon" in sys.argv:
        print(json.dumps(daemon(), indent=2, default=str))
    else:
        print(json.dumps(run(quick="--quick" in sys.argv), indent=2))
