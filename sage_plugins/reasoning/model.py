"""HRM-ACT-v1 (Wang et al. 2025), ported with upstream semantics (sapientinc/HRM hrm_act_v1.py).

Two recurrent modules over one sequence: L (updated L_cycles times per cycle, sees z_H + input)
and H (once per cycle, sees z_L), H_cycles cycles per segment; only the last L and last H update
carry gradient (one-step gradient), the carry is detached between segments, and an ACT wrapper
repeats segments with a learned halt head (q_learning: upstream's Q-halt/Q-continue with a
bootstrapped target; bce_halt: halt logit trained on exact correctness, no second pass).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import Any, Literal

import torch
from torch import nn

from sage_runtime.nn import CastedEmbedding, CastedLinear, RotaryEmbedding, TransformerBlock, trunc_normal_init_

from sage_plugins.reasoning.sparse_embedding import SparsePuzzleEmbedding


@dataclass(frozen=True)
class HRMConfig:
    """Architecture of one HRM-ACT-v1 model; stored in every checkpoint and compared strictly."""

    vocab_size: int
    seq_len: int
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
    halt_mode: Literal["q_learning", "bce_halt"] = "bce_halt"
    pos_encodings: Literal["rope", "learned"] = "rope"
    rope_theta: float = 10000.0
    puzzle_emb_ndim: int = 64
    num_puzzle_identifiers: int = 1
    norm_eps: float = 1e-5
    forward_dtype: str = "float32"

    def __post_init__(self) -> None:
        if self.halt_mode not in ("q_learning", "bce_halt"):
            raise ValueError(f"halt_mode {self.halt_mode!r}")
        if self.pos_encodings not in ("rope", "learned"):
            raise ValueError(f"pos_encodings {self.pos_encodings!r}")

    @property
    def puzzle_emb_len(self) -> int:
        """Number of prefix tokens the puzzle embedding occupies (0 without one)."""
        return -(-self.puzzle_emb_ndim // self.hidden_size) if self.puzzle_emb_ndim > 0 else 0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "HRMConfig":
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown HRMConfig keys: {sorted(unknown)}")
        return cls(**d)


@dataclass
class InnerCarry:
    z_H: torch.Tensor  # [B, S+P, d]
    z_L: torch.Tensor


@dataclass
class ACTCarry:
    inner: InnerCarry
    steps: torch.Tensor  # [B] int32
    halted: torch.Tensor  # [B] bool
    current_data: dict[str, torch.Tensor]


class ReasoningModule(nn.Module):
    """H or L: a stack of post-norm blocks whose input is state + injection."""

    def __init__(self, cfg: HRMConfig, num_layers: int) -> None:
        super().__init__()
        self.layers = nn.ModuleList(
            TransformerBlock(cfg.hidden_size, cfg.num_heads, cfg.expansion, causal=False,
                             mlp_multiple=cfg.mlp_multiple, norm_eps=cfg.norm_eps)
            for _ in range(num_layers))

    def forward(self, hidden: torch.Tensor, injection: torch.Tensor,
                cos_sin: tuple[torch.Tensor, torch.Tensor] | None) -> torch.Tensor:
        hidden = hidden + injection
        for layer in self.layers:
            hidden = layer(hidden, cos_sin=cos_sin)
        return hidden


class HRMInner(nn.Module):
    """One segment: embeddings, the H/L schedule with one-step gradient, lm and q heads."""

    def __init__(self, cfg: HRMConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.dtype = getattr(torch, cfg.forward_dtype)
        d = cfg.hidden_size
        self.embed_scale = math.sqrt(d)
        self.embed_tokens = CastedEmbedding(cfg.vocab_size, d, init_std=1.0 / self.embed_scale, cast_to=self.dtype)
        self.lm_head = CastedLinear(d, cfg.vocab_size, bias=False)
        self.q_head = CastedLinear(d, 2, bias=True)
        total_len = cfg.seq_len + cfg.puzzle_emb_len
        if cfg.puzzle_emb_ndim > 0:
            if cfg.num_puzzle_identifiers > 1:
                self.puzzle_emb = SparsePuzzleEmbedding(cfg.num_puzzle_identifiers, cfg.puzzle_emb_ndim)
            else:
                # One id: a single learned prefix vector (zero-initialised, as upstream's table).
                self.puzzle_prefix = nn.Parameter(torch.zeros(cfg.puzzle_emb_ndim))
        if cfg.pos_encodings == "rope":
            self.rotary = RotaryEmbedding(d // cfg.num_heads, total_len, base=cfg.rope_theta)
        else:
            self.embed_pos = CastedEmbedding(total_len, d, init_std=1.0 / self.embed_scale, cast_to=self.dtype)
        self.H_level = ReasoningModule(cfg, cfg.H_layers)
        self.L_level = ReasoningModule(cfg, cfg.L_layers)
        # Fixed random initial states: buffers, not learned.
        self.register_buffer("H_init", trunc_normal_init_(torch.empty(d), std=1.0), persistent=True)
        self.register_buffer("L_init", trunc_normal_init_(torch.empty(d), std=1.0), persistent=True)
        with torch.no_grad():  # q head starts at "never halt": sigmoid(-5) ~ 0.007
            self.q_head.weight.zero_()
            self.q_head.bias.fill_(-5.0)

    def input_embeddings(self, inputs: torch.Tensor, puzzle_identifiers: torch.Tensor) -> torch.Tensor:
        cfg = self.cfg
        emb = self.embed_tokens(inputs.to(torch.long))
        if cfg.puzzle_emb_ndim > 0:
            b = inputs.shape[0]
            if cfg.num_puzzle_identifiers > 1:
                pe = self.puzzle_emb(puzzle_identifiers.to(torch.long))
            else:
                pe = self.puzzle_prefix.to(self.dtype).expand(b, -1)
            pad = cfg.puzzle_emb_len * cfg.hidden_size - pe.shape[-1]
            if pad > 0:
                pe = torch.nn.functional.pad(pe, (0, pad))
            emb = torch.cat((pe.view(b, cfg.puzzle_emb_len, cfg.hidden_size), emb), dim=-2)
        if cfg.pos_encodings == "learned":
            emb = 0.707106781 * (emb + self.embed_pos.weight.to(self.dtype))
        return self.embed_scale * emb

    def empty_carry(self, batch_size: int, device: torch.device | None = None) -> InnerCarry:
        n = self.cfg.seq_len + self.cfg.puzzle_emb_len
        shape = (batch_size, n, self.cfg.hidden_size)
        dev = device or self.H_init.device
        return InnerCarry(torch.empty(shape, dtype=self.dtype, device=dev),
                          torch.empty(shape, dtype=self.dtype, device=dev))

    def reset_carry(self, reset: torch.Tensor, carry: InnerCarry) -> InnerCarry:
        """Rows where `reset` is True go back to H_init / L_init."""
        r = reset.view(-1, 1, 1)
        return InnerCarry(torch.where(r, self.H_init.to(self.dtype), carry.z_H),
                          torch.where(r, self.L_init.to(self.dtype), carry.z_L))

    def cos_sin(self) -> tuple[torch.Tensor, torch.Tensor] | None:
        return self.rotary() if self.cfg.pos_encodings == "rope" else None

    def forward(self, carry: InnerCarry, batch: dict[str, torch.Tensor],
                x: torch.Tensor | None = None) -> tuple[InnerCarry, torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        """One segment. `x` (the input injection) may be passed in to skip re-embedding."""
        cfg = self.cfg
        cos_sin = self.cos_sin()
        if x is None:
            x = self.input_embeddings(batch["inputs"], batch["puzzle_identifiers"])
        z_H, z_L = carry.z_H, carry.z_L
        with torch.no_grad():
            for h in range(cfg.H_cycles):
                for l_step in range(cfg.L_cycles):
                    if not (h == cfg.H_cycles - 1 and l_step == cfg.L_cycles - 1):
                        z_L = self.L_level(z_L, z_H + x, cos_sin)
                if h != cfg.H_cycles - 1:
                    z_H = self.H_level(z_H, z_L, cos_sin)
        # One-step gradient: only these two updates are differentiated.
        z_L = self.L_level(z_L, z_H + x, cos_sin)
        z_H = self.H_level(z_H, z_L, cos_sin)
        new_carry = InnerCarry(z_H.detach(), z_L.detach())
        logits = self.lm_head(z_H)[:, cfg.puzzle_emb_len:]
        q = self.q_head(z_H[:, 0]).to(torch.float32)
        return new_carry, logits, (q[..., 0], q[..., 1])


class HRMACT(nn.Module):
    """The ACT outer loop: one call = one segment for every slot of the batch (upstream semantics)."""

    def __init__(self, cfg: HRMConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.inner = HRMInner(cfg)

    def initial_carry(self, batch: dict[str, torch.Tensor]) -> ACTCarry:
        b = batch["inputs"].shape[0]
        dev = batch["inputs"].device
        return ACTCarry(self.inner.empty_carry(b, dev), torch.zeros(b, dtype=torch.int32, device=dev),
                        torch.ones(b, dtype=torch.bool, device=dev),
                        {k: torch.empty_like(v) for k, v in batch.items()})

    def forward(self, carry: ACTCarry, batch: dict[str, torch.Tensor]) -> tuple[ACTCarry, dict[str, torch.Tensor]]:
        cfg = self.cfg
        halted = carry.halted
        inner = self.inner.reset_carry(halted, carry.inner)
        steps = torch.where(halted, 0, carry.steps)
        data = {k: torch.where(halted.view((-1,) + (1,) * (batch[k].ndim - 1)), batch[k], v)
                for k, v in carry.current_data.items()}
        inner, logits, (q_halt, q_continue) = self.inner(inner, data)
        out = {"logits": logits, "q_halt_logits": q_halt, "q_continue_logits": q_continue}
        with torch.no_grad():
            steps = steps + 1
            is_last = steps >= cfg.halt_max_steps
            halted = is_last
            if self.training and cfg.halt_max_steps > 1:
                if cfg.halt_mode == "q_learning":
                    halted = halted | (q_halt > q_continue)
                else:
                    halted = halted | (q_halt > 0)
                explore = torch.rand_like(q_halt) < cfg.halt_exploration_prob
                min_steps = explore * torch.randint_like(steps, low=2, high=cfg.halt_max_steps + 1)
                halted = halted & (steps >= min_steps)
                if cfg.halt_mode == "q_learning":
                    # Bootstrapped target from a gradient-free segment run on the new carry.
                    _, _, (next_halt, next_cont) = self.inner(inner, data)
                    out["target_q_continue"] = torch.sigmoid(
                        torch.where(is_last, next_halt, torch.maximum(next_halt, next_cont)))
        return ACTCarry(inner, steps, halted, data), out


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
