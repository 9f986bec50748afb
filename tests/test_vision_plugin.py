"""Behaviour of the vision plugin: conformance, working size, data consistency (observed pixels kept
under dropout, weighted by the noise level under noise), monotone energy, halting, never below the
classical floor at any budget on held-out photos, input sensitivity, embedding usefulness."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from sage_plugins.vision import VisionPlugin, classical, refine
from sage_plugins.vision.model import PRIOR, WEIGHTS, PriorNet, load_prior, load_pretrained, param_count
from sage_runtime.conformance import FAR_FUTURE_NS, check_plugin, make_context
from sage_runtime.plugin.contract import PluginInputs
from sage_runtime.plugin.registry import load_plugin_class
from sage_runtime.plugin.runner import StepCost, run_plugin
from sage_runtime.records import Frame, RunResult

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def plugin() -> VisionPlugin:
    p = VisionPlugin()
    p.setup(make_context(p, {}))
    p.warmup()
    yield p
    p.close()


def frame(data: torch.Tensor, sensor: str = "camera", seq: int = 0, **meta: object) -> Frame:
    return Frame(sensor, seq, 0, "tensor", data, meta)


def run(p: VisionPlugin, *frames: Frame, atp_ms: float = 1e9, salience: dict[str, float] | None = None) -> RunResult:
    res = run_plugin(p, PluginInputs(frames={f.sensor: f for f in frames}, salience=salience or {}),
                     atp_ms=atp_ms, deadline_ns=FAR_FUTURE_NS, cost=StepCost())
    assert res.halt != "error", res.error
    return res


def scene(seed: int, h: int = 64, w: int = 64) -> torch.Tensor:
    """A uint8 H x W x 3 test image from the plugin's own sample generator."""
    data = VisionPlugin.sample_inputs(VisionPlugin(), seed).frames["camera"].data
    img = torch.nn.functional.interpolate(data.permute(2, 0, 1)[None].float(), size=(h, w), mode="bilinear")
    return img[0].permute(1, 2, 0).round().clamp(0, 255).to(torch.uint8)


def clean_scene(seed: int, h: int, w: int) -> torch.Tensor:
    """A noise-free generated uint8 H x W x 3 scene."""
    import numpy as np

    from sage_plugins.vision.data import scenes

    x = torch.nn.functional.interpolate(scenes(1, max(h, w), np.random.default_rng(seed)), size=(h, w), mode="bilinear")
    return (x[0].permute(1, 2, 0) * 255).round().clamp(0, 255).to(torch.uint8)


def with_alpha(img: torch.Tensor, share: float, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    alpha = torch.where(torch.rand(img.shape[:2], generator=g) < share, 0, 255).to(torch.uint8)
    return torch.cat([img, alpha[..., None]], -1)


def test_conformance() -> None:
    check_plugin(VisionPlugin)


def test_registered_by_entry_point() -> None:
    assert load_plugin_class("vision") is VisionPlugin


def test_models_and_weights_within_budget() -> None:
    assert param_count(load_prior()) <= 500_000 and param_count(load_pretrained()) <= 2_000_000
    assert PRIOR.stat().st_size + WEIGHTS.stat().st_size <= 4 * 1024 * 1024


def test_unknown_or_bad_config_is_rejected() -> None:
    with pytest.raises(ValueError, match=r"plugins\.options\.vision\.lamda: unknown key"):
        VisionPlugin().setup(make_context(VisionPlugin, {"lamda": 1.0}))
    with pytest.raises(ValueError, match="prior_sigma"):
        VisionPlugin().setup(make_context(VisionPlugin, {"prior_sigma": 0.0}))
    with pytest.raises(ValueError, match="holdout"):  # all observed pixels hidden: no energy to step on
        VisionPlugin().setup(make_context(VisionPlugin, {"holdout": 1.0}))


def test_accepts_images_only(plugin: VisionPlugin) -> None:
    img = scene(1)
    for data in (img, img[..., :1], img[..., 0], torch.cat([img, img[..., :1]], -1), img.float() / 255):
        assert plugin.accepts(frame(data)), tuple(data.shape)
    assert not plugin.accepts(frame(torch.randn(256)))
    assert not plugin.accepts(frame(torch.zeros(8, 8, 5, dtype=torch.uint8)))
    assert not plugin.accepts(Frame("mic", 0, 0, "text", "hello", {}))
    assert plugin.init_state(PluginInputs(frames={"v": frame(torch.randn(256))})) is None


@pytest.mark.parametrize("shape,working", [((2, 2, 3), (2, 2)), ((17, 301, 3), (14, 256)), ((480, 640, 1), (192, 256)),
                                           ((128, 128), (128, 128)), ((100, 50, 4), (100, 50))])
def test_outputs_at_the_working_size(plugin: VisionPlugin, shape: tuple[int, ...], working: tuple[int, int]) -> None:
    """The frame's own size up to max_side (256), aspect kept; the embedding is always 256-d."""
    g = torch.Generator().manual_seed(sum(shape))
    data = torch.randint(0, 256, shape, dtype=torch.uint8, generator=g)
    out = run(plugin, frame(data), atp_ms=1e9).outputs
    channels = 1 if len(shape) == 2 or shape[-1] in (1, 2) else 3
    assert out["embedding"].shape == (256,) and out["embedding"].dtype == torch.float32
    assert out["reconstruction"].shape == (*working, channels) and out["reconstruction"].dtype == torch.uint8
    assert out["error_map"].shape == working and bool((out["error_map"] >= 0).all())
    assert out["source_hw"] == list(shape[:2])


def test_observed_pixels_are_kept_under_dropout(plugin: VisionPlugin) -> None:
    """Noise-free frame with holes: at every budget the published valid pixels are the input's
    exactly (blindly estimated noise level and declared 0 alike); the holes are filled."""
    img = clean_scene(6, 96, 128)  # a scene where the prior's step is accepted (on many it is refused)
    data = with_alpha(img, 0.3, 1)
    valid = data[..., 3] > 0
    for meta in ({}, {"noise_sigma": 0.0}):
        recs = []
        for atp in (0.0, 1e9):
            res = run(plugin, frame(data, **meta), atp_ms=atp)
            rec = res.outputs["reconstruction"]
            assert torch.equal(rec[valid], img[valid]), (meta, atp, res.steps)
            assert res.outputs["noise_sigma"] == 0.0
            recs.append(rec)
        assert not torch.equal(recs[0], recs[1]), "no step was taken: the test would prove nothing"
    filled = (rec[~valid].float() - img[~valid].float()).abs().mean()
    assert float(filled) < 12, float(filled)  # holes hold a real estimate, not zeros or grey


def test_invalid_pixels_have_no_influence(plugin: VisionPlugin) -> None:
    img = scene(8)
    data = with_alpha(img, 0.3, 2)
    g = torch.Generator().manual_seed(3)
    garbage = torch.randint(0, 256, img.shape, dtype=torch.uint8, generator=g)
    other = data.clone()
    other[..., :3] = torch.where(data[..., 3:] == 0, garbage, img)
    a, b = run(plugin, frame(data)).outputs, run(plugin, frame(other)).outputs
    assert torch.equal(a["reconstruction"], b["reconstruction"]) and torch.equal(a["embedding"], b["embedding"])
    c = run(plugin, frame(other[..., :3])).outputs  # without the mask the garbage counts
    assert not torch.equal(a["reconstruction"], c["reconstruction"])


def test_noisy_pixels_count_by_their_noise_level(plugin: VisionPlugin) -> None:
    """Under noise the published image leaves the observation, the more the noisier it is said to be."""
    g = torch.Generator().manual_seed(4)
    img = scene(5, 96, 96)
    noisy = (img.float() + 0.08 * 255 * torch.randn(img.shape, generator=g)).clamp(0, 255).round().to(torch.uint8)
    dev = []
    for sigma in (0.0, 0.02, 0.08):
        rec = run(plugin, frame(noisy, noise_sigma=sigma)).outputs["reconstruction"]
        dev.append(float((rec.float() - noisy.float()).abs().mean()))
    assert dev[0] == 0.0 and 0 < dev[1] < dev[2], dev
    est = run(plugin, frame(noisy)).outputs["noise_sigma"]
    assert 0.06 < est < 0.1, est


def test_bad_declared_noise_level_is_a_clear_error(plugin: VisionPlugin) -> None:
    for bad in (-0.1, 2.0, "high", float("nan")):
        with pytest.raises(ValueError, match="noise_sigma"):
            plugin.init_state(PluginInputs(frames={"camera": frame(scene(1), noise_sigma=bad)}))


def test_energy_never_rises_even_with_a_prior_that_misleads() -> None:
    """The acceptance rule, not the net, keeps E monotone: an untrained net's steps are cut back
    or refused, never taken uphill, and refused steps leave the image as it was (progress on real
    photos: the held-out tests below)."""
    g = torch.Generator().manual_seed(0)
    x = torch.stack([clean_scene(s, 64, 64).permute(2, 0, 1).float() / 255 for s in (3, 4)])
    y = (x + 0.1 * torch.randn(x.shape, generator=g)).clamp(0, 1)
    valid = (torch.rand(2, 1, 64, 64, generator=g) > 0.3).float()
    torch.manual_seed(5)
    cases = {"noise+holes": (y, torch.tensor([0.1, 0.1])), "holes": (x * valid, torch.zeros(2))}
    for case, (obs, sigma) in cases.items():
        for name, net, cfg in (("trained", load_prior(), refine.RefineConfig()),
                               ("untrained", PriorNet().eval(), refine.RefineConfig()),
                               ("one step size", load_prior(), refine.RefineConfig(step_sizes=(1.0,)))):
            r = refine.start(net, obs, valid, sigma, cfg)
            energies, before = [r.energy], r
            for _ in range(8):
                r = refine.step(net, r, cfg)
                energies.append(r.energy)
                still = r.stalled.view(-1, 1, 1, 1)
                assert bool(torch.where(still, r.x == before.x, True).all()), (case, name)
                before = r
            e = torch.stack(energies)
            assert bool((e[1:] <= e[:-1]).all()), (case, name, e)


def test_energy_estimates_the_error_without_ground_truth() -> None:
    """E is the shadow restoration's error at observed pixels it never saw: under noise of level
    sigma it reads (its error against the clean image) + sigma^2, so steps it accepts are steps that
    help against the truth (on average; the held-out tests below check per crop)."""
    g = torch.Generator().manual_seed(1)
    x = torch.stack([clean_scene(s, 96, 96).permute(2, 0, 1).float() / 255 for s in (5, 6, 7)])
    sigma = 0.08
    y = (x + sigma * torch.randn(x.shape, generator=g)).clamp(0, 1)
    valid = torch.ones_like(x[:, :1])
    cfg = refine.RefineConfig()
    r = refine.start(load_prior(), y, valid, torch.full((3,), sigma), cfg)
    for _ in range(2):
        r = refine.step(load_prior(), r, cfg)
    n = r.held.sum((1, 2, 3)) * 3
    truth = (r.held * (r.shadow - x).square()).sum((1, 2, 3)) / n
    assert torch.allclose(r.energy, truth + sigma ** 2, rtol=0.15), (r.energy, truth + sigma ** 2)
    assert not bool((r.energy <= sigma ** 2 * 0.9).any())  # E does not reward copying the noise


def test_runner_history_is_monotone(plugin: VisionPlugin) -> None:
    for seed in (5, 6, 7):
        res = run(plugin, plugin.sample_inputs(seed).frames["camera"])
        assert res.steps >= 1 and all(b <= a for a, b in zip(res.energies, res.energies[1:])), res.energies


def test_halts_on_convergence_not_before(plugin: VisionPlugin) -> None:
    assert plugin.halt(None, [1.0]) is None
    assert plugin.halt(None, [1.0, 0.9]) is None
    assert plugin.halt(None, [1.0, 0.9, 0.9]) == "converged"  # a step that found no decrease
    assert plugin.halt(None, [1.0, 0.9, 0.89995]) == "converged"
    state = plugin.init_state(plugin.sample_inputs(3))
    assert plugin.halt(state, [1.0, 0.5]) is None
    stalled = replace(state, r=replace(state.r, stalled=torch.ones(1, dtype=torch.bool)))
    assert plugin.halt(stalled, [1.0, 0.5]) == "converged"


def test_error_map_is_zero_at_invalid_pixels_and_marks_noise(plugin: VisionPlugin) -> None:
    img = clean_scene(9, 64, 64)
    g = torch.Generator().manual_seed(6)
    patch = (img[32:, 32:].float() + 60 * torch.randn(32, 32, 3, generator=g)).clamp(0, 255)
    img[32:, 32:] = patch.round().to(torch.uint8)  # noise in one quadrant only
    alpha = torch.full((64, 64, 1), 255, dtype=torch.uint8)
    alpha[:16, :16] = 0
    err = run(plugin, frame(torch.cat([img, alpha], -1))).outputs["error_map"]
    assert bool((err[:16, :16] == 0).all())
    assert float(err[32:, 32:].mean()) > 5 * float(err[16:32, :32].mean()), err


def test_input_sensitivity(plugin: VisionPlugin) -> None:
    """Different frames give different outputs; a re-shot (noisy) frame of a scene has an
    embedding nearer to it than other scenes'."""
    def emb(data: torch.Tensor) -> torch.Tensor:
        e = run(plugin, frame(data)).outputs["embedding"]
        return e / e.norm()

    a, b = run(plugin, frame(scene(11))).outputs, run(plugin, frame(scene(12))).outputs
    assert not torch.equal(a["reconstruction"], b["reconstruction"])
    g = torch.Generator().manual_seed(2)
    for seed in (11, 12, 13):
        base = scene(seed)
        noisy = (base.float() + 12 * torch.randn(base.shape, generator=g)).clamp(0, 255).to(torch.uint8)
        same = float(emb(base) @ emb(noisy))
        others = [float(emb(base) @ emb(scene(s))) for s in (21, 22, 23)]
        assert same > max(others), (same, others)


def test_most_salient_image_frame_is_restored(plugin: VisionPlugin) -> None:
    a, b = frame(scene(14), "left"), frame(scene(15), "right")
    res = run(plugin, a, b, salience={"left": 0.2, "right": 0.9})
    assert res.outputs["sensor"] == "right"


def test_classical_floor_is_consistent_and_estimates_noise() -> None:
    g = torch.Generator().manual_seed(7)
    x = torch.rand(2, 3, 48, 40, generator=g)
    valid = (torch.rand(2, 1, 48, 40, generator=g) > 0.4).float()
    f = classical.floor(x * valid, valid, torch.zeros(2))
    assert torch.equal(f * valid, x * valid) and bool((f >= 0).all() and (f <= 1).all())
    noise = (0.5 + 0.07 * torch.randn(2, 3, 128, 128, generator=g))
    assert torch.allclose(classical.estimate_sigma(noise, torch.ones(2, 1, 128, 128)), torch.tensor([0.07, 0.07]),
                          rtol=0.1)


@pytest.fixture(scope="module")
def held_out() -> torch.Tensor:
    pytest.importorskip("skimage")
    from sage_plugins.vision.data import HELD_OUT_PHOTOS
    from sage_plugins.vision.evaluate import crops

    return crops(HELD_OUT_PHOTOS, 2, seed=99)


def _held_out_curve(held_out: torch.Tensor, condition: str):
    from sage_plugins.vision.data import corrupt
    from sage_plugins.vision.evaluate import anytime

    y, valid = corrupt(held_out, condition, seed=100)
    curve, _ = anytime(load_prior(), held_out, y, valid, refine.RefineConfig())
    return curve - curve[0]


def _shortfall(what: str) -> pytest.MarkDecorator:
    return pytest.mark.xfail(strict=True, reason=f"measured shortfall (README, 'What falls short'): {what}")


@pytest.mark.parametrize("condition", ["drop30", "blocks20", "noise05", "noise10"])
def test_better_than_the_floor_on_held_out_photos(held_out: torch.Tensor, condition: str) -> None:
    """6 crops of 3 photos never trained on: the full budget (4 steps) beats the classical floor on average."""
    above = _held_out_curve(held_out, condition)
    assert float(above[-1].mean()) >= 0.1, above[-1].round(3)


@pytest.mark.parametrize("condition", [
    pytest.param("drop30", marks=_shortfall("an accepted step lowers one crop 0.04 dB below the floor")),
    pytest.param("blocks20", marks=_shortfall("accepted steps lower 2 of 6 crops 0.01 and 0.05 dB below the floor")),
    pytest.param("noise05", marks=_shortfall("accepted steps lower 2 of 6 crops 0.07 and 0.13 dB below the floor")),
    "noise10"])
def test_never_below_the_floor_on_any_held_out_crop(held_out: torch.Tensor, condition: str) -> None:
    """At every budget 0..4 (the default max_steps) each crop is at least as good as the classical floor."""
    above = _held_out_curve(held_out, condition)
    assert float(above.min()) >= 0.0, above.round(3)


def _job(p: VisionPlugin, f: Frame, prev: object = None):
    from sage_runtime.plugin.runner import Job, advance, begin, next_halt

    job, cost = Job(PluginInputs(frames={f.sensor: f}), deadline_ns=FAR_FUTURE_NS), StepCost()
    begin(p, job, warm_from=prev)
    while next_halt(p, job, cost) is None:
        advance(p, job, cost)
    return job


def test_warm_start_on_a_panning_camera_takes_no_more_steps_and_is_closer_to_the_truth(plugin: VisionPlugin) -> None:
    """A window panning 2 px a frame, 30 % of pixels dropped afresh each frame: starting from the
    last frame's aligned estimate fills this frame's holes with what the camera saw before."""
    wide = clean_scene(11, 64, 64 + 2 * 6)
    prev, rows = None, {"warm": [], "restart": []}
    for k in range(6):
        clean = wide[:, 2 * k:2 * k + 64]
        f = frame(with_alpha(clean, 0.3, seed=100 + k), seq=k)
        cold, warm = _job(plugin, f), _job(plugin, f, prev)
        if k:
            assert warm.warm and not cold.warm
            for mode, job in (("warm", warm), ("restart", cold)):
                recon = torch.as_tensor(plugin.outputs(job.state)["reconstruction"])[..., :3]
                rows[mode].append((job.steps, float(((recon.float() - clean.float()) / 255).square().mean())))
        prev = warm.state
    steps = {m: sum(s for s, _ in r) for m, r in rows.items()}
    mse = {m: sum(e for _, e in r) for m, r in rows.items()}
    # (On real photos the restart run takes ~2.7 steps a frame and warm ~1: benchmarks/bench_warm_start.py.)
    assert steps["warm"] <= steps["restart"], steps
    assert mse["warm"] < 0.5 * mse["restart"], mse


def test_warm_start_is_refused_after_a_scene_cut_or_from_another_camera(plugin: VisionPlugin) -> None:
    first = _job(plugin, frame(with_alpha(clean_scene(12, 64, 64), 0.3, seed=1)))
    cut = frame(with_alpha(clean_scene(13, 64, 64), 0.3, seed=2), seq=1)
    assert plugin.warm_state(first.state, PluginInputs(frames={"camera": cut})) is None
    same = frame(with_alpha(clean_scene(12, 64, 64), 0.3, seed=3), sensor="other", seq=1)
    assert plugin.warm_state(first.state, PluginInputs(frames={"other": same})) is None
