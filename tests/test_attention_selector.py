"""Trust-weighted expert selector: alpha endpoints, context-specific trust, GQA vs repeat-KV."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from sage_runtime.cognition.attention import TrustWeightedExpertSelector, trust_for_context
from sage_runtime.cognition.attention.reference import NumpySelector
from sage_runtime.cognition.attention.sdpa import HAS_ENABLE_GQA

SEL = TrustWeightedExpertSelector()
N, K = SEL.n_experts, SEL.top_k


def contexts(b: int, seed: int) -> torch.Tensor:
    return torch.from_numpy(np.random.default_rng(seed).standard_normal((b, SEL.d_model)).astype(np.float32))


def stable_top(values: torch.Tensor, k: int) -> torch.Tensor:
    """Indices of the k largest per row, ties to the lower index (an independent sort)."""
    order = np.argsort(-values.double().numpy(), axis=-1, kind="stable")
    return torch.from_numpy(order[..., :k])


def test_alpha_zero_is_exactly_router_order() -> None:
    x = contexts(64, 0)
    trust = torch.rand(64, N, generator=torch.Generator().manual_seed(1))
    idx, _ = SEL.select(x, trust, alpha=0.0)
    assert torch.equal(idx, stable_top(SEL.router_logits(x), K))


def test_alpha_one_is_exactly_trust_order_with_index_tie_break() -> None:
    x = contexts(32, 2)
    rng = np.random.default_rng(3)
    trust = torch.from_numpy(np.round(rng.random((32, N)), 1))  # many exact ties
    idx, scores = SEL.select(x, trust, alpha=1.0)
    assert torch.equal(idx, stable_top(trust, K))
    assert torch.equal(scores, torch.gather(trust, 1, idx))
    flat = torch.full((N,), 0.5, dtype=torch.float64)
    assert torch.equal(SEL.select(x[0], flat, alpha=1.0)[0], torch.arange(K))


@settings(max_examples=60, deadline=None)
@given(alpha=st.floats(0.0, 1.0), seed=st.integers(0, 10**6))
def test_mixed_scores_rank_selected_above_the_rest(alpha: float, seed: int) -> None:
    x = contexts(4, seed % 1000)
    trust = torch.rand(4, N, generator=torch.Generator().manual_seed(seed))
    idx, scores = SEL.select(x, trust, alpha=alpha)
    full = SEL.scores(x, trust, alpha=alpha)
    assert torch.equal(torch.gather(full, 1, idx), scores)
    assert (scores[:, 1:] <= scores[:, :-1]).all()
    rest = full.scatter(1, idx, float("-inf"))
    assert (rest.amax(1) <= scores[:, -1]).all()
    assert (scores >= 0).all() and (scores <= 1).all()


def test_trust_in_one_context_does_not_leak_into_another() -> None:
    x = contexts(1, 5)[0]
    rng = np.random.default_rng(6)
    table = {"navigate": rng.random(N) * 0.5, "grasp": {3: 0.9, 17: 0.1}}
    before_a, _ = SEL.select(x, trust_for_context(table, "navigate", N))
    before_b, _ = SEL.select(x, trust_for_context(table, "grasp", N))
    outsider = next(e for e in range(N) if e not in before_a.tolist())
    table["navigate"] = table["navigate"].copy()
    table["navigate"][outsider] = 1.0
    after_a, _ = SEL.select(x, trust_for_context(table, "navigate", N))
    after_b, _ = SEL.select(x, trust_for_context(table, "grasp", N))
    assert outsider in after_a.tolist() and not torch.equal(after_a, before_a)
    assert torch.equal(after_b, before_b)
    assert torch.equal(trust_for_context(table, "unknown", N), torch.full((N,), 0.5, dtype=torch.float64))
    with pytest.raises(ValueError):
        trust_for_context({"a": [0.1, 0.2]}, "a", N)


@pytest.mark.skipif(not HAS_ENABLE_GQA, reason="this torch has no enable_gqa")
def test_enable_gqa_and_repeat_kv_fallback_agree() -> None:
    fallback = TrustWeightedExpertSelector(force_repeat_kv=True)
    assert fallback.repeat_kv and not SEL.repeat_kv
    x = contexts(16, 7)
    trust = torch.rand(N, generator=torch.Generator().manual_seed(8))
    torch.testing.assert_close(fallback.router_logits(x), SEL.router_logits(x), rtol=1e-5, atol=1e-6)
    for alpha in (0.0, 0.3, 1.0):
        assert torch.equal(fallback.select(x, trust, alpha)[0], SEL.select(x, trust, alpha)[0])


def test_numpy_api_and_numpy_reference() -> None:
    x = contexts(16, 9).numpy()
    trust = np.random.default_rng(10).random(N)
    idx, scores = SEL.select_numpy(x, trust)
    assert isinstance(idx, np.ndarray) and idx.shape == (16, K) and idx.dtype == np.int64
    assert isinstance(scores, np.ndarray) and scores.shape == (16, K)
    ref_idx, ref_scores = NumpySelector(SEL).select(x, trust)
    assert np.array_equal(idx, ref_idx)
    assert np.allclose(scores, ref_scores, atol=1e-5)
    one_idx, one_scores = SEL.select_numpy(x[0], trust)
    assert one_idx.shape == (K,) and np.array_equal(one_idx, idx[0])


def test_inputs_change_the_output() -> None:
    x = contexts(2, 11)
    logits = SEL.router_logits(x)
    assert not torch.allclose(logits[0], logits[1])
    trust = torch.rand(N, generator=torch.Generator().manual_seed(12))
    assert not torch.equal(SEL.scores(x, trust, 0.5), SEL.scores(x, 1.0 - trust, 0.5))


def test_seeded_weights_are_deterministic() -> None:
    x = contexts(3, 13)
    same = TrustWeightedExpertSelector(seed=0)
    other = TrustWeightedExpertSelector(seed=1)
    assert torch.equal(same.router_logits(x), SEL.router_logits(x))
    assert not torch.allclose(other.router_logits(x), SEL.router_logits(x))


def test_other_shapes_and_bad_arguments() -> None:
    wide = TrustWeightedExpertSelector(d_model=2048, n_experts=32, top_k=4)  # 2048 % 12 != 0
    idx, _ = wide.select(torch.randn(2, 2048), torch.rand(32))
    assert idx.shape == (2, 4)
    plugins = TrustWeightedExpertSelector(d_model=256, n_experts=3, top_k=1)  # route a fused vector
    idx, score = plugins.select(torch.randn(256), torch.tensor([0.2, 0.9, 0.5]), alpha=1.0)
    assert idx.tolist() == [1] and score.tolist() == pytest.approx([0.9])
    with pytest.raises(ValueError):
        SEL.select(contexts(1, 0), torch.rand(N), alpha=1.5)
    with pytest.raises(ValueError):
        SEL.select(contexts(1, 0), torch.rand(N - 1))
    with pytest.raises(ValueError):
        TrustWeightedExpertSelector(q_heads=12, kv_heads=5)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_matches_cpu() -> None:
    gpu = TrustWeightedExpertSelector(device="cuda")
    x = contexts(8, 14)
    trust = torch.rand(N)
    torch.testing.assert_close(gpu.router_logits(x.cuda()).cpu(), SEL.router_logits(x), rtol=1e-4, atol=1e-5)
    assert torch.equal(gpu.select(x.cuda(), trust.cuda(), 1.0)[0].cpu(), SEL.select(x, trust, 1.0)[0])
