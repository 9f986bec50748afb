"""Training works end to end and cannot pass by collapse: a CI-sized run of the real entry point,
overfitting 32 puzzles (catches dead gradients or a misplaced no-grad), and a shuffled-label
control whose exact accuracy falls to baseline while the same budget on true labels learns."""

from __future__ import annotations

import json

import torch

from sage_plugins.reasoning import train as train_mod
from sage_plugins.reasoning.checkpoint import load_checkpoint
from sage_plugins.reasoning.data import build_splits
from sage_plugins.reasoning.model import HRMACT
from sage_plugins.reasoning.train import TrainConfig, train_loop


def test_ci_smoke_run_of_the_training_entry_point(tmp_path, capsys) -> None:
    out = tmp_path / "smoke.pt"
    train_mod.main(["--steps", "40", "--eval-every", "20", "--train-size", "400", "--test-size", "100",
                    "--eval-size", "100", "--hidden-size", "32", "--mlp-multiple", "32", "--halt-max-steps", "4",
                    "--out", str(out), "--data-cache", ""])
    captured = capsys.readouterr()
    assert "hrm 4x4 [" in captured.err and "eval step 40" in captured.err  # progress bar + periodic eval
    meta = json.loads(out.with_suffix(".json").read_text())
    assert {"train", "validation", "test", "params", "wall_s"} <= set(meta)
    test = meta["test"]
    assert test["count"] == 100 and len(test["exact_by_segment"]) == 4
    assert test["diversity"]["distinct_predictions"] > 1  # the diversity check runs in every eval
    model, extra = load_checkpoint(out)
    assert model.cfg.hidden_size == 32 and extra["train"]["steps"] == 40
    assert out.with_suffix(".last.pt").exists()


def test_overfits_32_puzzles() -> None:
    torch.manual_seed(0)
    torch.set_num_threads(1)
    train, _ = build_splits(4, 32, 8, (4, 8), seed=5)
    tc = TrainConfig(hidden_size=64, num_heads=2, mlp_multiple=64, halt_max_steps=1, batch_size=32, steps=200,
                     lr=3e-3, lr_min_ratio=0.0, warmup=20, eval_every=50, weight_decay=0.0, quiet=True)
    history = train_loop(HRMACT(tc.model_config()), train, tc, train)
    assert max(r["exact_all_segments"] for r in history) == 1.0, [r["exact_all_segments"] for r in history]


def test_shuffled_label_control_falls_to_baseline() -> None:
    torch.set_num_threads(1)
    train, test = build_splits(4, 3000, 200, (2, 4), seed=21)
    results = {}
    for shuffled in (False, True):
        torch.manual_seed(0)
        tc = TrainConfig(hidden_size=64, num_heads=2, mlp_multiple=64, halt_max_steps=1, batch_size=64, steps=120,
                         lr=3e-3, lr_min_ratio=0.0, warmup=20, eval_every=1000, weight_decay=0.0, quiet=True,
                         shuffle_labels=shuffled)
        results[shuffled] = train_loop(HRMACT(tc.model_config()), train, tc, test)[-1]
    baseline = max(results[True]["baselines"].values())
    assert results[True]["exact_all_segments"] <= baseline + 0.01
    assert results[False]["exact_all_segments"] >= baseline + 0.1
    assert results[True]["diversity"]["distinct_predictions"] > 1
