"""Iterative filling — Algorithm 1 of Ma et al. (MPI), as a generator.

Each step draws a fresh Bernoulli mask M_t, predicts y_t = D(M_t * x, M_t) with the network in
training mode (BatchNorm uses the statistics of this one image), takes one Adam step on the MSE
over the hidden pixels (1 - M_t), and folds the prediction from *before* that step into the
running estimate at the hidden pixels only::

    ybar <- (1 - M_t) * (beta * ybar + (1 - beta) * y_t) + M_t * ybar

The estimate starts as the noisy image. The generator yields after every step, which is the
cancellation point: a consumer that stops iterating stops the work.
"""

from __future__ import annotations

import itertools
import math
import threading
import warnings
from dataclasses import dataclass, field, replace
from typing import Callable, Iterator, Literal, get_args

import numpy as np
import torch

from .masking import MaskMode, draw_mask, make_generator, masked_mse
from .network import SkipNet, architecture_of, check_plane_size

__all__ = [
    "FillConfig",
    "FillStep",
    "PRESETS",
    "Precision",
    "Start",
    "DEFAULT_MASK_RATIO",
    "DEFAULT_PRESET",
    "AutoReport",
    "CarriedNetwork",
    "REUSE_STEP_FRACTION",
    "REUSE_PREDICTIONS",
    "FINAL_PREDICTIONS",
    "final_predictions",
    "plane_steps",
    "continuation_steps",
    "preset_iterations",
    "preset_beta",
    "start_lr",
    "DEFAULT_LR",
    "check_reuse",
    "config_for",
    "iterative_fill",
    "TiledStep",
    "tiled_fill",
    "CROP_SIZE",
    "MIN_CROP",
    "crop_steps",
    "crop_fill",
    "window_pass",
    "tile_starts",
    "TILE_OVERLAP",
    "MIN_TILE",
    "available_devices",
    "resolve_device",
    "build_model",
    "ema_update_",
]

Precision = Literal["auto", "fp32", "bf16"]

#: Mask ratio used when none is given. Chosen by measurement on FMD confocal data
#: (docs/benchmarks.md): at the fast preset 0.3 beat the reference's 0.85 for fluorescence.
DEFAULT_MASK_RATIO = 0.3

#: Where a fill starts: a seeded random network; weights pre-trained for this kind of image; or gray weights
#: spread over a colour image's channels (``weights.Checkpoint.as_colour``), which know images but still have
#: to learn colour.
Start = Literal["random", "pretrained", "gray_as_colour"]

#: Named settings. "fast" = 200 iterations with beta 0.9 and "quality" = 1000 with 0.99 are the
#: paper's (Sec. 4.1), for a random start. A preset may set other values for another start, as
#: "<start>_iterations" / "<start>_beta" (measured with benchmarks/prior_fill.py and color_study.py,
#: docs/benchmarks.md):
#:
#: - From pre-trained weights the fill reaches its best in about half the iterations and then starts to learn
#:   the noise: session 5's gray weights at 100 iterations beat a random start at 200 by +0.04 to +0.65 dB on
#:   four gray sets, and 100 stayed the best length for session 6's longer-trained ones. "quality" runs 150
#:   iterations at beta 0.95: over "fast" +0.15 dB on FMD (19 images at 256x256), 0.00 on Poisson photos (10,
#:   per image -0.70 to +0.45), -0.12 on GigaDB (5), at 1.5x the time, where the paper's beta 0.99 over 500
#:   iterations learnt the noise and scored 0.3-4 dB under "fast", on crops and whole frames alike.
#: - From the gray weights as colour (at START_LR's 4e-3), 200 iterations at beta 0.9 beat a random start by
#:   +0.76 dB on kodak24 with Gaussian noise (6 images at 256x256, every image better), and 300 at beta 0.95 by
#:   +0.28 dB more; the paper's 1000 at 0.99 scored under 300 (3 images, at 2e-3). With the Wiener refinement
#:   after the fill (napari_mpi.refine, session 8) 300 at 0.95 beats 200 at 0.9 by +0.14 dB on those 6 images and
#:   by +0.13 on 8 held-out CBSD68 images, every image better, and is the first colour setting to reach BM3D
#:   (kodak: +0.08 dB, worst image -0.26), so "fast" runs it: 1.5x the paper's fast iterations. "quality" runs
#:   450 at 0.95: +0.05 dB more on kodak (per image -0.16 to +0.27), at 1.5x the time.
#:
#: "auto" (experimental) decides per image, without the clean image, when to stop (at most 300
#: iterations) and which beta to use (``FillConfig.selfsup``); it scored under "fast" on fluorescence
#: both from a random start and from the shipped weights, so "fast" stays the default.
PRESETS: dict[str, dict[str, float | int | bool]] = {
    "fast": {"iterations": 200, "beta": 0.9, "pretrained_iterations": 100,
             "gray_as_colour_iterations": 300, "gray_as_colour_beta": 0.95},
    "quality": {"iterations": 1000, "beta": 0.99, "pretrained_iterations": 150, "pretrained_beta": 0.95,
                "gray_as_colour_iterations": 450, "gray_as_colour_beta": 0.95},
    "auto": {"iterations": 300, "beta": 0.9, "selfsup": True},
}
#: The fill's Adam learning rate (the paper's), and where a start learns better at another one: the gray weights
#: as colour learn colour faster at 4e-3 (kodak24 with Gaussian noise, 6 images at 256x256: +0.26 dB at Fast's 200
#: iterations, every image better; 8e-3 +0.22). The gray start gained +0.02 / +0.05 dB from 4e-3 (FMD / Poisson
#: photos, 6 each), within noise, so it keeps the paper's.
DEFAULT_LR = 2e-3
START_LR: dict[str, float] = {"gray_as_colour": 4e-3}

#: The preset used when none is named.
DEFAULT_PRESET = "fast"

#: Self-supervised choices of the "auto" preset, by measurement (docs/benchmarks.md, "Auto"):
#: AUTO_HOLDOUT of the pixels (fixed per plane) are never a loss target; every AUTO_CHECK_EVERY
#: iterations the network's squared error at hidden held-out pixels is compared with that at hidden
#: trained-on pixels ("memorisation" = their relative difference). Its level depends on the image;
#: when it has risen AUTO_MEMORISATION_RISE above its lowest value since AUTO_SETTLE iterations, the
#: network is learning the noise itself, and the fill stops (not before AUTO_MIN_ITERATIONS). The output
#: is the bias-corrected running mean, among AUTO_BETAS, with the lowest error at the held-out pixels.
AUTO_HOLDOUT = 0.1
AUTO_BETAS = (0.8, 0.9, 0.95, 0.98, 0.99)
AUTO_CHECK_EVERY = 10
AUTO_SETTLE = 30
AUTO_MIN_ITERATIONS = 50
AUTO_MEMORISATION_RISE = 0.08


#: Planes after the first, when a stack's planes reuse one network (``CarriedNetwork``): this fraction
#: of the plane's iterations as training steps (fast from the shipped gray weights: 10 of 100; colour's 300: 30),
#: then REUSE_PREDICTIONS forward passes without a step (~0.28 of a step's cost each) that add predictions to the
#: running mean. Measured with benchmarks/stack_sharing.py (docs/benchmarks.md, "Stacks, session 10"): from the
#: shipped weights, with the Wiener refinement, at 256x256, against each plane alone, 10 steps + 10 predictions
#: scored +0.16 dB (10-frame FMD time-lapse), +0.53 (32-plane synthetic z-stack, 6.0x), -0.06 (separate FMD
#: fields of view) and -0.11 (the three stains of FMD's 3-slice stack), where 14 + 20 (sessions 5-9) scored
#: +0.19 / +0.59 / -0.05 / -0.05 at 1.4x the cost per later plane; 7 + 8 lost 0.19 dB on the stains, 5 + 5 0.28.
#: Since each plane alone ends with FINAL_PREDICTIONS (session 11): +0.35 (synthetic, 6.4x), -0.06 (fields of view,
#: 5.3x), -0.14 (stains); 6 + 15 +0.24 at 7.4x, -0.07 and -0.16.
REUSE_STEP_FRACTION = 0.10
REUSE_PREDICTIONS = 10

#: Every plane filled from the weights ends with this many forward passes of its trained network without a step
#: (``final_predictions``: never more than the plane's iterations; none with the auto preset): their predictions at
#: hidden pixels go on into the running mean, so the estimate leans more on the network as training left it and less
#: on a single draw of masks. Measured (docs/benchmarks.md, "Predictions after the last step"), default fill +
#: refinement, 256x256 crops: 30 scored +0.05 dB on 10 Poisson photos (kodim09 +0.14, worst -0.04), +0.05 on 5 GigaDB
#: images (membrane +0.15), +0.005 on 8 FMD confocal FOVs (worst -0.025), +0.01 on 6 colour photos; 20 and 50 gained
#: less or lost more; for ~7% more time (a forward pass costs ~0.25 of a step). Whole 512x512 FMD frames (windows):
#: -0.02 / +0.01 dB; whole 768x512 Poisson photos +0.05.
FINAL_PREDICTIONS = 30

#: On a CUDA GPU an eager step of this small network is bound by kernel launches, not arithmetic (H100, 48/48
#: network, 512x512: 16 ms per step eager, 8.5 ms replayed from a CUDA graph; docs/benchmarks.md). So a fill
#: of at least CUDA_GRAPH_MIN_STEPS training steps runs its first CUDA_GRAPH_WARMUP steps eagerly (on a side
#: stream, as capture requires), captures the training step once and replays it. The masks are still drawn eagerly from
#: the fill's own generator, so the graph trains on the same masks as the eager path. False = always eager.
CUDA_GRAPHS = True
CUDA_GRAPH_MIN_STEPS = 20
CUDA_GRAPH_WARMUP = 3


def continuation_steps(iterations: int) -> int:
    """Training steps of a plane that continues from the previous plane's network."""
    return max(1, round(REUSE_STEP_FRACTION * iterations))


def check_reuse(config: FillConfig) -> None:
    """ValueError when planes of this fill cannot reuse one network (the auto preset decides per plane)."""
    if config.selfsup:
        raise ValueError("the auto preset decides per plane and cannot reuse one network across planes; "
                         "choose the fast or quality preset to reuse it")


@dataclass
class CarriedNetwork:
    """The network and Adam state one plane's fill hands to the next plane's (a stack's planes reusing
    one network). Empty until the first fill; ``iterative_fill`` fills and updates it."""

    model: SkipNet | None = None
    optimizer: torch.optim.Optimizer | None = None
    #: the masks go on from the previous plane's: planes of a still scene reseeded alike would get the
    #: same masks over the same content, and predictions that agree with each other's errors
    generator: torch.Generator | None = None
    #: the captured training step (CUDA), replayed for the next plane of the same shape
    graph: _CudaGraphStep | None = None

    @property
    def channels(self) -> int:
        """Image channels of the carried network (0 when empty)."""
        return self.model.out_channels if self.model is not None else 0

    def fits(self, channels: int, device: torch.device) -> bool:
        """Whether a plane of ``channels`` on ``device`` can continue from the carried network."""
        return self.channels == channels and _same_device(next(self.model.parameters()).device, device)

    def clear(self) -> None:
        self.model, self.optimizer, self.generator, self.graph = None, None, None, None


@dataclass(frozen=True)
class FillConfig:
    """Validated parameters of one iterative fill.

    Attributes
    ----------
    mask_ratio : float
        Probability that a pixel is hidden in a step, 0 < p < 1. ~0.3 for pixel-independent
        noise; raise towards 0.8-0.95 when noise is spatially correlated (streaks, blotches).
    beta : float
        EMA weight of the running estimate, 0 <= beta < 1. Higher averages more predictions
        (smoother, needs more iterations).
    iterations : int
        Number of fill steps, >= 1.
    lr : float
        Adam learning rate, > 0 (paper: 2e-3; ``config_for`` picks it by start, START_LR).
    mask_mode : {"pixel", "channel"}
        One mask shared by all channels (gray / fluorescence) or one per channel (RGB photos).
    seed : int
        Seeds the masks (and the network initialisation when no weights are given).
    precision : {"auto", "fp32", "bf16"}
        Arithmetic of the network's forward pass; "auto" picks the fastest one measured to keep quality.
    selfsup : bool
        Decide per image without the clean image (the "auto" preset): hold out AUTO_HOLDOUT of the
        pixels from the loss, stop when the network starts to learn the noise (at most ``iterations``),
        and output the bias-corrected running mean (beta from AUTO_BETAS) with the lowest held-out
        error. ``beta`` is then not used.
    """

    mask_ratio: float = DEFAULT_MASK_RATIO
    beta: float = 0.9
    iterations: int = 200
    lr: float = DEFAULT_LR
    mask_mode: MaskMode = "pixel"
    seed: int = 0
    precision: Precision = "auto"
    selfsup: bool = False

    def __post_init__(self) -> None:
        if not _is_number(self.mask_ratio) or not 0.0 < self.mask_ratio < 1.0:
            raise ValueError(f"mask ratio must be between 0 and 1 (exclusive), got {self.mask_ratio!r}")
        if not _is_number(self.beta) or not 0.0 <= self.beta < 1.0:
            raise ValueError(f"beta must be in [0, 1), got {self.beta!r}")
        if isinstance(self.iterations, bool) or not isinstance(self.iterations, int) or self.iterations < 1:
            raise ValueError(f"iterations must be a whole number >= 1, got {self.iterations!r}")
        if not _is_number(self.lr) or not self.lr > 0.0:
            raise ValueError(f"learning rate must be > 0, got {self.lr!r}")
        if self.mask_mode not in ("pixel", "channel"):
            raise ValueError(f"mask mode must be 'pixel' or 'channel', got {self.mask_mode!r}")
        if self.precision not in ("auto", "fp32", "bf16"):
            raise ValueError(f"precision must be 'auto', 'fp32' or 'bf16', got {self.precision!r}")
        if not isinstance(self.selfsup, bool):
            raise ValueError(f"selfsup must be True or False, got {self.selfsup!r}")


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def config_for(
    preset: str = "fast",
    *,
    mask_ratio: float | None = None,
    beta: float | None = None,
    iterations: int | None = None,
    lr: float | None = None,
    start: Start = "random",
    **fixed: object,
) -> FillConfig:
    """A FillConfig from a preset name, with any of its values overridden (None = keep the preset's);
    ``start``: what the fill starts from, which sets the preset's iterations and beta (see PRESETS) and the
    learning rate (START_LR)."""
    key = preset.lower()
    if key not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; choose one of: {', '.join(PRESETS)}")
    values: dict[str, object] = {k: v for k, v in PRESETS[key].items() if not k.endswith(("_iterations", "_beta"))}
    values["iterations"] = preset_iterations(key, start)
    values["beta"] = preset_beta(key, start)
    values["lr"] = start_lr(start)
    overrides = {"mask_ratio": mask_ratio, "beta": beta, "iterations": iterations, "lr": lr}
    values.update({k: v for k, v in overrides.items() if v is not None})
    values.update(fixed)
    return FillConfig(**values)  # type: ignore[arg-type]


def _check_start(start: str) -> None:
    if start not in get_args(Start):
        raise ValueError(f"start must be one of {', '.join(map(repr, get_args(Start)))}, got {start!r}")


def preset_iterations(preset: str, start: Start = "random") -> int:
    """The iterations a preset runs from this start."""
    _check_start(start)
    values = PRESETS[preset.lower()]
    return int(values.get(f"{start}_iterations", values["iterations"]))


def start_lr(start: Start = "random") -> float:
    """The learning rate a fill uses from this start (START_LR, else DEFAULT_LR)."""
    _check_start(start)
    return START_LR.get(start, DEFAULT_LR)


def preset_beta(preset: str, start: Start = "random") -> float:
    """The running mean's weight a preset uses from this start."""
    _check_start(start)
    values = PRESETS[preset.lower()]
    return float(values.get(f"{start}_beta", values["beta"]))


@dataclass
class FillStep:
    """One iteration's record. ``estimate`` is the live (C, H, W) running estimate on the compute
    device, in [0, 1] units of the normalised plane: clone it before keeping it across steps."""

    iteration: int
    iterations: int
    estimate: torch.Tensor
    loss_tensor: torch.Tensor = field(repr=False)
    auto: AutoReport | None = None  # the "auto" preset's last check (None for the other presets)

    @property
    def loss(self) -> float:
        """Masked MSE of this step (synchronises with the device, so read it only when needed)."""
        return float(self.loss_tensor)


@dataclass(frozen=True)
class AutoReport:
    """What the "auto" preset measured at its last check, and what it decided."""

    iteration: int
    beta: float  # running-mean weight whose estimate has the lowest held-out error
    holdout_error: float  # that estimate's mean squared error at held-out pixels (noise variance included)
    memorisation: float  # (held-out - trained-on) / held-out squared error of the predictions at hidden pixels
    rise: float  # memorisation now minus its lowest value so far
    stopped: bool  # True when this check ended the fill early

    def describe(self) -> str:
        """One sentence for a status line or a log."""
        if self.stopped:
            why = (f"stopped at iteration {self.iteration}: the network started to learn the noise (its error on "
                   f"the pixels it trains on fell {self.rise:.0%} further below that on held-out pixels)")
        else:
            why = f"ran {self.iteration} iterations without learning the noise"
        return f"Auto {why}; beta {self.beta:g} has the lowest held-out error"


def available_devices() -> list[str]:
    """Device names this machine can use, in the order "auto" prefers them after "auto" itself:
    ["auto", "cpu"] plus "cuda" and / or "mps" when present."""
    devices = ["auto", "cpu"]
    if torch.cuda.is_available():
        devices.append("cuda")
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        devices.append("mps")
    return devices


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """"auto" picks CUDA, then Apple MPS, then the CPU; an explicit name must be available."""
    if isinstance(device, torch.device):
        return device
    name = str(device).lower()
    available = available_devices()
    if name == "auto":
        return torch.device(next((d for d in ("cuda", "mps") if d in available), "cpu"))
    if name.startswith("cuda") and "cuda" not in available:
        raise ValueError("device 'cuda' was requested but no CUDA GPU is available; use device='auto' or 'cpu'")
    if name == "mps" and "mps" not in available:
        raise ValueError("device 'mps' was requested but Apple MPS is not available; use device='auto' or 'cpu'")
    try:
        return torch.device(name)
    except RuntimeError as exc:
        raise ValueError(f"unknown device {device!r}; use 'auto', 'cpu', 'cuda' or 'mps'") from exc


def resolve_precision(precision: Precision, device: torch.device) -> Literal["fp32", "bf16"]:
    """Pick the arithmetic for "auto", by measurement (docs/benchmarks.md):

    - CPU: bf16 autocast where the hardware computes bf16 natively (~1.5x faster per iteration on an
      AVX-512-BF16 CPU at equal PSNR), fp32 elsewhere (older CPUs emulate bf16 slowly);
    - CUDA: bf16 where supported. With the step in a CUDA graph it was 5-8% faster than fp32 at 512x512
      and 2048x2048 on an H100, with 26% less memory, and scored -0.007 dB on average (worst -0.08) on
      12 noisy 512x512 pictures. (Eager, below ~1024x1024, its casts cost more than they save, but
      only fills too short for the graph run eagerly.)
    - MPS: fp32 (autocast support varies).
    """
    if precision != "auto":
        return precision
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    if device.type == "cpu":
        return "bf16" if torch.ops.mkldnn._is_mkldnn_bf16_supported() else "fp32"
    return "fp32"


#: serialises seeded initialisations (see build_model)
_INIT_LOCK = threading.Lock()


def build_model(channels: int, state_dict: dict[str, torch.Tensor] | None, seed: int, device: torch.device) -> SkipNet:
    """A SkipNet for ``channels`` image channels (input = image + mask), with the given weights (and
    the width they were trained at) or a seeded random initialisation of the default network."""
    # torch's global generator is shared by all threads: planes denoised in parallel threads (Dask
    # workers in one process) would interleave their draws and get other weights than a serial run
    with _INIT_LOCK, torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = SkipNet(2 * channels, channels, **(architecture_of(state_dict) if state_dict is not None else {}))
    if state_dict is not None:
        model.load_state_dict(state_dict)
    return model.to(device)


@torch.no_grad()
def ema_update_(estimate: torch.Tensor, prediction: torch.Tensor, hidden: torch.Tensor, beta: float) -> torch.Tensor:
    """In place: ``estimate = hidden * (beta * estimate + (1 - beta) * prediction) + (1 - hidden) * estimate``,
    computed as ``estimate + hidden * (1 - beta) * (prediction - estimate)`` (hidden is 0 or 1)."""
    return estimate.add_(hidden * (1.0 - beta) * (prediction - estimate))


def iterative_fill(
    image: torch.Tensor,
    config: FillConfig,
    state_dict: dict[str, torch.Tensor] | None = None,
    device: str | torch.device = "auto",
    carried: CarriedNetwork | None = None,
) -> Iterator[FillStep]:
    """Run Algorithm 1 on one normalised plane and yield a :class:`FillStep` after every iteration.

    ``config.iterations`` training steps, then ``final_predictions(config)`` predictions of the trained network
    without a step that go on into the running mean (``plane_steps``; the auto preset ends where it decides instead).
    With ``carried`` holding the previous plane's network (same channels and device), the plane
    continues from it instead: ``continuation_steps(config.iterations)`` training steps, then
    REUSE_PREDICTIONS predictions without a step; its estimate is the bias-corrected running mean of
    the predictions at hidden pixels (the noisy image only where no mask hid a pixel). Either way the
    network is left in ``carried`` for the next plane.

    Parameters
    ----------
    image : torch.Tensor
        The noisy plane, shape (C, H, W) (C = 1 gray, 3 RGB), roughly in [0, 1].
    config : FillConfig
        Mask ratio, beta, iterations, learning rate, mask mode, seed, precision.
    state_dict : dict or None
        Pre-trained weights for a SkipNet with 2*C inputs and C outputs; None = random init.
    device : str or torch.device
        "auto", "cpu", "cuda", "mps" or a torch.device.
    carried : CarriedNetwork, optional
        Reuse one network across a stack's planes (not with ``config.selfsup``).
    """
    channels, height, width = _check_plane(image, "iterative_fill")
    if carried is not None:
        check_reuse(config)
    dev = resolve_device(device)
    precision = resolve_precision(config.precision, dev)
    continuing = carried is not None and carried.fits(channels, dev)
    # a new network captures its training step when there are enough steps to repay the capture
    capture = not continuing and CUDA_GRAPHS and dev.type == "cuda" and config.iterations >= CUDA_GRAPH_MIN_STEPS
    model, optimizer, generator = _plane_network(carried, continuing, channels, state_dict, config, dev, capture)
    if continuing:
        steps = continuation_steps(config.iterations)
        iterations = steps + REUSE_PREDICTIONS
    else:
        steps, iterations = config.iterations, plane_steps(config, height, width)

    x = image.to(dev, torch.float32).unsqueeze(0)
    graph = carried.graph if continuing else None
    if graph is not None and graph.x.shape == x.shape:
        graph.x.copy_(x)  # the captured step reads the plane from its own buffer
        x = graph.x
    else:
        graph = None
    estimate = x[0].clone()
    autocast = _autocast(dev, precision)
    judge = _SelfSupervision(x, generator) if config.selfsup else None
    # a continuing plane has few predictions per pixel: their bias-corrected mean, without the noisy start
    running = _RunningMean(x, config.beta) if continuing else None
    report: AutoReport | None = None
    warmup = torch.cuda.Stream(dev) if capture else None  # the steps before the capture run on a side stream

    for iteration in range(1, iterations + 1):
        keep = draw_mask(x.shape, config.mask_ratio, config.mask_mode, generator, dev)
        hidden = 1.0 - keep
        weight = hidden if judge is None else hidden * judge.trained  # the pixels the loss counts
        if iteration > steps:  # the last predictions, without a training step
            prediction, loss = _predict(model, x, keep, weight, autocast)
        elif graph is not None:
            prediction, loss = graph(keep, weight)
        elif warmup is not None:
            warmup.wait_stream(torch.cuda.current_stream(dev))
            with torch.cuda.stream(warmup):
                prediction, loss = _train_step(model, optimizer, x, keep, weight, autocast)
            torch.cuda.current_stream(dev).wait_stream(warmup)
            if iteration == CUDA_GRAPH_WARMUP:
                graph = _capture(model, optimizer, x, autocast)
                warmup = None
                if carried is not None:
                    carried.graph = graph
        else:
            prediction, loss = _train_step(model, optimizer, x, keep, weight, autocast)
        if running is not None:
            estimate = running.update(prediction[0], hidden[0])
        elif judge is None:
            ema_update_(estimate, prediction[0], hidden[0], config.beta)
        else:
            judge.update(prediction, hidden)
            if iteration % AUTO_CHECK_EVERY == 0 or iteration == iterations:
                report = judge.check(iteration)
            estimate = judge.estimate()
        yield FillStep(iteration, iterations, estimate, loss, report)
        if report is not None and report.stopped:
            return


def _plane_network(carried: CarriedNetwork | None, continuing: bool, channels: int,
                   state_dict: dict[str, torch.Tensor] | None, config: FillConfig, dev: torch.device,
                   capturable: bool = False) -> tuple[SkipNet, torch.optim.Optimizer, torch.Generator]:
    """The network, Adam optimiser and mask generator a plane's fill trains, in training mode (BatchNorm statistics
    of this image, as in the reference): the carried ones when ``continuing``, else new ones from ``state_dict``,
    left in ``carried`` (when given) for the next plane. ``capturable``: Adam's step count lives on the GPU, so
    that a CUDA graph can replay the update."""
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


def _check_plane(image: torch.Tensor, caller: str) -> tuple[int, int, int]:
    """(C, H, W) of a plane a fill can work on; ValueError with a clear sentence otherwise."""
    if image.ndim != 3:
        raise ValueError(f"{caller} expects one (C, H, W) plane, got shape {tuple(image.shape)}")
    channels, height, width = image.shape
    check_plane_size(height, width)
    if not torch.isfinite(image).all():
        raise ValueError("image contains NaN or infinite values; replace them before denoising")
    return channels, height, width


def _autocast(dev: torch.device, precision: str) -> torch.autocast:
    """The fill's forward-pass arithmetic. No cast cache: a captured CUDA step must recast the weights that Adam
    changed in place."""
    return torch.autocast(device_type=dev.type, dtype=torch.bfloat16, enabled=precision == "bf16", cache_enabled=False)


def _same_device(a: torch.device, b: torch.device) -> bool:
    """``torch.device("cuda") != torch.device("cuda:0")``, though both may name the same GPU."""
    def index(d: torch.device) -> int:
        return d.index if d.index is not None else torch.cuda.current_device() if d.type == "cuda" else 0

    return a.type == b.type and index(a) == index(b)


def _train_step(model: SkipNet, optimizer: torch.optim.Optimizer, x: torch.Tensor, keep: torch.Tensor,
                weight: torch.Tensor, autocast: torch.autocast) -> tuple[torch.Tensor, torch.Tensor]:
    """One training step of the fill: predict from the visible pixels, take an Adam step on the squared
    error where ``weight`` is 1 (the hidden pixels). Returns the prediction made before the step and the loss."""
    with autocast:
        prediction = model(torch.cat([x * keep, keep], dim=1).contiguous(memory_format=torch.channels_last))
    prediction = prediction.float()
    loss = masked_mse(prediction, x, weight)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return prediction.detach(), loss.detach()


@torch.no_grad()
def _predict(model: SkipNet, x: torch.Tensor, keep: torch.Tensor, weight: torch.Tensor,
             autocast: torch.autocast) -> tuple[torch.Tensor, torch.Tensor]:
    """A forward pass without a step: the prediction (float32) and its masked loss."""
    with autocast:
        prediction = model(torch.cat([x * keep, keep], dim=1).contiguous(memory_format=torch.channels_last))
    prediction = prediction.float()
    return prediction, masked_mse(prediction, x, weight)


class _CudaGraphStep:
    """``_train_step`` captured in a CUDA graph: the plane, mask and loss weight are copied into its own
    buffers and the whole step (a few hundred kernels) is replayed with one launch."""

    def __init__(self, model: SkipNet, optimizer: torch.optim.Optimizer, x: torch.Tensor, autocast: torch.autocast):
        self.x = x
        self.keep = torch.ones_like(x)
        self.weight = torch.zeros_like(x)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self.prediction, self.loss = _train_step(model, optimizer, self.x, self.keep, self.weight, autocast)

    def __call__(self, keep: torch.Tensor, weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        self.keep.copy_(keep)
        self.weight.copy_(weight)
        self.graph.replay()
        # the loss buffer is overwritten by the next replay; the prediction is used before that
        return self.prediction, self.loss.clone()


def _capture(model: SkipNet, optimizer: torch.optim.Optimizer, x: torch.Tensor,
             autocast: torch.autocast) -> _CudaGraphStep | None:
    """The captured training step, or None (the fill goes on eagerly, with a warning) where this GPU, driver or
    torch build cannot capture it. Running out of memory is not caught: the caller tiles the plane."""
    try:
        return _CudaGraphStep(model, optimizer, x, autocast)
    except RuntimeError as exc:
        if isinstance(exc, torch.OutOfMemoryError) or "out of memory" in str(exc):
            raise
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        warnings.warn(f"could not capture the fill step in a CUDA graph ({reason}); going on without it (slower)",
                      RuntimeWarning, stacklevel=3)
        return None


class _RunningMean:
    """Running mean of predictions at hidden pixels with weight beta, started at 0 and divided by
    1 - beta^k (k = how often the pixel was hidden), as Adam corrects its moments; the noisy value
    where a pixel was never hidden."""

    def __init__(self, x: torch.Tensor, beta: float):
        self.x = x[0]
        self.beta = beta
        self.mean = torch.zeros_like(self.x)
        self.count = torch.zeros_like(self.x)

    def update(self, prediction: torch.Tensor, hidden: torch.Tensor) -> torch.Tensor:
        self.mean.add_(hidden * (1.0 - self.beta) * (prediction - self.mean))
        self.count.add_(hidden)
        return _bias_corrected(self.mean, self.beta, self.count, self.x)


def _bias_corrected(means: torch.Tensor, betas: torch.Tensor | float, count: torch.Tensor,
                    fallback: torch.Tensor) -> torch.Tensor:
    """Running means started at 0, divided by 1 - beta^count; ``fallback`` where count is 0."""
    scale = 1.0 - torch.pow(betas, count)
    return torch.where(count > 0, means / scale.clamp_min(1e-12), fallback)


class _SelfSupervision:
    """The bookkeeping of ``FillConfig.selfsup``: held-out pixels, a bank of bias-corrected running
    means, and the two errors that tell generalising from learning the noise.

    For pixel-independent noise, a prediction made with a pixel hidden and by a network that never
    trained on it has expected squared error to the noisy pixel = its error to the clean pixel + the
    noise variance (Noise2Self's J-invariance). Held-out pixels stay that way; trained-on pixels lose
    it as the network memorises their noise, which shows as their error falling below the held-out one.
    The running means start at 0 and are divided by 1 - beta^k (k = how often a pixel was hidden, as
    Adam corrects its moments), so no estimate ever contains the noisy pixel itself and the held-out
    error ranks them honestly.
    """

    def __init__(self, x: torch.Tensor, generator: torch.Generator):
        _, channels, height, width = x.shape
        self.x = x
        held = torch.rand((1, 1, height, width), generator=generator, device=x.device) < AUTO_HOLDOUT
        self.held = held.to(x.dtype)
        self.trained = 1.0 - self.held
        self.betas = torch.tensor(AUTO_BETAS, device=x.device).view(-1, 1, 1, 1)
        self.means = torch.zeros((len(AUTO_BETAS), channels, height, width), device=x.device)
        self.count = torch.zeros((channels, height, width), device=x.device)
        self.sums = torch.zeros(4, device=x.device)  # squared error and count: held-out, trained-on
        self.smoothed: torch.Tensor | None = None
        self.lowest = math.inf  # lowest memorisation since AUTO_SETTLE iterations
        self.choice = AUTO_BETAS.index(0.9)

    def update(self, prediction: torch.Tensor, hidden: torch.Tensor) -> None:
        """Fold this step's predictions at hidden pixels into every running mean; add up the errors."""
        self.means.add_(hidden * (1.0 - self.betas) * (prediction - self.means))
        self.count.add_(hidden[0])
        error = (prediction - self.x).square_() * hidden
        self.sums.add_(torch.stack([
            (error * self.held).sum(), (hidden * self.held).sum(),
            (error * self.trained).sum(), (hidden * self.trained).sum(),
        ]))

    def corrected(self) -> torch.Tensor:
        """All bias-corrected running means, (len(AUTO_BETAS), C, H, W)."""
        return _bias_corrected(self.means, self.betas, self.count, self.x[0])

    def estimate(self) -> torch.Tensor:
        """The bias-corrected running mean of the chosen beta, (C, H, W)."""
        return _bias_corrected(self.means[self.choice], AUTO_BETAS[self.choice], self.count, self.x[0])

    def check(self, iteration: int) -> AutoReport:
        """Choose beta by held-out error and decide whether to stop (one device sync)."""
        held_sse, held_n, trained_sse, trained_n = self.sums
        window = torch.stack([held_sse / held_n.clamp_min(1.0), trained_sse / trained_n.clamp_min(1.0)])
        self.sums.zero_()
        self.smoothed = window if self.smoothed is None else 0.5 * self.smoothed + 0.5 * window
        held_out = ((self.corrected() - self.x[0]).square() * self.held[0]).sum(dim=(1, 2, 3))
        errors = (held_out / (self.held.sum() * self.x.shape[1]).clamp_min(1.0)).tolist()
        held_error, trained_error = self.smoothed.tolist()
        self.choice = min(range(len(AUTO_BETAS)), key=errors.__getitem__)
        memorisation = (held_error - trained_error) / held_error if held_error > 0 else 0.0
        if iteration >= AUTO_SETTLE:
            self.lowest = min(self.lowest, memorisation)
        rise = memorisation - self.lowest if math.isfinite(self.lowest) else 0.0
        stop = iteration >= AUTO_MIN_ITERATIONS and rise >= AUTO_MEMORISATION_RISE
        return AutoReport(iteration, AUTO_BETAS[self.choice], errors[self.choice], memorisation, rise, stop)


#: Overlap (pixels) of neighbouring tiles when a plane is filled in tiles; blended with linear ramps.
TILE_OVERLAP = 32
#: Smallest tile side tried when a plane does not fit in memory (smaller planes are never tiled): at
#: 128 the overlap costs at most ~1.8x the work; a device that cannot hold a 128x128 plane (~80 MB)
#: is better reported than crawled through in thousands of tiles.
MIN_TILE = 128


def tile_starts(length: int, tile: int, overlap: int = TILE_OVERLAP) -> list[int]:
    """Start offsets of tiles of ``tile`` pixels covering ``length``, neighbours overlapping by at
    least ``overlap`` pixels, spread evenly (the first at 0, the last ending at ``length``)."""
    if tile >= length:
        return [0]
    if not 0 <= overlap < tile:
        raise ValueError(f"tile overlap must be in [0, {tile}), got {overlap}")
    count = math.ceil((length - overlap) / (tile - overlap))
    return [round(i * (length - tile) / (count - 1)) for i in range(count)]


def _axis_weights(starts: list[int], tile: int) -> list[torch.Tensor]:
    """1-D blending weights of the tiles starting at ``starts`` along one axis: each rises across its
    overlap with the previous tile and falls across its overlap with the next (1 elsewhere), divided
    by the sum over the tiles, so the weights at every pixel add up to 1 (two overlapping tiles
    cross-fade linearly). No weight is 0, so every pixel is covered."""
    tents = []
    for number, start in enumerate(starts):
        weights = torch.ones(tile, dtype=torch.float32)
        if number > 0:
            left = starts[number - 1] + tile - start
            weights[:left] = torch.arange(1, left + 1, dtype=torch.float32) / (left + 1)
        if number < len(starts) - 1:
            right = start + tile - starts[number + 1]
            falling = torch.arange(right, 0, -1, dtype=torch.float32) / (right + 1)
            weights[tile - right:] = torch.minimum(weights[tile - right:], falling)
        tents.append(weights)
    total = torch.zeros(starts[-1] + tile)
    for start, weights in zip(starts, tents):
        total[start:start + tile] += weights
    return [weights / total[start:start + tile] for start, weights in zip(starts, tents)]


class TiledStep:
    """One step of :func:`tiled_fill`: the same interface as :class:`FillStep` (``estimate`` of the
    whole plane, ``loss``), with the estimate blended from the tiles on demand (on the CPU)."""

    def __init__(self, iteration: int, iterations: int, tiles: int, blend: Callable[[], torch.Tensor],
                 loss_tensor: torch.Tensor) -> None:
        self.iteration = iteration
        self.iterations = iterations
        self.tiles = tiles
        self._blend = blend
        self.loss_tensor = loss_tensor

    @property
    def estimate(self) -> torch.Tensor:
        """(C, H, W) estimate of the whole plane: finished tiles, the live one, and the input elsewhere."""
        return self._blend()

    @property
    def loss(self) -> float:
        """Masked MSE of the current tile's step."""
        return float(self.loss_tensor)


def tiled_fill(
    image: torch.Tensor,
    config: FillConfig,
    state_dict: dict[str, torch.Tensor] | None = None,
    device: str | torch.device = "auto",
    tile: tuple[int, int] = (256, 256),
    overlap: int = TILE_OVERLAP,
) -> Iterator[TiledStep]:
    """Algorithm 1 on overlapping tiles of one plane, one tile after the other, for planes whose
    activations do not fit in the device's memory at once.

    Each tile gets its own network and masks (seed + tile number) and the full number of
    iterations; the tiles' estimates are blended with linear ramps over the overlap. Peak memory is
    that of one tile. Yields ``tiles * iterations`` steps; ``iteration`` counts the plane's work done in
    whole iterations (rising from 0; ``iterations`` only at the last step), so progress reads as for an
    untiled plane.
    """
    if image.ndim != 3:
        raise ValueError(f"tiled_fill expects one (C, H, W) plane, got shape {tuple(image.shape)}")
    channels, height, width = image.shape
    tile_h, tile_w = min(tile[0], height), min(tile[1], width)
    check_plane_size(tile_h, tile_w)
    overlap = min(overlap, tile_h - 1, tile_w - 1)
    rows, columns = tile_starts(height, tile_h, overlap), tile_starts(width, tile_w, overlap)
    grid = [(y, x) for y in rows for x in columns]
    x_cpu = image.detach().to("cpu", torch.float32)
    total = torch.zeros(1, height, width)
    weights = []
    row_weights, column_weights = _axis_weights(rows, tile_h), _axis_weights(columns, tile_w)
    for i in range(len(rows)):
        for j in range(len(columns)):
            w = row_weights[i][:, None] * column_weights[j][None, :]
            weights.append(w)
            total[:, rows[i]:rows[i] + tile_h, columns[j]:columns[j] + tile_w] += w
    done = torch.zeros_like(x_cpu)  # weighted sum of finished tiles' estimates
    pending = total.clone()  # weight still given to the input (tiles not finished)
    iterations = plane_steps(config, tile_h, tile_w)  # each tile's fill
    count = len(grid)
    for number, ((y, x), w) in enumerate(zip(grid, weights)):
        region = (slice(None), slice(y, y + tile_h), slice(x, x + tile_w))
        step: FillStep | None = None
        current: list[FillStep | None] = [None]

        def blend(region=region, w=w, current=current) -> torch.Tensor:
            live = current[0]
            result = done + x_cpu * pending
            if live is not None:
                # the live tile replaces its share of the input by its current estimate
                result[region] += w * (live.estimate.detach().float().cpu() - x_cpu[region])
            return result / total

        tile_config = replace(config, seed=config.seed + number)
        for step in iterative_fill(image[region], tile_config, state_dict, device):
            current[0] = step
            work = number * iterations + step.iteration
            yield TiledStep(work // count, iterations, count, blend, step.loss_tensor)
        assert step is not None
        done[region] += w * step.estimate.detach().float().cpu()
        pending[region] -= w
        current[0] = None


#: Training on random windows of a big plane (``crop_fill``): a step costs in proportion to its pixels, and with the
#: Wiener refinement after it (napari_mpi.refine) a running mean of fewer predictions per pixel is enough. Window
#: side, in pixels; and the pixels next to a window edge inside the plane, whose predictions are left out of the
#: mean (the network sees padding there, not the plane).
CROP_SIZE = 256
CROP_MARGIN = 16
#: Smallest window side accepted: the margins must leave pixels to predict.
MIN_CROP = 4 * CROP_MARGIN
#: A crop fill standing for N whole-plane iterations trains this fraction of their pixels (see crop_steps). Measured
#: (benchmarks/crop_fill_study.py, docs/benchmarks.md) on whole 512x512 FMD frames and 768x512 Poisson photos against
#: whole-plane steps, both with the Wiener refinement: 1.0 scored +0.01 to +0.10 dB on 6 FMD frames and -0.13 to
#: +0.07 on 3 photos; 0.75 -0.03 to +0.08 and -0.20 to -0.02; 0.5 -0.08 to +0.04 and -0.28 to -0.16.
CROP_STEP_SCALE = 1.0


def final_predictions(config: FillConfig) -> int:
    """Predictions without a step that end the fill of a plane started from the weights: FINAL_PREDICTIONS, never
    more than the training steps; none for the auto preset, which ends where it decides."""
    return 0 if config.selfsup else min(FINAL_PREDICTIONS, config.iterations)


def plane_steps(config: FillConfig, height: int, width: int, crop: int = 0) -> int:
    """Iterations of the fill of a height x width plane started from the weights (not continuing a carried network):
    ``config.iterations`` training steps, then ``final_predictions(config)`` predictions without a step; in crop x crop
    windows (``crop_fill``) as many window steps as those stand for. The auto preset runs at most its iterations."""
    predictions = final_predictions(config)
    if crop:
        return crop_steps(config.iterations, height, width, crop) + crop_steps(predictions, height, width, crop)
    return config.iterations + predictions


def crop_steps(iterations: int, height: int, width: int, crop: int) -> int:
    """Training steps of a crop fill that stands for ``iterations`` whole-plane steps on a height x width plane:
    CROP_STEP_SCALE of their pixels in windows of crop x crop (never fewer than ``iterations``)."""
    windows = height * width / (min(crop, height) * min(crop, width))
    return max(iterations, round(CROP_STEP_SCALE * iterations * windows))


def crop_fill(
    image: torch.Tensor,
    config: FillConfig,
    state_dict: dict[str, torch.Tensor] | None = None,
    device: str | torch.device = "auto",
    crop: int = CROP_SIZE,
    carried: CarriedNetwork | None = None,
) -> Iterator[FillStep]:
    """Algorithm 1 with each step on a random crop x crop window of the plane; yields a FillStep after every step.

    The network (one for the whole plane) trains on one masked window per step, and its predictions at the window's
    hidden pixels go into a running mean of the whole plane: weight ``config.beta``, started at 0 and divided by
    1 - beta^k (k = how often the pixel was predicted), the noisy value where it never was. Predictions within
    CROP_MARGIN pixels of a window edge inside the plane are left out. The windows come in passes that each cover
    every pixel once or twice (``window_pass``), so the border and corners get predictions as often as the middle.
    Runs ``crop_steps(config.iterations, H, W, crop)`` training steps, then ``crop_steps(final_predictions(config),
    ...)`` window predictions without a step (``plane_steps``); memory is one window's, whatever the plane's size.
    Not with ``config.selfsup``.

    With ``carried`` holding the previous plane's network, the plane continues from it as in
    :func:`iterative_fill`, in windows: ``crop_steps(continuation_steps(config.iterations), ...)`` training steps,
    then ``crop_steps(REUSE_PREDICTIONS, ...)`` window predictions without a step (the same pixels as the
    whole-plane recipe). Either way the network is left in ``carried`` for the next plane.
    """
    if config.selfsup:
        raise ValueError("the auto preset decides on the whole plane and cannot train on crops; use crop='none'")
    if isinstance(crop, bool) or not isinstance(crop, int) or crop < MIN_CROP:
        raise ValueError(f"crop size must be a whole number >= {MIN_CROP}, got {crop!r}")
    channels, height, width = _check_plane(image, "crop_fill")
    dev = resolve_device(device)
    precision = resolve_precision(config.precision, dev)
    continuing = carried is not None and carried.fits(channels, dev)
    model, optimizer, generator = _plane_network(carried, continuing, channels, state_dict, config, dev)
    if continuing:
        training = crop_steps(continuation_steps(config.iterations), height, width, crop)
        steps = training + crop_steps(REUSE_PREDICTIONS, height, width, crop)
    else:
        training = crop_steps(config.iterations, height, width, crop)
        steps = plane_steps(config, height, width, crop)
    rng = np.random.default_rng((config.seed, 0xC0))  # the windows: a stream of their own
    places = itertools.chain.from_iterable(iter(lambda: window_pass(height, width, crop, rng), None))  # pass after pass
    autocast = _autocast(dev, precision)
    x = image.to(dev, torch.float32).unsqueeze(0)
    estimate = x[0].clone()
    mean = torch.zeros_like(estimate)
    count = torch.zeros_like(estimate)
    size_h, size_w = min(crop, height), min(crop, width)
    for step, (top, left) in zip(range(1, steps + 1), places):
        region = (slice(None), slice(top, top + size_h), slice(left, left + size_w))
        window = x[(slice(None), *region)]
        keep = draw_mask(window.shape, config.mask_ratio, config.mask_mode, generator, dev)
        hidden = 1.0 - keep
        if step > training:  # the last predictions, without a training step
            prediction, loss = _predict(model, window, keep, hidden, autocast)
        else:
            prediction, loss = _train_step(model, optimizer, window, keep, hidden, autocast)
        use = hidden[0]
        inner_top = CROP_MARGIN if top > 0 else 0
        inner_left = CROP_MARGIN if left > 0 else 0
        inner_bottom = size_h - CROP_MARGIN if top + size_h < height else size_h
        inner_right = size_w - CROP_MARGIN if left + size_w < width else size_w
        inner = (slice(None), slice(inner_top, inner_bottom), slice(inner_left, inner_right))
        target = (slice(None), slice(top + inner_top, top + inner_bottom), slice(left + inner_left, left + inner_right))
        with torch.no_grad():
            seen = use[inner]
            mean[target].add_(seen * (1.0 - config.beta) * (prediction[0][inner] - mean[target]))
            count[target].add_(seen)
            estimate[target] = _bias_corrected(mean[target], config.beta, count[target], x[0][target])
        yield FillStep(step, steps, estimate, loss)


def window_pass(height: int, width: int, crop: int, rng: np.random.Generator) -> list[tuple[int, int]]:
    """Top-left corners of one pass of crop x crop windows over a plane, in random order: a grid of windows whose
    used parts (all but CROP_MARGIN at an edge inside the plane) meet edge to edge, shifted by a random phase and
    clamped into the plane, so that every pixel is predictable once or twice per pass. (Windows drawn uniformly
    would reach the border and corners, only inside the windows at the plane's edges, 3-100x less often.)"""

    def starts(length: int, size: int) -> np.ndarray:
        if size >= length:
            return np.zeros(1, dtype=np.int64)
        stride = size - 2 * CROP_MARGIN
        phase = int(rng.integers(stride))
        return np.unique(np.clip(np.arange(phase - stride, length, stride), 0, length - size))

    tops, lefts = starts(height, min(crop, height)), starts(width, min(crop, width))
    grid = [(int(top), int(left)) for top in tops for left in lefts]
    return [grid[number] for number in rng.permutation(len(grid))]
