"""Shared fixtures: tiny HRM configs and batches so semantic tests run in well under a second."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sage_plugins.reasoning.data import build_splits
from sage_plugins.reasoning.model import HRMACT, HRMConfig


def tiny_config(**overrides) -> HRMConfig:
    base = dict(vocab_size=6, seq_len=16, hidden_size=32, num_heads=2, mlp_multiple=32, H_layers=1, L_layers=1,
                H_cycles=2, L_cycles=3, halt_max_steps=4, puzzle_emb_ndim=32)
    base.update(overrides)
    return HRMConfig(**base)


@pytest.fixture(autouse=True)
def _one_thread():
    torch.set_num_threads(1)


@pytest.fixture
def tiny_model() -> HRMACT:
    torch.manual_seed(0)
    return HRMACT(tiny_config())


@pytest.fixture(scope="session")
def small_splits():
    return build_splits(4, 64, 64, (4, 11), seed=11)


@pytest.fixture
def batch(small_splits):
    train, _ = small_splits
    return train.batch(np.arange(8))
