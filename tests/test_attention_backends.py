"""The attention modules' two backends (numpy on CPU, SDPA on CUDA; both on CPU here) give the
same results on the same inputs, and `auto` picks numpy on CPU. The SDPA path stays covered on
CPU through `backend="sdpa"` (the other test files exercise `auto`)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sage_runtime.cognition.attention import (
    FEATURES, STATES, AtpAllocator, Sensor, SensorFusion, TrustWeightedExpertSelector,
)


def sensors(n: int, seed: int) -> list[Sensor]:
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        kind = ("image", "text", "vector")[i % 3]
        data = {"image": rng.integers(0, 256, (24, 32, 3), dtype=np.uint8), "text": f"door {i} open",
                "vector": rng.standard_normal(int(rng.integers(1, 40)))}[kind]
        out.append(Sensor(kind, data, float(rng.uniform(0.1, 1)), float(rng.uniform(0, 1)), i == 2))
    return out


def test_auto_is_numpy_on_cpu_and_bad_backends_refused() -> None:
    assert SensorFusion().backend == "numpy"
    assert TrustWeightedExpertSelector(d_model=64, n_experts=4, top_k=2).backend == "numpy"
    assert AtpAllocator().backend == "numpy"
    with pytest.raises(ValueError, match="backend"):
        SensorFusion(backend="jax")


@pytest.mark.parametrize("n", [1, 3, 8, 17])
@pytest.mark.parametrize("repeat", [False, True])
def test_fusion_backends_agree(n: int, repeat: bool) -> None:
    a, b = SensorFusion(backend="numpy"), SensorFusion(backend="sdpa", force_repeat_kv=repeat)
    s = sensors(n, n)
    for goal in ("navigate", torch.linspace(-1, 1, a.d)):
        fa, wa = a(goal, s)
        fb, wb = b(goal, s)
        torch.testing.assert_close(fa, fb, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(wa, wb, rtol=1e-4, atol=1e-6)
        if n > 2:
            assert wa[2] == 0.0  # stale: exactly no weight
        assert abs(float(wa.sum()) - 1.0) < 1e-5


def test_fusion_all_stale_is_zero_on_both() -> None:
    for backend in ("numpy", "sdpa"):
        fused, w = SensorFusion(backend=backend)("navigate", [("vector", None, 1.0, 0.0, False)])
        assert not fused.any() and not w.any()


@pytest.mark.parametrize("batch", [1, 5])
@pytest.mark.parametrize("alpha", [0.0, 0.3, 1.0])
def test_selector_backends_agree(batch: int, alpha: float) -> None:
    rng = np.random.default_rng(batch)
    a = TrustWeightedExpertSelector(d_model=64, n_experts=6, top_k=3, backend="numpy")
    b = TrustWeightedExpertSelector(d_model=64, n_experts=6, top_k=3, backend="sdpa")
    x = torch.from_numpy(rng.standard_normal((batch, 64)).astype(np.float32))
    trust = torch.from_numpy(rng.random(6))
    torch.testing.assert_close(a.router_logits(x), b.router_logits(x), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(a.scores(x, trust, alpha), b.scores(x, trust, alpha), rtol=1e-4, atol=1e-6)
    ia, _ = a.select(x, trust, alpha)
    ib, _ = b.select(x, trust, alpha)
    assert torch.equal(ia, ib)
    with pytest.raises(ValueError, match="trust needs"):
        a.scores(x, torch.zeros(5))


@pytest.mark.parametrize("state", STATES)
def test_allocator_backends_agree(state: str) -> None:
    rng = np.random.default_rng(len(state))
    a, b = AtpAllocator(backend="numpy"), AtpAllocator(backend="sdpa")
    f = torch.from_numpy(rng.random((3, 7, len(FEATURES))).astype(np.float32) * 2)
    mask = torch.ones(3, 7, dtype=torch.bool)
    mask[1, 4:] = False
    for m in (None, mask):
        ra = a.allocate_batch(state, f, 10.0, seed=7, mask=m)
        rb = b.allocate_batch(state, f, 10.0, seed=7, mask=m)
        torch.testing.assert_close(ra, rb, rtol=1e-5, atol=1e-6)
        assert ra.dtype == torch.float64 and torch.allclose(ra.sum(-1), torch.full((3,), 10.0, dtype=torch.float64))
    assert (a.allocate_batch(state, f, 10.0, seed=7, mask=mask)[1, 4:] == 0).all()
    torch.testing.assert_close(a.allocate(state, f[0], 4.0, seed=1), b.allocate(state, f[0], 4.0, seed=1),
                               rtol=1e-5, atol=1e-6)
