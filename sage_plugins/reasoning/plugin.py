"""The `reasoning` IRP plugin: HRM-ACT-v1 on Sudoku, one ACT segment per IRP step.

energy = 1 - sigmoid(q_halt), the model's own estimate that its current answer is wrong; the
Sudoku verifier's violation count is reported separately (`verified_violations`) and never
folded into the energy, so calibration stays testable. A row halts at the first of: the learned
halt (P(halt) >= tau, or q_halt > q_continue for q_learning models), an unchanged prediction for
`stable_steps` segments, or the trained M_max; the runner adds quota and deadline. Puzzles that
arrive together are solved one per run, oldest first; the rest wait in a queue (`pending_input`).
A run cut short by the runner is kept (carry included) and its puzzle goes back to the head of the
queue, so the plugin's next run continues it: a tight budget delays the answer but does not
change it (the final result equals one uninterrupted run).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pydantic import Field

from sage_runtime.plugin import Frame, InputQueue, IRPPlugin, PluginContext, PluginInputs, PluginOptions

from sage_plugins.reasoning import sudoku
from sage_plugins.reasoning.checkpoint import load_checkpoint
from sage_plugins.reasoning.model import HRMACT, InnerCarry

WEIGHTS_DIR = Path(__file__).parent / "weights"
DEFAULT_CHECKPOINTS = {4: WEIGHTS_DIR / "hrm_sudoku4.pt", 9: WEIGHTS_DIR / "hrm_sudoku9.pt"}


@dataclass(frozen=True)
class ReasoningState:
    """Everything needed to continue refinement later: self-contained and detached."""

    n: int
    batched: bool
    key: bytes
    givens: torch.Tensor  # [B, S] digit grid flattened (0 = blank)
    inputs: torch.Tensor  # [B, S] tokens
    x: torch.Tensor  # [B, S+P, d] input injection
    carry: InnerCarry
    steps: torch.Tensor  # [B] segments run per row
    halted: torch.Tensor  # [B] bool
    halt_detail: tuple[str, ...]  # per row: "", "q_halt", "stable", "max_steps"
    pred: torch.Tensor  # [B, S] tokens (argmax of the last segment)
    unchanged: torch.Tensor  # [B] consecutive segments without a prediction change
    q_halt: torch.Tensor  # [B]
    q_continue: torch.Tensor  # [B]
    token_conf: torch.Tensor  # [B] mean max-probability over cells
    solution: torch.Tensor  # [B, S] digits, givens enforced (project)
    frame: Frame | None = None  # the frame the puzzle came in (copied out of the mailbox)
    segments: int = 0  # step() calls that ran at least one row
    energy_trace: tuple[float, ...] = ()  # energy after 0, 1, ..., segments


class ReasoningOptions(PluginOptions):
    """`plugins.options.reasoning`: checkpoint_4 / checkpoint_9 (paths), tau (halting threshold on
    P(halt); default: the one chosen on validation data at training time, stored in the checkpoint),
    stable_steps (0 disables), resume, resume_slots, allow_extra_segments (0: stop at the trained
    M_max), max_queue (puzzles waiting for a later run; beyond it the oldest are dropped and counted)."""

    checkpoint_4: str | None = None
    checkpoint_9: str | None = None
    tau: float | None = None
    stable_steps: int = Field(2, ge=0)
    resume: bool = True
    resume_slots: int = Field(16, ge=0)
    allow_extra_segments: int = Field(0, ge=0)
    max_queue: int = Field(64, ge=1)


class ReasoningPlugin(IRPPlugin):
    """Sudoku by HRM-ACT; options: ReasoningOptions."""

    name = "reasoning"
    Options = ReasoningOptions
    accepts_kinds = frozenset({"tensor", "text"})
    answers_requests = True  # a puzzle waits for its answer
    max_steps = 8

    def setup(self, ctx: PluginContext) -> None:
        super().setup(ctx)
        cfg: ReasoningOptions = ctx.options
        self.device = ctx.device
        self.tau_config = cfg.tau
        self.stable_steps = cfg.stable_steps
        self.resume = cfg.resume
        self.resume_slots = cfg.resume_slots
        extra = cfg.allow_extra_segments
        self.models: dict[int, HRMACT] = {}
        self.taus: dict[int, float] = {}
        for n, default in DEFAULT_CHECKPOINTS.items():
            given = getattr(cfg, f"checkpoint_{n}")
            path = Path(given) if given else default
            if path.exists():
                model, meta = load_checkpoint(path, map_location=self.device)
                self.models[n] = model.to(self.device).eval()
                # The threshold chosen on validation data at training time, unless config overrides.
                self.taus[n] = float(self.tau_config if self.tau_config is not None else meta.get("halt_tau", 0.5))
        if not self.models:
            raise FileNotFoundError(f"no reasoning checkpoint found in {WEIGHTS_DIR}")
        #: Board sizes with a model: a plain tuple, so `accepts` also works on the daemon's side of
        #: a worker process (plugin/worker.py), which gets plain attributes, not the models.
        self.sizes = tuple(sorted(self.models))
        self.segment_limit = {n: m.cfg.halt_max_steps + extra for n, m in self.models.items()}
        self.max_steps = max(self.segment_limit.values())
        self._paused: OrderedDict[bytes, ReasoningState] = OrderedDict()
        self._waiting = InputQueue(cfg.max_queue)

    # -- input ---------------------------------------------------------------------------------
    def _grid_from_frame(self, frame: Frame) -> np.ndarray | None:
        """[B, n, n] digits when the frame holds one or more boards of a size we have a model for."""
        if frame.kind == "text" and isinstance(frame.data, str):
            g = sudoku.parse_grid(frame.data)
            return g[None] if g is not None and g.shape[0] in self.sizes else None
        if frame.kind != "tensor" or not isinstance(frame.data, torch.Tensor):
            return None
        t = frame.data
        if t.is_floating_point() or t.is_complex() or t.dtype == torch.bool or t.numel() == 0:
            return None
        for n in self.sizes:
            boards = (t.ndim in (2, 3) and tuple(t.shape[-2:]) == (n, n)) or (t.ndim in (1, 2) and t.shape[-1] == n * n)
            if boards:
                g = t.detach().to("cpu", torch.int64).reshape(-1, n, n).numpy().copy()
                if g.min() >= 0 and g.max() <= n:
                    return g
        return None

    def accepts(self, frame: Frame) -> bool:
        return frame.kind in self.accepts_kinds and self._grid_from_frame(frame) is not None

    def sample_inputs(self, seed: int) -> PluginInputs:
        n = min(self.models) if hasattr(self, "models") else 4
        puzzles, _ = sudoku.generate(n, 1, (4, 11) if n == 4 else (30, 45), np.random.default_rng([seed, 77]))
        frame = Frame("puzzle", seed, 0, "tensor", torch.from_numpy(puzzles[0]).to(torch.int32))
        return PluginInputs(tick=seed, frames={"puzzle": frame})

    # -- refinement ------------------------------------------------------------------------------
    def pending_input(self) -> int:
        return len(self._waiting)

    def init_state(self, inputs: PluginInputs) -> ReasoningState | None:
        """Queue this run's puzzles behind those still waiting and start (or resume) the oldest."""
        self._waiting.add(f for f in inputs.every_frame() if self._grid_from_frame(f) is not None)
        taken = self._waiting.take(1)
        if not taken:
            return None
        frame = taken[0]
        grid = self._grid_from_frame(frame)
        assert grid is not None  # checked on the way into the queue
        n = grid.shape[-1]
        data = frame.data
        batched = frame.kind == "tensor" and (data.ndim == 3 or (data.ndim == 2 and tuple(data.shape) != (n, n)))
        key = bytes([n]) + grid.astype(np.int8).tobytes()
        if self.resume and key in self._paused:
            state = self._paused.pop(key)
        else:
            state = self.fresh_state(grid, batched)
        return replace(state, frame=frame)

    @torch.inference_mode()
    def fresh_state(self, grid: np.ndarray, batched: bool = True) -> ReasoningState:
        """Reset carry (H_init / L_init) for boards [B, n, n]; no segment has run (E = 1)."""
        n = grid.shape[-1]
        model = self.models[n]
        inner = model.inner
        givens = torch.from_numpy(grid.reshape(grid.shape[0], -1)).to(self.device)
        tokens = (givens + 1).to(torch.int32)
        b = tokens.shape[0]
        ids = torch.zeros(b, dtype=torch.int32, device=self.device)
        reset = torch.ones(b, dtype=torch.bool, device=self.device)
        carry = inner.reset_carry(reset, inner.empty_carry(b, self.device))
        zeros = torch.zeros(b, device=self.device)
        q_halt = torch.full((b,), -float("inf"), device=self.device)
        return ReasoningState(
            n=n, batched=batched, key=bytes([n]) + grid.astype(np.int8).tobytes(), givens=givens, inputs=tokens,
            x=inner.input_embeddings(tokens, ids), carry=carry,
            steps=torch.zeros(b, dtype=torch.int64, device=self.device),
            halted=torch.zeros(b, dtype=torch.bool, device=self.device), halt_detail=("",) * b,
            pred=tokens.to(torch.int64), unchanged=torch.zeros(b, dtype=torch.int64, device=self.device),
            q_halt=q_halt, q_continue=zeros.clone(),
            token_conf=zeros.clone(), solution=givens.clone(), energy_trace=(_energy(q_halt),))

    @torch.inference_mode()
    def step(self, state: ReasoningState) -> ReasoningState:
        """One ACT segment for the rows still refining; halted rows stay exactly as they are."""
        active = (~state.halted).nonzero().squeeze(-1)
        if active.numel() == 0:
            return state
        model = self.models[state.n]
        ids = torch.zeros(active.numel(), dtype=torch.int32, device=self.device)
        sub = InnerCarry(state.carry.z_H[active], state.carry.z_L[active])
        batch = {"inputs": state.inputs[active], "puzzle_identifiers": ids}
        new_sub, logits, (qh, qc) = model.inner(sub, batch, x=state.x[active])
        probs = torch.softmax(logits.float(), -1)
        pred = logits.argmax(-1)

        z_H, z_L = state.carry.z_H.clone(), state.carry.z_L.clone()
        z_H[active], z_L[active] = new_sub.z_H, new_sub.z_L
        same = (pred == state.pred[active]).all(-1) & (state.steps[active] > 0)
        unchanged = state.unchanged.clone()
        unchanged[active] = torch.where(same, unchanged[active] + 1, 0)
        all_pred, q_halt, q_cont, conf, steps = (state.pred.clone(), state.q_halt.clone(), state.q_continue.clone(),
                                                 state.token_conf.clone(), state.steps.clone())
        all_pred[active], q_halt[active], q_cont[active] = pred, qh.float(), qc.float()
        conf[active] = probs.max(-1).values.mean(-1)
        steps[active] += 1

        halted, detail = state.halted.clone(), list(state.halt_detail)
        if model.cfg.halt_mode == "q_learning":
            learned = q_halt > q_cont
        else:
            learned = torch.sigmoid(q_halt) >= self.taus[state.n]
        stable = unchanged >= self.stable_steps if self.stable_steps > 0 else torch.zeros_like(halted)
        limit = steps >= self.segment_limit[state.n]
        for i in active.tolist():
            reason = "q_halt" if learned[i] else "stable" if stable[i] else "max_steps" if limit[i] else ""
            if reason:
                halted[i] = True
                detail[i] = reason
        return replace(state, carry=InnerCarry(z_H, z_L), steps=steps, halted=halted, halt_detail=tuple(detail),
                       segments=state.segments + 1, pred=all_pred, unchanged=unchanged, q_halt=q_halt,
                       q_continue=q_cont, token_conf=conf, energy_trace=(*state.energy_trace, _energy(q_halt)))

    def project(self, state: ReasoningState) -> ReasoningState:
        """Givens are fixed in the published solution (the carry is never touched)."""
        digits = (state.pred - 1).clamp(0, state.n)
        return replace(state, solution=torch.where(state.givens > 0, state.givens, digits))

    def energy(self, state: ReasoningState) -> float:
        """1 - mean P(halt), recorded by step() in the state's energy_trace (a resumed state
        carries its trace so far)."""
        return state.energy_trace[-1]

    def halt(self, state: ReasoningState, history: Sequence[float]) -> str | None:
        if not bool(state.halted.all()):
            return None
        details = set(state.halt_detail)
        if details == {"max_steps"}:
            return "max_steps"
        return "q_halt" if "q_halt" in details else "stable" if "stable" in details else "max_steps"

    # -- results ---------------------------------------------------------------------------------
    def outputs(self, state: ReasoningState) -> dict[str, Any]:
        finished = bool(state.halted.all())
        if self.resume:
            self._paused.pop(state.key, None)
            if not finished:
                self._paused[state.key] = state
                while len(self._paused) > self.resume_slots:
                    self._paused.popitem(last=False)
                if state.frame is not None:
                    self._waiting.requeue(state.frame)  # continued on the next run
        n = state.n
        sol = state.solution.to("cpu", torch.int64).reshape(-1, n, n)
        givens = state.givens.cpu().numpy().reshape(-1, n, n)
        viol = [sudoku.violations(s, g) for s, g in zip(sol.numpy(), givens)]
        conf = torch.sigmoid(state.q_halt).cpu()
        details = [d or "paused" for d in state.halt_detail]
        one = not state.batched
        model = self.models[n]
        return {
            "solution": sol[0] if one else sol,
            "solution_text": "\n\n".join(format_grid(g) for g in sol.numpy()),
            "steps": int(state.steps[0]) if one else state.steps.cpu().tolist(),
            "halt_detail": details[0] if one else details,
            "confidence": float(conf[0]) if one else conf.tolist(),
            "token_confidence": float(state.token_conf[0]) if one else state.token_conf.cpu().tolist(),
            "verified_violations": viol[0] if one else viol,
            "solved": viol[0] == 0 if one else [v == 0 for v in viol],
            "finished": finished,
            "energy_trace": list(state.energy_trace),
            "board_size": n,
            "segment_flops": segment_flops(model, n * n),
            "sensor": state.frame.sensor if state.frame is not None else None,
            "seq": state.frame.seq if state.frame is not None else None,
            "queued": len(self._waiting),
            "dropped": self._waiting.dropped,
        }

    def close(self) -> None:
        self._paused.clear()
        self._waiting.clear()


def _energy(q_halt: torch.Tensor) -> float:
    """The model's own estimate that its current answer is wrong: 1 - mean sigmoid(q_halt)."""
    return float((1 - torch.sigmoid(q_halt)).mean())


def format_grid(grid: np.ndarray) -> str:
    """Digits row by row, '.' for blank: the text form parse_grid reads back."""
    return "\n".join("".join(str(int(v)) if v else "." for v in row) for row in grid)


def segment_flops(model: HRMACT, seq_len: int) -> int:
    """Forward FLOPs per example per segment (hrm.md section 4): 2 x params per block x tokens x
    block forwards, plus attention scores and mixing."""
    cfg = model.cfg
    tokens = seq_len + cfg.puzzle_emb_len
    block = model.inner.L_level.layers[0]
    per_block = sum(p.numel() for p in block.parameters())
    forwards = cfg.H_cycles * cfg.L_cycles * cfg.L_layers + cfg.H_cycles * cfg.H_layers
    attn = 4 * tokens * tokens * cfg.hidden_size
    return int(forwards * (2 * per_block * tokens + attn))
