"""Algorithm 1 invariants, checked against the masks the fill must have drawn."""

import numpy as np
import pytest
import torch

from napari_mpi.engine.estimates import ema_update_
from napari_mpi.engine.fill import build_model, iterative_fill
from napari_mpi.engine.masking import draw_mask, make_generator
from napari_mpi.settings import PRESETS, FillConfig, config_for, plane_steps

from .conftest import psnr


def _noisy(seed: int = 0, size: int = 40) -> torch.Tensor:
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:size, 0:size]
    clean = 0.5 + 0.3 * np.sin(x / 5.0) * np.cos(y / 7.0)
    return torch.from_numpy((clean + rng.normal(0, 0.1, clean.shape)).astype(np.float32))[None]


def _run(image, config):
    return [(s.iteration, s.estimate.clone(), s.loss) for s in iterative_fill(image, config, device="cpu")]


def test_ema_update_by_hand():
    estimate = torch.tensor([0.2, 0.2, 0.5])
    prediction = torch.tensor([0.6, 0.6, 1.0])
    hidden = torch.tensor([1.0, 0.0, 1.0])
    ema_update_(estimate, prediction, hidden, beta=0.9)
    # hidden: 0.9*0.2 + 0.1*0.6 = 0.24 and 0.9*0.5 + 0.1*1.0 = 0.55; visible keeps 0.2
    assert torch.allclose(estimate, torch.tensor([0.24, 0.2, 0.55]))


def test_estimate_starts_as_input_and_changes_only_at_hidden_pixels():
    image = _noisy()
    config = FillConfig(mask_ratio=0.3, beta=0.5, iterations=4, seed=3)
    steps = _run(image, config)
    generator = make_generator(config.seed, "cpu")
    previous = image.clone()
    for _, estimate, _ in steps:
        keep = draw_mask((1, *image.shape), config.mask_ratio, "pixel", generator, "cpu")[0]
        visible = keep.bool()
        assert torch.equal(estimate[visible], previous[visible])  # visible pixels keep their estimate
        assert not torch.equal(estimate[~visible], previous[~visible])
        previous = estimate


def test_matches_a_plain_reference_implementation_of_algorithm_1():
    """Algorithm 1 written out naively: predict before the step, Adam on hidden-pixel MSE, EMA at hidden pixels."""
    image = _noisy(1)
    config = FillConfig(mask_ratio=0.4, beta=0.8, iterations=3, seed=5, lr=2e-3, precision="fp32")
    # same memory layout as the fill, so that the arithmetic is identical
    model = build_model(1, None, config.seed, torch.device("cpu")).to(memory_format=torch.channels_last)
    model.train()
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr)
    generator = make_generator(config.seed, "cpu")
    x = image[None]
    ybar = x.clone()
    expected = []
    for _ in range(config.iterations):
        m = draw_mask(x.shape, config.mask_ratio, "pixel", generator, "cpu")
        y = model(torch.cat([m * x, m], 1).contiguous(memory_format=torch.channels_last))
        loss = (((y - x) * (1 - m)) ** 2).sum() / (1 - m).sum()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        y = y.detach()
        ybar = (1 - m) * (config.beta * ybar + (1 - config.beta) * y) + m * ybar
        expected.append((ybar[0].clone(), float(loss.detach())))
    for (_, estimate, loss), (want, want_loss) in zip(_run(image, config), expected, strict=False):
        assert torch.allclose(estimate, want, atol=1e-6)
        assert loss == pytest.approx(want_loss, rel=1e-5)


def test_same_seed_is_deterministic_and_other_seed_differs():
    image = _noisy(2)
    a = _run(image, FillConfig(iterations=3, seed=1))[-1][1]
    b = _run(image, FillConfig(iterations=3, seed=1))[-1][1]
    c = _run(image, FillConfig(iterations=3, seed=2))[-1][1]
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_rgb_uses_channel_masks():
    image = torch.rand(3, 36, 36)
    steps = _run(image, FillConfig(iterations=1, mask_mode="channel", seed=0))
    changed = (steps[0][1] != image)
    assert not torch.equal(changed[0], changed[1])  # hidden pixels differ per channel


def test_cancelling_stops_the_work():
    fill = iterative_fill(_noisy(), FillConfig(iterations=1000), device="cpu")
    next(fill)
    fill.close()  # what a consumer does on Cancel
    with pytest.raises(StopIteration):
        next(fill)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"mask_ratio": 0.0}, "mask ratio"),
        ({"mask_ratio": 1.0}, "mask ratio"),
        ({"beta": 1.0}, "beta"),
        ({"beta": -0.1}, "beta"),
        ({"iterations": 0}, "iterations"),
        ({"iterations": 2.5}, "iterations"),
        ({"lr": 0.0}, "learning rate"),
        ({"mask_ratio": float("nan")}, "mask ratio"),
    ],
)
def test_invalid_parameters_are_clear_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        FillConfig(**kwargs)


def test_presets():
    assert (config_for("fast").iterations, config_for("fast").beta) == (200, 0.9)
    assert (config_for("Quality").iterations, config_for("quality").beta) == (1000, 0.99)
    assert config_for("fast", iterations=7).iterations == 7
    with pytest.raises(ValueError, match="unknown preset"):
        config_for("best")


def test_presets_set_their_length_beta_and_learning_rate_by_the_start():
    def preset_iterations(name, start):
        return PRESETS[name].config(start).iterations

    def preset_beta(name, start):
        return PRESETS[name].config(start).beta

    assert config_for("fast", start="pretrained").iterations == preset_iterations("fast", "pretrained") == 100
    assert config_for("quality", start="pretrained").iterations == preset_iterations("quality", "pretrained") < 1000
    # Quality from the prior averages less (beta 0.95) than the paper's 0.99 from a random start
    assert config_for("quality", start="pretrained").beta == preset_beta("quality", "pretrained") == 0.95
    assert config_for("quality").beta == preset_beta("quality", "random") == 0.99
    assert config_for("quality", start="pretrained", beta=0.9).beta == 0.9  # a user's choice wins
    assert preset_beta("fast", "pretrained") == preset_beta("fast", "random") == 0.9
    assert config_for("fast", start="pretrained", iterations=7).iterations == 7  # a user's choice wins
    # colour from the gray weights still learns colour: Fast runs 1.5x the random start's length, Quality 1.5x that
    assert (preset_iterations("fast", "gray_as_colour"), preset_beta("fast", "gray_as_colour")) == (300, 0.95)
    assert preset_iterations("fast", "random") == 200
    assert (preset_iterations("quality", "gray_as_colour"), preset_beta("quality", "gray_as_colour")) == (450, 0.95)
    with pytest.raises(ValueError, match="start must be"):
        preset_iterations("fast", "prior")
    # the gray weights as colour learn colour faster at a higher learning rate; a user's choice wins
    assert config_for("fast", start="gray_as_colour").lr == config_for("quality", start="gray_as_colour").lr == 4e-3
    assert config_for("fast", start="pretrained").lr == config_for("fast").lr == FillConfig().lr == 2e-3
    assert config_for("quality", start="gray_as_colour", lr=1e-3).lr == 1e-3
    assert preset_iterations("auto", "pretrained") == preset_iterations("auto", "random")  # Auto stops by itself


def test_nan_and_small_planes_are_refused():
    with pytest.raises(ValueError, match="NaN"):
        next(iterative_fill(torch.full((1, 32, 32), float("nan")), FillConfig(), device="cpu"))
    with pytest.raises(ValueError, match="too small"):
        next(iterative_fill(torch.rand(1, 4, 32), FillConfig(), device="cpu"))


def test_fill_removes_gaussian_noise(camera_crop):
    """A real denoising check: sigma=25 Gaussian noise on a 96x96 photo crop, 100 iterations."""
    rng = np.random.default_rng(0)
    noisy = camera_crop + rng.normal(0, 25 / 255, camera_crop.shape).astype(np.float32)
    config = FillConfig(mask_ratio=0.3, beta=0.9, iterations=100, seed=0)
    *_, last = iterative_fill(torch.from_numpy(noisy)[None], config, device="cpu")
    result = last.estimate[0].numpy()
    assert psnr(result, camera_crop) >= psnr(noisy, camera_crop) + 4.0


def test_every_setting_is_validated_and_named_in_its_error():
    for name, bad in [("final_predictions", -1), ("reuse_step_fraction", 0.0), ("reuse_predictions", 1.5),
                      ("crop_size", 32), ("crop_step_scale", 0), ("cuda_graphs", "yes"), ("auto_betas", ()),
                      ("auto_holdout", 0.7), ("refine_max_mask_ratio", 1.0), ("refine_fill_weight", 1.0),
                      ("cuda_graph_warmup", 0)]:
        with pytest.raises(ValueError, match=name.replace("_", "[_ ]")):
            FillConfig(**{name: bad})
    with pytest.raises(ValueError, match="unknown setting 'final_prediction'"):
        config_for("fast", final_prediction=0)
    assert config_for("fast", start="pretrained", final_predictions=0).final_predictions == 0


def test_presets_are_settings_instances_and_the_cli_offers_them():
    from napari_mpi import cli

    assert all(isinstance(preset.config(start), FillConfig) for preset in PRESETS.values()
               for start in ("random", "pretrained", "gray_as_colour"))
    parser = cli.build_parser()
    assert parser.parse_args(["denoise", "a.tif", "-o", "b.tif"]).preset == "fast"
    assert parser.parse_args(["denoise", "a.tif", "-o", "b.tif", "--preset", "auto"]).preset == "auto"


# ------------------------------------------------------------------------------------------ auto preset
def test_auto_preset_is_selfsupervised_and_capped():
    config = config_for("auto")
    assert config.selfsup and config.iterations == PRESETS["auto"].config("pretrained").iterations == 300
    assert not config_for("fast").selfsup
    with pytest.raises(ValueError, match="selfsup"):
        FillConfig(selfsup="yes")


def _judge(shape=(1, 1, 64, 64), seed=0):
    from napari_mpi.engine.auto import SelfSupervision

    x = torch.rand(shape, generator=torch.Generator().manual_seed(seed))
    return x, SelfSupervision(x, torch.Generator().manual_seed(seed), FillConfig())


def test_auto_holds_out_a_tenth_of_the_pixels_and_trains_on_the_rest():
    x, judge = _judge((1, 1, 128, 128))
    assert judge.held.shape == (1, 1, 128, 128)
    assert abs(float(judge.held.mean()) - FillConfig().auto_holdout) < 0.02
    assert torch.equal(judge.held + judge.trained, torch.ones_like(judge.held))


def test_auto_running_means_are_bias_corrected():
    # A constant prediction c, seen at a pixel once or many times, gives exactly c for every beta:
    # the means start at 0 and are divided by 1 - beta^k, so the noisy start value never leaks in.
    x, judge = _judge()
    hidden = (torch.rand(x.shape, generator=torch.Generator().manual_seed(1)) < 0.5).float()
    c = torch.full_like(x, 0.25)
    judge.update(c, hidden)
    judge.update(c, torch.ones_like(x))
    corrected = judge.corrected()
    assert torch.allclose(corrected, torch.full_like(corrected, 0.25), atol=1e-6)


def test_auto_stops_when_the_network_reproduces_its_training_pixels():
    rise, least = FillConfig().auto_memorisation_rise, FillConfig().auto_min_iterations
    x, judge = _judge((1, 1, 128, 128))
    noise = torch.randn(x.shape, generator=torch.Generator().manual_seed(2)) * 0.1
    generator = torch.Generator().manual_seed(3)
    reports = []
    for iteration in range(1, 101):
        hidden = (torch.rand(x.shape, generator=generator) < 0.3).float()
        memorised = iteration > 60  # from then on the prediction copies the noisy value where it trained
        prediction = torch.where((judge.trained > 0) & memorised, x, x - noise)
        judge.update(prediction, hidden)
        if iteration % 10 == 0:
            reports.append(judge.check(iteration))
    early = [r for r in reports if r.iteration <= 60]
    assert all(abs(r.memorisation) < 2 * rise and not r.stopped for r in early)
    stopped = [r for r in reports if r.stopped]
    assert stopped and least <= stopped[0].iteration <= 80
    assert "learn the noise" in stopped[0].describe()


def test_auto_fill_denoises_reports_and_is_reproducible(camera_crop):
    noisy = camera_crop + np.random.default_rng(0).normal(0, 25 / 255, camera_crop.shape).astype(np.float32)
    config = config_for("auto", iterations=120)
    runs = []
    for _ in range(2):
        steps = list(iterative_fill(torch.from_numpy(noisy)[None], config, None, "cpu"))
        runs.append(steps)
    last = runs[0][-1]
    assert last.auto is not None and last.auto.beta in config.auto_betas
    assert last.iteration == last.auto.iteration <= 120
    assert last.auto.stopped == (last.iteration < 120)
    assert [s.auto for s in runs[0] if s.auto] == [s.auto for s in runs[1] if s.auto]
    assert torch.equal(runs[0][-1].estimate, runs[1][-1].estimate)
    gain = psnr(last.estimate[0].numpy(), camera_crop) - psnr(noisy, camera_crop)
    assert gain >= 3.0


def test_a_plane_ends_with_predictions_of_the_trained_network_without_a_step():
    from napari_mpi.engine.fill import CarriedNetwork

    config = FillConfig(iterations=40, seed=0, precision="fp32")
    carried = CarriedNetwork()
    steps = [(s.iteration, s.iterations, s.estimate.clone()) for s in iterative_fill(_noisy(0), config, device="cpu",
                                                                                     carried=carried)]
    predictions = min(config.final_predictions, 40)
    assert predictions > 0 and len(steps) == plane_steps(config, 40, 40) == 40 + predictions
    assert [(i, n) for i, n, _ in steps] == [(i, 40 + predictions) for i in range(1, 41 + predictions)]
    # the last iterations train nothing: Adam stepped once per training iteration ...
    assert carried.optimizer.state[next(carried.model.parameters())]["step"].item() == 40
    # ... but their predictions went on into the running mean
    assert not torch.equal(steps[39][2], steps[-1][2])
    # never more predictions than steps, and none for the auto preset, which ends where it decides
    assert plane_steps(FillConfig(iterations=3), 40, 40) == 6
    assert plane_steps(config_for("auto"), 40, 40) == config_for("auto").iterations


def test_a_carried_network_continues_with_few_steps_then_predictions():
    from napari_mpi.engine.fill import CarriedNetwork, continuation_steps

    config = FillConfig(iterations=20, seed=0, precision="fp32")
    carried = CarriedNetwork()
    first = list(iterative_fill(_noisy(0), config, device="cpu", carried=carried))
    assert len(first) == plane_steps(config, 40, 40) and carried.model is not None and carried.channels == 1
    model = carried.model
    before = [p.detach().clone() for p in model.parameters()]
    adam_steps = carried.optimizer.state[next(model.parameters())]["step"].item()

    image = _noisy(1)
    steps = list(iterative_fill(image, config, device="cpu", carried=carried))
    trained, predictions = continuation_steps(config), config.reuse_predictions
    assert 1 <= trained < 20 and len(steps) == trained + predictions
    assert {s.iterations for s in steps} == {trained + predictions}
    assert carried.model is model  # the same network went on training ...
    assert carried.optimizer.state[next(model.parameters())]["step"].item() == adam_steps + trained  # ... a few steps
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))
    estimate = steps[-1].estimate
    # bias-corrected mean of predictions (in (0, 1): the network ends in a sigmoid) where a mask hid a
    # pixel; the noisy value only where none did (12 masks hiding 30%: 0.7**12 = 1.4% of the pixels)
    noisy_kept = estimate == image[0]
    assert noisy_kept.float().mean() < 0.03
    assert ((estimate[~noisy_kept] > 0) & (estimate[~noisy_kept] < 1)).all()


def test_a_carried_network_is_refused_by_the_auto_preset():
    from napari_mpi.engine.fill import CarriedNetwork

    with pytest.raises(ValueError, match="cannot reuse one network"):
        next(iterative_fill(_noisy(0), config_for("auto"), device="cpu", carried=CarriedNetwork()))
