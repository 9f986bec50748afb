"""Warm start vs restart for the vision plugin on a slowly panning camera.

A 64 x 64 window pans 2 px per frame across a held-out photo (`HELD_OUT_PHOTOS`), every frame
with 30 % of its pixels dropped. Each frame is refined to convergence (the plugin's own halting
rule, max_steps as the ceiling) twice: `restart` from the encoder's code (init_state), `warm`
from the previous frame's final state (`warm_state`, what input policy `warm` does). Reports
steps to converge, steps to come within 1 % of the restart run's final energy, and PSNR
against the clean frame, per mode, in the same process; `start_psnr_db` is the PSNR before any
learned step (restart: the classical floor; warm: the aligned carry-over, a classical temporal
method), so the net's own share of each mode's result shows. Writes
benchmarks/results/warm_start.json. Uses whatever VisionPlugin is in the tree.

    nice -n 15 .venv/bin/python benchmarks/bench_warm_start.py [--frames 40]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from sage_plugins.vision.data import HELD_OUT_PHOTOS, load_photos  # noqa: E402
from sage_plugins.vision.plugin import VisionPlugin  # noqa: E402
from sage_runtime.conformance import make_context  # noqa: E402
from sage_runtime.plugin.contract import PluginInputs  # noqa: E402
from sage_runtime.plugin.runner import Job, StepCost, advance, begin, next_halt  # noqa: E402
from sage_runtime.records import Frame  # noqa: E402

RESULTS = REPO / "benchmarks" / "results" / "warm_start.json"
SIZE, DROP, STRIDE = 64, 0.3, 2


def pan(photo: torch.Tensor, frames: int, rng: np.random.Generator) -> list[tuple[np.ndarray, np.ndarray]]:
    """(clean uint8 H x W x 3, corrupted RGBA) per frame of a horizontal pan."""
    out = []
    top = (photo.shape[1] - SIZE) // 2
    for k in range(frames):
        left = k * STRIDE
        clean = (photo[:, top:top + SIZE, left:left + SIZE].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
        alpha = np.where(rng.random((SIZE, SIZE)) < DROP, 0, 255).astype(np.uint8)
        rgb = np.where(alpha[..., None] > 0, clean, 0).astype(np.uint8)
        out.append((clean, np.concatenate([rgb, alpha[..., None]], axis=-1)))
    return out


def refine(plugin: VisionPlugin, frame: np.ndarray, seq: int, prev: object) -> tuple[Job, str]:
    inputs = PluginInputs(frames={"cam": Frame("cam", seq, 0, "tensor", torch.from_numpy(frame))})
    job = Job(inputs, deadline_ns=1 << 62)
    cost = StepCost()
    begin(plugin, job, warm_from=prev)
    job.start_recon = np.asarray(plugin.outputs(job.state)["reconstruction"])[..., :3]  # before any step
    while (halt := next_halt(plugin, job, cost)) is None:
        advance(plugin, job, cost)
    return job, halt


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) / 255 - b.astype(np.float64) / 255) ** 2))
    return 10 * float(np.log10(1 / max(mse, 1e-10)))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--frames", type=int, default=40)
    args = ap.parse_args()
    torch.set_num_threads(1)
    plugin = VisionPlugin()
    plugin.setup(make_context(plugin))
    rng = np.random.default_rng(0)
    rows: dict[str, list[dict[str, float]]] = {"restart": [], "warm": []}
    for photo in load_photos(HELD_OUT_PHOTOS, short_side=128):
        seq_frames = pan(photo, min(args.frames, (photo.shape[2] - SIZE) // STRIDE), rng)
        prev = None
        for k, (clean, frame) in enumerate(seq_frames):
            target = None
            for mode in ("restart", "warm"):
                job, halt = refine(plugin, frame, k, prev if mode == "warm" else None)
                recon = np.asarray(plugin.outputs(job.state)["reconstruction"])[..., :3]
                if target is None:  # within 1 % of the restart run's final energy
                    target = job.energies[-1] * 1.01
                reach = next((i for i, e in enumerate(job.energies) if e <= target), job.steps)
                if k > 0:  # the first frame has nothing to start from
                    rows[mode].append({"steps": job.steps, "psnr": psnr(recon, clean), "converged": halt == "converged",
                                       "warm": job.warm, "steps_to_restart_final": reach,
                                       "start_psnr": psnr(job.start_recon, clean)})
                if mode == "warm":
                    prev = job.state
    summary = {m: {"frames": len(r), "steps_p50": statistics.median(x["steps"] for x in r),
                   "steps_mean": round(statistics.fmean(x["steps"] for x in r), 2),
                   "steps_to_restart_final_p50": statistics.median(x["steps_to_restart_final"] for x in r),
                   "steps_to_restart_final_mean": round(statistics.fmean(x["steps_to_restart_final"] for x in r), 2),
                   "psnr_db": round(statistics.fmean(x["psnr"] for x in r), 3),
                   # At the job's start, before any learned step: for restart the classical floor, for
                   # warm the aligned carry-over (the classical temporal baseline the net must beat).
                   "start_psnr_db": round(statistics.fmean(x["start_psnr"] for x in r), 3),
                   "converged_share": round(statistics.fmean(x["converged"] for x in r), 3),
                   "warm_share": round(statistics.fmean(x["warm"] for x in r), 3)} for m, r in rows.items()}
    summary["warm_over_restart_steps"] = round(summary["warm"]["steps_mean"] / max(summary["restart"]["steps_mean"], 1e-9), 3)
    summary["warm_over_restart_steps_to_restart_final"] = round(
        summary["warm"]["steps_to_restart_final_mean"] / max(summary["restart"]["steps_to_restart_final_mean"], 1e-9), 3)
    print(json.dumps(summary, indent=1))
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(json.dumps({"summary": summary, "stride_px": STRIDE, "drop": DROP, "photos": list(HELD_OUT_PHOTOS)},
                                  indent=1))


if __name__ == "__main__":
    main()
