"""SNARC salience, one scenario per test: calm scores ~0, steps surprise, repeats lose novelty,
big magnitudes arouse, broken agreement conflicts, rewards reach only their target."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sage_runtime.cognition.salience import SalienceParams, Snarc, SnarcScorer, SnarcWeights, featurize

DIMS = ("surprise", "novelty", "arousal", "reward", "conflict", "total")


def tensor(a) -> np.ndarray:
    return featurize("tensor", a)


def in_unit_range(r: Snarc) -> bool:
    return all(0.0 <= getattr(r, d) <= 1.0 for d in DIMS)


def test_constant_input_settles_to_near_zero_for_every_kind():
    rng = np.random.default_rng(0)
    scorer = SnarcScorer()
    frames = {"cam": tensor(rng.uniform(0, 255, (48, 64, 3)).astype(np.uint8)),
              "imu": tensor(np.array([0.1, -0.2, 9.81, 0.0, 0.0, 0.01], dtype=np.float32)),
              "mic": tensor(np.zeros(1600, dtype=np.int16)),
              "asr": featurize("text", "the door is closed"),
              "bus": featurize("event", {"type": "heartbeat", "priority": "info", "seq": 3})}
    for tick in range(30):
        scores = scorer.score(frames, now=tick * 0.01)
        assert all(in_unit_range(r) for r in scores.values())
    for name, r in scores.items():
        assert r.total <= 0.1, (name, r)
        assert r.surprise == r.novelty == r.arousal == r.conflict == 0.0, (name, r)


def test_calm_noisy_stream_stays_low():
    """Sensor noise is not an event: after warm-up a noisy but stationary stream scores low on
    average (research scorer: >= 0.25 for a constant input because sigmoid(0) = 0.5)."""
    rng = np.random.default_rng(1)
    scorer = SnarcScorer()
    image = rng.uniform(0, 255, (60, 80))
    totals = []
    for tick in range(400):
        scores = scorer.score({"cam": tensor(image + rng.normal(0, 2, image.shape)),
                               "vec": tensor(rng.normal(size=32))}, now=tick * 0.01)
        totals.append(max(r.total for r in scores.values()))
    assert np.mean(totals[100:]) <= 0.1


def test_step_change_surprises_then_decays():
    rng = np.random.default_rng(2)
    a, b = rng.normal(size=(2, 24, 24))
    scorer = SnarcScorer()
    for tick in range(40):
        scorer.score({"s": tensor(a)}, now=tick * 0.01)
    after = [scorer.score({"s": tensor(b + 0.5)}, now=1 + tick * 0.01)["s"].surprise for tick in range(12)]
    assert after[0] >= 0.8
    assert all(later <= earlier for earlier, later in zip(after, after[1:]))
    assert after[-1] <= 0.1


def test_step_surprises_even_on_a_noisy_sensor():
    rng = np.random.default_rng(3)
    scorer = SnarcScorer()
    for tick in range(200):
        r = scorer.score({"s": tensor(rng.normal(0, 0.1, 64) + 1.0)}, now=tick * 0.01)["s"]
    assert r.surprise < 0.5
    r = scorer.score({"s": tensor(rng.normal(0, 0.1, 64) + 5.0)}, now=2.0)["s"]
    assert r.surprise >= 0.8


def test_repeating_an_input_lowers_novelty():
    rng = np.random.default_rng(4)
    patterns = rng.normal(size=(6, 40))
    scorer = SnarcScorer()
    first = [scorer.score({"s": tensor(p)}, now=i * 0.01)["s"].novelty for i, p in enumerate(patterns)]
    again = [scorer.score({"s": tensor(p)}, now=1 + i * 0.01)["s"].novelty for i, p in enumerate(patterns)]
    assert min(first) > 0.5
    assert all(b < a for a, b in zip(first, again))
    assert max(again) <= 0.05


def test_novelty_memory_is_bounded():
    params = SalienceParams(memory_size=16, max_sensors=2)
    scorer = SnarcScorer(params)
    rng = np.random.default_rng(5)
    for i in range(100):
        scorer.score({f"s{i % 3}": tensor(rng.normal(size=50))}, now=i * 0.01)
    status = scorer.status()
    assert status["sensors"] == 2 and status["memory_rows"] <= 2 * 16


def test_large_magnitude_scores_high_arousal():
    rng = np.random.default_rng(6)
    scorer = SnarcScorer()
    normal = []
    for tick in range(150):
        normal.append(scorer.score({"mic": tensor(rng.normal(0, 1.0, 800))}, now=tick * 0.01)["mic"].arousal)
    loud = scorer.score({"mic": tensor(rng.normal(0, 30.0, 800))}, now=2.0)["mic"]
    assert max(normal[50:]) <= 0.2
    assert loud.arousal >= 0.8


def test_critical_event_is_arousing_on_an_event_sensor():
    scorer = SnarcScorer()
    for tick in range(20):
        scorer.score({"bus": featurize("event", {"type": "heartbeat", "priority": "info"})}, now=tick * 0.1)
    r = scorer.score({"bus": featurize("event", {"type": "collision", "priority": "critical"})}, now=3.0)["bus"]
    assert r.arousal >= 0.8 and r.surprise >= 0.8 and r.novelty >= 0.5


def correlated_run(decouple_at: int, ticks: int, invert: bool = False):
    """Sensors a and b read the same quantity (a shared random walk, small independent noise);
    c reads something unrelated. From `decouple_at` on, b reads its own walk (or the inverse)."""
    rng = np.random.default_rng(7)
    scorer = SnarcScorer()
    shape = rng.normal(size=32)
    level, own = 0.0, 0.0
    out = {"a": [], "b": [], "c": []}
    for tick in range(ticks):
        level += rng.normal() * 0.1
        if tick < decouple_at:
            b_level = level
        else:
            own += rng.normal() * 0.1
            b_level = -level if invert else own
        frames = {"a": tensor(0.1 * shape + level + 5 + rng.normal(0, 0.01, 32)),
                  "b": tensor(0.1 * shape + b_level + 5 + rng.normal(0, 0.01, 32)),
                  "c": tensor(shape + rng.normal() * 0.1 + 5)}
        for name, r in scorer.score(frames, now=tick * 0.01).items():
            out[name].append(r.conflict)
    return {k: np.array(v) for k, v in out.items()}


@pytest.mark.parametrize("invert", [False, True])
def test_correlated_sensors_that_disagree_raise_conflict_for_both(invert):
    c = correlated_run(decouple_at=500, ticks=540, invert=invert)
    for name in ("a", "b"):
        assert c[name][200:500].mean() <= 0.05, name
        assert c[name][500:540].max() >= 0.5, name
    assert c["c"].max() <= 0.2  # an unrelated sensor has no agreement to break


def test_conflict_fades_once_disagreement_is_the_new_normal():
    c = correlated_run(decouple_at=300, ticks=1000)
    assert c["a"][300:340].max() >= 0.5
    assert c["a"][900:].mean() <= 0.05


def test_rewards_shift_their_target_only_and_decay():
    scorer = SnarcScorer(SalienceParams(reward_half_life_s=10.0))
    frames = {"a": tensor(np.ones(8)), "b": tensor(np.ones(8))}
    for tick in range(10):
        before = scorer.score(frames, now=tick * 0.01)
    scorer.reward("a", 1.0, now=0.1)
    scorer.reward("a", 1.0, now=0.1)
    r = scorer.score(frames, now=0.2)
    assert r["a"].reward > 0.4 and r["a"].total > before["a"].total
    assert r["b"].reward == 0.0 and r["b"].total == before["b"].total
    later = scorer.score(frames, now=10.2)
    assert later["a"].reward == pytest.approx(r["a"].reward / 2, rel=0.01)
    scorer.reward("b", -1.0, now=10.2)
    assert scorer.score(frames, now=10.3)["b"].reward > 0.2  # punishment is salient too
    assert scorer.status()["rewards"]["b"] < 0  # the learned reward keeps its sign
    with pytest.raises(ValueError):
        scorer.reward("a", 2.0, now=11.0)


def test_total_is_the_weighted_mean_from_params():
    rng = np.random.default_rng(8)
    only_surprise = SnarcScorer(SalienceParams(weights=SnarcWeights(1, 0, 0, 0, 0)))
    both = SnarcScorer(SalienceParams(weights=SnarcWeights(1, 1, 0, 0, 0)))
    for tick in range(20):
        x = tensor(rng.normal(size=16) * (10 if tick == 15 else 1))
        r1 = only_surprise.score({"s": x}, now=tick * 0.01)["s"]
        r2 = both.score({"s": x}, now=tick * 0.01)["s"]
        assert r1.total == pytest.approx(r1.surprise, abs=1e-9)
        assert r2.total == pytest.approx((r2.surprise + r2.novelty) / 2, abs=1e-9)


def test_featurize_gives_fixed_length_float32_for_any_input():
    cases = [("tensor", np.float32(3.0)), ("tensor", np.zeros((0, 3))), ("tensor", np.arange(7, dtype=np.int64)),
             ("tensor", np.full((2000, 1000), 7, dtype=np.uint8)), ("tensor", np.array([np.nan, np.inf, 1.0])),
             ("tensor", torch.randn(3, 32, 32)), ("tensor", [[1, 2], [3, 4]]),
             ("text", ""), ("text", "héllo wörld " * 100),
             ("event", {"type": "x", "priority": "warning", "v": 1.5, "nested": {"a": 1}})]
    for kind, data in cases:
        f = featurize(kind, data)
        assert f.shape == (64,) and f.dtype == np.float32 and np.isfinite(f).all(), (kind, data)
    assert featurize("tensor", np.ones(10), dim=32).shape == (32,)
    with pytest.raises(ValueError, match="kind"):
        featurize("reward", {"value": 1})
    with pytest.raises(ValueError):
        SnarcScorer().score({"s": np.zeros(10, dtype=np.float32)}, now=0.0)


def test_features_tell_patterns_apart_and_ignore_scale_of_pattern():
    rng = np.random.default_rng(9)
    a, b = rng.normal(size=(2, 500))

    def cos(x, y):
        return float(x @ y / np.linalg.norm(x) / np.linalg.norm(y))

    assert cos(tensor(a), tensor(a + 1e-4)) > 0.999
    assert cos(tensor(a), tensor(b)) < 0.7
    assert cos(featurize("text", "open the door"), featurize("text", "open the door!")) > \
        cos(featurize("text", "open the door"), featurize("text", "battery is low"))


def test_params_validate_and_name_the_field():
    for kwargs, name in (({"dim": 4}, "dim"), ({"predictor_alpha": 0}, "predictor_alpha"),
                         ({"conflict_fast": 0.01}, "conflict_fast"), ({"arousal_floor": 0}, "arousal_floor")):
        with pytest.raises(ValueError, match=name):
            SalienceParams(**kwargs)
    with pytest.raises(ValueError, match=r"weights\.novelty"):
        SalienceParams(weights={"novelty": -1})  # the path names the nested key
    with pytest.raises(ValueError, match="novelty"):
        SnarcWeights(novelty=-1)


def test_rewards_and_sensors_are_bounded():
    scorer = SnarcScorer(SalienceParams(max_sensors=4))
    for i in range(20):
        scorer.reward(f"target{i}", 0.5, now=float(i))
    assert len(scorer.status()["rewards"]) == 4 and "target19" in scorer.status()["rewards"]
    with pytest.raises(ValueError, match="max_sensors"):
        scorer.score({f"s{i}": featurize("tensor", np.ones(3)) for i in range(5)}, now=30.0)
