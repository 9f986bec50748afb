"""The memory plugin's options (`plugins.options.memory`), with defaults and ranges."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from sage_runtime.plugin import PluginOptions


class MemoryConfig(PluginOptions):
    dim: int = Field(256, ge=1)                # stored vector length; other lengths are padded / resampled
    capacity: int = Field(16384, ge=1)         # rows of the preallocated index; never exceeded
    beta: float = Field(128.0, gt=0)           # Hopfield inverse temperature (README: choosing beta)
    store_threshold: float = 0.5               # store a candidate when its salience >= this
    top_k: int = Field(5, ge=1)                # ids / scores returned per retrieval
    max_steps: int = Field(10, ge=1)           # hard ceiling on Hopfield steps per run
    halt_eps: float = Field(1e-5, ge=0)        # converged when one step lowers the energy by less
    move_tol: float = Field(1e-4, ge=0)        # ... or when the next step would move the state less than this
    recall_scope: Literal["source", "all"] = "source"  # "source": query only items of the query's source
    merge_threshold: float = 0.95              # consolidation merges items with cosine above this
    decay_half_life_s: float = Field(7 * 86400.0, gt=0)  # salience halves over this much wall time
    prune_to: float = Field(0.95, gt=0, le=1)  # consolidation prunes to this fraction of capacity
    synchronous: str = Field("FULL", pattern=r"(?i)^(off|normal|full|extra)$")  # SQLite synchronous pragma
    batch_max: int = Field(512, ge=1)          # operations per writer transaction at most
    max_pending: int = Field(65536, ge=1)      # queued writes at most; beyond, stores are dropped and counted
    db_path: str | None = None                 # default: <state_dir>/memory.db
