"""The public API: shapes, dtypes, units, determinism, weights files."""

import json

import numpy as np
import pytest
import torch

import napari_mpi
from napari_mpi.engine.network import SkipNet
from napari_mpi.weights import load_checkpoint, resolve_weights, save_checkpoint

from .conftest import FEW, psnr


@pytest.mark.parametrize(
    "shape,dtype,kwargs",
    [
        ((40, 36), np.uint8, {}),
        ((40, 36), np.uint16, {}),
        ((40, 36), np.int16, {}),
        ((40, 36), np.float64, {}),
        ((40, 36, 3), np.uint8, {"rgb": True}),
        ((40, 36, 4), np.uint8, {"rgb": True}),
        ((3, 40, 36), np.float32, {}),
        ((2, 2, 40, 36), np.uint16, {}),
        ((2, 40, 36), np.uint16, {"channel_axis": 0}),
        ((40, 36, 2), np.float32, {"channel_axis": -1}),
    ],
)
def test_shape_and_dtype_round_trips(shape, dtype, kwargs):
    rng = np.random.default_rng(0)
    info = np.iinfo(dtype) if np.dtype(dtype).kind in "iu" else None
    low, high = (max(info.min, -1000), min(info.max, 4000)) if info else (-3.0, 5.0)
    image = rng.uniform(low, high, size=shape).astype(dtype)
    result = napari_mpi.denoise(image, **FEW, **kwargs)
    assert result.shape == image.shape and result.dtype == np.float32
    # in the input's intensity units: same range, not [0, 1]
    assert abs(float(result.mean()) - float(image.mean())) < 0.25 * (high - low)
    if kwargs.get("rgb") and shape[-1] == 4:
        np.testing.assert_array_equal(result[..., 3], image[..., 3])  # alpha kept


def test_input_is_not_modified():
    image = np.random.default_rng(1).random((40, 40)).astype(np.float32)
    before = image.copy()
    napari_mpi.denoise(image, **FEW)
    np.testing.assert_array_equal(image, before)


def test_same_seed_same_result():
    image = np.random.default_rng(2).random((2, 40, 40)).astype(np.float32)
    a = napari_mpi.denoise(image, seed=3, **FEW)
    b = napari_mpi.denoise(image, seed=3, **FEW)
    c = napari_mpi.denoise(image, seed=4, **FEW)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


def test_progress_events_cover_every_plane_and_iteration():
    events = []
    napari_mpi.denoise(np.random.rand(3, 40, 40), progress=events.append, reuse_network=False, **FEW)
    # FEW's 2 iterations, then as many predictions
    assert [(e.plane, e.iteration, e.iterations) for e in events] == [(p, i, 4) for p in range(3) for i in (1, 2, 3, 4)]
    assert events[-1].fraction == 1.0 and np.isfinite(events[-1].loss)
    assert events[0].estimate().shape == (40, 40)


def test_constant_plane_is_returned_unchanged():
    image = np.stack([np.full((40, 40), 5.0), np.random.rand(40, 40)])
    result = napari_mpi.denoise(image, **FEW)
    np.testing.assert_array_equal(result[0], 5.0)


@pytest.mark.parametrize(
    "image,kwargs,match",
    [
        (np.zeros((40, 40), dtype=bool), {}, "boolean"),
        (np.zeros((5, 40)), {}, "too small"),
        (np.full((40, 40), np.nan), {}, "NaN"),
        (np.zeros((40, 40)), {"mask_ratio": 1.5}, "mask ratio"),
        (np.zeros((40, 40)), {"preset": "slow"}, "unknown preset"),
        (np.zeros((40, 40)), {"seed": -1}, "seed"),
        (np.zeros((40, 40)), {"device": "cuda:0" if not torch.cuda.is_available() else "nonsense"}, "device"),
        (np.zeros((40, 40)), {"weights": 3}, "weights must be"),
    ],
)
def test_user_errors_are_value_errors(image, kwargs, match):
    with pytest.raises(ValueError, match=match):
        napari_mpi.denoise(image, **{**FEW, **kwargs})


def test_gaussian_noise_gain_through_the_api(camera_crop):
    rng = np.random.default_rng(0)
    noisy = (camera_crop * 255 + rng.normal(0, 25, camera_crop.shape)).astype(np.float32)  # 8-bit units
    result = napari_mpi.denoise(noisy, iterations=100, weights="random")
    assert psnr(result, camera_crop * 255, 255) >= psnr(noisy, camera_crop * 255, 255) + 4.0


def _random_weights(tmp_path, channels=1, mode="pixel", seed=0):
    torch.manual_seed(seed)
    net = SkipNet(2 * channels, channels)
    path = save_checkpoint(tmp_path / f"w{channels}.pt", net.state_dict(), channels=channels, mask_mode=mode,
                           mask_ratios=(0.3, 0.3), metadata={"note": "test"}, half=True, sidecar=True)
    return path, net


def test_checkpoint_file_round_trip_and_use(tmp_path):
    path, net = _random_weights(tmp_path)
    ckpt = load_checkpoint(path)
    assert ckpt.channels == 1 and ckpt.mask_mode == "pixel" and ckpt.metadata["note"] == "test"
    for key, value in net.state_dict().items():
        assert torch.allclose(ckpt.state_dict[key].float(), value.float(), atol=1e-3, rtol=1e-3)  # fp16 storage
    image = np.random.default_rng(0).random((40, 40)).astype(np.float32)
    from_path = napari_mpi.denoise(image, iterations=2, weights=str(path))
    from_ckpt = napari_mpi.denoise(image, iterations=2, weights=ckpt)
    from_random = napari_mpi.denoise(image, iterations=2, weights="random")
    np.testing.assert_array_equal(from_path, from_ckpt)
    assert not np.array_equal(from_path, from_random)
    assert json.loads(path.with_suffix(".json").read_text())["sha256"]


def test_corrupt_or_foreign_weights_are_clear_errors(tmp_path):
    path, _ = _random_weights(tmp_path)
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="corrupt"):
        napari_mpi.denoise(np.random.rand(40, 40), weights=str(path), iterations=1)
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(bytes(data[:1000]))
    with pytest.raises(ValueError, match="corrupt"):
        load_checkpoint(truncated)
    foreign = tmp_path / "foreign.pt"
    torch.save({"hello": 1}, foreign)
    with pytest.raises(ValueError, match="not a napari-mpi checkpoint"):
        load_checkpoint(foreign)
    with pytest.raises(ValueError, match="not found"):
        load_checkpoint(tmp_path / "missing.pt")


def test_weights_must_fit_the_image(tmp_path):
    path, _ = _random_weights(tmp_path, channels=3, mode="channel")
    with pytest.raises(ValueError, match="3-channel"):
        resolve_weights(str(path), 1, "pixel", 0.3)
    assert resolve_weights(str(path), 3, "channel", 0.3).channels == 3
    assert resolve_weights("random", 1, "pixel", 0.3) is None
    gray, _ = _random_weights(tmp_path, channels=1)
    colour = resolve_weights(str(gray), 3, "channel", 0.3)  # gray weights serve colour, spread over the channels
    assert colour.channels == 3 and colour.from_gray and "gray weights for colour" in colour.name


def test_gray_weights_as_colour_start_as_the_gray_network_on_the_channel_mean(tmp_path):
    """Inflated weights predict, in every channel, what the gray network predicts from the channels' mean (with
    a mask shared by the channels); the fill then learns the colour from there."""
    path, gray_net = _random_weights(tmp_path, channels=1, seed=3)
    colour = load_checkpoint(path).as_colour()
    colour_net = SkipNet(6, 3)
    colour_net.load_state_dict(colour.state_dict)
    gray_net.load_state_dict(load_checkpoint(path).state_dict)  # the same fp16-rounded weights
    gray_net.eval()
    colour_net.eval()
    torch.manual_seed(0)
    image = torch.rand(1, 3, 48, 40)
    keep = (torch.rand(1, 1, 48, 40) > 0.3).float()
    with torch.no_grad():
        as_colour = colour_net(torch.cat([image * keep, keep.expand(1, 3, 48, 40)], dim=1))
        as_gray = gray_net(torch.cat([(image * keep).mean(1, keepdim=True), keep], dim=1))
    assert as_colour.shape == (1, 3, 48, 40)
    torch.testing.assert_close(as_colour, as_gray.expand(1, 3, 48, 40), atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="only gray"):
        colour.as_colour()


def test_the_plan_runs_the_presets_length_for_its_start():
    from napari_mpi.weights import default_start

    def preset_iterations(name, start):
        return napari_mpi.PRESETS[name].config(start).iterations

    def preset_beta(name, start):
        return napari_mpi.PRESETS[name].config(start).beta

    gray = napari_mpi.prepare((64, 64), np.float32)
    start = default_start(1, "pixel", gray.config.mask_ratio)
    assert (gray.checkpoint is not None) == (start == "pretrained")
    assert gray.config.iterations == preset_iterations("fast", start)
    assert napari_mpi.prepare((64, 64), np.float32, weights="random").config.iterations == 200
    assert napari_mpi.prepare((64, 64), np.float32, mask_ratio=0.9).checkpoint is None  # outside its ratios
    colour = napari_mpi.prepare((64, 64, 3), np.float32, rgb=True, preset="quality")  # gray weights, as colour
    colour_start = default_start(3, "channel", colour.config.mask_ratio)
    assert colour_start == ("gray_as_colour" if start == "pretrained" else "random")
    assert (colour.checkpoint is not None) == (colour_start == "gray_as_colour")
    assert colour.checkpoint is None or colour.checkpoint.from_gray
    assert (colour.config.iterations, colour.config.beta) == (
        preset_iterations("quality", colour_start), preset_beta("quality", colour_start))
    assert napari_mpi.prepare((64, 64), np.float32, iterations=30).config.iterations == 30


def test_reusing_the_network_on_alike_planes_is_faster_and_as_good():
    """A time-lapse of a still sample: the same clean image, fresh noise in every plane. (Keep the planes at
    128x128 or more: at 64x64 the first plane's network memorises more of its noise and reusing it costs
    clearly more; measured figures on the real FMD time-lapse in docs/benchmarks.md, "Stacks: the network from
    plane to plane".)"""
    from napari_mpi._sample_data import clean_fluorescence, expected_counts, noisy_fluorescence

    clean = clean_fluorescence((128, 128), seed=0)
    stack = np.stack([noisy_fluorescence(clean, seed=1 + t) for t in range(4)])
    reference = expected_counts(clean).astype(np.float64)
    data_range = float(reference.max() - reference.min())
    alone_events, reuse_events = [], []
    from napari_mpi.engine.fill import continuation_steps

    alone = napari_mpi.denoise(stack, reuse_network=False, progress=alone_events.append)  # fast, default weights
    reused = napari_mpi.denoise(stack, reuse_network=True, progress=reuse_events.append)
    decided = napari_mpi.denoise(stack)  # the default: decided per plane
    plan = napari_mpi.prepare((128, 128), np.float32)
    first = plan.steps_per_plane  # the iterations, then the final predictions
    later = continuation_steps(plan.config) + plan.config.reuse_predictions  # a few steps, then predictions
    assert len(alone_events) == 4 * first == 4 * (plan.config.iterations + plan.config.final_predictions)
    assert len(reuse_events) == first + 3 * later
    assert [e.iterations for e in reuse_events if e.plane > 0] == [later] * (3 * later)
    assert reuse_events[-1].fraction == 1.0
    alone_psnr = np.mean([psnr(plane, reference, data_range) for plane in alone])
    reused_psnr = np.mean([psnr(plane, reference, data_range) for plane in reused])
    noisy_psnr = np.mean([psnr(plane, reference, data_range) for plane in stack])
    assert reused_psnr > noisy_psnr + 3.0
    assert reused_psnr > alone_psnr - 0.5, (reused_psnr, alone_psnr)
    np.testing.assert_array_equal(reused[0], alone[0])  # the first plane is filled as before
    decided_psnr = np.mean([psnr(plane, reference, data_range) for plane in decided])
    assert decided_psnr > alone_psnr - 0.1, (decided_psnr, alone_psnr)
    np.testing.assert_array_equal(decided[0], alone[0])


def test_tuning_sets_any_other_setting_and_is_validated():
    image = np.random.default_rng(0).random((48, 48)).astype(np.float32)
    events = []
    napari_mpi.denoise(image, iterations=3, weights="random", refine="none", tuning={"final_predictions": 0},
                       progress=events.append)
    assert len(events) == 3  # no predictions after the last step
    plan = napari_mpi.prepare((48, 48), np.float32, iterations=3, tuning={"final_predictions": 2})
    assert plan.steps_per_plane == 5 and plan.describe()["final_predictions"] == 2
    assert plan.describe()["tuning"] == {"final_predictions": 2}  # what reproduces the run, in its metadata
    with pytest.raises(ValueError, match="unknown setting 'final_prediction'"):
        napari_mpi.prepare((48, 48), np.float32, tuning={"final_prediction": 0})
    with pytest.raises(ValueError, match="pass mask_ratio= itself"):
        napari_mpi.prepare((48, 48), np.float32, tuning={"mask_ratio": 0.5})
    with pytest.raises(ValueError, match="final_predictions must be a whole number"):
        napari_mpi.prepare((48, 48), np.float32, tuning={"final_predictions": -1})


def test_reusing_the_network_is_refused_where_it_cannot_work():
    with pytest.raises(ValueError, match="auto preset .* cannot reuse one network"):
        napari_mpi.prepare((2, 40, 40), np.float32, preset="auto", reuse_network=True)
    with pytest.raises(ValueError, match="reuse_network must be 'auto', True or False"):
        napari_mpi.prepare((2, 40, 40), np.float32, reuse_network="yes")


def test_bf16_on_a_cpu_without_native_bf16_warns_and_auto_picks_fp32(monkeypatch):
    """Emulated bf16 is about 10x slower than fp32 (docs/benchmarks.md): "auto" avoids it and forcing it warns."""
    import warnings

    from napari_mpi.api import DenoiseWarning
    from napari_mpi.engine import devices

    cpu = torch.device("cpu")
    assert devices.resolve_precision("auto", cpu) == ("bf16" if devices.cpu_computes_bf16() else "fp32")
    image = np.random.default_rng(0).random((24, 24), dtype=np.float32)
    monkeypatch.setattr(devices, "cpu_computes_bf16", lambda: False)  # an AVX2-only CPU
    assert devices.resolve_precision("auto", cpu) == "fp32"
    with pytest.warns(DenoiseWarning, match="no native bf16.*precision='auto' or 'fp32'"):
        napari_mpi.denoise(image, precision="bf16", device="cpu", iterations=2, weights="random")
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*native bf16")
        napari_mpi.denoise(image, precision="auto", device="cpu", iterations=2, weights="random")
    monkeypatch.setattr(devices, "cpu_computes_bf16", lambda: True)
    assert devices.precision_advice("bf16", cpu) is None
