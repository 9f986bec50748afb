"""Quality of the shipped vision plugin against ground truth: `python -m sage_plugins.vision.evaluate`.

Held-out photos (never trained on) are cut into crops at the working size with fixed seeds and
corrupted two ways: 30% of pixels dropped (the mask given to the plugin in an alpha channel), and
Gaussian noise sigma = 0.1 (clipped, quantised to uint8 like a camera frame). Each corrupted
frame goes through the real plugin and runner three times: with no step (step 0: encoder only),
until its own halting rule (early stop, at most 50 steps), and for exactly 50 steps. Every PSNR is
against the CLEAN crop. The uncorrupted crops are run the same way as a reference (the part of
any gain that is the encoder's amortisation gap, not repair). Writes quality.json next to this file.

`--tune` instead sweeps the prior weight lam on VALIDATION crops (training photos, a seed not used
for anything else; held-out photos are never used to pick settings). `--diagnose` measures PSNR
against the clean crop along the refinement trajectory (does it peak and then fall as z fits the
noise?) and an oracle bound, on the validation crops and on the held-out crops; it picks nothing.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from sage_plugins.vision import refine
from sage_plugins.vision.data import HELD_OUT_PHOTOS, TRAIN_PHOTOS, add_noise, drop_pixels, load_photos, random_crops
from sage_plugins.vision.images import fill_invalid, psnr
from sage_plugins.vision.model import WEIGHTS, load_pretrained
from sage_plugins.vision.plugin import VisionPlugin
from sage_runtime.conformance import FAR_FUTURE_NS, make_context
from sage_runtime.plugin.contract import PluginInputs
from sage_runtime.plugin.runner import StepCost, run_plugin
from sage_runtime.records import Frame, RunResult

QUALITY = Path(__file__).resolve().parent / "quality.json"
CONDITIONS = ("drop30", "noise10")
FIXED_STEPS = 50
VALIDATION_SEED = 777  # validation crops of training photos (never the held-out photos)
TRAJECTORY_MARKS = (0, 1, 2, 5, 10, 20, 30, 40, 50)


class FixedStepsVision(VisionPlugin):
    """The same plugin with halting switched off: it runs until max_steps."""

    def halt(self, state: Any, history: Sequence[float]) -> str | None:
        return None


def crops(names: tuple[str, ...], per_photo: int, seed: int, size: int = 64) -> torch.Tensor:
    """per_photo crops of each named photo (random scale, position, mirroring; fixed seed)."""
    rng = np.random.default_rng(seed)
    return torch.cat([random_crops([p], per_photo, size, rng, min_side=size) for p in load_photos(names)])


def corrupt(clean: torch.Tensor, condition: str, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(B x 3 x S x S observed image in [0, 1] quantised to uint8 levels, B x 1 x S x S validity)."""
    g = torch.Generator().manual_seed(seed)
    if condition == "drop30":
        valid = drop_pixels(clean, 0.3, g)
        x = clean * valid
    elif condition == "clean":  # reference: how much refinement adds with nothing to repair
        valid = torch.ones_like(clean[:, :1])
        x = clean
    elif condition == "noise10":
        valid = torch.ones_like(clean[:, :1])
        x = add_noise(clean, 0.1, g)
    else:
        raise ValueError(condition)
    return (x * 255).round() / 255, valid


def as_frame(x: torch.Tensor, valid: torch.Tensor, seq: int) -> Frame:
    """One image as the runtime would deliver it: H x W x 3 uint8, or H x W x 4 with the
    validity mask as alpha when any pixel is invalid."""
    img = (x * 255).round().to(torch.uint8).permute(1, 2, 0)
    if bool((valid < 1).any()):
        img = torch.cat([img, (valid[0] * 255).to(torch.uint8)[..., None]], dim=-1)
    return Frame("camera", seq, 0, "tensor", img.contiguous(), {})


def _run(plugin: VisionPlugin, frame: Frame, atp_ms: float) -> RunResult:
    res = run_plugin(plugin, PluginInputs(frames={"camera": frame}), atp_ms=atp_ms, deadline_ns=FAR_FUTURE_NS,
                     cost=StepCost())
    if res.halt == "error":
        raise RuntimeError(res.error)
    return res


def _recon_psnr(res: RunResult, clean: torch.Tensor) -> float:
    rec = res.outputs["reconstruction"].permute(2, 0, 1).float()[None] / 255
    return float(psnr(rec, clean[None])[0])


def evaluate_condition(clean: torch.Tensor, condition: str, seed: int, config: dict[str, Any] | None = None,
                       fixed: bool = True) -> dict[str, Any]:
    """PSNR vs clean at step 0, after early stop and (optionally) after 50 fixed steps, with wall
    times and steps to halt, through the real plugin and runner, one image per run."""
    x, valid = corrupt(clean, condition, seed)
    plugins = {"early": VisionPlugin()}
    if fixed:
        plugins["fixed50"] = FixedStepsVision()
    for p in plugins.values():
        p.setup(make_context(p, {**(config or {}), "max_steps": FIXED_STEPS}))
        p.warmup()
    rows: dict[str, list[Any]] = {"step0": [], "early": [], "fixed50": [], "early_ms": [], "fixed50_ms": [],
                                  "step0_ms": [], "early_steps": [], "input": []}
    for i in range(clean.shape[0]):
        frame = as_frame(x[i], valid[i], i)
        r0 = _run(plugins["early"], frame, 0.0)
        rows["step0"].append(_recon_psnr(r0, clean[i]))
        rows["step0_ms"].append(r0.latency_ms)
        for name, p in plugins.items():
            res = _run(p, frame, 1e9)
            rows[name].append(_recon_psnr(res, clean[i]))
            rows[f"{name}_ms"].append(res.latency_ms)
            if name == "early":
                rows["early_steps"].append(res.steps)
        rows["input"].append(float(psnr(x[i:i + 1] * valid[i:i + 1] + (1 - valid[i:i + 1]) * 0.5, clean[i:i + 1])[0]))
    for p in plugins.values():
        p.close()
    mean = lambda k: round(statistics.fmean(rows[k]), 3)  # noqa: E731
    med = lambda k: round(statistics.median(rows[k]), 3)  # noqa: E731
    out: dict[str, Any] = {
        "images": clean.shape[0],
        "input_psnr_db": mean("input"),
        "step0_psnr_db": mean("step0"),
        "early_stop": {"psnr_db": mean("early"), "gain_db": round(mean("early") - mean("step0"), 3),
                       "wall_ms_median": med("early_ms"), "wall_ms_mean": mean("early_ms"),
                       "steps_median": med("early_steps"), "steps_min": min(rows["early_steps"]),
                       "steps_max": max(rows["early_steps"]), "steps": rows["early_steps"]},
        "step0_wall_ms_median": med("step0_ms"),
        "per_image_gain_db": [round(a - b, 3) for a, b in zip(rows["early"], rows["step0"])],
    }
    if fixed:
        out["fixed_50"] = {"psnr_db": mean("fixed50"), "gain_db": round(mean("fixed50") - mean("step0"), 3),
                           "wall_ms_median": med("fixed50_ms"), "wall_ms_mean": mean("fixed50_ms")}
    return out


def trajectory(model: torch.nn.Module, clean: torch.Tensor, condition: str, seed: int,
               cfg: refine.RefineConfig, steps: int = FIXED_STEPS, oracle: bool = False) -> list[float]:
    """Mean PSNR against the clean crop after 0..steps refinement steps (batched, float).

    oracle=True starts from the same step-0 code (the encoder's code of the CORRUPTED image) but
    puts the CLEAN image, all pixels, in the data term: the same descent aimed at the ground truth
    itself. An energy that sees only the corrupted image is not expected to beat it, so it is the
    practical ceiling of what `steps` steps of this descent through this decoder can add (not a
    proof: another optimiser or more steps could go further)."""
    x, valid = corrupt(clean, condition, seed)
    if not oracle:
        r = refine.start(model, x, valid, cfg)
    else:
        ones = torch.ones_like(valid)
        with torch.no_grad():
            z0 = model.encode(fill_invalid(x, valid) if cfg.fill == "mean" else x * valid)
        with torch.enable_grad():
            z = z0.clone().requires_grad_(True)
            e, rec = refine.energy_of(model, z, clean, ones, cfg.lam)
            (g,) = torch.autograd.grad(e.sum(), z)
        r = replace(refine.start(model, clean, ones, cfg), z=z0, energy=e.detach(), grad=g, recon=rec.detach())
    out = [float(psnr(r.recon, clean).mean())]
    for _ in range(steps):
        r = refine.step(model, r, cfg)
        out.append(float(psnr(r.recon, clean).mean()))
    return out


def diagnose(per_photo_val: int, per_photo_test: int, weights: Path = WEIGHTS) -> dict[str, Any]:
    """PSNR vs clean along the trajectory (own energy, default config) and the oracle bound, for
    both conditions and the clean reference, on validation and held-out crops (batched float
    reconstructions, so a few hundredths of a dB off the uint8 figures). Picks nothing."""
    model = load_pretrained(weights)
    cfg = refine.RefineConfig()
    out: dict[str, Any] = {"marks": list(TRAJECTORY_MARKS)}
    for split, clean in (("validation", crops(TRAIN_PHOTOS, per_photo_val, seed=VALIDATION_SEED)),
                         ("held_out", crops(HELD_OUT_PHOTOS, per_photo_test, seed=2024))):
        rows: dict[str, Any] = {"images": int(clean.shape[0])}
        for condition in CONDITIONS + ("clean",):
            x, valid = corrupt(clean, condition, VALIDATION_SEED + 1)
            traj = trajectory(model, clean, condition, VALIDATION_SEED + 1, cfg)
            row = {"input_psnr_db": round(float(psnr(x * valid + (1 - valid) * 0.5, clean).mean()), 2),
                   "psnr_db_at_step": [round(traj[i], 2) for i in TRAJECTORY_MARKS],
                   "peak_step": max(range(len(traj)), key=traj.__getitem__)}
            if condition != "clean":
                orc = trajectory(model, clean, condition, VALIDATION_SEED + 1, cfg, oracle=True)
                row["oracle_psnr_db_at_step"] = [round(orc[i], 2) for i in TRAJECTORY_MARKS]
            rows[condition] = row
            print(f"{split} {condition}: {json.dumps(row)}", flush=True)
        out[split] = rows
    return out


def tune(lams: list[float], per_photo: int, steps: int, weights: Path = WEIGHTS) -> None:
    """Mean PSNR gain after `steps` refinement steps per lam, on TRAINING-photo crops (batched)."""
    model = load_pretrained(weights)
    clean = crops(TRAIN_PHOTOS, per_photo, seed=VALIDATION_SEED)
    for condition in CONDITIONS:
        x, valid = corrupt(clean, condition, seed=VALIDATION_SEED + 1)
        for lam in lams:
            r, _ = refine.refine(model, x, valid, refine.RefineConfig(lam=lam), steps)
            r0 = refine.start(model, x, valid, refine.RefineConfig(lam=lam))
            p0, p1 = psnr(r0.recon, clean).mean(), psnr(r.recon, clean).mean()
            print(f"{condition} lam {lam:g}: step0 {float(p0):.2f} dB -> {steps} steps {float(p1):.2f} dB "
                  f"(gain {float(p1 - p0):+.2f})", flush=True)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--weights", type=Path, default=WEIGHTS)
    ap.add_argument("--per-photo", type=int, default=16, help="crops per held-out photo")
    ap.add_argument("--seed", type=int, default=2024)
    ap.add_argument("--out", type=Path, default=QUALITY)
    ap.add_argument("--tune", type=float, nargs="*", help="sweep these lam values on training photos instead")
    ap.add_argument("--tune-steps", type=int, default=30)
    ap.add_argument("--diagnose", action="store_true", help="trajectory + oracle bound (validation and held-out)")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    if args.tune is not None:
        tune(args.tune or [0.0, 1e-4, 3e-4, 1e-3, 3e-3, 1e-2], args.per_photo, args.tune_steps, args.weights)
        return {}
    if args.diagnose:
        return diagnose(2, args.per_photo, args.weights)
    clean = crops(HELD_OUT_PHOTOS, args.per_photo, args.seed)
    t0 = time.time()
    config = {"weights": str(args.weights)}
    report: dict[str, Any] = {
        "held_out_photos": list(HELD_OUT_PHOTOS), "crops_per_photo": args.per_photo, "seed": args.seed,
        "working_size": int(clean.shape[-1]), "torch_threads": torch.get_num_threads(),
        "reference": "PSNR against the clean crop (ground truth), reconstruction published as uint8",
    }
    for i, condition in enumerate(CONDITIONS + ("clean",)):
        report[condition] = evaluate_condition(clean, condition, args.seed + 1 + i, config)
        print(f"{condition}: {json.dumps({k: v for k, v in report[condition].items() if k != 'per_image_gain_db'})}",
              flush=True)
    report["diagnosis"] = diagnose(2, args.per_photo, args.weights)
    report["eval_wall_s"] = round(time.time() - t0, 1)
    args.out.write_text(json.dumps(report, indent=2))
    print(f"wrote {args.out}", flush=True)
    return report


if __name__ == "__main__":
    main()
