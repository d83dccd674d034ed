"""A tiny pre-training run on scikit-image's bundled pictures: save, resume bit-exactly, use in the fill."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import napari_mpi
from napari_mpi import weights as weights_module
from napari_mpi.pretrain import PretrainConfig, pretrain
from napari_mpi.weights import default_checkpoint, load_checkpoint, read_payload, save_checkpoint


@pytest.fixture(scope="module")
def picture_folder(tmp_path_factory):
    from skimage import data
    from skimage.io import imsave

    folder = tmp_path_factory.mktemp("pictures")
    for name in ("astronaut", "coffee", "chelsea", "camera"):
        imsave(folder / f"{name}.png", getattr(data, name)(), check_contrast=False)
    return folder


CONFIG = PretrainConfig(channels=1, mask_ratios=(0.2, 0.9), crop=48, batch=2, steps=4, precision="fp32")


def test_resume_is_bit_exact(picture_folder, tmp_path):
    straight = tmp_path / "straight.pt"
    assert [s.step for s in pretrain(picture_folder, straight, CONFIG)] == [1, 2, 3, 4]
    halves = tmp_path / "halves.pt"
    first = pretrain(picture_folder, halves, CONFIG, max_minutes=0.0)  # stops after one step, with a checkpoint
    assert [s.checkpointed for s in first] == [True]
    assert [s.step for s in pretrain(picture_folder, halves, CONFIG, resume=halves)] == [2, 3, 4]
    a, b = read_payload(straight), read_payload(halves)
    assert a["training"]["step"] == b["training"]["step"] == 4
    for key in a["state_dict"]:
        assert torch.equal(a["state_dict"][key], b["state_dict"][key]), key
    assert a["training"]["scheduler"] == b["training"]["scheduler"]

    result = napari_mpi.denoise(np.random.rand(40, 40).astype(np.float32), iterations=2, weights=str(straight))
    assert result.shape == (40, 40)


def test_resume_with_another_recipe_is_refused(picture_folder, tmp_path):
    path = tmp_path / "run.pt"
    list(pretrain(picture_folder, path, CONFIG, max_minutes=0.0))
    other = PretrainConfig(**{**CONFIG.__dict__, "crop": 64})
    with pytest.raises(ValueError, match="different recipe"):
        next(pretrain(picture_folder, path, other, resume=path))


def test_init_trains_on_from_finished_weights_with_a_fresh_schedule(picture_folder, tmp_path):
    first = tmp_path / "first.pt"
    list(pretrain(picture_folder, first, CONFIG))
    with pytest.raises(ValueError, match="not both"):
        next(pretrain(picture_folder, tmp_path / "x.pt", CONFIG, resume=first, init=first))
    rgb = PretrainConfig(**{**CONFIG.__dict__, "channels": 3, "mask_mode": "channel"})
    colour = tmp_path / "colour.pt"  # gray weights start a colour run, spread over the channels
    assert [s.step for s in pretrain(picture_folder, colour, rgb, init=first)] == [1, 2, 3, 4]
    assert read_payload(colour)["metadata"]["initialised_as_colour"] is True
    assert load_checkpoint(colour).channels == 3
    with pytest.raises(ValueError, match="3 channel"):  # but colour weights cannot start a gray run
        next(pretrain(picture_folder, tmp_path / "x.pt", CONFIG, init=colour))

    longer = tmp_path / "longer.pt"
    steps = list(pretrain(picture_folder, longer, CONFIG, init=first))
    assert [s.step for s in steps] == [1, 2, 3, 4]
    assert steps[0].lr == pytest.approx(CONFIG.lr, rel=0.5)  # the schedule starts again
    payload = read_payload(longer)
    assert payload["metadata"]["initialised_from"] == "first.pt" and payload["metadata"]["earlier_steps"] == 4
    # it trained on from the first run's weights: after 4 steps it is nearer to them than a fresh run is
    fresh = tmp_path / "fresh.pt"
    list(pretrain(picture_folder, fresh, PretrainConfig(**{**CONFIG.__dict__, "seed": 1})))
    start = read_payload(first)["state_dict"]

    def distance(path) -> float:
        state = read_payload(path)["state_dict"]
        return sum(float((state[k].float() - start[k].float()).abs().sum())
                   for k in start if start[k].is_floating_point())

    assert distance(longer) < 0.5 * distance(fresh)


def test_auto_steps_fit_the_schedule_to_the_time_and_resume_keeps_the_plan(picture_folder, tmp_path, monkeypatch):
    import importlib

    pretrain_module = importlib.import_module("napari_mpi.pretrain")
    monkeypatch.setattr(pretrain_module, "AUTO_WARMUP_STEPS", 1)
    monkeypatch.setattr(pretrain_module, "AUTO_PROBE_STEPS", 2)
    auto = PretrainConfig(**{**CONFIG.__dict__, "steps": 0})
    with pytest.raises(ValueError, match="time budget"):
        next(pretrain(picture_folder, tmp_path / "x.pt", auto))
    path, history = tmp_path / "gray-pixel.pt", tmp_path / "history"
    records = list(pretrain(picture_folder, path, auto, max_minutes=0.05, history=history))
    planned = records[-1].steps
    assert planned >= 3 and all(r.steps == planned for r in records[3:])  # planned after 1 + 2 timed steps
    payload = read_payload(path)
    assert payload["training"]["config"]["steps"] == payload["metadata"]["planned_steps"] == planned
    assert payload["training"]["scheduler"]["T_max"] == planned
    done = payload["training"]["step"]
    assert (history / f"gray-pixel-{done}.pt").is_file()  # weights-only snapshot of the checkpoint
    assert load_checkpoint(history / f"gray-pixel-{done}.pt").state_dict.keys() == payload["state_dict"].keys()
    if done < planned:  # stopped by the clock: a resume with "auto" continues the same schedule
        resumed = list(pretrain(picture_folder, path, auto, resume=path, max_minutes=0.0))
        assert resumed[0].step == done + 1 and resumed[0].steps == planned
    else:
        assert records[-1].lr == pytest.approx(CONFIG.min_lr)  # the cosine ended with the plan


def test_auto_precision_is_the_devices_and_is_recorded_and_kept_on_resume(picture_folder, tmp_path, monkeypatch):
    import warnings

    from napari_mpi.engine import devices

    with pytest.raises(ValueError, match="precision must be"):
        PretrainConfig(precision="fp16")
    assert PretrainConfig().precision == "auto"
    auto = PretrainConfig(**{**CONFIG.__dict__, "precision": "auto"})
    path = tmp_path / "auto.pt"
    monkeypatch.setattr(devices, "cpu_computes_bf16", lambda: False)  # an AVX2-only CPU: auto means fp32
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*native bf16")
        list(pretrain(picture_folder, path, auto, max_minutes=0.0))
    payload = read_payload(path)
    assert payload["training"]["config"]["precision"] == payload["metadata"]["precision"] == "fp32"
    monkeypatch.setattr(devices, "cpu_computes_bf16", lambda: True)  # resumed on another CPU: the run's arithmetic
    assert [s.step for s in pretrain(picture_folder, path, auto, resume=path)] == [2, 3, 4]
    assert read_payload(path)["metadata"]["precision"] == "fp32"
    with pytest.raises(ValueError, match="different recipe"):  # naming another precision is another recipe
        next(pretrain(picture_folder, path, PretrainConfig(**{**CONFIG.__dict__, "precision": "bf16"}), resume=path))

    monkeypatch.setattr(devices, "cpu_computes_bf16", lambda: False)
    forced = PretrainConfig(**{**CONFIG.__dict__, "precision": "bf16", "steps": 1})
    with pytest.warns(UserWarning, match="no native bf16.*'auto' or 'fp32'"):
        list(pretrain(picture_folder, tmp_path / "forced.pt", forced))
    assert read_payload(tmp_path / "forced.pt")["metadata"]["precision"] == "bf16"


def test_width_makes_a_fresh_network_that_init_and_resume_keep(picture_folder, tmp_path):
    from napari_mpi.engine.network import architecture_of

    with pytest.raises(ValueError, match="width must be"):
        PretrainConfig(width=2)
    narrow = PretrainConfig(**{**CONFIG.__dict__, "width": 8})
    path = tmp_path / "narrow.pt"
    list(pretrain(picture_folder, path, narrow, max_minutes=0.0))
    payload = read_payload(path)
    assert architecture_of(payload["state_dict"]) == {"width": 8, "skip_width": 8, "depth": 5}
    assert payload["metadata"]["network"]["width"] == 8
    resumed = [s.step for s in pretrain(picture_folder, path, CONFIG, resume=path)]  # no width named: the run's
    assert resumed == [2, 3, 4]
    assert architecture_of(read_payload(path)["state_dict"])["width"] == 8
    with pytest.raises(ValueError, match="8/8-channel network, not 16/16"):
        next(pretrain(picture_folder, tmp_path / "wider.pt", PretrainConfig(**{**CONFIG.__dict__, "width": 16}),
                      init=path))
    list(pretrain(picture_folder, tmp_path / "on.pt", PretrainConfig(**{**CONFIG.__dict__, "steps": 1}), init=path))
    assert architecture_of(read_payload(tmp_path / "on.pt")["state_dict"])["width"] == 8


def test_short_side_shrinks_big_pictures(picture_folder):
    from napari_mpi.pretrain import ImageCorpus

    corpus = ImageCorpus(picture_folder, 1, 48, short_side=64)
    assert all(min(img.shape[1:]) == 64 for img in corpus.images)
    with pytest.raises(ValueError, match="short side"):
        PretrainConfig(crop=128, short_side=64)


def test_rgb_pretraining_with_channel_masks(picture_folder, tmp_path):
    config = PretrainConfig(channels=3, mask_mode="channel", crop=48, batch=2, steps=1, precision="fp32")
    path = tmp_path / "rgb.pt"
    list(pretrain(picture_folder, path, config))
    ckpt = load_checkpoint(path)
    assert ckpt.channels == 3 and ckpt.mask_mode == "channel"
    assert napari_mpi.denoise(np.random.rand(40, 40, 3), rgb=True, iterations=1, weights=ckpt).shape == (40, 40, 3)


def test_default_weights_are_picked_by_channels_mode_and_ratio(tmp_path, monkeypatch):
    from napari_mpi.engine.network import SkipNet

    made = {}
    for name, channels, mode, ratios in [
        ("gray-low", 1, "pixel", (0.2, 0.5)),
        ("gray-high", 1, "pixel", (0.8, 0.95)),
        ("rgb", 3, "channel", (0.3, 0.3)),
    ]:
        net = SkipNet(2 * channels, channels)
        made[name] = save_checkpoint(tmp_path / f"{name}.pt", net.state_dict(), channels=channels, mask_mode=mode,
                                     mask_ratios=ratios, half=True, sidecar=True)
    monkeypatch.setattr(weights_module, "shipped_checkpoints", lambda: sorted(made.values()))
    assert default_checkpoint(1, "pixel", 0.3).path == made["gray-low"]
    assert default_checkpoint(1, "pixel", 0.9).path == made["gray-high"]
    assert default_checkpoint(1, "pixel", 0.75).path == made["gray-high"]  # within RATIO_TOLERANCE of its range
    assert default_checkpoint(1, "pixel", 0.65) is None  # too far from either range: a random start
    assert default_checkpoint(3, "channel", 0.33).path == made["rgb"]
    colour = default_checkpoint(3, "channel", 0.5)  # no colour checkpoint fits: the gray one, as colour
    assert colour.path == made["gray-low"] and colour.from_gray and colour.channels == 3
    assert default_checkpoint(3, "channel", 0.65) is None  # nor a gray one: a random start
    assert default_checkpoint(3, "pixel", 0.3) is None
    assert json.loads(made["rgb"].with_suffix(".json").read_text())["mask_ratios"] == [0.3, 0.3]


def test_shipped_weights_load_and_fit():
    """Every checkpoint in the package loads, passes its checksum and says what it is for."""
    for path in weights_module.shipped_checkpoints():
        ckpt = load_checkpoint(path)
        assert ckpt.channels in (1, 3) and ckpt.mask_mode in ("pixel", "channel")
        assert path.stat().st_size <= 4 * 1024 * 1024
        info = json.loads(path.with_suffix(".json").read_text())
        for key in ("data", "steps", "batch", "crop", "hardware", "sha256"):
            assert key in info, (path.name, key)


def test_the_shipped_gray_weights_serve_the_default_mask_ratio():
    from napari_mpi.settings import DEFAULT_MASK_RATIO

    path = weights_module.default_checkpoint_path(1, "pixel", DEFAULT_MASK_RATIO)
    assert path is not None and path.name == "gray-pixel.pt"
    low, high = load_checkpoint(path).mask_ratios
    assert low <= DEFAULT_MASK_RATIO <= high


def test_a_checkpoint_of_another_width_loads_and_fills(tmp_path):
    """Checkpoints describe their own network: one made at another width than the default still works."""
    from napari_mpi.engine.fill import build_model
    from napari_mpi.engine.network import SkipNet, architecture_of

    narrow = SkipNet(2, 1, width=24, skip_width=8)
    path = save_checkpoint(tmp_path / "narrow.pt", narrow.state_dict(), channels=1, mask_mode="pixel",
                           mask_ratios=(0.3, 0.3))
    ckpt = load_checkpoint(path)
    model = build_model(1, ckpt.state_dict, seed=0, device=torch.device("cpu"))
    assert architecture_of(model.state_dict())["width"] == 24
    assert napari_mpi.denoise(np.random.rand(40, 40), iterations=2, weights=ckpt).shape == (40, 40)
    # the run's metadata (and a CLI run's resume fingerprint) name the network that made the output
    assert napari_mpi.prepare((40, 40), np.float32, weights=ckpt).describe()["network"] == {
        "width": 24, "skip_width": 8, "depth": 5}
    assert napari_mpi.prepare((40, 40), np.float32, weights="random").describe()["network"] == architecture_of(
        SkipNet(2, 1).state_dict())
