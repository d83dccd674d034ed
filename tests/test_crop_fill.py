"""The window fill: each step trains on a random window of a big plane (engine.windows.crop_fill, ``crop``)."""

import warnings
from importlib import import_module

import numpy as np
import pytest
import torch

import napari_mpi
from napari_mpi.api import DenoiseWarning
from napari_mpi.engine.fill import CarriedNetwork, continuation_steps
from napari_mpi.engine.windows import CROP_MARGIN, crop_fill, window_pass
from napari_mpi.settings import FillConfig, plane_steps
from napari_mpi.settings import crop_steps as crop_steps_for
from napari_mpi.weights import default_checkpoint

from .conftest import psnr

DEFAULTS = FillConfig()
FINAL_PREDICTIONS, REUSE_PREDICTIONS, CROP_STEP_SCALE = (
    DEFAULTS.final_predictions, DEFAULTS.reuse_predictions, DEFAULTS.crop_step_scale)


def crop_steps(iterations, height, width, crop, config=DEFAULTS):
    return crop_steps_for(iterations, height, width, crop, config)


plane_module = import_module("napari_mpi.engine.plane")  # fills a plane: whole, in windows or in tiles


@pytest.fixture
def camera_plane() -> tuple[np.ndarray, np.ndarray]:
    """A 128x192 crop of the camera picture and a noisy copy (Gaussian, sigma 0.1)."""
    from skimage import data

    clean = data.camera()[128:256, 160:352].astype(np.float32) / 255.0
    return clean, (clean + np.random.default_rng(0).normal(0, 0.1, clean.shape)).astype(np.float32)


def test_steps_stand_for_a_share_of_the_whole_plane_steps_pixels():
    assert crop_steps(100, 512, 512, 256) == round(CROP_STEP_SCALE * 100 * 4)
    assert crop_steps(100, 1024, 512, 256) == round(CROP_STEP_SCALE * 100 * 8)
    assert crop_steps(10, 96, 160, 64) == max(10, round(CROP_STEP_SCALE * 10 * 96 * 160 / 64**2))
    assert crop_steps(100, 200, 100, 256) == 100  # a window as big as the plane: the whole-plane steps
    half = FillConfig(crop_step_scale=0.5)
    assert crop_steps(100, 300, 300, 256, half) == 100  # never fewer than the whole-plane steps
    assert crop_steps(100, 512, 512, 256, half) == 200


def test_the_network_only_ever_sees_windows_and_every_pixel_gets_predictions(camera_plane):
    _, noisy = camera_plane
    image = torch.from_numpy(noisy)[None]
    seen: list[tuple[int, ...]] = []
    original = torch.nn.Module.__call__

    def record(module, *args, **kwargs):
        if type(module).__name__ == "SkipNet":
            seen.append(tuple(args[0].shape[-2:]))
        return original(module, *args, **kwargs)

    config = FillConfig(iterations=30, mask_ratio=0.9)  # ~4 passes of 35 windows, 90% of each hidden
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(torch.nn.Module, "__call__", record)
        steps = list(crop_fill(image, config, None, "cpu", crop=64))
    training, predictions = crop_steps(30, 128, 192, 64), crop_steps(min(FINAL_PREDICTIONS, 30), 128, 192, 64)
    assert len(steps) == plane_steps(config, 128, 192, 64) == training + predictions == steps[-1].iterations
    assert set(seen) == {(64, 64)} and len(seen) == len(steps)
    predicted = steps[-1].estimate[0].numpy() != noisy  # a pixel never predicted keeps its noisy value
    assert predicted.mean() > 0.999
    for border in (predicted[0], predicted[-1], predicted[:, 0], predicted[:, -1]):
        assert border.mean() > 0.98


@pytest.mark.parametrize("height,width,crop", [(512, 512, 256), (768, 512, 256), (300, 2048, 256), (128, 192, 64),
                                               (100, 300, 128)])
def test_every_pass_of_windows_covers_every_pixel(height, width, crop):
    rng = np.random.default_rng(0)
    for _ in range(20):
        covered = np.zeros((height, width), dtype=int)
        for top, left in window_pass(height, width, crop, rng):
            size_h, size_w = min(crop, height), min(crop, width)
            assert 0 <= top <= height - size_h and 0 <= left <= width - size_w
            # the used part: all but CROP_MARGIN at a window edge inside the plane
            bottom, right = top + size_h, left + size_w
            rows = slice(top + (CROP_MARGIN if top else 0), bottom - (CROP_MARGIN if bottom < height else 0))
            cols = slice(left + (CROP_MARGIN if left else 0), right - (CROP_MARGIN if right < width else 0))
            covered[rows, cols] += 1
        assert covered.min() >= 1 and covered.mean() <= 3  # every pixel, none far more often


def test_crop_fill_denoises_and_is_reproducible(camera_plane):
    clean, noisy = camera_plane
    image = torch.from_numpy(noisy)[None]
    state = default_checkpoint(1, "pixel", 0.3).state_dict
    config = FillConfig(iterations=40, seed=1)  # 80 steps of 96x96: ~9 passes over the plane
    first = list(crop_fill(image, config, state, "cpu", crop=96))[-1].estimate[0].numpy().copy()
    again = list(crop_fill(image, config, state, "cpu", crop=96))[-1].estimate[0].numpy()
    other = list(crop_fill(image, FillConfig(iterations=40, seed=2), state, "cpu", crop=96))[-1].estimate[0].numpy()
    np.testing.assert_array_equal(first, again)
    assert not np.array_equal(first, other)
    assert psnr(first, clean) > psnr(noisy, clean) + 4.0


def test_crop_fill_refuses_what_it_cannot_do(camera_plane):
    image = torch.from_numpy(camera_plane[1])[None]
    with pytest.raises(ValueError, match="auto preset"):
        next(crop_fill(image, FillConfig(selfsup=True), None, "cpu", crop=64))
    with pytest.raises(ValueError, match="crop size must be a whole number >= 64"):
        next(crop_fill(image, FillConfig(), None, "cpu", crop=32))


def test_a_carried_network_continues_in_windows(camera_plane):
    clean, noisy = camera_plane
    config = FillConfig(iterations=4, precision="fp32")
    carried = CarriedNetwork()
    first = list(crop_fill(torch.from_numpy(noisy)[None], config, None, "cpu", 64, carried))
    assert len(first) == plane_steps(config, 128, 192, 64) and carried.channels == 1
    model, optimizer = carried.model, carried.optimizer
    adam_steps = optimizer.state[next(model.parameters())]["step"].item()

    second_noisy = clean + np.random.default_rng(1).normal(0, 0.1, clean.shape).astype(np.float32)
    image = torch.from_numpy(second_noisy)[None]
    steps = list(crop_fill(image, config, None, "cpu", 64, carried))
    trained = crop_steps(continuation_steps(config), 128, 192, 64)
    assert len(steps) == trained + crop_steps(REUSE_PREDICTIONS, 128, 192, 64)
    assert carried.model is model  # the same network went on training, in windows, for the continuation steps only
    assert optimizer.state[next(model.parameters())]["step"].item() == adam_steps + trained
    estimate = steps[-1].estimate
    # predictions at most pixels: 64x64 windows keep only their inner 32x32, so only a few windows cover a pixel
    # here, each hiding it with p = 0.3 (with 10 predictions, ~4: 0.7**4 = 24% would get none)
    assert (estimate == image[0]).float().mean() < 0.5


def test_a_stack_reusing_the_network_continues_in_windows(camera_plane):
    clean, _ = camera_plane
    noisy = [clean + np.random.default_rng(t).normal(0, 0.1, clean.shape) for t in range(3)]
    stack = np.stack(noisy).astype(np.float32)
    events, alone_events = [], []
    reused = napari_mpi.denoise(stack, iterations=3, crop=64, reuse_network=True, refine="none", progress=events.append)
    alone = napari_mpi.denoise(stack, iterations=3, crop=64, refine="none", reuse_network=False,
                               progress=alone_events.append)
    first = crop_steps(3, 128, 192, 64) * 2  # 3 steps, then 3 predictions
    later = (crop_steps(continuation_steps(FillConfig(iterations=3)), 128, 192, 64)
             + crop_steps(REUSE_PREDICTIONS, 128, 192, 64))
    assert [e.iterations for e in events] == [first] * first + [later] * (2 * later)
    assert len(alone_events) == 3 * first
    np.testing.assert_array_equal(reused[0], alone[0])  # the first plane is filled as when alone
    assert not np.array_equal(reused[1], alone[1])
    decided, reports = [], []  # the default decides per plane, in windows too
    plan = napari_mpi.prepare(stack.shape, stack.dtype, iterations=3, crop=64, refine="none")
    napari_mpi.drain(napari_mpi.denoise_steps(stack, plan, reports=reports), decided.append)
    assert [r.carried for r in reports] == [False, True, True] and all(r.mismatch is not None for r in reports[1:])
    assert all(crop_steps(continuation_steps(plan.config), 128, 192, 64) <= r.steps for r in reports[1:])


def test_auto_crops_big_planes_on_the_cpu_only():
    plan = napari_mpi.prepare((512, 512), np.float32, device="cpu")
    assert plan.crop == 256 and plan.describe()["crop"] == 256
    assert plan.steps_per_plane == (crop_steps(plan.config.iterations, 512, 512, 256)
                                    + crop_steps(FINAL_PREDICTIONS, 512, 512, 256))  # steps, then predictions
    assert napari_mpi.prepare((256, 256), np.float32, device="cpu").crop == 0  # small: the whole plane
    assert napari_mpi.prepare((384, 384), np.float32, device="cpu").crop == 0  # under 4 windows: no faster
    assert napari_mpi.prepare((512, 512, 3), np.uint8, device="cpu", rgb=True).crop == 0  # colour: whole planes
    assert napari_mpi.prepare((512, 512, 3), np.uint8, device="cpu", rgb=True, crop=256).crop == 256  # if asked
    assert napari_mpi.prepare((512, 512), np.float32, device="cpu", crop="none").crop == 0
    assert napari_mpi.prepare((512, 512), np.float32, device="cpu", preset="auto").crop == 0
    assert napari_mpi.prepare((3, 512, 512), np.float32, device="cpu", reuse_network=True).crop == 256
    assert napari_mpi.prepare((256, 256), np.float32, device="cpu", crop=128).crop == 128
    assert napari_mpi.prepare((100, 100), np.float32, device="cpu", crop=128).crop == 0  # the window is the plane
    none = napari_mpi.prepare((256, 256), np.float32, device="cpu", crop="none")
    assert none.steps_per_plane == none.config.iterations + FINAL_PREDICTIONS


@pytest.mark.parametrize(
    "kwargs,match",
    [({"crop": 32}, "at least 64 pixels"), ({"crop": "big"}, "'auto', 'none'"), ({"crop": True}, "'auto', 'none'"),
     ({"crop": 128, "preset": "auto"}, "auto preset")],
)
def test_crop_user_errors_are_clear(kwargs, match):
    with pytest.raises(ValueError, match=match):
        napari_mpi.prepare((2, 256, 256), np.float32, device="cpu", **kwargs)


def test_denoise_with_crops_reports_the_crop_steps_and_matches_the_plane_by_plane_api(camera_plane):
    _, noisy = camera_plane
    events = []
    result = napari_mpi.denoise(noisy, iterations=3, crop=64, progress=events.append, refine="none")
    steps = 2 * crop_steps(3, 128, 192, 64)  # 3 iterations, then 3 predictions
    assert [e.iteration for e in events] == list(range(1, steps + 1)) and {e.iterations for e in events} == {steps}
    plan = napari_mpi.prepare(noisy.shape, noisy.dtype, iterations=3, crop=64, refine="none")
    np.testing.assert_array_equal(result, napari_mpi.denoise_plane(noisy, plan))


def test_a_crop_fill_is_never_tiled_for_memory(monkeypatch, camera_plane):
    _, noisy = camera_plane
    monkeypatch.setattr(plane_module, "available_memory", lambda: 1)  # no plane would fit, a window does
    with warnings.catch_warnings():
        warnings.simplefilter("error", DenoiseWarning)
        result = napari_mpi.denoise(noisy, iterations=2, crop=64, refine="none")
    assert np.isfinite(result).all()


def test_out_of_memory_in_a_crop_fill_is_a_clear_memory_error(monkeypatch, camera_plane):
    def fails(*args, **kwargs):
        raise RuntimeError("DefaultCPUAllocator: can't allocate memory")
        yield

    monkeypatch.setattr(plane_module, "crop_fill", fails)
    with pytest.raises(MemoryError, match="ran out of memory training on 64x64 windows of a 128x192 plane"):
        napari_mpi.denoise(camera_plane[1], iterations=2, crop=64, device="cpu")
