"""Quality of the vision plugin against ground truth and classical baselines:
`python -m sage_plugins.vision.evaluate` (one CPU thread, fixed seeds; writes quality.json).

Crops: 128 x 128 windows at the photos' own scale (random position and mirroring, fixed seeds) of
the held-out photos (never trained on, never used to pick anything). Conditions: 30% of pixels
dropped, 8 x 8 block holes over 20% of the frame (masks given to the plugin), Gaussian noise
sigma 0.05 and 0.1 (clipped, quantised to uint8 like a camera frame), and the clean crop.

Baselines on the same crops: scikit-image's biharmonic inpainting (holes); total-variation and
non-local-means denoising (noise), their parameters picked on VALIDATION crops (training photos,
seed 777) per noise level, NLM told the true sigma. Ours: the anytime trajectory (PSNR of the
uint8 reconstruction after 0..BUDGET steps, batched exactly as the plugin steps one image), and
the real plugin through the runner with its own halting. Every PSNR is against the clean crop.
`--tune-tau` prints the validation PSNR for a few prior widths (how the default was chosen).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from sage_plugins.vision import classical, refine
from sage_plugins.vision.data import HELD_OUT_PHOTOS, TRAIN_PHOTOS, corrupt, load_photos, quantise, random_crops
from sage_plugins.vision.images import psnr
from sage_plugins.vision.model import PRIOR, PriorNet, load_prior
from sage_plugins.vision.plugin import VisionPlugin
from sage_runtime.conformance import FAR_FUTURE_NS, make_context
from sage_runtime.plugin.contract import PluginInputs
from sage_runtime.plugin.runner import StepCost, run_plugin
from sage_runtime.records import Frame

QUALITY = Path(__file__).resolve().parent / "quality.json"
HOLES, NOISE = ("drop30", "blocks20"), ("noise05", "noise10")
JUDGED = HOLES + NOISE
BUDGET = 4              # full budget: the plugin's default max_steps (picked in calibrate.py)
SIZE = 128
TEST_SEED, VALIDATION_SEED = 2024, 777
TV_WEIGHTS = (0.02, 0.04, 0.06, 0.08, 0.1, 0.13, 0.16)
NLM_H = (0.5, 0.6, 0.7, 0.8, 0.9, 1.0, 1.2)   # h = factor * sigma


def crops(names: tuple[str, ...], per_photo: int, seed: int, size: int = SIZE) -> torch.Tensor:
    """per_photo size x size windows of each named photo at its own scale (fixed seed)."""
    rng = np.random.default_rng(seed)
    return torch.cat([random_crops([p], per_photo, size, rng, min_side=size, max_side=size)
                      for p in load_photos(names)])


def _per_crop(fn: Callable[[np.ndarray, np.ndarray], np.ndarray], y: torch.Tensor, valid: torch.Tensor,
              clean: torch.Tensor) -> tuple[list[float], float]:
    """(per-crop PSNR of fn's uint8-quantised output, median ms per crop)."""
    out, ms = [], []
    for i in range(y.shape[0]):
        img, hole = y[i].permute(1, 2, 0).double().numpy(), valid[i, 0].numpy() == 0
        t0 = time.perf_counter()
        res = fn(img, hole)
        ms.append((time.perf_counter() - t0) * 1e3)
        rec = torch.from_numpy(np.asarray(res, np.float32)).permute(2, 0, 1)[None]
        out.append(float(psnr(quantise(rec), clean[i: i + 1])[0]))
    return out, statistics.median(ms)


def biharmonic(img: np.ndarray, hole: np.ndarray) -> np.ndarray:
    from skimage.restoration import inpaint_biharmonic

    return inpaint_biharmonic(img, hole, channel_axis=-1) if hole.any() else img


def tv(weight: float) -> Callable[[np.ndarray, np.ndarray], np.ndarray]:
    from skimage.restoration import denoise_tv_chambolle

    return lambda img, hole: denoise_tv_chambolle(img, weight=weight, channel_axis=-1)


def nlm(factor: float, sigma: float) -> Callable[[np.ndarray, np.ndarray], np.ndarray]:
    from skimage.restoration import denoise_nl_means

    return lambda img, hole: denoise_nl_means(img, h=factor * sigma, sigma=sigma, patch_size=5, patch_distance=6,
                                              fast_mode=True, channel_axis=-1)


def pick_denoisers(val: torch.Tensor) -> dict[str, dict[str, float]]:
    """Best TV weight and NLM h factor per noise condition, by mean PSNR on validation crops."""
    out: dict[str, dict[str, float]] = {}
    for cond in NOISE:
        y, valid = corrupt(val, cond, VALIDATION_SEED + 1)
        sigma = float(cond[-2:]) / 100
        tvs = {w: statistics.fmean(_per_crop(tv(w), y, valid, val)[0]) for w in TV_WEIGHTS}
        nlms = {f: statistics.fmean(_per_crop(nlm(f, sigma), y, valid, val)[0]) for f in NLM_H}
        out[cond] = {"tv_weight": max(tvs, key=tvs.__getitem__), "nlm_h_factor": max(nlms, key=nlms.__getitem__)}
        print(f"validation {cond}: TV {json.dumps({str(k): round(v, 2) for k, v in tvs.items()})}; "
              f"NLM {json.dumps({str(k): round(v, 2) for k, v in nlms.items()})} -> {out[cond]}", flush=True)
    return out


def anytime(net: PriorNet, clean: torch.Tensor, y: torch.Tensor, valid: torch.Tensor, cfg: refine.RefineConfig,
            steps: int = BUDGET) -> tuple[np.ndarray, float]:
    """(steps + 1) x B PSNR of the uint8 estimate after each step (row 0: the floor), and the
    median ms per step per image (batched)."""
    sigma = classical.trusted_sigma(classical.estimate_sigma(y, valid))
    t0 = time.perf_counter()
    _, xs = refine.refine(net, y, valid, sigma, cfg, steps)
    ms = (time.perf_counter() - t0) * 1e3 / max(steps, 1) / y.shape[0]
    return np.array([psnr(quantise(x), clean).numpy() for x in xs]), ms


def as_frame(x: torch.Tensor, valid: torch.Tensor, seq: int) -> Frame:
    """One image as the runtime delivers it: H x W x 3 uint8, or H x W x 4 with the validity
    mask as alpha when any pixel is invalid."""
    img = (x * 255).round().to(torch.uint8).permute(1, 2, 0)
    if bool((valid < 1).any()):
        img = torch.cat([img, (valid[0] * 255).to(torch.uint8)[..., None]], dim=-1)
    return Frame("camera", seq, 0, "tensor", img.contiguous(), {})


def through_plugin(clean: torch.Tensor, y: torch.Tensor, valid: torch.Tensor, config: dict[str, Any]) -> dict[str, Any]:
    """The real plugin and runner, one frame per run, its own halting (max_steps BUDGET)."""
    plugin = VisionPlugin()
    plugin.setup(make_context(plugin, {**config, "max_steps": BUDGET}))
    plugin.warmup()
    rows: dict[str, list[float]] = {"psnr": [], "steps": [], "ms": []}
    for i in range(clean.shape[0]):
        res = run_plugin(plugin, PluginInputs(frames={"camera": as_frame(y[i], valid[i], i)}), atp_ms=1e9,
                         deadline_ns=FAR_FUTURE_NS, cost=StepCost())
        if res.halt == "error":
            raise RuntimeError(res.error)
        rec = res.outputs["reconstruction"].permute(2, 0, 1).float()[None] / 255
        rows["psnr"].append(float(psnr(rec, clean[i: i + 1])[0]))
        rows["steps"].append(res.steps)
        rows["ms"].append(res.latency_ms)
    plugin.close()
    return {"psnr_db": round(statistics.fmean(rows["psnr"]), 3), "steps_median": statistics.median(rows["steps"]),
            "steps_min": min(rows["steps"]), "steps_max": max(rows["steps"]),
            "wall_ms_median": round(statistics.median(rows["ms"]), 1)}


def evaluate_condition(net: PriorNet, clean: torch.Tensor, cond: str, seed: int, params: dict[str, Any],
                       config: dict[str, Any], baselines: bool = True) -> dict[str, Any]:
    """Every method on the same corrupted crops of one condition."""
    y, valid = corrupt(clean, cond, seed)
    curve, step_ms = anytime(net, clean, y, valid, refine.RefineConfig(prior_sigma=config.get("prior_sigma", 0.02)))
    above = curve - curve[0]
    row: dict[str, Any] = {
        "images": int(clean.shape[0]), "valid_fraction": round(float(valid.mean()), 4),
        "input_psnr_db": round(float(psnr(y, clean).mean()), 3),
        "anytime_psnr_db": [round(float(v), 3) for v in curve.mean(1)],
        "floor_psnr_db": round(float(curve[0].mean()), 3), "full_budget_psnr_db": round(float(curve[-1].mean()), 3),
        "min_over_crops_and_steps_above_floor_db": round(float(above.min()), 3),
        "crops_below_floor_at_any_step": int((above < 0).any(0).sum()),
        "step_ms_per_image_batched": round(step_ms, 2),
        "plugin": through_plugin(clean, y, valid, config),
    }
    if baselines:
        if cond in HOLES:
            methods = {"biharmonic": biharmonic}
        else:
            w, f = params[cond]["tv_weight"], params[cond]["nlm_h_factor"]
            methods = {f"tv(w={w})": tv(w), f"nlm(h={f}*sigma)": nlm(f, float(cond[-2:]) / 100)}
        row["baselines"] = {}
        for name, fn in methods.items():
            vals, ms = _per_crop(fn, y, valid, clean)
            row["baselines"][name] = {"psnr_db": round(statistics.fmean(vals), 3), "ms_median": round(ms, 1)}
        best = max(row["baselines"], key=lambda k: row["baselines"][k]["psnr_db"])
        row["best_baseline"] = best
        row["margin_over_best_db"] = round(row["full_budget_psnr_db"] - row["baselines"][best]["psnr_db"], 3)
        row["bar_met"] = row["margin_over_best_db"] >= 1.0
    return row


def table(report: dict[str, Any]) -> str:
    lines = ["| condition | input | floor (step 0) | baselines | ours, full budget | plugin (own halting) | "
             "margin vs best | bar +1 dB | worst crop-step vs floor |", "|" + "---|" * 9]
    for cond in JUDGED + ("clean",):
        r = report[cond]
        base = ", ".join(f"{k} {v['psnr_db']:.2f}" for k, v in r.get("baselines", {}).items()) or "-"
        p = r["plugin"]
        lines.append(f"| {cond} | {r['input_psnr_db']:.2f} | {r['floor_psnr_db']:.2f} | {base} | "
                     f"{r['full_budget_psnr_db']:.2f} | {p['psnr_db']:.2f} ({p['steps_median']} steps) | "
                     f"{r.get('margin_over_best_db', float('nan')):+.2f} | {r.get('bar_met', '-')} | "
                     f"{r['min_over_crops_and_steps_above_floor_db']:+.3f} |")
    return "\n".join(lines)


def tune_tau(net: PriorNet, taus: list[float], per_photo: int) -> None:
    """Validation PSNR at full budget for each prior width (training photos only)."""
    val = crops(TRAIN_PHOTOS, per_photo, VALIDATION_SEED)
    for cond in JUDGED:
        y, valid = corrupt(val, cond, VALIDATION_SEED + 1)
        res = {t: round(float(anytime(net, val, y, valid, refine.RefineConfig(prior_sigma=t))[0][-1].mean()), 3)
               for t in taus}
        print(f"validation {cond}: {json.dumps({str(k): v for k, v in res.items()})}", flush=True)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--prior", type=Path, default=PRIOR)
    ap.add_argument("--per-photo", type=int, default=16, help="crops per held-out photo")
    ap.add_argument("--val-per-photo", type=int, default=1, help="validation crops per training photo")
    ap.add_argument("--out", type=Path, default=QUALITY)
    ap.add_argument("--tune-tau", type=float, nargs="*")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    net = load_prior(args.prior)
    if args.tune_tau is not None:
        tune_tau(net, args.tune_tau or [0.01, 0.02, 0.03, 0.05], args.val_per_photo)
        return {}
    t0 = time.time()
    params = pick_denoisers(crops(TRAIN_PHOTOS, args.val_per_photo, VALIDATION_SEED))
    clean = crops(HELD_OUT_PHOTOS, args.per_photo, TEST_SEED)
    report: dict[str, Any] = {
        "held_out_photos": list(HELD_OUT_PHOTOS), "crops_per_photo": args.per_photo, "crop_size": SIZE,
        "seed": TEST_SEED, "budget_steps": BUDGET, "torch_threads": torch.get_num_threads(),
        "validation_picked": params,
        "reference": "PSNR (dB) against the clean crop; every output quantised to uint8 as published",
    }
    config = {"prior": str(args.prior)}
    for i, cond in enumerate(JUDGED + ("clean",)):
        report[cond] = evaluate_condition(net, clean, cond, TEST_SEED + 1 + i, params, config, cond != "clean")
        print(f"{cond}: {json.dumps(report[cond])}", flush=True)
    report["eval_wall_s"] = round(time.time() - t0, 1)
    print(table(report), flush=True)
    args.out.write_text(json.dumps(report, indent=2))
    print(f"wrote {args.out}", flush=True)
    return report


if __name__ == "__main__":
    main()
