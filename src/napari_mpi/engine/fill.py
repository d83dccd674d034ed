"""Iterative filling, Algorithm 1 of Ma et al. (MPI), as a generator.

Each step draws a fresh Bernoulli mask M_t, predicts y_t = D(M_t * x, M_t) with the network in
training mode (BatchNorm uses the statistics of this one image), takes one Adam step on the MSE
over the hidden pixels (1 - M_t), and folds the prediction from *before* that step into the
running estimate at the hidden pixels only::

    ybar <- (1 - M_t) * (beta * ybar + (1 - beta) * y_t) + M_t * ybar

The estimate starts as the noisy image. The generator yields after every step, which is the
cancellation point: a consumer that stops iterating stops the work.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import torch

from ..settings import FillConfig, plane_steps
from .auto import AutoReport, SelfSupervision
from .chain import CarriedNetwork, PlaneLength, PlaneStart, continuation_steps, most_continuation_steps
from .cuda_graph import CudaGraphStep, capture
from .devices import autocast, resolve_device, resolve_precision
from .estimates import RunningMean, ema_update_
from .masking import draw_mask, make_generator
from .network import SkipNet, build_model, check_plane_size
from .steps import predict, train_step

__all__ = [
    "FillStep",
    "CarriedNetwork",
    "iterative_fill",
    "build_model",
    "plane_network",
    "check_plane",
    "check_reuse",
    "continuation_steps",
    "plane_length",
]


@dataclass
class FillStep:
    """One iteration's record. ``estimate`` is the live (C, H, W) running estimate on the compute
    device, in [0, 1] units of the normalised plane: clone it before keeping it across steps."""

    iteration: int
    iterations: int
    estimate: torch.Tensor
    loss_tensor: torch.Tensor = field(repr=False)
    auto: AutoReport | None = None  # the "auto" preset's last check (None for the other presets)
    #: what the plane started from: the previous plane's network or the weights (reusing a network across planes)
    start: PlaneStart = PlaneStart()
    #: training steps of this plane's fill (the rest of ``iterations`` are predictions without a step)
    training: int = 0

    @property
    def loss(self) -> float:
        """Masked MSE of this step (synchronises with the device, so read it only when needed)."""
        return float(self.loss_tensor)


def check_reuse(config: FillConfig) -> None:
    """ValueError when planes of this fill cannot reuse one network (the auto preset decides per plane)."""
    if config.selfsup:
        raise ValueError("the auto preset decides per plane and cannot reuse one network across planes; "
                         "choose the fast or quality preset to reuse it")


def plane_network(carried: CarriedNetwork | None, continuing: bool, channels: int,
                  state_dict: dict[str, torch.Tensor] | None, config: FillConfig, dev: torch.device,
                  capturable: bool = False) -> tuple[SkipNet, torch.optim.Optimizer, torch.Generator]:
    """The network, Adam optimiser and mask generator a plane's fill trains, in training mode (BatchNorm
    statistics of this image, as in the reference): the carried ones when ``continuing``, else new ones from
    ``state_dict``, left in ``carried`` (when given) for the next plane. ``capturable``: Adam's step count lives
    on the GPU, so that a CUDA graph can replay the update."""
    if continuing:
        model, optimizer, generator = carried.model, carried.optimizer, carried.generator
    else:
        model = build_model(channels, state_dict, config.seed, dev).to(memory_format=torch.channels_last)
        optimizer = torch.optim.Adam(model.parameters(), lr=config.lr, **({"capturable": True} if capturable else {}))
        generator = make_generator(config.seed, dev)
        if carried is not None:
            carried.model, carried.optimizer, carried.generator, carried.graph = model, optimizer, generator, None
    model.train()
    return model, optimizer, generator


def check_plane(image: torch.Tensor, caller: str) -> tuple[int, int, int]:
    """(C, H, W) of a plane a fill can work on; ValueError with a clear sentence otherwise."""
    if image.ndim != 3:
        raise ValueError(f"{caller} expects one (C, H, W) plane, got shape {tuple(image.shape)}")
    channels, height, width = image.shape
    check_plane_size(height, width)
    if not torch.isfinite(image).all():
        raise ValueError("image contains NaN or infinite values; replace them before denoising")
    return channels, height, width


class _Trainer:
    """The training step of one plane's fill: eager, or (on CUDA) a few eager warm-up steps on a side stream,
    as capture requires, then the captured step replayed (``FillConfig.cuda_graphs``)."""

    def __init__(self, model, optimizer, x, cast, config: FillConfig, capturing: bool,
                 graph: CudaGraphStep | None, carried: CarriedNetwork | None):
        self.model, self.optimizer, self.x, self.cast = model, optimizer, x, cast
        self.warmup_steps, self.graph, self.carried = config.cuda_graph_warmup, graph, carried
        self.warmup = torch.cuda.Stream(x.device) if capturing else None  # the steps before the capture

    def __call__(self, iteration: int, keep: torch.Tensor, weight: torch.Tensor):
        if self.graph is not None:
            return self.graph(keep, weight)
        if self.warmup is None:
            return train_step(self.model, self.optimizer, self.x, keep, weight, self.cast)
        device = self.x.device
        self.warmup.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(self.warmup):
            result = train_step(self.model, self.optimizer, self.x, keep, weight, self.cast)
        torch.cuda.current_stream(device).wait_stream(self.warmup)
        if iteration == self.warmup_steps:
            self.graph = capture(self.model, self.optimizer, self.x, self.cast)
            self.warmup = None
            if self.carried is not None:
                self.carried.graph = self.graph
        return result


def iterative_fill(
    image: torch.Tensor,
    config: FillConfig,
    state_dict: dict[str, torch.Tensor] | None = None,
    device: str | torch.device = "auto",
    carried: CarriedNetwork | None = None,
) -> Iterator[FillStep]:
    """Run Algorithm 1 on one normalised plane and yield a :class:`FillStep` after every iteration.

    ``config.iterations`` training steps, then ``final_predictions(config)`` predictions of the trained network
    without a step that go on into the running mean (``plane_steps``; the auto preset ends where it decides
    instead). With ``carried`` holding the previous plane's network (same channels and device) and, with its
    ``mode="auto"``, fitting this plane (:mod:`~napari_mpi.engine.chain`), the plane continues from it instead:
    ``continuation_steps(config)`` training steps (in "auto" more while it still learns, ``plane_length``), then
    ``config.reuse_predictions`` predictions without a step; its estimate is the bias-corrected running mean of the
    predictions at hidden pixels (the noisy image only where no mask hid a pixel). Either way the network is left in
    ``carried`` for the next plane.

    Parameters
    ----------
    image : torch.Tensor
        The noisy plane, shape (C, H, W) (C = 1 gray, 3 RGB), roughly in [0, 1].
    config : FillConfig
        Every setting of the fill (mask ratio, beta, iterations, ...).
    state_dict : dict or None
        Pre-trained weights for a SkipNet with 2*C inputs and C outputs; None = random init.
    device : str or torch.device
        "auto", "cpu", "cuda", "mps" or a torch.device.
    carried : CarriedNetwork, optional
        Reuse one network across a stack's planes (not with ``config.selfsup``). Every step's ``start`` says what
        this plane started from.
    """
    channels, height, width = check_plane(image, "iterative_fill")
    if carried is not None:
        check_reuse(config)
    dev = resolve_device(device)
    x = image.to(dev, torch.float32).unsqueeze(0)
    cast = autocast(dev, resolve_precision(config.precision, dev))
    start = carried.begin(x, state_dict, config, cast) if carried is not None else PlaneStart()
    continuing = start.carried
    # a new network captures its training step when there are enough steps to repay the capture
    capturing = (not continuing and config.cuda_graphs and dev.type == "cuda"
                 and config.iterations >= config.cuda_graph_min_steps)
    model, optimizer, generator = plane_network(carried, continuing, channels, state_dict, config, dev, capturing)
    length = (plane_length(config, carried) if continuing
              else PlaneLength(config.iterations, plane_steps(config, height, width) - config.iterations))

    graph = carried.graph if continuing else None
    if graph is not None and graph.x.shape == x.shape:
        graph.x.copy_(x)  # the captured step reads the plane from its own buffer
        x = graph.x
    else:
        graph = None
    trainer = _Trainer(model, optimizer, x, cast, config, capturing, graph, carried)
    estimate = x[0].clone()
    judge = SelfSupervision(x, generator, config) if config.selfsup else None
    # a continuing plane has few predictions per pixel: their bias-corrected mean, without the noisy start
    running = RunningMean(x[0], config.beta) if continuing else None
    report: AutoReport | None = None

    iteration = 0
    while iteration < length.iterations:
        iteration += 1
        keep = draw_mask(x.shape, config.mask_ratio, config.mask_mode, generator, dev)
        hidden = 1.0 - keep
        weight = hidden if judge is None else hidden * judge.trained  # the pixels the loss counts
        if iteration > length.training:  # the last predictions, without a training step
            prediction, loss = predict(model, x, keep, weight, cast)
        else:
            prediction, loss = trainer(iteration, keep, weight)
        if running is not None:
            estimate = running.update(prediction[0], hidden[0])
        elif judge is None:
            ema_update_(estimate, prediction[0], hidden[0], config.beta)
        else:
            judge.update(prediction, hidden)
            if judge.due(iteration, length.iterations):
                report = judge.check(iteration)
            estimate = judge.estimate()
        yield FillStep(iteration, length.iterations, estimate, loss, report, start, length.training)
        if report is not None and report.stopped:
            return
        if continuing and length.can_extend(iteration) and carried.keep_training(x, config, cast):
            length.extend()
    if carried is not None:
        carried.end(x, config, cast)


def plane_length(config: FillConfig, carried: CarriedNetwork,
                 windows: Callable[[int], int] | None = None) -> PlaneLength:
    """Training steps and predictions of a plane that continues from ``carried``: ``continuation_steps``, then
    ``config.reuse_predictions``; with ``mode="auto"`` the steps may grow, ``reuse_check_every`` at a time, up to
    ``most_continuation_steps``. ``windows`` turns whole-plane steps into window steps (``crop_steps``)."""
    scale = windows or (lambda steps: steps)
    training = scale(continuation_steps(config))
    if carried.mode != "auto":
        return PlaneLength(training, scale(config.reuse_predictions))
    return PlaneLength(training, scale(config.reuse_predictions), max(training, scale(most_continuation_steps(config))),
                       scale(config.reuse_check_every))
