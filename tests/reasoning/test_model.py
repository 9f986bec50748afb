"""Semantics of the HRM-ACT-v1 port: one-step gradient, detached carry, ACT slot handling, halting
heads, init, losses, optimisers and strict checkpoints."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from sage_plugins.reasoning.checkpoint import load_checkpoint, save_checkpoint
from sage_plugins.reasoning.losses import (
    IGNORE_INDEX, act_loss, labels_from_tokens, softmax_cross_entropy, stablemax_cross_entropy,
)
from sage_plugins.reasoning.model import HRMACT, HRMConfig, count_parameters
from sage_plugins.reasoning.optim import AdamAtan2, lr_at
from sage_plugins.reasoning.sparse_embedding import SignSGD

from tests.reasoning.conftest import tiny_config


def test_parameter_count_matches_hrm_tiny() -> None:
    cfg = HRMConfig(vocab_size=6, seq_len=16, hidden_size=64, num_heads=2, mlp_multiple=64, puzzle_emb_ndim=64)
    assert count_parameters(HRMACT(cfg)) == 107_458  # hrm.md section 12


def test_init_q_head_and_fixed_initial_states(tiny_model) -> None:
    inner = tiny_model.inner
    assert torch.count_nonzero(inner.q_head.weight) == 0 and torch.all(inner.q_head.bias == -5)
    names = {n for n, _ in tiny_model.named_parameters()}
    assert not any("H_init" in n or "L_init" in n for n in names)
    assert {"inner.H_init", "inner.L_init"} <= set(tiny_model.state_dict())
    assert abs(inner.embed_scale - math.sqrt(32)) < 1e-9


def _record_grad_mode(model: HRMACT) -> dict[str, list[bool]]:
    seen: dict[str, list[bool]] = {"L": [], "H": []}
    for key, module in (("L", model.inner.L_level), ("H", model.inner.H_level)):
        module.register_forward_hook(lambda m, i, o, k=key: seen[k].append(torch.is_grad_enabled()))
    return seen


def test_one_step_gradient_only_last_L_and_H_updates(tiny_model, batch) -> None:
    cfg = tiny_model.cfg
    seen = _record_grad_mode(tiny_model)
    carry = tiny_model.initial_carry(batch)
    tiny_model.train()
    carry, out = tiny_model(carry, batch)
    # H_cycles x L_cycles L-updates and H_cycles H-updates, of which exactly one each has gradient.
    assert len(seen["L"]) == cfg.H_cycles * cfg.L_cycles and seen["L"] == [False] * (len(seen["L"]) - 1) + [True]
    assert len(seen["H"]) == cfg.H_cycles and seen["H"] == [False] * (cfg.H_cycles - 1) + [True]
    loss, _ = act_loss(out, labels_from_tokens(carry.current_data["labels"]), carry.halted)
    loss.backward()
    for name, p in tiny_model.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_one_step_gradient_equals_manual_last_updates(tiny_model, batch) -> None:
    """The gradient is exactly that of the last L and H update applied to the no-grad states."""
    inner = tiny_model.inner
    cfg = inner.cfg
    carry = inner.reset_carry(torch.ones(8, dtype=torch.bool), inner.empty_carry(8))
    _, logits, _ = inner(carry, batch)
    logits.sum().backward()
    auto = inner.L_level.layers[0].mlp.down_proj.weight.grad.clone()
    inner.zero_grad()
    cos_sin = inner.cos_sin()
    x = inner.input_embeddings(batch["inputs"], batch["puzzle_identifiers"])
    z_H, z_L = carry.z_H, carry.z_L
    with torch.no_grad():
        for h in range(cfg.H_cycles):
            for l_step in range(cfg.L_cycles):
                if not (h == cfg.H_cycles - 1 and l_step == cfg.L_cycles - 1):
                    z_L = inner.L_level(z_L, z_H + x, cos_sin)
            if h != cfg.H_cycles - 1:
                z_H = inner.H_level(z_H, z_L, cos_sin)
    z_L = inner.L_level(z_L.detach(), z_H.detach() + x, cos_sin)
    z_H = inner.H_level(z_H.detach(), z_L, cos_sin)
    inner.lm_head(z_H)[:, cfg.puzzle_emb_len:].sum().backward()
    assert torch.allclose(auto, inner.L_level.layers[0].mlp.down_proj.weight.grad, atol=1e-5)


def test_carry_holds_no_graph_between_segments(tiny_model, batch) -> None:
    tiny_model.train()
    carry = tiny_model.initial_carry(batch)
    for _ in range(2):
        carry, out = tiny_model(carry, batch)
        for z in (carry.inner.z_H, carry.inner.z_L):
            assert z.grad_fn is None and not z.requires_grad
        assert out["logits"].grad_fn is not None


def test_act_slots_reset_on_halt_and_keep_data_otherwise(tiny_model, small_splits) -> None:
    train, _ = small_splits
    first, second = train.batch(np.arange(8)), train.batch(np.arange(8, 16))
    tiny_model.eval()  # eval: halt only at M_max
    carry = tiny_model.initial_carry(first)
    carry, _ = tiny_model(carry, first)
    assert torch.equal(carry.current_data["inputs"], first["inputs"]) and torch.all(carry.steps == 1)
    carry.halted[:3] = True  # pretend three slots halted
    z_before = carry.inner.z_H.clone()
    carry, _ = tiny_model(carry, second)
    assert torch.equal(carry.current_data["inputs"][:3], second["inputs"][:3])
    assert torch.equal(carry.current_data["inputs"][3:], first["inputs"][3:])
    assert carry.steps.tolist() == [1, 1, 1] + [2] * 5
    assert not torch.equal(z_before, carry.inner.z_H)
    for _ in range(2):
        carry, _ = tiny_model(carry, second)
    assert carry.halted[3:].all() and not carry.halted[:3].any()  # M_max = 4 reached by the old slots


def test_reset_uses_fixed_initial_states(tiny_model) -> None:
    inner = tiny_model.inner
    carry = inner.reset_carry(torch.tensor([True, False]), inner.empty_carry(2))
    assert torch.equal(carry.z_H[0], inner.H_init.expand_as(carry.z_H[0]))
    assert torch.equal(carry.z_L[0], inner.L_init.expand_as(carry.z_L[0]))


def test_q_learning_mode_makes_bootstrap_target_and_bce_does_not(batch) -> None:
    torch.manual_seed(0)
    q = HRMACT(tiny_config(halt_mode="q_learning")).train()
    carry, out = q(q.initial_carry(batch), batch)
    assert "target_q_continue" in out and torch.all((out["target_q_continue"] >= 0) & (out["target_q_continue"] <= 1))
    assert out["target_q_continue"].grad_fn is None
    loss, metrics = act_loss(out, labels_from_tokens(carry.current_data["labels"]), carry.halted)
    assert metrics["q_continue_loss"] > 0
    b = HRMACT(tiny_config(halt_mode="bce_halt")).train()
    _, out_b = b(b.initial_carry(batch), batch)
    assert "target_q_continue" not in out_b


def test_exploration_delays_halting(batch) -> None:
    torch.manual_seed(0)
    model = HRMACT(tiny_config(halt_exploration_prob=1.0, halt_max_steps=6)).train()
    with torch.no_grad():
        model.inner.q_head.bias.fill_(5.0)  # wants to halt at once
    carry, _ = model(model.initial_carry(batch), batch)
    assert not carry.halted.any()  # exploration forces at least 2 segments
    model.eval()
    carry, _ = model(model.initial_carry(batch), batch)
    assert not carry.halted.any()  # eval halts only at M_max


def test_input_sensitivity_at_init(tiny_model, small_splits) -> None:
    _, test = small_splits
    batch = test.batch(np.arange(16))
    inner = tiny_model.inner
    carry = inner.reset_carry(torch.ones(16, dtype=torch.bool), inner.empty_carry(16))
    x = inner.input_embeddings(batch["inputs"], batch["puzzle_identifiers"]).detach().requires_grad_(True)
    _, logits, _ = inner(carry, batch, x=x)
    assert (logits[1:] - logits[:-1]).abs().mean() > 1e-2
    assert len({p.tobytes() for p in logits.argmax(-1).numpy()}) > 8
    logits.sum().backward()
    assert x.grad.abs().sum() > 0


def test_losses() -> None:
    logits = torch.randn(3, 5, 6)
    labels = torch.randint(0, 6, (3, 5))
    labels[0, 0] = IGNORE_INDEX
    ce = softmax_cross_entropy(logits, labels)
    assert ce[0, 0] == 0 and torch.allclose(ce[1], torch.nn.functional.cross_entropy(logits[1], labels[1],
                                                                                        reduction="none"))
    sm = stablemax_cross_entropy(logits, labels)
    s = torch.where(logits < 0, 1 / (1 - logits), logits + 1).double()
    ref = -torch.log(s / s.sum(-1, keepdim=True)).gather(-1, labels.clamp_min(0).unsqueeze(-1)).squeeze(-1)
    assert sm.dtype == torch.float64 and sm[0, 0] == 0 and torch.allclose(sm[1:], ref[1:])
    # An all-ignored row gives zero loss; PAD maps to the ignore index.
    assert torch.all(labels_from_tokens(torch.zeros(2, 4, dtype=torch.long)) == IGNORE_INDEX)
    out = {"logits": logits, "q_halt_logits": torch.zeros(3), "q_continue_logits": torch.zeros(3)}
    all_ignored = torch.full((3, 5), IGNORE_INDEX)
    loss, metrics = act_loss(out, all_ignored, torch.ones(3, dtype=torch.bool))
    assert metrics["lm_loss"] == 0 and metrics["count"] == 0


def test_exact_accuracy_needs_every_token(tiny_model) -> None:
    labels = torch.tensor([[2, 3, 4, 5], [2, 3, 4, 5]])
    logits = torch.nn.functional.one_hot(labels, 6).float() * 10
    logits[1, 3] = torch.nn.functional.one_hot(torch.tensor(2), 6).float() * 10
    out = {"logits": logits, "q_halt_logits": torch.tensor([1.0, 1.0]), "q_continue_logits": torch.zeros(2)}
    _, m = act_loss(out, labels, torch.ones(2, dtype=torch.bool))
    assert m["exact_accuracy"] == 0.5 and m["accuracy"] == pytest.approx(7 / 8) and m["q_halt_accuracy"] == 0.5


def test_sparse_puzzle_embedding_signsgd(batch) -> None:
    torch.manual_seed(0)
    model = HRMACT(tiny_config(num_puzzle_identifiers=10)).train()
    emb = model.inner.puzzle_emb
    assert "inner.puzzle_emb.weights" in model.state_dict()
    assert not any("puzzle_emb" in n for n, _ in model.named_parameters()) and torch.count_nonzero(emb.weights) == 0
    opt = SignSGD(emb, lr=0.01, weight_decay=0.1)
    batch = dict(batch, puzzle_identifiers=torch.tensor([3, 3, 5, 5, 5, 7, 7, 7], dtype=torch.int32))
    carry, out = model(model.initial_carry(batch), batch)
    out["logits"].sum().backward()
    opt.step()
    changed = (emb.weights != 0).any(-1).nonzero().squeeze(-1).tolist()
    assert changed == [3, 5, 7]
    assert torch.allclose(emb.weights[3].abs(), torch.full((32,), 0.01))  # sign steps of size lr


def test_adam_atan2_and_schedule() -> None:
    p = torch.nn.Parameter(torch.tensor([3.0, -2.0]))
    opt = AdamAtan2([p], lr=0.1, weight_decay=0.0)
    for _ in range(200):
        opt.zero_grad()
        (p ** 2).sum().backward()
        opt.step()
    assert p.abs().max() < 0.2
    assert lr_at(0, 1.0, 10, 100) == pytest.approx(0.1) and lr_at(50, 1.0, 10, 100) == 1.0
    assert lr_at(100, 1.0, 10, 100, min_ratio=0.1) == pytest.approx(0.1)


def test_checkpoint_roundtrip_and_strict_architecture(tiny_model, batch, tmp_path) -> None:
    path = tmp_path / "m.pt"
    save_checkpoint(tiny_model, path, {"note": "x"})
    loaded, extra = load_checkpoint(path, expected=tiny_model.cfg)
    assert extra == {"note": "x"} and loaded.cfg == tiny_model.cfg
    for k, v in tiny_model.state_dict().items():
        assert torch.equal(v, loaded.state_dict()[k])
    with pytest.raises(ValueError, match="architecture differs"):
        load_checkpoint(path, expected=tiny_config(hidden_size=64, puzzle_emb_ndim=64))
    blob = torch.load(path, weights_only=True)
    blob["config"]["hidden_size"] = 64  # config says one architecture, weights are another
    torch.save(blob, tmp_path / "bad.pt")
    with pytest.raises(RuntimeError):
        load_checkpoint(tmp_path / "bad.pt")
    blob["config"]["hidden_size"] = 32
    blob["config"]["mystery"] = 1
    torch.save(blob, tmp_path / "bad2.pt")
    with pytest.raises(ValueError, match="unknown"):
        load_checkpoint(tmp_path / "bad2.pt")
