"""Sensor fusion: trust as log-prior, stale masking, salience, permutation, input sensitivity."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from sage_runtime.cognition.attention import Sensor, SensorFusion
from sage_runtime.cognition.attention.reference import NumpyFusion
from sage_runtime.cognition.attention.sdpa import HAS_ENABLE_GQA

FUSION = SensorFusion()
RNG = np.random.default_rng(0)
IMG = RNG.integers(0, 256, (48, 64, 3), dtype=np.uint8)
VEC = RNG.standard_normal(20)


def mixed(n: int, seed: int = 0) -> list[Sensor]:
    """n sensors cycling through the three modalities, with random trust and salience."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        kind = ("image", "text", "vector")[i % 3]
        data = {
            "image": rng.integers(0, 256, (int(rng.integers(8, 100)), int(rng.integers(8, 100)), 3), dtype=np.uint8),
            "text": f"obstacle {i} at {rng.integers(0, 100)} cm",
            "vector": rng.standard_normal(int(rng.integers(1, 50))),
        }[kind]
        out.append(Sensor(kind, data, float(rng.uniform(0.2, 1.0)), float(rng.uniform(0, 1))))
    return out


def test_weights_sum_to_one_for_1_to_16_sensors_and_more() -> None:
    for n in (1, 2, 7, 16, 21):
        fused, w = FUSION("navigate", mixed(n, n))
        assert fused.shape == (FUSION.d,) and w.shape == (n,)
        assert torch.isfinite(fused).all() and (w >= 0).all()
        assert abs(w.sum().item() - 1.0) < 1e-5


def test_trust_to_zero_drives_weight_to_zero() -> None:
    sensors = mixed(4, 1)
    weights = []
    for trust in (1.0, 1e-2, 1e-4, 1e-8, 0.0):
        sensors[2] = sensors[2]._replace(trust=trust)
        weights.append(FUSION("navigate", sensors)[1][2].item())
    assert all(a > b for a, b in zip(weights, weights[1:]))
    assert weights[-1] < 1e-6


def test_stale_and_missing_get_exactly_zero() -> None:
    sensors = mixed(5, 2)
    sensors[1] = sensors[1]._replace(stale=True, salience=1.0, trust=1.0)
    sensors[3] = sensors[3]._replace(data=None)
    _, w = FUSION("navigate", sensors)
    assert w[1].item() == 0.0 and w[3].item() == 0.0
    assert abs(w.sum().item() - 1.0) < 1e-6
    # A stale sensor's content cannot reach the fused vector either.
    changed = list(sensors)
    changed[1] = changed[1]._replace(data=np.zeros(7))
    assert torch.equal(FUSION("navigate", changed)[0], FUSION("navigate", sensors)[0])


def test_all_stale_or_empty_gives_zero_vector_and_zero_weights() -> None:
    sensors = [s._replace(stale=True) for s in mixed(3, 3)]
    fused, w = FUSION("navigate", sensors)
    assert torch.equal(fused, torch.zeros(FUSION.d)) and torch.equal(w, torch.zeros(3))
    fused, w = FUSION("navigate", [])
    assert torch.equal(fused, torch.zeros(FUSION.d)) and w.shape == (0,)
    fused, w = FUSION("navigate", [("vector", VEC, float("nan"), float("nan"), False), ("text", "hi", 1.0, 0.0, False)])
    assert torch.isfinite(fused).all() and w[0] < 1e-6


@settings(max_examples=80, deadline=None)
@given(seed=st.integers(0, 10**6), n=st.integers(2, 16), low=st.floats(0.0, 0.99), step=st.floats(0.01, 1.0))
def test_raising_salience_raises_weight(seed: int, n: int, low: float, step: float) -> None:
    sensors = mixed(n, seed)
    i = seed % n
    sensors[i] = sensors[i]._replace(salience=low)
    before = FUSION("navigate", sensors)[1][i].item()
    sensors[i] = sensors[i]._replace(salience=min(1.0, low + step))
    after = FUSION("navigate", sensors)[1][i].item()
    assert after > before or before > 1 - 1e-6


def test_permuting_sensors_permutes_weights() -> None:
    sensors = mixed(9, 4)
    fused, w = FUSION("navigate", sensors)
    perm = np.random.default_rng(5).permutation(9)
    fused_p, w_p = FUSION("navigate", [sensors[j] for j in perm])
    torch.testing.assert_close(w_p, w[torch.from_numpy(perm)], rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(fused_p, fused, rtol=1e-5, atol=1e-6)


def test_different_inputs_give_different_fused_vectors() -> None:
    base = [Sensor("image", IMG, 0.9, 0.5), Sensor("text", "door open", 0.8, 0.3), Sensor("vector", VEC, 0.7, 0.6)]
    ref, ref_w = FUSION("navigate", base)
    variants = {
        "image": [base[0]._replace(data=255 - IMG)] + base[1:],
        "text": [base[0], base[1]._replace(data="door closed")] + base[2:],
        "vector": base[:2] + [base[2]._replace(data=VEC * 3.0)],
        "trust": [base[0]._replace(trust=0.1)] + base[1:],
    }
    for name, sensors in variants.items():
        assert not torch.allclose(FUSION("navigate", sensors)[0], ref, atol=1e-4), name
    other_goal, other_w = FUSION("grasp the cup", base)
    assert not torch.allclose(other_goal, ref, atol=1e-4) and not torch.allclose(other_w, ref_w, atol=1e-4)
    goal_vec = FUSION.goal_vector("navigate")
    torch.testing.assert_close(FUSION(goal_vec, base)[0], ref)


def test_adapters_take_any_size_and_layout() -> None:
    images = [
        np.zeros((1, 1), np.uint8),
        RNG.integers(0, 256, (3, 5, 1), dtype=np.uint8),
        RNG.random((480, 640, 3)).astype(np.float32),
        torch.randint(0, 256, (20, 30, 4), dtype=torch.uint8),
        torch.rand(100, 7),
    ]
    vectors = [[1.0], np.arange(2.0), RNG.standard_normal(1000), torch.randn(33), np.array([np.nan, 2.0])]
    texts = ["", "é ü 日本", "x" * 5000, torch.randn(300)]
    sensors = [Sensor("image", d) for d in images] + [Sensor("vector", d) for d in vectors]
    sensors += [Sensor("text", d) for d in texts]
    fused, w = FUSION("explore", sensors)
    assert torch.isfinite(fused).all() and abs(w.sum().item() - 1) < 1e-5
    emb = FUSION.embed(sensors)
    assert emb.shape == (len(sensors), FUSION.d) and torch.isfinite(emb).all()
    assert len({tuple(np.round(r, 5)) for r in emb.numpy()}) == len(sensors)  # all distinct
    with pytest.raises(ValueError, match="unknown modality"):
        FUSION("explore", [("audio", np.zeros(3), 1.0, 0.0, False)])


def test_matches_numpy_reference_and_plain_tuples() -> None:
    sensors = mixed(11, 6)
    sensors[4] = sensors[4]._replace(stale=True)
    fused, w = FUSION("navigate", [tuple(s) for s in sensors])
    ref_fused, ref_w = NumpyFusion(FUSION).forward("navigate", sensors)
    np.testing.assert_allclose(fused.numpy(), ref_fused, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(w.numpy(), ref_w, rtol=1e-4, atol=1e-7)


@pytest.mark.skipif(not HAS_ENABLE_GQA, reason="this torch has no enable_gqa")
def test_enable_gqa_and_repeat_kv_fallback_agree() -> None:
    fallback = SensorFusion(force_repeat_kv=True)
    sensors = mixed(8, 7)
    fused, w = FUSION("navigate", sensors)
    fused_r, w_r = fallback("navigate", sensors)
    torch.testing.assert_close(fused_r, fused, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(w_r, w, rtol=1e-5, atol=1e-7)


def test_deterministic_with_seed() -> None:
    sensors = mixed(6, 8)
    assert torch.equal(SensorFusion(seed=0)("navigate", sensors)[0], FUSION("navigate", sensors)[0])
    assert not torch.allclose(SensorFusion(seed=1)("navigate", sensors)[0], FUSION("navigate", sensors)[0])


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_matches_cpu() -> None:
    gpu = SensorFusion(device="cuda")
    sensors = mixed(6, 9)
    fused, w = gpu("navigate", sensors)
    ref, ref_w = FUSION("navigate", sensors)
    torch.testing.assert_close(fused.cpu(), ref, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(w.cpu(), ref_w, rtol=1e-4, atol=1e-6)


def test_precomputed_features_fuse_exactly_like_the_raw_inputs():
    fusion = SensorFusion(d=64, q_heads=4, kv_heads=2, seed=3)
    rng = np.random.default_rng(5)
    raw = [("image", rng.integers(0, 255, (48, 64, 3), dtype=np.uint8)), ("vector", rng.standard_normal(6)),
           ("text", "go to the dock")]
    direct, w_direct = fusion("inspect", [Sensor(m, d, 0.8, 0.3) for m, d in raw])
    pre, w_pre = fusion("inspect", [Sensor(m, fusion.features(m, d), 0.8, 0.3) for m, d in raw])
    assert torch.equal(direct, pre) and torch.equal(w_direct, w_pre)
    with pytest.raises(ValueError, match="given as"):
        fusion("inspect", [Sensor("text", fusion.features("vector", raw[1][1]))])
