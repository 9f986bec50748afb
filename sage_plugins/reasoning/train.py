"""Train HRM-ACT-v1 on generated Sudoku: `python -m sage_plugins.reasoning.train [options]`.

The ACT loop is upstream's: a batch of slots, one optimiser step per segment, halted slots take a
fresh training puzzle, the others keep refining theirs. Periodic held-out evaluation (exact
accuracy, learned halting, collapse guards) selects the checkpoint that is kept; the final JSON
holds the measured quality of that checkpoint on the held-out split.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from sage_plugins.reasoning import sudoku
from sage_plugins.reasoning.checkpoint import load_checkpoint, save_checkpoint
from sage_plugins.reasoning.data import SudokuSplit, build_splits
from sage_plugins.reasoning.evaluate import choose_tau, evaluate, summarize, trace_segments
from sage_plugins.reasoning.losses import act_loss, labels_from_tokens
from sage_plugins.reasoning.model import HRMACT, HRMConfig, count_parameters
from sage_plugins.reasoning.optim import AdamAtan2, lr_at
from sage_plugins.reasoning.progress import Progress
from sage_plugins.reasoning.sparse_embedding import SignSGD

WEIGHTS_DIR = Path(__file__).parent / "weights"


@dataclass
class TrainConfig:
    size: int = 4
    blanks: tuple[int, int] = (4, 11)
    train_size: int = 50_000
    augmentations: int = 0  # shuffled copies per generated training puzzle (9x9: generation is slow)
    test_size: int = 1_000
    hidden_size: int = 64
    num_heads: int = 2
    expansion: float = 4.0
    mlp_multiple: int = 64
    H_layers: int = 1
    L_layers: int = 1
    H_cycles: int = 2
    L_cycles: int = 2
    halt_max_steps: int = 8
    halt_exploration_prob: float = 0.1
    halt_mode: str = "bce_halt"
    loss: str = "softmax"
    optimizer: str = "adamw"
    lr: float = 1e-3
    lr_min_ratio: float = 1.0
    weight_decay: float = 0.1
    puzzle_emb_lr: float = 1e-2
    warmup: int = 100
    batch_size: int = 128
    steps: int = 1000
    minutes: float = 0.0  # wall-clock cap (0: none)
    stop_after: int = 0  # stop at this step while keeping the LR schedule of `steps` (0: run all)
    eval_every: int = 500
    eval_size: int = 1000
    seed: int = 0
    threads: int = 1
    shuffle_labels: bool = False  # negative control: pair inputs with other rows' labels
    out: str = str(WEIGHTS_DIR / "hrm_sudoku4.pt")
    data_cache: str = "/tmp/sage-reasoning-data"
    max_mean_segments: float = 3.0  # compute budget for choosing the halting threshold on validation
    quiet: bool = False
    init_from: str = ""  # start from this checkpoint's weights (same architecture, loaded strictly)
    finalize_only: bool = False  # re-run `finalize` on an existing --out checkpoint (its own train config)
    extra: dict[str, Any] = field(default_factory=dict)

    def model_config(self) -> HRMConfig:
        return HRMConfig(vocab_size=sudoku.vocab_size(self.size), seq_len=self.size * self.size,
                         hidden_size=self.hidden_size, num_heads=self.num_heads, expansion=self.expansion,
                         mlp_multiple=self.mlp_multiple, H_layers=self.H_layers, L_layers=self.L_layers,
                         H_cycles=self.H_cycles, L_cycles=self.L_cycles, halt_max_steps=self.halt_max_steps,
                         halt_exploration_prob=self.halt_exploration_prob, halt_mode=self.halt_mode,
                         puzzle_emb_ndim=self.hidden_size, num_puzzle_identifiers=1)


def make_optimizers(model: HRMACT, tc: TrainConfig) -> list[torch.optim.Optimizer]:
    dense = [p for p in model.parameters() if p.requires_grad]
    if tc.optimizer == "adam_atan2":
        opts: list[torch.optim.Optimizer] = [AdamAtan2(dense, lr=tc.lr, betas=(0.9, 0.95),
                                                        weight_decay=tc.weight_decay)]
    elif tc.optimizer == "adamw":
        opts = [torch.optim.AdamW(dense, lr=tc.lr, betas=(0.9, 0.95), weight_decay=tc.weight_decay)]
    else:
        raise ValueError(f"optimizer {tc.optimizer!r}")
    if hasattr(model.inner, "puzzle_emb"):
        opts.append(SignSGD(model.inner.puzzle_emb, lr=tc.puzzle_emb_lr, weight_decay=tc.weight_decay))
    return opts


def train_loop(model: HRMACT, train: SudokuSplit, tc: TrainConfig, val: SudokuSplit | None = None,
               on_eval: Any = None) -> list[dict]:
    """Run the ACT training loop for tc.steps optimiser steps (or tc.minutes), evaluating on `val`."""
    rng = np.random.default_rng([tc.seed, 3])
    opts = make_optimizers(model, tc)
    base_lrs = [o.param_groups[0]["lr"] for o in opts]
    labels_all = train.labels
    if tc.shuffle_labels:
        labels_all = labels_all[rng.permutation(len(labels_all))]
    data = SudokuSplit(train.n, train.inputs, labels_all, train.blanks)
    carry = None
    history: list[dict] = []
    bar = None if tc.quiet else Progress(tc.steps, desc=f"hrm {train.n}x{train.n}")
    t0 = time.monotonic()
    order = rng.permutation(len(data))
    cursor = 0
    ema: dict[str, float] = {}
    for step in range(tc.steps):
        model.train()
        if cursor + tc.batch_size > len(order):
            order, cursor = rng.permutation(len(data)), 0
        batch = data.batch(order[cursor:cursor + tc.batch_size])
        cursor += tc.batch_size
        if carry is None:
            carry = model.initial_carry(batch)
        for o, base in zip(opts, base_lrs):
            for g in o.param_groups:
                g["lr"] = lr_at(step, base, tc.warmup, tc.steps, tc.lr_min_ratio)
        carry, out = model(carry, batch)
        labels = labels_from_tokens(carry.current_data["labels"])
        loss, metrics = act_loss(out, labels, carry.halted, tc.loss)
        (loss / tc.batch_size).backward()
        for o in opts:
            o.step()
            o.zero_grad(set_to_none=True)
        for k in ("lm_loss", "exact_accuracy", "q_halt_accuracy"):
            ema[k] = metrics[k] if k not in ema else 0.98 * ema[k] + 0.02 * metrics[k]
        if bar:
            bar.update(1, loss=ema["lm_loss"] / tc.batch_size, train_exact=ema["exact_accuracy"],
                       q_acc=ema["q_halt_accuracy"])
        done = (step + 1 == tc.steps or step + 1 == tc.stop_after
                or (tc.minutes > 0 and time.monotonic() - t0 > tc.minutes * 60))
        if val is not None and ((step + 1) % tc.eval_every == 0 or done):
            res = evaluate(model, val)
            res.update(step=step + 1, minutes=(time.monotonic() - t0) / 60)
            history.append(res)
            if bar:
                bar.write(f"eval step {step + 1}: exact all={res['exact_all_segments']:.3f} "
                          f"halt={res['exact_learned_halt']:.3f} @ {res['mean_segments_learned_halt']:.2f} seg, "
                          f"by segment {[round(v, 3) for v in res['exact_by_segment']]}, distinct preds "
                          f"{res['diversity']['distinct_predictions']}/{res['count']}")
            if on_eval:
                on_eval(res)
        if done:
            break
    if bar:
        bar.close()
    return history


def cached_splits(tc: TrainConfig) -> tuple[SudokuSplit, SudokuSplit]:
    """build_splits, cached under tc.data_cache (generation is deterministic in its arguments)."""
    args = (tc.size, tc.train_size + tc.eval_size, tc.test_size, tc.blanks)
    path = Path(tc.data_cache) / ("sudoku_{}_{}_{}_{}-{}_seed{}_aug{}.npz".format(*args[:3], *tc.blanks, tc.seed,
                                                                                  tc.augmentations))
    if path.exists():
        z = np.load(path)
        return (SudokuSplit(tc.size, z["train_inputs"], z["train_labels"], z["train_blanks"]),
                SudokuSplit(tc.size, z["test_inputs"], z["test_labels"], z["test_blanks"]))
    train, test = build_splits(*args, seed=tc.seed, augmentations=tc.augmentations)
    if tc.data_cache:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp.npz")
        np.savez(tmp, train_inputs=train.inputs, train_labels=train.labels, train_blanks=train.blanks,
                 test_inputs=test.inputs, test_labels=test.labels, test_blanks=test.blanks)
        tmp.replace(path)
    return train, test


def score(res: dict) -> float:
    """Checkpoint selection: exact accuracy after all segments plus after 3 segments (what a
    halting budget of about 3 segments can reach; the threshold itself is chosen afterwards)."""
    return res["exact_all_segments"] + res["exact_by_segment"][min(2, len(res["exact_by_segment"]) - 1)]


def run(tc: TrainConfig) -> dict:
    torch.set_num_threads(tc.threads)
    torch.manual_seed(tc.seed)
    t0 = time.monotonic()
    # Checkpoint selection uses a validation split carved from the (de-duplicated) training
    # puzzles; the test split stays untouched for the final measurement.
    train, test = cached_splits(tc)
    val = train.subset(np.arange(tc.train_size, len(train)))
    train = train.subset(np.arange(tc.train_size))
    gen_s = time.monotonic() - t0
    model = HRMACT(tc.model_config())
    if tc.init_from:
        # Same architecture required; the exploration rate is a training setting and may change.
        start, _ = load_checkpoint(Path(tc.init_from))
        if replace(start.cfg, halt_exploration_prob=tc.halt_exploration_prob) != tc.model_config():
            raise ValueError(f"{tc.init_from}: architecture differs from {tc.model_config()}")
        model.load_state_dict(start.state_dict(), strict=True)
    out = Path(tc.out)
    best: dict[str, Any] = {}

    def on_eval(res: dict) -> None:
        meta = {"train": asdict(tc), "validation": res, "params": count_parameters(model),
                "data_generation_s": gen_s, "wall_s": time.monotonic() - t0}
        save_checkpoint(model, out.with_suffix(".last.pt"), meta)
        if not best or score(res) >= score(best["validation"]):
            best.clear()
            best.update(meta)
            save_checkpoint(model, out, meta)
            out.with_suffix(".json").write_text(json.dumps(meta, indent=1))

    if not tc.quiet:
        print(f"data: {len(train)} train / {len(val)} validation / {len(test)} test puzzles in {gen_s:.1f}s; model "
              f"{count_parameters(model):,} parameters; {tc.model_config()}", file=sys.stderr, flush=True)
    train_loop(model, train, tc, val, on_eval)
    if best:
        finalize(out, val, test, tc.max_mean_segments)
        best = json.loads(out.with_suffix(".json").read_text())
    return best


def finalize(out: Path, val: SudokuSplit, test: SudokuSplit, max_mean_segments: float = 3.0) -> dict:
    """Pick the halting threshold on validation (best exact accuracy within max_mean_segments),
    then measure the selected checkpoint on the held-out test split at tau 0.5 and at that tau.
    Both go into the checkpoint's metadata and the JSON next to it."""
    t0 = time.monotonic()
    chosen, meta = load_checkpoint(out)
    tau = 0.5
    if chosen.cfg.halt_mode == "bce_halt":
        tau = choose_tau(trace_segments(chosen, val), max_mean_segments)
    trace = trace_segments(chosen, test)
    meta["halt_tau"] = tau
    meta["test"] = summarize(trace, test, chosen.cfg.halt_mode, 0.5)
    meta["test_at_halt_tau"] = summarize(trace, test, chosen.cfg.halt_mode, tau)
    meta["finalize_s"] = time.monotonic() - t0
    save_checkpoint(chosen, out, meta)
    out.with_suffix(".json").write_text(json.dumps(meta, indent=1))
    return meta


def parse_args(argv: list[str] | None = None) -> TrainConfig:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    defaults = TrainConfig()
    for name, value in asdict(defaults).items():
        if name in ("extra",):
            continue
        flag = "--" + name.replace("_", "-")
        if isinstance(value, bool):
            p.add_argument(flag, action="store_true", default=value)
        elif isinstance(value, tuple):
            p.add_argument(flag, type=int, nargs=2, default=value)
        else:
            p.add_argument(flag, type=type(value), default=value)
    args = vars(p.parse_args(argv))
    args["blanks"] = tuple(args["blanks"])
    return TrainConfig(**args)


def finalize_existing(out: Path) -> dict:
    """`finalize` for a checkpoint this script wrote, rebuilding its splits from its stored config."""
    _, meta = load_checkpoint(out)
    known = set(asdict(TrainConfig()))
    saved = {k: v for k, v in meta["train"].items() if k in known}
    saved["blanks"] = tuple(saved["blanks"])
    tc = TrainConfig(**saved)
    train, test = cached_splits(tc)
    val = train.subset(np.arange(tc.train_size, len(train)))
    return finalize(out, val, test, tc.max_mean_segments)


def main(argv: list[str] | None = None) -> None:
    tc = parse_args(argv)
    best = finalize_existing(Path(tc.out)) if tc.finalize_only else run(tc)
    keys = ("exact_all_segments", "exact_learned_halt", "mean_segments_learned_halt", "halt_tau")
    print(json.dumps({k: best["test_at_halt_tau"][k] for k in keys} if best else {}))


if __name__ == "__main__":
    main()
