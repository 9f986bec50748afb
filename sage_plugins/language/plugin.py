"""LanguagePlugin: denoise recognised speech commands by mask-predict, parse them into intents."""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, ClassVar, Sequence

import torch

from sage_plugins.language.grammar import MAX_NORMALIZED, Grammar, normalize
from sage_plugins.language.model import Denoiser, load_checkpoint
from sage_plugins.language.noise import corrupt
from sage_plugins.language.refine import (RefineState, advance, converged, energies, first_pass, grammar_projection,
                                     texts)
from pydantic import Field

from sage_runtime.plugin import Frame, InputQueue, IRPPlugin, PluginContext, PluginInputs, PluginOptions

WEIGHTS = Path(__file__).with_name("weights.pt")


@dataclass(frozen=True)
class LanguageState:
    frames: tuple[Frame, ...]   # the commands being refined, oldest first
    inputs: tuple[str, ...]     # their normalized noisy text
    refine: RefineState


class LanguageOptions(PluginOptions):
    """`plugins.options.language` (the keys are explained in LanguagePlugin's docstring)."""

    weights: str | None = None
    refine_steps: int = Field(10, ge=1)
    max_reads: int = Field(3, ge=1)
    max_steps: int = Field(40, ge=1)
    max_batch: int = Field(4, ge=1)
    max_queue: int = Field(256, ge=1)
    sample_cer: float = Field(0.1, ge=0, le=1)
    grammar_constraint: bool = True
    max_normalized: float = Field(MAX_NORMALIZED, ge=0)


class LanguagePlugin(IRPPlugin):
    """Text frames in; corrected text, intent, 256-d meaning embedding and confidence out.

    Config: `weights` (path, default the packaged weights.pt), `refine_steps` (T of mask-predict,
    default 10), `max_reads` (3), `max_steps` (40), `max_batch` (oldest waiting commands refined
    together per run, default 4: a run's cost grows with it and is not bounded by the step quota),
    `max_queue` (commands waiting for a later run, default 256; beyond it the oldest are dropped
    and counted in `dropped`), `sample_cer`
    (noise of sample_inputs, default 0.1), `grammar_constraint` (default true: `project` snaps a
    converged text that is not a command to the nearest command, and the intent is the
    edit-distance-tolerant parse; false: the model's text and the exact parser, model only),
    `max_normalized` (how far from a command a text may be and still be read as it, default 0.3).
    """

    name: ClassVar[str] = "language"
    Options = LanguageOptions
    accepts_kinds: ClassVar[frozenset[str]] = frozenset({"text"})

    def setup(self, ctx: PluginContext) -> None:
        super().setup(ctx)
        cfg: LanguageOptions = ctx.options
        self.model: Denoiser = load_checkpoint(Path(cfg.weights) if cfg.weights else WEIGHTS, ctx.device)
        self.total = cfg.refine_steps
        self.max_reads = cfg.max_reads
        self.max_steps = cfg.max_steps
        self.max_batch = cfg.max_batch
        self._waiting = InputQueue(cfg.max_queue)
        self.sample_cer = cfg.sample_cer
        self.grammar = Grammar.load()
        self.constrained = cfg.grammar_constraint
        self.max_normalized = cfg.max_normalized
        self._project = (grammar_projection(self.model, self.grammar, self.max_normalized, self.max_reads)
                         if self.constrained else None)

    def accepts(self, frame: Frame) -> bool:
        return frame.kind == "text" and isinstance(frame.data, str)

    def sample_inputs(self, seed: int) -> PluginInputs:
        """One grammar command, ASR-corrupted, as a text frame; different per seed."""
        rng = random.Random(seed)
        noisy = corrupt(self.grammar.sample(rng).text, self.sample_cer, rng)
        frame = Frame("speech", seed, seed, "text", noisy, {"seed": seed})
        return PluginInputs(tick=seed, frames={"speech": frame}, salience={"speech": 0.5})

    def pending_input(self) -> int:
        return len(self._waiting)

    def init_state(self, inputs: PluginInputs) -> LanguageState | None:
        """Queue this tick's commands behind those still waiting, refine the oldest max_batch."""
        self._waiting.add(f for f in inputs.every_frame() if self.accepts(f) and normalize(f.data))
        frames = self._waiting.take(self.max_batch)
        if not frames:
            return None
        noisy = tuple(normalize(f.data) for f in frames)
        return LanguageState(tuple(frames), noisy, first_pass(self.model, list(noisy), self.total))

    def step(self, state: LanguageState) -> LanguageState:
        return replace(state, refine=advance(self.model, state.refine))

    def project(self, state: LanguageState) -> LanguageState:
        """The grammar constraint (refine.grammar_projection): when refinement would halt, texts
        that are not commands are snapped to the nearest command, re-scored by the model; the
        halting rule then asks for one more read of what changed."""
        if self._project is None:
            return state
        return replace(state, refine=self._project(state.refine))

    def intent(self, text: str) -> dict[str, Any] | None:
        if self.constrained:
            return self.grammar.parse_fuzzy(text, self.max_normalized)
        return self.grammar.parse(text)

    def energy(self, state: LanguageState) -> float:
        return float(energies(state.refine).mean())

    def halt(self, state: LanguageState, history: Sequence[float]) -> str | None:
        """Converged when a read of the texts returns them unchanged (or reads are used up); else
        the default energy-slope rule."""
        if converged(state.refine, self.max_reads):
            return "converged"
        return super().halt(state, history)

    def outputs(self, state: LanguageState) -> dict[str, Any]:
        corrected = texts(state.refine)
        energy = energies(state.refine).tolist()
        commands = [{"sensor": f.sensor, "seq": f.seq, "input": x, "text": t, "intent": self.intent(t),
                     "confidence": math.exp(-e)}
                    for f, x, t, e in zip(state.frames, state.inputs, corrected, energy)]
        newest = commands[-1]
        return {
            "text": newest["text"],
            "intent": newest["intent"],
            "confidence": newest["confidence"],
            "embedding": torch.nn.functional.normalize(state.refine.embedding[-1], dim=0).cpu(),
            "input": newest["input"],
            "commands": commands,
            "queued": len(self._waiting),
            "dropped": self._waiting.dropped,
        }
