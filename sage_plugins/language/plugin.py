"""LanguagePlugin: denoise recognised speech commands by mask-predict, parse them into intents."""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, ClassVar, Sequence

import torch
from pydantic import Field

from sage_plugins.language.grammar import MAX_NORMALIZED, Grammar, normalize
from sage_plugins.language.model import Denoiser, load_checkpoint
from sage_plugins.language.noise import corrupt
from sage_plugins.language.refine import (RefineState, advance, converged, energies, first_pass, grammar_projection,
                                          texts)
from sage_plugins.language.understand import CALIBRATION_PATH, Calibrator, read
from sage_plugins.language.utterance import clean_words

from sage_runtime.plugin import Frame, InputQueue, IRPPlugin, PluginContext, PluginInputs, PluginOptions

WEIGHTS = Path(__file__).with_name("weights.pt")


@dataclass(frozen=True)
class LanguageState:
    frames: tuple[Frame, ...]   # the commands being refined, oldest first
    inputs: tuple[str, ...]     # their normalized noisy text
    refine: RefineState
    first: tuple[str, ...] = ()  # the denoiser's first prediction of each (the intent candidate)


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
    calibration: str | None = None
    accept_threshold: float | None = Field(None, ge=0, le=1)


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
    `max_normalized` (how far from a command a text may be and still be read as it, default 0.3),
    `calibration` (path of the confidence calibrator, default the packaged calibration.json),
    `accept_threshold` (calibrated confidence from which an intent is returned, default the one
    documented in calibration.json). With the grammar constraint, each command is read by
    understand.read: stop/cancel phrases, negation, unknown slots, calibrated confidence.
    """

    name: ClassVar[str] = "language"
    Options = LanguageOptions
    accepts_kinds: ClassVar[frozenset[str]] = frozenset({"text"})
    answers_requests: ClassVar[bool] = True  # a command waits for its reading

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
        cal = Calibrator.load(Path(cfg.calibration) if cfg.calibration else CALIBRATION_PATH)
        threshold = cal.threshold if cfg.accept_threshold is None else cfg.accept_threshold
        self.calibrator = Calibrator(cal.weights, threshold, cal.meta)

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
        heard = [clean_words(x) or x for x in noisy]  # the denoiser never saw fillers or stutters
        start = first_pass(self.model, heard, self.total)
        return LanguageState(tuple(frames), noisy, start, tuple(texts(start)))

    def step(self, state: LanguageState) -> LanguageState:
        return replace(state, refine=advance(self.model, state.refine))

    def project(self, state: LanguageState) -> LanguageState:
        """The grammar constraint (refine.grammar_projection): when refinement would halt, texts
        that are not commands are snapped to the nearest command, re-scored by the model; the
        halting rule then asks for one more read of what changed."""
        if self._project is None:
            return state
        return replace(state, refine=self._project(state.refine))

    def reading(self, raw: str, text: str, model_confidence: float, first: str | None = None) -> dict[str, Any]:
        """What one refined command means: intent (None: no command), reason, calibrated confidence;
        `first` (the denoiser's first prediction) is where the candidate is read from. Model only (no grammar constraint): the exact parse of the model's text and its own
        confidence, no understanding layer."""
        if not self.constrained:
            intent = self.grammar.parse(text)
            return {"intent": intent, "reason": None if intent else "out_of_grammar", "candidate": intent,
                    "command": text if intent else None, "confidence": model_confidence}
        r = read(self.grammar, self.calibrator, raw, text, model_confidence, self.max_normalized, first)
        out = {"intent": r.intent, "reason": r.reason, "candidate": r.candidate,
               "command": r.command if r.candidate is not None else None,
               "confidence": r.confidence}
        if r.negation is not None:
            out["negation"] = r.negation
        return out

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
        commands = [{"sensor": f.sensor, "seq": f.seq, "input": x, "text": t, "model_confidence": math.exp(-e),
                     **self.reading(x, t, math.exp(-e), first)}
                    for f, x, t, e, first in zip(state.frames, state.inputs, corrected, energy, state.first)]
        newest = commands[-1]
        return {
            "text": newest["text"],
            "intent": newest["intent"],
            "confidence": newest["confidence"],
            "reason": newest["reason"],
            "candidate": newest["candidate"],
            "command": newest["command"],
            "model_confidence": newest["model_confidence"],
            "embedding": torch.nn.functional.normalize(state.refine.embedding[-1], dim=0).cpu(),
            "input": newest["input"],
            "commands": commands,
            "queued": len(self._waiting),
            "dropped": self._waiting.dropped,
        }
