"""Train the denoiser: `python -m sage_plugins.language.train` (CPU, one thread, about 67 min here).

Data is generated on the fly from the grammar's training split (held-out command texts are never
drawn), corrupted by the ASR noise model at a CER drawn per text from [0.05, 0.25] (clean 10% of
the time). The slot canvas is trained as a CMLM: a random number of slots (all of them half of the
time, as in the first refinement pass) is masked and predicted. Checkpoints go to build/language/ as training
goes; the final weights and their measured quality (evaluate.py) go into the package.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from sage_plugins.language.grammar import Command, Grammar
from sage_plugins.language.canvas import encode_bytes, slot_targets
from sage_plugins.language.model import BLANK, MASK, PAD, Denoiser, DenoiserConfig, load_checkpoint, save_checkpoint
from sage_plugins.language.noise import corrupt, corrupt_words
from sage_plugins.language.utterance import clean_words

PACKAGE = Path(__file__).parent
WEIGHTS = PACKAGE / "weights.pt"
TRAIN_SEED = 1
#: Extra loss weight on slots that are not a plain copy of the input (the corrections): without it
#: a first run spent 600 steps copying the input and fixed few errors.
EDIT_WEIGHT = 4.0
VALIDATION_SEED = 7   # held-out split, for progress and checkpoint choice only; evaluate.py uses its own


def model_config(grammar: Grammar, **overrides) -> DenoiserConfig:
    return DenoiserConfig(n_actions=len(grammar.action_names), n_objects=len(grammar.objects),
                          n_attributes=len(grammar.attributes), n_places=len(grammar.places), **overrides)


def intent_targets(grammar: Grammar, commands: list[Command]) -> dict[str, torch.Tensor]:
    """Class indices (the last index means 'none') and an attribute multi-hot per command."""
    def index(options: list[str], value: str | None) -> int:
        return len(options) if value is None else options.index(value)

    attrs = torch.zeros(len(commands), len(grammar.attributes))
    for i, c in enumerate(commands):
        for a in c.intent["attributes"]:
            attrs[i, grammar.attributes.index(a)] = 1.0
    return {
        "action": torch.tensor([index(grammar.action_names, c.intent["action"]) for c in commands]),
        "object": torch.tensor([index(grammar.objects, c.intent["object"]) for c in commands]),
        "place": torch.tensor([index(grammar.places, c.intent["place"]) for c in commands]),
        "attributes": attrs,
    }


def noisy_text(text: str, rng: random.Random, word_share: float = 0.0) -> str:
    """A training input: character noise at a CER drawn from [0.05, 0.25] (clean 10% of the time);
    with probability `word_share` word-level recognizer errors (rate 0.1-0.25 per word) first, with
    fillers and stutters removed as the plugin removes them before the model reads."""
    if word_share and rng.random() < word_share:
        words = corrupt_words(text, rng.uniform(0.1, 0.25), rng)
        text_in = clean_words(words) or words
        return corrupt(text_in, rng.uniform(0.0, 0.1), rng, max_tries=1)
    return corrupt(text, rng.uniform(0.05, 0.25) if rng.random() > 0.1 else 0.0, rng, max_tries=1)


def make_batch(grammar: Grammar, rng: random.Random, size: int, cfg: DenoiserConfig, word_share: float = 0.0
               ) -> dict[str, torch.Tensor]:
    """Noisy sources, their slot targets, and CMLM masks (all slots for half the texts: the first
    refinement pass; a uniform number for the rest: the re-masking steps)."""
    commands, src_rows, tgt_rows = [], [], []
    while len(commands) < size:
        cmd = grammar.sample_split(rng, heldout=False)
        noisy = noisy_text(cmd.text, rng, word_share)
        src = encode_bytes(noisy, cfg.max_len)
        target = slot_targets(cmd.text.encode(), bytes(src), cfg.slots)
        if target is None:  # more dropped bytes in a row than the slots hold: rare, redraw
            continue
        commands.append(cmd)
        src_rows.append(src)
        tgt_rows.append(target)
    width = max(len(r) for r in src_rows)
    src = torch.full((size, width), PAD, dtype=torch.long)
    target = torch.full((size, width * cfg.slots), PAD, dtype=torch.long)
    masked = torch.zeros((size, width * cfg.slots), dtype=torch.bool)
    for i, (s, t) in enumerate(zip(src_rows, tgt_rows)):
        src[i, :len(s)] = torch.tensor(s, dtype=torch.long)
        target[i, :len(t)] = torch.tensor(t, dtype=torch.long)
        k = len(t) if rng.random() < 0.5 else rng.randint(1, len(t))
        masked[i, rng.sample(range(len(t)), k)] = True
    canvas = torch.where(masked, MASK, target)
    blanks = torch.full((size, width, cfg.slots - 1), BLANK, dtype=torch.long)
    copy = torch.cat([src[:, :, None], blanks], dim=2).flatten(1)  # the canvas that changes nothing
    weight = 1.0 + EDIT_WEIGHT * (target != copy).float()
    return {"src": src, "canvas": canvas, "target": target, "masked": masked, "weight": weight,
            **{f"intent_{k}": v for k, v in intent_targets(grammar, commands).items()}}


def loss_fn(model: Denoiser, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
    logits, emb = model(batch["src"], batch["canvas"])
    m = batch["masked"]
    w = batch["weight"][m]
    text_loss = (F.cross_entropy(logits[m].float(), batch["target"][m], reduction="none") * w).sum() / w.sum()
    heads = model.intent_logits(emb)
    intent_loss = sum(F.cross_entropy(heads[k].float(), batch[f"intent_{k}"]) for k in ("action", "object", "place"))
    intent_loss = intent_loss + F.binary_cross_entropy_with_logits(heads["attributes"].float(),
                                                                   batch["intent_attributes"])
    return text_loss + 0.1 * intent_loss, {"text": text_loss.item(), "intent": intent_loss.item()}


def lr_at(step: int, total: int, peak: float, warmup: int = 200) -> float:
    """Linear warmup, then cosine down to 5% of the peak."""
    if step < warmup:
        return peak * (step + 1) / warmup
    return peak * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, total - warmup))))


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=6000)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--hidden", type=int, default=128)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--ckpt-dir", type=Path, default=Path("build/language"))
    p.add_argument("--out", type=Path, default=WEIGHTS)
    p.add_argument("--resume", action="store_true", help="continue from ckpt-dir/last.pt")
    p.add_argument("--eval-every", type=int, default=400)
    p.add_argument("--init", type=Path, help="fine-tune: start from these weights (a new optimizer and schedule)")
    p.add_argument("--word-share", type=float, default=0.0, help="share of inputs with word-level errors")
    p.add_argument("--warmup", type=int, default=200)
    p.add_argument("--seed", type=int, default=TRAIN_SEED, help="data and init seed (fine-tuning uses its own)")
    args = p.parse_args(argv)

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    grammar = Grammar.load()
    cfg = model_config(grammar, hidden=args.hidden, layers=args.layers)
    model = Denoiser(cfg)
    if args.init is not None:
        base = load_checkpoint(args.init)
        cfg = base.cfg
        model = Denoiser(cfg)
        model.load_state_dict(base.state_dict())
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, betas=(0.9, 0.98), weight_decay=0.01)
    rng = random.Random(args.seed)
    start, elapsed = 0, 0.0
    args.ckpt_dir.mkdir(parents=True, exist_ok=True)
    last = args.ckpt_dir / "last.pt"
    if args.resume and last.exists():
        ckpt = torch.load(last, weights_only=False)
        model.load_state_dict(ckpt["state_dict"])
        opt.load_state_dict(ckpt["optimizer"])
        rng.setstate(ckpt["rng"])
        start, elapsed = ckpt["step"], ckpt["elapsed_s"]
    n_params = sum(p.numel() for p in model.parameters())
    print(f"params {n_params:,}  config {cfg}", flush=True)

    from sage_plugins.language.evaluate import evaluate  # evaluation imports training helpers lazily too

    t0 = time.perf_counter() - elapsed
    for step in range(start, args.steps):
        model.train()
        for group in opt.param_groups:
            group["lr"] = lr_at(step, args.steps, args.lr, args.warmup)
        loss, parts = loss_fn(model, make_batch(grammar, rng, args.batch, cfg, args.word_share))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        if step % 50 == 0:
            print(f"step {step} loss {loss.item():.4f} text {parts['text']:.4f} intent {parts['intent']:.4f} "
                  f"lr {lr_at(step, args.steps, args.lr, args.warmup):.2e} {time.perf_counter() - t0:.0f}s", flush=True)
        if (step + 1) % args.eval_every == 0 or step + 1 == args.steps:
            model.eval()
            q = evaluate(model, n=200, seed=VALIDATION_SEED, grammar_only=False)
            print(f"step {step + 1} validation {json.dumps(q['refined'])}", flush=True)
            torch.save({"state_dict": model.state_dict(), "optimizer": opt.state_dict(), "rng": rng.getstate(),
                        "step": step + 1, "elapsed_s": time.perf_counter() - t0}, last)
            save_checkpoint(model, args.ckpt_dir / f"step{step + 1}.pt")
    wall = time.perf_counter() - t0
    save_checkpoint(model, args.out, {"train": {"steps": args.steps, "batch": args.batch, "lr": args.lr,
                                                "wall_s": round(wall), "threads": args.threads,
                                                "params": n_params, "seed": args.seed,
                                                "init": str(args.init) if args.init else None,
                                                "word_share": args.word_share, "warmup": args.warmup}})
    print(f"saved {args.out} after {wall:.0f}s; run `python -m sage_plugins.language.evaluate` for quality.json",
          flush=True)
    load_checkpoint(args.out)  # the shipped file loads


if __name__ == "__main__":
    main()
