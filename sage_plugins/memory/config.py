"""The memory plugin's options (the `config` mapping of its plugin section), with defaults."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any


@dataclass(frozen=True)
class MemoryConfig:
    dim: int = 256                     # stored vector length; other lengths are padded / resampled
    capacity: int = 16384              # rows of the preallocated index; never exceeded
    beta: float = 128.0                # Hopfield inverse temperature (README: choosing beta)
    store_threshold: float = 0.5       # store a candidate when its salience >= this
    top_k: int = 5                     # ids / scores returned per retrieval
    max_steps: int = 10                # hard ceiling on Hopfield steps per run
    halt_eps: float = 1e-5             # converged when one step lowers the energy by less
    move_tol: float = 1e-4             # ... or when the next step would move the state less than this
    recall_scope: str = "source"       # "source": query only items of the query's source; "all"
    merge_threshold: float = 0.95      # consolidation merges items with cosine above this
    decay_half_life_s: float = 7 * 86400.0  # salience halves over this much wall time
    prune_to: float = 0.95             # consolidation prunes to this fraction of capacity
    synchronous: str = "FULL"          # SQLite synchronous pragma (FULL survives power loss too)
    batch_max: int = 512               # operations per writer transaction at most
    max_pending: int = 65536           # queued writes at most; beyond, stores are dropped and counted
    db_path: str | None = None         # default: <state_dir>/memory.db

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any]) -> "MemoryConfig":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"memory plugin: unknown config key(s) {unknown}; known: {sorted(known)}")
        cfg = cls(**dict(values))
        if cfg.recall_scope not in ("source", "all"):
            raise ValueError(f"memory plugin: recall_scope must be 'source' or 'all', not {cfg.recall_scope!r}")
        if cfg.dim < 1 or cfg.capacity < 1 or cfg.beta <= 0 or not 0 < cfg.prune_to <= 1:
            raise ValueError(f"memory plugin: need dim, capacity >= 1, beta > 0, 0 < prune_to <= 1: {cfg}")
        return cfg
