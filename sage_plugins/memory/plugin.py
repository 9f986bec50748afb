"""`memory`: stores salient experiences durably and recalls them by modern-Hopfield refinement.

Per run (one tick): collect candidate vectors from the inputs, queue the salient ones for
storage (never waiting for disk), and refine the first candidate as a query against what was
stored before this tick. See README.md in this folder for the exact rules.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from sage_plugins.memory import hopfield
from sage_plugins.memory.config import MemoryConfig
from sage_plugins.memory.consolidation import Consolidator
from sage_plugins.memory.index import PatternIndex
from sage_plugins.memory.store import Record, SqliteStore
from sage_runtime.plugin.contract import IRPPlugin, PluginContext, PluginInputs
from sage_runtime.records import Frame


@dataclass(frozen=True)
class Candidate:
    """A vector this tick offers to memory, with where it came from and how salient it was."""

    vec: torch.Tensor  # float32, length dim, on CPU
    source: str
    salience: float
    ts_ns: int
    meta: dict[str, Any]


@dataclass(frozen=True)
class MemoryState:
    recall: hopfield.Recall
    query_logits: torch.Tensor  # cosine of the (unit) query with every row, for reporting
    source: str
    queued: list[int]


def to_vector(value: Any, dim: int) -> torch.Tensor | None:
    """A float32 copy of length `dim`: shorter inputs are zero-padded, longer ones linearly
    resampled. None when empty, zero, or non-finite (or so large its norm overflows)."""
    t = torch.as_tensor(value).detach().to("cpu", torch.float32, copy=True).flatten()
    if t.numel() == 0:
        return None
    if t.numel() < dim:
        t = F.pad(t, (0, dim - t.numel()))
    elif t.numel() > dim:
        t = F.interpolate(t[None, None], size=dim, mode="linear", align_corners=True)[0, 0]
    norm = float(t.norm())  # nan or inf when any value is (one op instead of an isfinite pass)
    return t if math.isfinite(norm) and norm > 1e-12 else None


def is_vector_frame(frame: Frame) -> bool:
    return frame.kind == "tensor" and isinstance(frame.data, torch.Tensor) and frame.data.dim() == 1 \
        and frame.data.is_floating_point()


class MemoryPlugin(IRPPlugin):
    """Experience memory: SQLite (WAL, one writer thread) + a preallocated Hopfield index."""

    name = "memory"
    Options = MemoryConfig
    accepts_kinds = frozenset({"tensor", "text"})

    # ------------------------------------------------------------------ lifecycle

    def setup(self, ctx: PluginContext) -> None:
        super().setup(ctx)
        cfg = self.cfg = ctx.options
        self.max_steps = cfg.max_steps
        self.halt_eps = cfg.halt_eps
        self.path = Path(cfg.db_path) if cfg.db_path else Path(ctx.state_dir) / "memory.db"
        self.store = SqliteStore(self.path, cfg.dim, synchronous=cfg.synchronous, batch_max=cfg.batch_max,
                                 max_pending=cfg.max_pending)
        records = self.store.open()
        self.index = PatternIndex(cfg.capacity, cfg.dim, ctx.device)
        self.upkeep = Consolidator(self.index, self.store, cfg.merge_threshold, cfg.decay_half_life_s,
                                   keep=int(cfg.prune_to * cfg.capacity), same_source=cfg.recall_scope == "source")
        self._next_id = self.store.highest_id + 1  # ids are never reused, not even deleted ones
        if len(records) > cfg.capacity:  # capacity was lowered: keep the most salient
            records.sort(key=lambda r: (r.salience, r.id), reverse=True)
            self.store.delete(r.id for r in records[cfg.capacity:])
            records = sorted(records[: cfg.capacity], key=lambda r: r.id)
        for rec in records:
            vec = torch.from_numpy(rec.vec)
            self.index.add(rec.id, vec / vec.norm().clamp_min(1e-12), rec.salience, rec.source, rec.count)
            if not rec.consolidated:
                self.upkeep.fresh.append(rec.id)
        self._pending: list[tuple[int, torch.Tensor, float, str]] = []
        self.dropped = 0
        self.evicted = 0
        self._closed = False

    def warmup(self) -> None:
        """One step over the whole preallocated matrix (BLAS and allocator at full size), then
        the ordinary sample run."""
        q = torch.zeros(self.cfg.dim)
        q[0] = 1.0
        hopfield.step(self.index.matrix, hopfield.start(self.index.matrix, q, self.cfg.beta), self.cfg.beta)
        super().warmup()

    def close(self) -> None:
        """Write every queued store, checkpoint the WAL and close the one connection."""
        if not getattr(self, "_closed", True):
            self._closed = True
            self.store.close()

    # ------------------------------------------------------------------ direct API

    def remember(self, vector: Any, *, source: str, salience: float, snarc: dict[str, Any] | None = None,
                 meta: dict[str, Any] | None = None, ts_ns: int | None = None) -> int | None:
        """Queue one experience; returns its id at once (None: invalid vector or write backlog full).
        It joins the index at the next run and is acknowledged once committed."""
        vec = to_vector(vector, self.cfg.dim)
        if vec is None:
            return None
        item_id = self._next_id
        rec = Record(item_id, ts_ns if ts_ns is not None else time.time_ns(), source, float(salience),
                     vec.numpy(), snarc or {}, meta or {})
        if not self.store.insert(rec):
            self.dropped += 1
            return None
        self._next_id += 1
        self._pending.append((item_id, vec / vec.norm(), float(salience), source))
        return item_id

    def acknowledged(self) -> list[int]:
        """Ids committed to SQLite since the last call (or the last run's `stored_ids`)."""
        return self.store.take_acknowledged()

    def flush(self, timeout_s: float = 30.0) -> bool:
        """Wait until every queued write is on disk; False on timeout."""
        return self.store.flush(timeout_s)

    def wait_acknowledged(self, ids: Sequence[int], timeout_s: float = 30.0) -> bool:
        """Wait for the given stores to commit; True when every one did."""
        return self.store.wait_acknowledged(ids, timeout_s)

    def health_reasons(self) -> list[str]:
        rec = getattr(getattr(self, "store", None), "recovered", None)
        return [] if rec is None else [f"{rec['error']}; kept as {rec['kept']}, started empty"]

    def stats(self) -> dict[str, Any]:
        return {"size": self.index.n + len(self._pending), "capacity": self.cfg.capacity,
                "write_backlog": self.store.backlog, "dropped": self.dropped, "evicted": self.evicted,
                "write_errors": self.store.errors, "pending_consolidation": self.pending_consolidation(),
                "recovered": self.store.recovered}

    def _apply_pending(self) -> None:
        """Move queued experiences into the index, evicting the least salient when full."""
        evicted = []
        for item_id, unit, salience, source in self._pending:
            if self.index.full:
                victim = self.index.lowest_salience(1)[0]
                self.index.remove(victim)
                evicted.append(victim)
            self.index.add(item_id, unit, salience, source)
            self.upkeep.fresh.append(item_id)
        self._pending.clear()
        if evicted:
            self.store.delete(evicted)
            self.evicted += len(evicted)

    # ------------------------------------------------------------------ the IRP contract

    def sample_inputs(self, seed: int) -> PluginInputs:
        """A query-only vector frame (salience 0, so warmup never writes samples into a real
        memory); the vector depends on the seed."""
        g = torch.Generator().manual_seed(seed)
        vec = torch.randn(self.cfg.dim, generator=g)
        frame = Frame("sample", seed, 0, "tensor", vec, {})
        return PluginInputs(tick=seed, frames={"sample": frame}, salience={"sample": 0.0})

    def candidates(self, inputs: PluginInputs) -> list[Candidate]:
        """Vector frames (by sensor name, each queued frame), then upstream `embedding` outputs
        (by plugin name), then the fused vector. Salience: the frame's sensor score, else the
        tick's highest sensor score."""
        top = max(inputs.salience.values(), default=0.0)
        now = time.time_ns()
        out = []
        for sensor in sorted(inputs.frames):
            for frame in inputs.backlog.get(sensor) or [inputs.frames[sensor]]:
                vec = to_vector(frame.data, self.cfg.dim) if is_vector_frame(frame) else None
                if vec is not None:
                    out.append(Candidate(vec, sensor, float(inputs.salience.get(sensor, top)), frame.ts_ns,
                                         {"kind": "frame", "seq": frame.seq, "frame_meta": dict(frame.meta)}))
        for plugin in sorted(inputs.upstream):
            emb = inputs.upstream[plugin].get("embedding")
            vec = to_vector(emb, self.cfg.dim) if isinstance(emb, (torch.Tensor, np.ndarray)) else None
            if vec is not None and plugin != self.name:
                out.append(Candidate(vec, plugin, float(top), now, {"kind": "upstream"}))
        if inputs.fused is not None:
            vec = to_vector(inputs.fused, self.cfg.dim)
            if vec is not None:
                out.append(Candidate(vec, "fused", float(top), now, {"kind": "fused"}))
        return out

    def init_state(self, inputs: PluginInputs) -> MemoryState | None:
        self._apply_pending()
        cands = self.candidates(inputs)
        if not cands:
            return None
        snarc = {"salience": dict(inputs.salience)}
        queued = []
        for c in cands:
            if c.salience >= self.cfg.store_threshold:
                frame_snarc = c.meta.get("frame_meta", {}).get("snarc")
                meta = {**c.meta, "tick": inputs.tick, "state": inputs.state}
                item = self.remember(c.vec, source=c.source, salience=c.salience, ts_ns=c.ts_ns,
                                     snarc={**snarc, "snarc": frame_snarc} if frame_snarc else snarc, meta=meta)
                if item is not None:
                    queued.append(item)
        query = cands[0]
        unit = query.vec / query.vec.norm()
        exclude = self.index.source_mask(query.source) if self.cfg.recall_scope == "source" else None
        recall = hopfield.start(self.index.live, unit, self.cfg.beta, exclude)
        return MemoryState(recall, recall.logits, query.source, queued)

    def step(self, state: MemoryState) -> MemoryState:
        recall = hopfield.step(self.index.live, state.recall, self.cfg.beta)
        return dataclasses.replace(state, recall=recall)

    def energy(self, state: MemoryState) -> float:
        return state.recall.energy

    def halt(self, state: MemoryState, history: Sequence[float]) -> str | None:
        """Converged when the next step would move the state by less than `move_tol` (a bound
        the last step computed), or after one flat energy interval: the energy never rises
        (CCCP), so a flat step is a fixed point, not the turning point of an oscillation."""
        if state.recall.move < self.cfg.move_tol:
            return "converged"
        if len(history) >= 2 and abs(history[-1] - history[-2]) < self.halt_eps:
            return "converged"
        return None

    def outputs(self, state: MemoryState) -> dict[str, Any]:
        r = state.recall
        rows = torch.topk(r.logits, min(self.cfg.top_k, r.visible)).indices  # same order as the weights
        w = r.weights[rows]
        rows_list = rows.tolist()
        return {
            "recalled": r.q.cpu(),  # a fresh tensor of this run's state, nothing else holds it
            "topk_ids": self.index.ids[rows_list].tolist(),
            "topk_weights": w.tolist(),
            "topk_similarity": state.query_logits[rows].tolist(),
            "topk_sources": [self.index.source_of_row(i) for i in rows_list],
            "query_source": state.source,
            "queued_ids": state.queued,
            "stored_ids": self.store.take_acknowledged(),
            "memory_size": self.index.n,
        }

    # ------------------------------------------------------------------ offline work

    def pending_consolidation(self) -> int:
        return len(self._pending) + self.upkeep.pending()

    def consolidate(self, budget_ms: float) -> dict[str, Any]:
        """Decay, merge near-duplicates, then (once every new item is checked) prune to capacity
        and checkpoint the WAL. Bounded by budget_ms: merging stops between chunks, decay and
        pruning are O(n) vector work, and the writes go to the writer thread. The index never
        exceeds capacity meanwhile: storing into a full index evicts the least salient item."""
        t0 = time.perf_counter()
        deadline = t0 + budget_ms / 1e3
        self._apply_pending()
        factor = self.upkeep.decay(time.monotonic())
        checked, merged = self.upkeep.merge(deadline)
        caught_up = not self.upkeep.fresh
        pruned = self.upkeep.prune() if caught_up else 0  # merging first may make pruning unneeded
        checkpoint = caught_up and bool(checked or pruned or factor < 1.0)
        if checkpoint:
            self.store.checkpoint()
        return {"checked": checked, "merged": merged, "pruned": pruned, "decay": factor,
                "remaining": self.upkeep.pending(), "checkpoint": checkpoint,
                "size": self.index.n, "elapsed_ms": (time.perf_counter() - t0) * 1e3}
