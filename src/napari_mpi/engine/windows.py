"""Training on random windows of a big plane: a step costs in proportion to its pixels, and with the Wiener
refinement after the fill a running mean of fewer predictions per pixel is enough. Memory is one window's,
whatever the plane's size."""

from __future__ import annotations

import itertools
from collections.abc import Iterator

import numpy as np
import torch

from ..settings import MIN_CROP, FillConfig, crop_steps, plane_steps
from .chain import CarriedNetwork, PlaneLength, PlaneStart
from .devices import autocast, resolve_device, resolve_precision
from .estimates import RunningMean
from .fill import FillStep, check_plane, plane_length, plane_network
from .masking import draw_mask
from .steps import predict, train_step

__all__ = ["CROP_MARGIN", "MIN_CROP", "crop_fill", "window_pass"]

#: Pixels next to a window edge inside the plane whose predictions are left out of the mean (the network sees
#: padding there, not the plane). ``MIN_CROP`` leaves pixels to predict between the margins.
CROP_MARGIN = 16


def crop_fill(
    image: torch.Tensor,
    config: FillConfig,
    state_dict: dict[str, torch.Tensor] | None = None,
    device: str | torch.device = "auto",
    crop: int | None = None,
    carried: CarriedNetwork | None = None,
) -> Iterator[FillStep]:
    """Algorithm 1 with each step on a random crop x crop window of the plane (default ``config.crop_size``);
    yields a FillStep after every step.

    The network (one for the whole plane) trains on one masked window per step, and its predictions at the
    window's hidden pixels go into a bias-corrected running mean of the whole plane (weight ``config.beta``),
    the noisy value where a pixel never was predicted. Predictions within CROP_MARGIN pixels of a window edge
    inside the plane are left out. The windows come in passes that each cover every pixel once or twice
    (``window_pass``), so the border and corners get predictions as often as the middle. Runs
    ``crop_steps(config.iterations, ...)`` training steps, then the window predictions that stand for
    ``final_predictions(config)`` without a step (``plane_steps``). Not with ``config.selfsup``.

    With ``carried`` holding the previous plane's network, the plane continues from it as in
    ``fill.iterative_fill`` (``plane_length``), in windows: the window steps that stand for its training steps, then
    for its predictions without a step. Either way the network is left in ``carried``.
    """
    crop = config.crop_size if crop is None else crop
    if config.selfsup:
        raise ValueError("the auto preset decides on the whole plane and cannot train on crops; use crop='none'")
    if isinstance(crop, bool) or not isinstance(crop, int) or crop < MIN_CROP:
        raise ValueError(f"crop size must be a whole number >= {MIN_CROP}, got {crop!r}")
    channels, height, width = check_plane(image, "crop_fill")
    dev = resolve_device(device)
    cast = autocast(dev, resolve_precision(config.precision, dev))
    x = image.to(dev, torch.float32).unsqueeze(0)
    start = carried.begin(x, state_dict, config, cast) if carried is not None else PlaneStart()
    continuing = start.carried
    model, optimizer, generator = plane_network(carried, continuing, channels, state_dict, config, dev)
    if continuing:
        length = plane_length(config, carried, lambda steps: crop_steps(steps, height, width, crop, config))
    else:
        training = crop_steps(config.iterations, height, width, crop, config)
        length = PlaneLength(training, plane_steps(config, height, width, crop) - training)
    rng = np.random.default_rng((config.seed, 0xC0))  # the windows: a stream of their own
    places = itertools.chain.from_iterable(iter(lambda: window_pass(height, width, crop, rng), None))  # pass after pass
    estimate = x[0].clone()
    running = RunningMean(x[0], config.beta)
    size_h, size_w = min(crop, height), min(crop, width)
    step = 0
    while step < length.iterations:
        step += 1
        top, left = next(places)
        window = x[:, :, top:top + size_h, left:left + size_w]
        keep = draw_mask(window.shape, config.mask_ratio, config.mask_mode, generator, dev)
        hidden = 1.0 - keep
        if step > length.training:  # the last predictions, without a training step
            prediction, loss = predict(model, window, keep, hidden, cast)
        else:
            prediction, loss = train_step(model, optimizer, window, keep, hidden, cast)
        inner, target = _used_part(top, left, size_h, size_w, height, width)
        running.update_region(target, prediction[0][inner], hidden[0][inner], estimate)
        yield FillStep(step, length.iterations, estimate, loss, start=start, training=length.training)
        if continuing and length.can_extend(step) and carried.keep_training(x, config, cast):
            length.extend()
    if carried is not None:
        carried.end(x, config, cast)


def _used_part(top: int, left: int, size_h: int, size_w: int, height: int,
               width: int) -> tuple[tuple[slice, ...], tuple[slice, ...]]:
    """The part of a window whose predictions are used (all but CROP_MARGIN at an edge inside the plane), as
    slices of the window and of the plane."""
    inner_top = CROP_MARGIN if top > 0 else 0
    inner_left = CROP_MARGIN if left > 0 else 0
    inner_bottom = size_h - CROP_MARGIN if top + size_h < height else size_h
    inner_right = size_w - CROP_MARGIN if left + size_w < width else size_w
    inner = (slice(None), slice(inner_top, inner_bottom), slice(inner_left, inner_right))
    target = (slice(None), slice(top + inner_top, top + inner_bottom), slice(left + inner_left, left + inner_right))
    return inner, target


def window_pass(height: int, width: int, crop: int, rng: np.random.Generator) -> list[tuple[int, int]]:
    """Top-left corners of one pass of crop x crop windows over a plane, in random order: a grid of windows whose
    used parts (all but CROP_MARGIN at an edge inside the plane) meet edge to edge, shifted by a random phase and
    clamped into the plane, so that every pixel is predictable once or twice per pass. (Windows drawn uniformly
    would reach the border and corners, only inside the windows at the plane's edges, far less often.)"""

    def starts(length: int, size: int) -> np.ndarray:
        if size >= length:
            return np.zeros(1, dtype=np.int64)
        stride = size - 2 * CROP_MARGIN
        phase = int(rng.integers(stride))
        return np.unique(np.clip(np.arange(phase - stride, length, stride), 0, length - size))

    tops, lefts = starts(height, min(crop, height)), starts(width, min(crop, width))
    grid = [(int(top), int(left)) for top in tops for left in lefts]
    return [grid[number] for number in rng.permutation(len(grid))]
