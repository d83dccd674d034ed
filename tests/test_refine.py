"""The collaborative Wiener refinement (napari_mpi.engine.refine) and its place after the fill."""

import numpy as np
import pytest
import torch

import napari_mpi
from napari_mpi.api import DenoiseWarning
from napari_mpi.engine import refine
from napari_mpi.engine.refine import NoiseModel, collaborative_wiener, fit_noise_model, refine_estimate
from napari_mpi.settings import FillConfig

from .conftest import psnr


def _ramp(size: int = 96) -> torch.Tensor:
    y, x = torch.meshgrid(torch.linspace(0.05, 1.0, size), torch.linspace(0.05, 1.0, size), indexing="ij")
    return (0.5 * (y + x))[None].double()


@pytest.mark.parametrize("a,b", [(0.02, 0.0004), (0.0, 0.01), (0.03, 0.0)])
def test_noise_model_is_recovered_from_the_residual(a, b):
    torch.manual_seed(0)
    signal = _ramp(128)
    noisy = signal + torch.sqrt(a * signal + b) * torch.randn_like(signal)
    model = fit_noise_model(noisy, signal)
    assert model.a >= 0 and model.b >= 0
    assert model.a == pytest.approx(a, abs=0.002)
    assert model.b == pytest.approx(b, abs=0.0005)


def _gaussian_pilot(camera_crop: np.ndarray, sigma: float = 0.1):
    from scipy.ndimage import gaussian_filter

    rng = np.random.default_rng(1)
    noisy = (camera_crop + rng.normal(0.0, sigma, camera_crop.shape)).astype(np.float32)
    pilot = gaussian_filter(noisy, 1.2).astype(np.float32)
    return noisy, pilot


def test_refinement_improves_a_blurred_pilot(camera_crop):
    noisy, pilot = _gaussian_pilot(camera_crop)
    refined, model = refine_estimate(torch.from_numpy(noisy)[None], torch.from_numpy(pilot)[None])
    refined = refined[0].numpy()
    assert refined.shape == noisy.shape and refined.dtype == np.float32
    assert np.isfinite(refined).all()
    assert psnr(refined, camera_crop) > psnr(pilot, camera_crop) + 0.5
    assert model.b > 0


def test_noise_free_input_is_left_alone(camera_crop):
    image = torch.from_numpy(camera_crop)[None]
    refined, model = refine_estimate(image, image.clone())
    assert model.a == 0 and model.b == 0
    assert torch.allclose(refined, image, atol=1e-5)


def test_batching_does_not_change_the_result(camera_crop, monkeypatch):
    noisy, pilot = (torch.from_numpy(a)[None] for a in _gaussian_pilot(camera_crop[:50, :61]))
    variance = torch.full(noisy.shape[1:], 0.01)
    whole = collaborative_wiener(noisy, pilot, variance)
    monkeypatch.setattr(refine, "MATCH_BUDGET", 1)  # one displacement at a time
    monkeypatch.setattr(refine, "REFERENCE_BATCH", 7)
    assert torch.allclose(collaborative_wiener(noisy, pilot, variance), whole, atol=1e-5)


@pytest.mark.parametrize("shape", [(5, 30), (8, 8), (9, 40)])
def test_small_planes(shape):
    rng = np.random.default_rng(0)
    noisy = torch.from_numpy(rng.uniform(0, 1, (1, *shape)).astype(np.float32))
    pilot = torch.full_like(noisy, 0.5)
    out = collaborative_wiener(noisy, pilot, torch.full(shape, 0.05))
    assert out.shape == noisy.shape and torch.isfinite(out).all()
    if min(shape) < refine.BLOCK:  # no block fits: the pilot is kept
        assert torch.equal(out, pilot)


def test_colour_is_filtered_in_opponent_space():
    from skimage import data

    clean = data.astronaut()[100:196, 180:276].astype(np.float32) / 255.0
    rng = np.random.default_rng(2)
    noisy = (clean + rng.normal(0, 0.1, clean.shape)).astype(np.float32)
    from scipy.ndimage import gaussian_filter

    pilot = gaussian_filter(noisy, (1.2, 1.2, 0)).astype(np.float32)
    to_t = lambda a: torch.from_numpy(np.ascontiguousarray(a.transpose(2, 0, 1)))  # noqa: E731
    refined, _ = refine_estimate(to_t(noisy), to_t(pilot), colour=True)
    refined = refined.numpy().transpose(1, 2, 0)
    assert psnr(refined, clean) > psnr(pilot, clean) + 0.5


def test_denoise_refines_by_default_and_can_skip_it(camera_crop):
    rng = np.random.default_rng(3)
    noisy = (camera_crop + rng.normal(0, 0.1, camera_crop.shape)).astype(np.float32)
    options = dict(iterations=60, weights="random")
    events = []
    plain = napari_mpi.denoise(noisy, refine="none", progress=events.append, **options)
    assert np.array_equal(plain, events[-1].estimate())  # "none": the fill's last estimate, unchanged
    refined = napari_mpi.denoise(noisy, **options)
    assert napari_mpi.prepare(noisy.shape, noisy.dtype).describe()["refine"] == "wiener"
    assert psnr(refined, camera_crop) > psnr(plain, camera_crop) + 0.2
    with pytest.raises(ValueError, match="refine must be one of"):
        napari_mpi.prepare(noisy.shape, noisy.dtype, refine="bm3d")


def test_the_refined_plane_keeps_a_share_of_the_fill_estimate(camera_crop):
    """The default result is (1 - w) x the filter's output + w x the fill's estimate, w = refine_fill_weight."""
    rng = np.random.default_rng(4)
    noisy = (camera_crop[:64, :64] + rng.normal(0, 0.1, (64, 64))).astype(np.float32)
    options = dict(iterations=8, weights="random")
    fill = napari_mpi.denoise(noisy, refine="none", **options)
    wiener = napari_mpi.denoise(noisy, tuning={"refine_fill_weight": 0.0}, **options)
    weight = FillConfig().refine_fill_weight
    assert 0 < weight < 0.5
    blended = napari_mpi.denoise(noisy, **options)
    assert np.allclose(blended, (1 - weight) * wiener + weight * fill, atol=1e-5)
    assert not np.allclose(blended, wiener, atol=1e-4)
    pilot = torch.from_numpy(fill)[None]
    alone, _ = refine_estimate(torch.from_numpy(noisy)[None], pilot)
    half, _ = refine_estimate(torch.from_numpy(noisy)[None], pilot, fill_weight=0.5)
    assert torch.allclose(half, 0.5 * (alone + pilot), atol=1e-6)


def test_auto_refines_only_at_mask_ratios_for_independent_noise():
    plan = lambda **kw: napari_mpi.prepare((64, 64), np.float32, weights="random", **kw)  # noqa: E731
    assert plan().refine == "wiener"
    assert plan(mask_ratio=FillConfig().refine_max_mask_ratio).refine == "wiener"
    assert plan(mask_ratio=0.85).refine == "none"  # spatially correlated noise: the filter's model does not hold
    assert plan(mask_ratio=0.85, refine="wiener").refine == "wiener"
    assert plan(refine="none").describe()["refine"] == "none"


def test_out_of_memory_in_the_refinement_keeps_the_fill_result(camera_crop, monkeypatch):
    from napari_mpi.engine import plane

    def fail(*_, **__):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(plane, "refine_estimate", fail)
    options = dict(iterations=5, weights="random")
    with pytest.warns(DenoiseWarning, match="Wiener refinement"):
        result = napari_mpi.denoise(camera_crop, **options)
    assert np.array_equal(result, napari_mpi.denoise(camera_crop, refine="none", **options))


def test_noise_model_variance_is_positive():
    model = NoiseModel(0.0, 0.0)
    assert float(model.variance(torch.zeros(3)).min()) > 0
