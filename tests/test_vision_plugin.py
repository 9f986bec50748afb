"""Behaviour of the vision plugin: conformance, any image size, the validity-mask convention,
monotone energy, halting, embedding usefulness, the error map, and the shipped weights' quality
on held-out photos (refinement beats the encoder alone by >= 2 dB PSNR against the clean image)."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from sage_plugins.vision import VisionPlugin, refine
from sage_plugins.vision.model import WEIGHTS, load_pretrained, param_count
from sage_runtime.conformance import FAR_FUTURE_NS, check_plugin, make_context
from sage_runtime.plugin.contract import PluginInputs
from sage_runtime.plugin.runner import StepCost, run_plugin
from sage_runtime.records import Frame, RunResult
from sage_runtime.plugin.registry import load_plugin_class

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def plugin() -> VisionPlugin:
    p = VisionPlugin()
    p.setup(make_context(p, {}))
    p.warmup()
    yield p
    p.close()


def frame(data: torch.Tensor, sensor: str = "camera", seq: int = 0) -> Frame:
    return Frame(sensor, seq, 0, "tensor", data, {})


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


def test_conformance() -> None:
    check_plugin(VisionPlugin)


def test_registered_by_entry_point() -> None:
    assert load_plugin_class("vision") is VisionPlugin


def test_model_and_weights_within_budget() -> None:
    assert param_count(load_pretrained()) <= 2_000_000
    assert WEIGHTS.stat().st_size <= 8 * 1024 * 1024


def test_unknown_config_key_is_rejected() -> None:
    with pytest.raises(ValueError, match=r"plugins\.options\.vision\.lamda: unknown key"):
        VisionPlugin().setup(make_context(VisionPlugin, {"lamda": 1.0}))


def test_accepts_images_only(plugin: VisionPlugin) -> None:
    img = scene(1)
    for data in (img, img[..., :1], img[..., 0], torch.cat([img, img[..., :1]], -1), img.float() / 255):
        assert plugin.accepts(frame(data)), tuple(data.shape)
    assert not plugin.accepts(frame(torch.randn(256)))
    assert not plugin.accepts(frame(torch.zeros(8, 8, 5, dtype=torch.uint8)))
    assert not plugin.accepts(Frame("mic", 0, 0, "text", "hello", {}))
    assert plugin.init_state(PluginInputs(frames={"v": frame(torch.randn(256))})) is None


@pytest.mark.parametrize("shape", [(2, 2, 3), (17, 301, 3), (480, 640, 1), (64, 64), (100, 50, 4)])
def test_any_size_gives_fixed_size_outputs(plugin: VisionPlugin, shape: tuple[int, ...]) -> None:
    g = torch.Generator().manual_seed(sum(shape))
    data = torch.randint(0, 256, shape, dtype=torch.uint8, generator=g)
    res = run(plugin, frame(data), atp_ms=50)
    out = res.outputs
    channels = 1 if len(shape) == 2 or shape[-1] in (1, 2) else 3
    assert out["embedding"].shape == (256,) and out["embedding"].dtype == torch.float32
    assert out["reconstruction"].shape == (64, 64, channels) and out["reconstruction"].dtype == torch.uint8
    assert out["error_map"].shape == (8, 8) and bool((out["error_map"] >= 0).all())
    assert out["source_hw"] == list(shape[:2])


def test_energy_never_rises_even_with_oversized_steps() -> None:
    """Backtracking: a first step 10^6 times too large is cut down, never accepted uphill."""
    model = load_pretrained()
    g = torch.Generator().manual_seed(0)
    x = torch.stack([scene(s).permute(2, 0, 1).float() / 255 for s in (3, 4)])
    x = (x + 0.1 * torch.randn(x.shape, generator=g)).clamp(0, 1)
    valid = (torch.rand(2, 1, 64, 64, generator=g) > 0.3).float()
    for lr0 in (1e-2, 100.0, 1e8):
        _, hist = refine.refine(model, x, valid, refine.RefineConfig(lr0=lr0), steps=15)
        e = torch.stack(hist)
        assert bool((e[1:] <= e[:-1]).all()), (lr0, e)
        assert bool((e[-1] < e[0]).all()), "refinement made no progress"


def test_runner_history_is_monotone(plugin: VisionPlugin) -> None:
    for seed in (5, 6, 7):
        res = run(plugin, plugin.sample_inputs(seed).frames["camera"])
        assert res.steps >= 1 and all(b <= a for a, b in zip(res.energies, res.energies[1:])), res.energies


def test_halts_on_convergence_not_before(plugin: VisionPlugin) -> None:
    w = plugin.cfg.window
    assert plugin.halt(None, [1.0] * w) is None, "needs a full window"
    assert plugin.halt(None, [1.0, 0.9, 0.8, 0.7][-(w + 1):]) is None
    assert plugin.halt(None, [1.0, 1.0, 1.0, 1.0][-(w + 1):]) == "converged"  # stalled backtracking
    loose = VisionPlugin()
    loose.setup(make_context(loose, {"rel_eps": 0.02}))
    res = run(loose, loose.sample_inputs(5).frames["camera"])
    assert res.halt == "converged" and 1 <= res.steps < loose.max_steps, (res.halt, res.steps)


def test_invalid_pixels_are_ignored(plugin: VisionPlugin) -> None:
    """Pixels marked invalid by the alpha channel have no influence, whatever they hold."""
    img = scene(8)
    g = torch.Generator().manual_seed(1)
    alpha = torch.where(torch.rand(64, 64, generator=g) < 0.3, 0, 255).to(torch.uint8)
    garbage = torch.randint(0, 256, img.shape, dtype=torch.uint8, generator=g)
    other = torch.where(alpha[..., None] == 0, garbage, img)
    a = run(plugin, frame(torch.cat([img, alpha[..., None]], -1)), atp_ms=1e9)
    b = run(plugin, frame(torch.cat([other, alpha[..., None]], -1)), atp_ms=1e9)
    assert torch.equal(a.outputs["embedding"], b.outputs["embedding"])
    assert a.outputs["valid_fraction"] == pytest.approx(float((alpha > 0).float().mean()), abs=1e-4)
    # Without the mask the garbage is taken as pixels and changes the result.
    c = run(plugin, frame(other), atp_ms=1e9)
    assert not torch.equal(a.outputs["embedding"], c.outputs["embedding"])


def test_fully_masked_tiles_report_zero_error(plugin: VisionPlugin) -> None:
    img = scene(9)
    alpha = torch.full((64, 64, 1), 255, dtype=torch.uint8)
    alpha[:16, :16] = 0  # the top-left 2 x 2 tiles of the 8 x 8 map
    err = run(plugin, frame(torch.cat([img, alpha], -1))).outputs["error_map"]
    assert bool((err[:2, :2] == 0).all()) and float(err[2:, 2:].sum()) > 0


def test_error_map_locates_what_the_model_cannot_explain(plugin: VisionPlugin) -> None:
    """A one-pixel checkerboard pasted into a scene gives the largest tile errors where it is."""
    img = scene(10).clone()
    yy, xx = torch.meshgrid(torch.arange(16), torch.arange(16), indexing="ij")
    img[40:56, 8:24] = (((yy + xx) % 2) * 255).to(torch.uint8)[..., None]
    err = run(plugin, frame(img)).outputs["error_map"]
    top = torch.topk(err.flatten(), 4).indices
    rows, cols = top // 8, top % 8
    assert bool(((rows >= 5) & (rows <= 6) & (cols >= 1) & (cols <= 2)).all()), err


def test_embedding_is_closer_for_the_same_scene(plugin: VisionPlugin) -> None:
    """Usable by memory: a re-shot (noisy) frame of a scene is nearer to it than other scenes."""
    def emb(data: torch.Tensor) -> torch.Tensor:
        e = run(plugin, frame(data)).outputs["embedding"]
        return e / e.norm()

    g = torch.Generator().manual_seed(2)
    for seed in (11, 12, 13):
        base = scene(seed)
        noisy = (base.float() + 12 * torch.randn(base.shape, generator=g)).clamp(0, 255).to(torch.uint8)
        same = float(emb(base) @ emb(noisy))
        others = [float(emb(base) @ emb(scene(s))) for s in (21, 22, 23)]
        assert same > max(others), (same, others)


def test_most_salient_image_frame_is_refined(plugin: VisionPlugin) -> None:
    a, b = frame(scene(14), "left"), frame(scene(15), "right")
    res = run(plugin, a, b, salience={"left": 0.2, "right": 0.9})
    assert res.outputs["sensor"] == "right"


@pytest.fixture(scope="module")
def held_out() -> torch.Tensor:
    pytest.importorskip("skimage")
    from sage_plugins.vision.evaluate import HELD_OUT_PHOTOS, crops

    return crops(HELD_OUT_PHOTOS, per_photo=2, seed=99)


def _gain(clean: torch.Tensor, condition: str, seed: int) -> tuple[float, dict[str, Any]]:
    from sage_plugins.vision.evaluate import evaluate_condition

    rep: dict[str, Any] = evaluate_condition(clean, condition, seed, fixed=False)
    return rep["early_stop"]["psnr_db"] - rep["step0_psnr_db"], rep


def test_quality_dropped_pixels_on_held_out_photos(held_out: torch.Tensor) -> None:
    """The judged figure on a few held-out crops: with 30% of pixels dropped (mask known), PSNR
    against the clean crop after refinement exceeds the encoder-only (step 0) PSNR by >= 2 dB."""
    gain, rep = _gain(held_out, "drop30", 100)
    assert gain >= 2.0, rep
    assert all(g > 0 for g in rep["per_image_gain_db"]), rep["per_image_gain_db"]


@pytest.fixture(scope="module")
def noise_gain(held_out: torch.Tensor) -> tuple[float, dict[str, Any]]:
    return _gain(held_out, "noise10", 101)


def test_quality_noise_refinement_improves_on_held_out_photos(noise_gain: tuple[float, dict[str, Any]]) -> None:
    """With Gaussian noise sigma = 0.1, refinement improves on the encoder against the clean crop,
    on every crop (measured: +1.4 dB on the 48 crops of quality.json, bar 2 dB: see the xfail)."""
    gain, rep = noise_gain
    assert gain >= 0.8 and all(g > 0 for g in rep["per_image_gain_db"]), rep


def test_noise_gain_is_lost_to_fitting_the_noise_not_capped_by_the_decoder(held_out: torch.Tensor) -> None:
    """The diagnosis behind the xfail below, on the held-out crops with the default settings: the
    same descent aimed at the clean image (the oracle) gains more than 2 dB from the same step-0
    code, so the decoder could draw the better image; the descent on the noisy image gains about
    1.3 dB and then levels off (the latent absorbs the noise with the signal). If new weights or
    a new energy lift the noisy descent over 2 dB, the xfail fails on purpose: re-measure."""
    from sage_plugins.vision.evaluate import trajectory

    model, cfg = load_pretrained(), refine.RefineConfig()
    traj = trajectory(model, held_out, "noise10", 101, cfg, steps=50)
    oracle = trajectory(model, held_out, "noise10", 101, cfg, steps=50, oracle=True)
    assert oracle[50] - oracle[0] > 2.0, oracle
    assert 0.8 < traj[50] - traj[0] < 2.0 and traj[50] < oracle[50] - 1.0, (traj, oracle)
    assert traj[50] - traj[20] < 0.1, traj  # levelled off: more steps would not reach the bar


@pytest.mark.xfail(strict=True, reason="known gap (README.md 'Diagnosis', quality.json 'diagnosis'): refinement on the "
                   "noisy image adds ~1.4 dB over the encoder (the oracle aimed at the clean image adds > 3 dB)")
def test_quality_noise_meets_the_2db_bar_on_held_out_photos(noise_gain: tuple[float, dict[str, Any]]) -> None:
    gain, rep = noise_gain
    assert gain >= 2.0, rep


def test_ablation_coarse_data_term_is_the_energy_at_k1_and_blind_to_finer_detail() -> None:
    """The README's data-scale ablation swaps in this energy: at k = 1 it is the plugin's own E(z);
    at k = 2 a residual alternating every pixel (finer than the pooling) costs nothing, while a
    uniform residual costs the same at every scale, and dropped pixels stay out of the term."""
    from sage_plugins.vision.ablation import coarse_energy

    model = load_pretrained()
    g = torch.Generator().manual_seed(5)
    z = torch.randn(2, *model.latent_shape, generator=g) * 0.3
    x = torch.rand(2, 3, 64, 64, generator=g)
    valid = (torch.rand(2, 1, 64, 64, generator=g) > 0.3).float()
    with torch.no_grad():
        own, recon = refine.energy_of(model, z, x, valid, 1e-3)
        same, _ = coarse_energy(1)(model, z, x, valid, 1e-3)
        assert torch.allclose(own, same, rtol=1e-5)
        ones = torch.ones_like(valid)
        checker = ((torch.arange(64)[:, None] + torch.arange(64)[None, :]) % 2 * 2 - 1).float() * 0.1
        fine, _ = coarse_energy(2)(model, z, recon - checker, ones, 0.0)
        assert float(fine.max()) < 1e-10 < float(refine.energy_of(model, z, recon - checker, ones, 0.0)[0].min())
        flat1, _ = coarse_energy(1)(model, z, recon - 0.1, ones, 0.0)
        flat4, _ = coarse_energy(4)(model, z, recon - 0.1, ones, 0.0)
        assert torch.allclose(flat1, flat4, rtol=1e-4)
        assert torch.allclose(flat1, torch.full_like(flat1, 0.01), rtol=1e-3)
        outside = x + (1 - valid) * 5.0  # wildly different only where pixels are dropped
        assert torch.allclose(coarse_energy(2)(model, z, outside, valid, 1e-3)[0],
                              coarse_energy(2)(model, z, x, valid, 1e-3)[0], rtol=1e-5)
