"""Quality per ATP through the real daemon and real ZeroMQ: what the metabolic state buys.

Two cameras publish 64 x 64 RGBA frames (alpha = validity) cut from the held-out real photos of
the vision plugin (`sage_plugins.vision.data.HELD_OUT_PHOTOS`, shipped in scikit-image), each
frame with 30 % of its pixels dropped at random: `cam_salient` shows a new scene every second,
`cam_static` repeats one frame. The client keeps the clean frames and scores every vision result
against the clean frame it answers (its `sensor` and `seq` outputs): delivered PSNR. Runs:

- `configured`: the default config (attention allocator);
- `uniform`: `attention.allocator: uniform` at the same recharge (a baseline);
- `FOCUS`, `WAKE`, `REST`: the state forced with `sagectl state set` (the control command);
- `language_load` (not in the default list): vision busy on both cameras and the language plugin
  answering a garbled command every 0.5 s: its result latency (frame age at publish) and steps.

Per camera and run: delivered PSNR (mean over results), the input's PSNR (dropped pixels at the
valid pixels' mean, the simple baseline), ATP spent (sum of the results' `atp`), steps per
result (median), result latency as frame age at publish (`age_ms`) p50/p99, results per second.
`--repeats` (3) repeats each run; `--quick` is one short repeat. Writes
benchmarks/results/quality_per_atp.json. Uses whatever VisionPlugin is in the tree.

    nice -n 15 .venv/bin/python benchmarks/bench_quality_per_atp.py [--quick] [--seconds 20]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from sage_plugins.vision.data import HELD_OUT_PHOTOS, crop, load_photos  # noqa: E402
from sage_runtime.client import ControlClient, ResultSubscriber, SensorPublisher  # noqa: E402
from tests.harness import DaemonProcess  # noqa: E402

RESULTS = REPO / "benchmarks" / "results" / "quality_per_atp.json"
SIZE, DROP, RATE_HZ = 64, 0.3, 10.0
CAMERAS = ("cam_salient", "cam_static")


class Scenes:
    """Clean crops of held-out photos and their corrupted frames; a pure function of the seed."""

    def __init__(self, seed: int) -> None:
        self.photos = load_photos(HELD_OUT_PHOTOS, short_side=256)
        self.rng = np.random.default_rng(seed)
        self.static = self.scene()
        self.static_frame = self.corrupt(self.static)

    def scene(self) -> np.ndarray:
        p = self.photos[self.rng.integers(len(self.photos))]
        h, w = p.shape[1:]
        side = int(self.rng.integers(48, min(h, w)))
        top, left = int(self.rng.integers(h - side + 1)), int(self.rng.integers(w - side + 1))
        img = crop(p, SIZE, side, top, left, False)[0].permute(1, 2, 0).numpy()
        return (img * 255).round().astype(np.uint8)

    def corrupt(self, clean: np.ndarray) -> np.ndarray:
        alpha = np.where(self.rng.random(clean.shape[:2]) < DROP, 0, 255).astype(np.uint8)
        rgb = np.where(alpha[..., None] > 0, clean, 0).astype(np.uint8)
        return np.ascontiguousarray(np.concatenate([rgb, alpha[..., None]], axis=-1))


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) / 255 - b.astype(np.float64) / 255) ** 2))
    return 10 * np.log10(1 / max(mse, 1e-10))


def input_psnr(frame: np.ndarray, clean: np.ndarray) -> float:
    """The simple baseline: dropped pixels at the mean of the valid ones."""
    valid = frame[..., 3] > 0
    filled = frame[..., :3].astype(np.float64).copy()
    filled[~valid] = filled[valid].mean(axis=0)
    return psnr(filled, clean)


def config(allocator: str, language: bool = False) -> dict[str, Any]:
    sensors: dict[str, Any] = {c: {"kind": "tensor", "policy": "latest", "modality": "image", "expected_hz": RATE_HZ}
                               for c in CAMERAS}
    if language:
        sensors["speech"] = {"kind": "text", "policy": "fifo:16", "modality": "text", "expected_hz": 2.0}
    return {"plugins": {"enabled": ["vision", "language"] if language else ["vision"],
                        "inputs": {"vision": list(CAMERAS), "language": ["speech"]} if language else {}},
            "attention": {"allocator": allocator}, "ingest": {"sensors": sensors}}


def run_once(tmp: Path, run: str, seconds: float, seed: int) -> dict[str, Any]:
    language = run == "language_load"
    d = DaemonProcess(tmp, config("uniform" if run == "uniform" else "attention", language)).start(timeout_s=120)
    pub, sub = SensorPublisher(d.ingest), ResultSubscriber(d.results, topics=("result/",))
    try:
        time.sleep(0.5)  # slow joiner
        if run in ("FOCUS", "WAKE", "REST"):
            ControlClient(d.control_endpoint).call("state", action="set", state=run, duration_s=seconds + 30)
        return stream(d, pub, sub, seconds, seed, language)
    finally:
        pub.close()
        sub.close()
        d.stop()


def stream(d: DaemonProcess, pub: SensorPublisher, sub: ResultSubscriber, seconds: float, seed: int,
           language: bool = False) -> dict[str, Any]:
    """Both cameras at RATE_HZ (and, with `language`, a garbled command every 0.5 s: the
    language-under-load run); every result scored against the truth it answers."""
    import random

    from sage_plugins.language.grammar import Grammar
    from sage_plugins.language.noise import corrupt

    grammar, text_rng, commands = Grammar.load(), random.Random(seed), []
    next_command = time.monotonic()
    scenes = Scenes(seed)
    truth: dict[tuple[str, int], tuple[np.ndarray, float]] = {}
    rows: dict[str, list[dict[str, Any]]] = {c: [] for c in CAMERAS}
    seq = {c: 0 for c in CAMERAS}
    salient = scenes.scene()
    t0 = time.monotonic()
    next_frame, next_scene = t0, t0 + 1.0
    while time.monotonic() < t0 + seconds + 1.0:
        now = time.monotonic()
        if now >= next_scene:
            salient, next_scene = scenes.scene(), next_scene + 1.0
        if now >= next_frame and now < t0 + seconds:
            for cam, clean, frame in (("cam_salient", salient, None), ("cam_static", scenes.static, scenes.static_frame)):
                frame = scenes.corrupt(clean) if frame is None else frame
                truth[(cam, seq[cam])] = (clean, input_psnr(frame, clean))
                pub.tensor(cam, frame, seq=seq[cam])
                seq[cam] += 1
            next_frame += 1.0 / RATE_HZ
        if language and now >= next_command and now < t0 + seconds:
            pub.text("speech", corrupt(grammar.sample(text_rng).text, 0.1, text_rng))
            next_command += 0.5
        msg = sub.recv(timeout_s=0.005)
        if msg is not None and msg.topic == "result/language":
            commands.append({"psnr": 0.0, "input_psnr": 0.0, "atp": msg.header["atp"], "steps": msg.header["steps"],
                             "age_ms": msg.header.get("age_ms"), "halt": msg.header["halt"]})
            continue
        if msg is not None and msg.header["halt"] != "error":
            key = (str(msg.outputs.get("sensor")), int(msg.outputs.get("seq", -1)))
            if key in truth:
                clean, base = truth[key]
                recon = np.asarray(msg.outputs["reconstruction"])[..., :3]
                rows[key[0]].append({"psnr": psnr(recon, clean), "input_psnr": base, "atp": msg.header["atp"],
                                     "steps": msg.header["steps"], "age_ms": msg.header.get("age_ms"),
                                     "halt": msg.header["halt"]})
    out = {cam: summarise(r, seconds) for cam, r in rows.items()}
    if language:  # latency is frame age at publish; PSNR does not apply
        out["language"] = {k: v for k, v in summarise(commands, seconds).items() if "psnr" not in k}
    return out


def summarise(rows: list[dict[str, Any]], seconds: float) -> dict[str, Any]:
    if not rows:
        return {"results": 0}
    ages = sorted(r["age_ms"] for r in rows if r["age_ms"] is not None)
    return {"results": len(rows), "results_per_s": round(len(rows) / seconds, 2),
            "psnr_db": round(statistics.fmean(r["psnr"] for r in rows), 3),
            "input_psnr_db": round(statistics.fmean(r["input_psnr"] for r in rows), 3),
            "atp": round(sum(r["atp"] for r in rows), 1),
            "steps_p50": statistics.median(r["steps"] for r in rows),
            "age_p50_ms": round(ages[len(ages) // 2], 1) if ages else None,
            "age_p99_ms": round(ages[min(int(len(ages) * 0.99), len(ages) - 1)], 1) if ages else None,
            "halts": {h: sum(r["halt"] == h for r in rows) for h in {r["halt"] for r in rows}}}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=20.0)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--quick", action="store_true", help="one repeat of 8 s per run")
    ap.add_argument("--runs", default="configured,uniform,FOCUS,WAKE,REST")
    args = ap.parse_args()
    seconds, repeats = (8.0, 1) if args.quick else (args.seconds, args.repeats)
    torch.set_num_threads(1)
    out: dict[str, Any] = {"machine": {"cpus": os.cpu_count(), "loadavg_start": os.getloadavg(),
                                       "note": "shared, loaded 2-core box: timings noisy"},
                           "seconds": seconds, "repeats": repeats, "runs": {}}
    for run in args.runs.split(","):
        reps = []
        for rep in range(repeats):
            with tempfile.TemporaryDirectory(prefix="sage-qpa-") as tmp:
                reps.append(run_once(Path(tmp), run, seconds, seed=rep))
            print(run, rep, json.dumps(reps[-1]))
        out["runs"][run] = reps
    out["machine"]["loadavg_end"] = os.getloadavg()
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(json.dumps(out, indent=1))
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
