"""ATP allocator: conservation, monotonicity, per-state patterns over many random target sets."""

from __future__ import annotations

import enum

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from sage_runtime.cognition.attention import COL, FEATURES, STATES, AtpAllocator, build_features
from sage_runtime.cognition.attention.allocator import SALIENCE, StatePattern
from sage_runtime.cognition.attention.reference import NumpyAllocator

F = len(FEATURES)
ALLOC = AtpAllocator()


def random_sets(b: int, n_max: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``b`` random target sets of 2..n_max targets, padded: features [b, n_max, F], mask [b, n_max].

    Every set has one crisis-flagged target; half have one consolidation target.
    """
    rng = np.random.default_rng(seed)
    n = rng.integers(2, n_max + 1, b)
    f = rng.random((b, n_max, F)).astype(np.float32)
    f[..., COL["cost_ms"]] = rng.exponential(2.0, (b, n_max))
    f[..., COL["staleness_s"]] = rng.exponential(1.0, (b, n_max))
    f[..., COL["is_crisis"]] = 0.0
    f[..., COL["is_consolidation"]] = 0.0
    rows = np.arange(b)
    f[rows, (rng.random(b) * n).astype(int), COL["is_crisis"]] = 1.0
    has_c = rng.random(b) < 0.5
    f[rows[has_c], (rng.random(b) * n).astype(int)[has_c], COL["is_consolidation"]] = 1.0
    mask = np.arange(n_max)[None, :] < n[:, None]
    return torch.from_numpy(f), torch.from_numpy(mask)


def gini(x: torch.Tensor, mask: torch.Tensor) -> np.ndarray:
    m = mask.double()
    pair = (x[:, :, None] - x[:, None, :]).abs() * m[:, :, None] * m[:, None, :]
    return (pair.sum((1, 2)) / (2 * m.sum(1) * x.sum(1))).numpy()


def entropy(x: torch.Tensor) -> np.ndarray:
    p = x / x.sum(1, keepdim=True)
    return (-torch.where(p > 0, p * p.log(), torch.zeros_like(p)).sum(1)).numpy()


def bootstrap_ci(values: np.ndarray, seed: int = 0, reps: int = 2000) -> tuple[float, float]:
    rng = np.random.default_rng(seed)
    means = values[rng.integers(0, values.size, (reps, values.size))].mean(1)
    lo, hi = np.percentile(means, [2.5, 97.5])
    return float(lo), float(hi)


def feature_arrays(n: int) -> st.SearchStrategy[np.ndarray]:
    unit = st.floats(0.0, 1.0, width=32)
    return arrays(np.float32, (n, F), elements=unit).map(_with_costs)


def _with_costs(f: np.ndarray) -> np.ndarray:
    f = f.copy()
    f[:, COL["cost_ms"]] *= 50.0
    f[:, COL["staleness_s"]] *= 10.0
    f[:, COL["is_crisis"]] = np.round(f[:, COL["is_crisis"]])
    f[:, COL["is_consolidation"]] = np.round(f[:, COL["is_consolidation"]])
    return f


sets_strategy = st.integers(1, 64).flatmap(feature_arrays)


@settings(max_examples=150, deadline=None)
@given(state=st.sampled_from(STATES), f=sets_strategy, total=st.floats(1e-3, 1e5), seed=st.integers(0, 2**31))
def test_sums_to_total_and_never_negative(state: str, f: np.ndarray, total: float, seed: int) -> None:
    out = ALLOC.allocate(state, torch.from_numpy(f), total, seed=seed)
    assert out.shape == (f.shape[0],)
    assert torch.isfinite(out).all()
    assert (out >= 0).all()
    assert abs(out.sum().item() - total) <= 1e-6 * total


@settings(max_examples=300, deadline=None)
@given(
    state=st.sampled_from(STATES),
    f=st.integers(2, 48).flatmap(feature_arrays),
    column=st.sampled_from(SALIENCE + ("trust",)),
    pick=st.integers(0, 10**6),
    delta=st.floats(1e-3, 1.0),
)
def test_share_never_falls_when_salience_or_trust_rises(
    state: str, f: np.ndarray, column: str, pick: int, delta: float
) -> None:
    i = pick % f.shape[0]
    raised = f.copy()
    raised[i, COL[column]] = min(1.0, raised[i, COL[column]] + delta)
    before = ALLOC.allocate(state, torch.from_numpy(f), 100.0, seed=7)[i].item()
    after = ALLOC.allocate(state, torch.from_numpy(raised), 100.0, seed=7)[i].item()
    assert after >= before - 1e-6 * 100.0  # float32 softmax rounding only


def test_every_input_column_changes_the_allocation() -> None:
    """Each feature moves target 0's share in at least one state (the research code ignored some)."""
    rng = np.random.default_rng(3)
    base = rng.random((6, F)).astype(np.float32) * 0.5
    base[:, COL["is_crisis"]] = 0.0
    base[:, COL["is_consolidation"]] = 0.0
    for name in FEATURES:
        changed = base.copy()
        changed[0, COL[name]] = 1.0 if name not in ("cost_ms", "staleness_s") else 20.0
        before, after = torch.from_numpy(base), torch.from_numpy(changed)
        states = ("WAKE", "CRISIS", "REST")
        moved = [abs(ALLOC.allocate(s, after, 1.0)[0] - ALLOC.allocate(s, before, 1.0)[0]) for s in states]
        assert max(moved) > 1e-3, name


def test_state_patterns_over_1000_random_target_sets() -> None:
    """Gini orders CRISIS > FOCUS > WAKE with disjoint bootstrap 95% intervals; DREAM explores."""
    f, mask = random_sets(1000, 64, seed=11)
    out = {s: ALLOC.allocate_batch(s, f, 100.0, seed=5, mask=mask) for s in STATES}
    for s, x in out.items():
        assert (x[~mask] == 0).all(), s
        assert torch.allclose(x.sum(1), torch.full((1000,), 100.0, dtype=torch.float64), rtol=1e-9), s
    ci = {s: bootstrap_ci(gini(out[s], mask)) for s in ("CRISIS", "FOCUS", "WAKE")}
    assert ci["CRISIS"][0] > ci["FOCUS"][1], ci
    assert ci["FOCUS"][0] > ci["WAKE"][1], ci

    h_dream, h_wake = entropy(out["DREAM"]), entropy(out["WAKE"])
    assert bootstrap_ci(h_dream)[0] > bootstrap_ci(h_wake)[1]
    other_seed = ALLOC.allocate_batch("DREAM", f, 100.0, seed=6, mask=mask)
    differs = (other_seed - out["DREAM"]).abs().amax(1) > 1e-6
    assert differs.float().mean() > 0.99
    assert torch.equal(ALLOC.allocate_batch("DREAM", f, 100.0, seed=5, mask=mask), out["DREAM"])


def test_focus_crisis_rest_wake_guarantees() -> None:
    f, mask = random_sets(300, 32, seed=2)
    n = mask.sum(1)
    pats = ALLOC.patterns
    top = ALLOC.allocate_batch("FOCUS", f, 1.0, mask=mask)
    assert (top.amax(1) >= pats["FOCUS"].mix).all()
    crisis = ALLOC.allocate_batch("CRISIS", f, 1.0, mask=mask)
    flagged = (crisis * f[..., COL["is_crisis"]]).sum(1)
    assert (flagged >= pats["CRISIS"].mix).all()  # even where the crisis target is the least salient
    wake = ALLOC.allocate_batch("WAKE", f, 1.0, mask=mask)
    assert ((wake >= pats["WAKE"].mix / n[:, None] - 1e-12) | ~mask).all()
    for share in (0.5, 0.7):
        rest = AtpAllocator(rest_consolidation_share=share).allocate_batch("REST", f, 1.0, mask=mask)
        cons = f[..., COL["is_consolidation"]]
        has = cons.sum(1) > 0
        assert ((rest * cons).sum(1)[has] >= share - 1e-12).all()


def test_target_order_does_not_matter() -> None:
    """Permuting targets permutes the split (the research FOCUS path only ever saw target 0)."""
    f, mask = random_sets(50, 24, seed=9)
    rng = np.random.default_rng(1)
    for s in ("WAKE", "FOCUS", "CRISIS", "REST"):
        for b in range(50):
            n = int(mask[b].sum())
            perm = torch.from_numpy(rng.permutation(n))
            out = ALLOC.allocate(s, f[b, :n], 1.0)
            assert torch.allclose(ALLOC.allocate(s, f[b, :n][perm], 1.0), out[perm], atol=1e-6), s


def test_crisis_without_flag_goes_to_the_top_target() -> None:
    f = torch.tensor([[0.1] * 5 + [0.5, 0.2, 1.0, 0.0, 0.0, 0.0], [0.9] * 5 + [0.9, 0.8, 1.0, 0.0, 0.0, 0.0]])
    out = ALLOC.allocate("CRISIS", f, 10.0)
    assert out[1] >= 9.0


def test_variable_target_count_on_one_module() -> None:
    alloc = AtpAllocator()
    rng = np.random.default_rng(0)
    for n in (1, 2, 5, 64, 65, 130, 3):
        out = alloc.allocate("WAKE", torch.from_numpy(rng.random((n, F)).astype(np.float32)), 8.0)
        assert out.shape == (n,) and abs(out.sum().item() - 8.0) < 1e-9
    assert alloc.allocate("FOCUS", torch.zeros(0, F), 8.0).shape == (0,)
    assert alloc.allocate("FOCUS", torch.rand(4, F), 0.0).sum().item() == 0.0


def test_batch_matches_single_and_numpy_reference() -> None:
    f, mask = random_sets(20, 16, seed=4)
    ref = NumpyAllocator(ALLOC)
    for s in ("WAKE", "FOCUS", "CRISIS", "REST"):
        batch = ALLOC.allocate_batch(s, f, 50.0, mask=mask)
        for b in range(20):
            n = int(mask[b].sum())
            single = ALLOC.allocate(s, f[b, :n], 50.0)
            assert torch.allclose(batch[b, :n], single, atol=1e-5), s
            assert np.allclose(single.numpy(), ref.allocate(s, f[b, :n].numpy(), 50.0), atol=1e-4), s


def test_deterministic_and_seeded() -> None:
    f = torch.rand(10, F)
    a, b = AtpAllocator(seed=3), AtpAllocator(seed=3)
    assert torch.equal(a.allocate("DREAM", f, 1.0), b.allocate("DREAM", f, 1.0))  # same construction seed
    assert torch.equal(a.allocate("DREAM", f, 1.0, seed=9), b.allocate("DREAM", f, 1.0, seed=9))
    assert not torch.equal(a.allocate("DREAM", f, 1.0, seed=9), a.allocate("DREAM", f, 1.0, seed=10))
    for s in ("WAKE", "FOCUS", "CRISIS", "REST"):
        assert torch.equal(a.allocate(s, f, 1.0, seed=1), a.allocate(s, f, 1.0, seed=2))


def test_build_features_and_state_names() -> None:
    f = build_features([{"surprise": 0.9, "is_crisis": 1}, {"cost_ms": 3.0}])
    assert f.shape == (2, F) and f.dtype == torch.float32
    assert f[0, COL["surprise"]] == pytest.approx(0.9) and f[1, COL["trust"]] == 0.5
    with pytest.raises(ValueError, match="unknown target feature"):
        build_features([{"suprise": 1.0}])
    State = enum.Enum("State", "WAKE FOCUS")
    assert torch.equal(ALLOC.allocate(State.FOCUS, f, 1.0), ALLOC.allocate("focus", f, 1.0))
    with pytest.raises(ValueError, match="unknown metabolic state"):
        ALLOC.allocate("SLEEP", f, 1.0)
    with pytest.raises(ValueError):
        StatePattern((1.0,) * (F - 1) + (-1.0,), 1.0, "top", 0.5)


def test_nan_features_do_not_poison_the_split() -> None:
    f = torch.rand(5, F)
    f[2, COL["surprise"]] = float("nan")
    out = ALLOC.allocate("WAKE", f, 10.0)
    assert torch.isfinite(out).all() and abs(out.sum().item() - 10.0) < 1e-9


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_matches_cpu() -> None:
    f = torch.rand(12, F)
    gpu = AtpAllocator(device="cuda")
    for s in ("WAKE", "FOCUS", "CRISIS", "REST"):
        assert torch.allclose(gpu.allocate(s, f.cuda(), 5.0).cpu(), ALLOC.allocate(s, f, 5.0), atol=1e-5)
