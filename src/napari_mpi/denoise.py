"""The public API: denoise any N-D array plane by plane with MPI's iterative fill.

``denoise`` is the one-call function. ``prepare`` validates everything up front (so a GUI or a
command line can report bad input before starting a thread), and ``denoise_steps`` is the
generator the widget and the command line consume: it yields a :class:`DenoiseProgress` after
every iteration — the cancellation point — and writes each finished plane into the output.
"""

from __future__ import annotations

import gc
import math
import time
import warnings
from dataclasses import dataclass, field
from typing import Any, Callable, Container, Generator, Protocol

import numpy as np
import torch

from .fill import (
    CROP_SIZE, DEFAULT_PRESET, MIN_CROP, MIN_TILE, TILE_OVERLAP, AutoReport, CarriedNetwork, FillConfig, FillStep,
    check_reuse, config_for, crop_fill, final_predictions, iterative_fill, plane_steps, resolve_device,
    resolve_precision, tile_starts, tiled_fill,
)
from .network import DEFAULT_DEPTH, DEFAULT_SKIP_WIDTH, DEFAULT_WIDTH, architecture_of, check_plane_size, padded_side
from .noise import MaskRatioHint, mask_ratio_hint
from .planes import Normalization, PlaneLayout, check_dtype, check_values, normalize, plane_layout
from .refine import refine_estimate, resolve_refine
from .weights import Checkpoint, WeightsSpec, resolve_weights

__all__ = [
    "DenoisePlan", "DenoiseProgress", "DenoiseWarning", "PlaneSink", "prepare", "denoise_steps", "denoise_plane", "denoise",
    "check_noise",
]


class DenoiseWarning(RuntimeWarning):
    """A run changed how it works to finish: e.g. a plane too big for the device's memory is denoised in tiles."""


@dataclass(frozen=True)
class DenoisePlan:
    """Everything a run needs, validated: how to split the array, the fill settings, the weights, the device."""

    layout: PlaneLayout
    config: FillConfig
    checkpoint: Checkpoint | None
    device: torch.device
    preset: str
    channel_axis: int | None = None
    #: planes after the first continue from the previous plane's network (fewer steps; see fill.CarriedNetwork)
    reuse_network: bool = False
    #: what follows each plane's fill: "wiener" (collaborative Wiener filter, napari_mpi.refine) or "none"
    refine: str = "none"
    #: side of the random windows each fill step trains on (fill.crop_fill); 0 = every step on the whole plane
    crop: int = 0

    @property
    def steps_per_plane(self) -> int:
        """Iterations of one plane's fill, its last predictions included: window steps with ``crop`` (planes continuing
        a reused network run fewer)."""
        return plane_steps(self.config, *self.layout.plane_shape[:2], self.crop)

    def describe_length(self) -> str:
        """One plane's fill in words, e.g. "100 iterations, then 30 predictions (as 520 steps on 256x256 windows)"."""
        predictions = final_predictions(self.config)
        text = f"{self.config.iterations} iterations{f', then {predictions} predictions' if predictions else ''}"
        return text + (f" (as {self.steps_per_plane} steps on {self.crop}x{self.crop} windows)" if self.crop else "")

    @property
    def network(self) -> dict[str, int]:
        """Width, skip width and depth of the network the fill builds: the checkpoint's, else the default."""
        if self.checkpoint is not None:
            return architecture_of(self.checkpoint.state_dict)
        return {"width": DEFAULT_WIDTH, "skip_width": DEFAULT_SKIP_WIDTH, "depth": DEFAULT_DEPTH}

    def describe(self) -> dict[str, Any]:
        """Parameters as plain values, for metadata and logs."""
        from . import __version__

        return {
            "napari_mpi_version": __version__,
            "preset": self.preset,
            "mask_ratio": self.config.mask_ratio,
            "beta": self.config.beta,
            "iterations": self.config.iterations,
            "lr": self.config.lr,
            "mask_mode": self.config.mask_mode,
            "seed": self.config.seed,
            "precision": self.config.precision,
            "selfsup": self.config.selfsup,
            "reuse_network": self.reuse_network,
            "refine": self.refine,
            "crop": self.crop,
            "device": str(self.device),
            "weights": self.checkpoint.name if self.checkpoint is not None else "random initialisation",
            "network": self.network,
            "rgb": self.layout.rgb,
            "channel_axis": self.channel_axis,
            "plane_by_plane_axes": list(self.layout.iter_axes),
            "planes": self.layout.n_planes,
        }


@dataclass
class DenoiseProgress:
    """Progress after one fill iteration of one plane."""

    plane: int
    n_planes: int
    index: tuple
    iteration: int
    iterations: int
    elapsed: float
    #: 1, or the number of overlapping tiles the plane is filled in after running out of memory
    tiles: int = 1
    _step: FillStep | None = field(repr=False, default=None)
    _norm: Normalization | None = field(repr=False, default=None)
    _plane_data: np.ndarray | None = field(repr=False, default=None)

    @property
    def fraction(self) -> float:
        """Overall completion in [0, 1]."""
        return (self.plane + self.iteration / self.iterations) / self.n_planes

    @property
    def loss(self) -> float:
        """Masked MSE of this iteration (nan for planes that needed no fill)."""
        return self._step.loss if self._step is not None else float("nan")

    @property
    def auto(self) -> AutoReport | None:
        """With the "auto" preset: what it measured at its last check and decided (beta, stop)."""
        return getattr(self._step, "auto", None)

    def estimate(self) -> np.ndarray:
        """The current estimate of this plane, in the input's intensity units (a copy; costs a device sync)."""
        if self._step is None:
            return np.asarray(self._plane_data, dtype=np.float32)
        return _to_plane(self._step.estimate, self._norm, self._plane_data)


def prepare(
    image_shape: tuple[int, ...],
    image_dtype: np.dtype | type,
    *,
    mask_ratio: float | None = None,
    beta: float | None = None,
    iterations: int | None = None,
    preset: str = DEFAULT_PRESET,
    rgb: bool = False,
    channel_axis: int | None = None,
    seed: int = 0,
    device: str | torch.device = "auto",
    weights: WeightsSpec = "default",
    lr: float | None = None,
    precision: str = "auto",
    reuse_network: bool = False,
    refine: str = "auto",
    crop: str | int = "auto",
) -> DenoisePlan:
    """Validate the parameters against an image's shape and dtype; ValueError with a clear message otherwise."""
    check_dtype(np.dtype(image_dtype))
    layout = plane_layout(tuple(image_shape), rgb=rgb, channel_axis=channel_axis)
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be a whole number >= 0, got {seed!r}")
    mask_mode = "channel" if rgb else "pixel"
    options = dict(mask_ratio=mask_ratio, beta=beta, iterations=iterations, lr=lr, mask_mode=mask_mode,
                   seed=int(seed), precision=precision)
    config = config_for(preset, **options)  # the mask ratio picks the weights; they set the preset's length
    check_plane_size(*layout.plane_shape[:2])
    if not isinstance(reuse_network, bool):
        raise ValueError(f"reuse_network must be True or False, got {reuse_network!r}")
    if reuse_network:
        check_reuse(config)
    refine = resolve_refine(refine, config.mask_ratio)
    channels = 3 if rgb else 1
    checkpoint = resolve_weights(weights, channels, mask_mode, config.mask_ratio)
    if checkpoint is not None:
        config = config_for(preset, start=checkpoint.start, **options)
    device = resolve_device(device)
    crop = _resolve_crop(crop, layout.plane_shape[:2], device, config, layout.rgb)
    return DenoisePlan(layout, config, checkpoint, device, preset.lower(), channel_axis, reuse_network, refine, crop)


#: crop="auto" trains on CROP_SIZE windows of planes with at least this many windows' pixels, on the CPU: from 512x512
#: on, windows were 1.4x (512²) to 2x (1024²) faster; at 384x384 (2.25 windows) they were no faster (20.4 vs 24.0 s,
#: 20.8 vs 19.9 s) and 0.01-0.05 dB under (docs/benchmarks.md)
CROP_MIN_WINDOWS = 4.0


def _resolve_crop(crop: str | int, plane: tuple[int, int], device: torch.device, config: FillConfig,
                  rgb: bool) -> int:
    """The window side a plan's fill trains on (0 = the whole plane), from ``crop``: "auto", "none" or a side.

    "auto": CROP_SIZE on the CPU for gray planes of at least CROP_MIN_WINDOWS windows' pixels, unless the fill
    decides per plane (auto preset); the whole plane otherwise (planes reusing a network continue in windows too).
    Colour planes stay whole: on two 768x512 photos windows scored 0.06-0.12 dB under at 2x the speed, and with
    1.5x the pixels -0.06 / +0.05 at only 1.1x. On a GPU a step of this network is bound by kernel launches rather than pixels at
    these sizes (docs/benchmarks.md): windows are not measured there."""
    height, width = plane
    if crop == "none":
        return 0
    if crop == "auto":
        big = height * width >= CROP_MIN_WINDOWS * CROP_SIZE**2
        whole = device.type != "cpu" or rgb or config.selfsup
        return CROP_SIZE if big and not whole else 0
    if isinstance(crop, bool) or not isinstance(crop, (int, np.integer)) or crop < MIN_CROP:
        raise ValueError(f"crop must be 'auto', 'none' or a window side of at least {MIN_CROP} pixels, got {crop!r}")
    if crop >= height and crop >= width:
        return 0  # the window would be the whole plane
    if config.selfsup:
        raise ValueError("the auto preset decides on whole planes and cannot train on crops; use crop='none'")
    return int(crop)


class PlaneSink(Protocol):
    """Where finished planes go: anything that takes ``sink[index] = plane`` for the layout's plane indices.

    A numpy array, a ``numpy.memmap``, a zarr array, or :class:`napari_mpi.stores.MappedArray` (an
    uncompressed TIFF on disk): with an on-disk sink only one plane is ever held in memory.
    """

    def __setitem__(self, index: tuple, value: np.ndarray) -> None: ...


def denoise_steps(
    image, plan: DenoisePlan, out: PlaneSink | None = None, *, skip: Container[int] = ()
) -> Generator[DenoiseProgress, None, PlaneSink]:
    """Denoise ``image`` plane by plane, yielding progress after every iteration; returns ``out``.

    ``image`` may be numpy, dask or zarr: planes are read one at a time. ``out`` (float32, the
    input's shape) is allocated in memory when not given; pass an on-disk :class:`PlaneSink` (zarr,
    memmap) for stacks bigger than memory. Each plane is written when its fill finishes, so a consumer
    that stops early keeps every finished plane. Plane numbers in ``skip`` (C order of the iterated
    axes, as ``DenoiseProgress.plane``) are neither read nor written: a resumed run passes the planes it
    already has. Every plane is seeded alike, so skipping some does not change the others (except with
    ``plan.reuse_network``: the first plane after a gap starts from the weights again, with all iterations).
    """
    layout = plan.layout
    if tuple(image.shape) != layout.shape:
        raise ValueError(f"image shape {tuple(image.shape)} does not match the plan's {layout.shape}")
    if out is not None and hasattr(out, "shape") and tuple(out.shape) != layout.shape:
        raise ValueError(f"output shape {tuple(out.shape)} does not match the image's {layout.shape}")
    if isinstance(image, np.ndarray) and not isinstance(image, np.memmap):
        # in memory, so check every plane now rather than fail part-way through a stack (a memmap is
        # checked plane by plane: checking it whole would read the file into memory)
        check_values(image)
    if out is None:
        out = np.zeros(layout.shape, dtype=np.float32)
    state = plan.checkpoint.state_dict if plan.checkpoint is not None else None
    carried = CarriedNetwork() if plan.reuse_network else None
    tile = _tile_to_fit_memory(*layout.plane_shape[:2], plan)  # once per run: one warning, not one per plane
    start = time.monotonic()
    try:
        for number, index in enumerate(layout.indices()):
            if number in skip:
                if carried is not None:
                    carried.clear()  # the next plane's neighbour was not filled in this run
                continue
            plane = layout.take(image, index)
            progress = dict(plane=number, n_planes=layout.n_planes, index=index, iterations=plan.config.iterations)
            fill = _fill_plane(plane, plan, state, carried, tile)
            filled = False
            while True:
                try:
                    step, norm = next(fill)
                except StopIteration as finished:
                    result = finished.value
                    break
                filled = True
                # a plane that continues from the previous plane's network runs fewer iterations
                yield DenoiseProgress(iteration=step.iteration, elapsed=time.monotonic() - start,
                                      tiles=getattr(step, "tiles", 1), _step=step, _norm=norm, _plane_data=plane,
                                      **{**progress, "iterations": step.iterations})
            out[index] = result
            if not filled:  # a constant plane is its own result: one event, after it is written
                yield DenoiseProgress(iteration=plan.config.iterations, elapsed=time.monotonic() - start,
                                      _plane_data=plane, **progress)
    finally:  # also when the consumer cancels (closes the generator) or an error ends the run
        _free_device_memory(plan.device)
    return out


def denoise_plane(plane: np.ndarray, plan: DenoisePlan) -> np.ndarray:
    """Denoise one plane ((H, W), or (H, W, 3|4) for an RGB plan) exactly as :func:`denoise_steps` would.

    The unit of work for Dask workers (:mod:`napari_mpi.distributed`): same plan, same result.
    """
    state = plan.checkpoint.state_dict if plan.checkpoint is not None else None
    plane = np.asarray(plane)
    fill = _fill_plane(plane, plan, state, None, _tile_to_fit_memory(*plane.shape[:2], plan))
    try:
        while True:
            try:
                next(fill)
            except StopIteration as finished:
                return finished.value
    finally:
        _free_device_memory(plan.device)


def _fill_plane(
    plane: np.ndarray, plan: DenoisePlan, state: dict | None, carried: CarriedNetwork | None,
    tile: tuple[int, int] | None,
) -> Generator[tuple[FillStep, Normalization], None, np.ndarray]:
    """Algorithm 1 on one plane: yields every fill step; returns the plane in the input's units (float32).

    ``tile``: the tile size to start with, from :func:`_tile_to_fit_memory` (None: the whole plane, until
    memory runs out); ``carried``: the previous plane's network, when planes reuse it. When the device
    runs out of memory the plane starts again in overlapping tiles (about half the side each time, down
    to MIN_TILE pixels; a DenoiseWarning says so); MemoryError when even those fail.
    """
    data, norm = normalize(plane)
    if np.ptp(data) == 0:  # a constant plane is its own denoised result
        return np.asarray(plane, dtype=np.float32)
    tensor = _to_tensor(data, plan.layout.rgb)
    height, width = plane.shape[:2]
    while True:
        step: FillStep | None = None
        failure = ""
        try:
            if plan.crop:
                fill = crop_fill(tensor, plan.config, state, plan.device, plan.crop, carried)
            elif tile is None:
                fill = iterative_fill(tensor, plan.config, state, plan.device, carried)
            else:
                fill = tiled_fill(tensor, plan.config, state, plan.device, tile, TILE_OVERLAP)
            for step in fill:
                yield step, norm
            break
        except Exception as exc:
            if not _is_out_of_memory(exc):
                raise
            failure = f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else 'no detail'}"
        # out of memory: let go of the failed attempt first (its traceback held the network's tensors)
        step = fill = None
        if carried is not None:
            carried.clear()
        gc.collect()
        _free_device_memory(plan.device)
        device = plan.device.type.upper()
        if plan.crop:
            raise MemoryError(f"{device} ran out of memory training on {plan.crop}x{plan.crop} windows of a "
                              f"{height}x{width} plane; {_memory_advice(plan.device)}")
        smaller = _smaller_tile(tile or (height, width), (height, width))
        if smaller is None:
            where = f", even in tiles of {tile[0]}x{tile[1]} pixels" if tile is not None else ""
            raise MemoryError(
                f"{device} ran out of memory on a {height}x{width} plane{where}; {_memory_advice(plan.device)}"
            )
        tile = smaller
        warnings.warn(
            f"{device} ran out of memory on a {height}x{width} plane ({failure}); denoising it in "
            f"{_tile_count((height, width), tile)} overlapping tiles of {tile[0]}x{tile[1]} pixels instead "
            f"(slower; the seams are blended){_NO_REUSE_IN_TILES if carried is not None else ''}",
            DenoiseWarning,
            stacklevel=2,
        )
    assert step is not None
    estimate = step.estimate
    if plan.refine == "wiener":
        estimate = _refined(tensor, estimate, plan)
    return _to_plane(estimate, norm, plane)


def _refined(noisy: torch.Tensor, estimate: torch.Tensor, plan: DenoisePlan) -> torch.Tensor:
    """The fill's estimate after the collaborative Wiener filter; the estimate itself if memory runs out for it."""
    try:
        refined, _ = refine_estimate(noisy.to(estimate.device), estimate, colour=plan.layout.rgb)
        return refined
    except Exception as exc:
        if not _is_out_of_memory(exc):
            raise
    gc.collect()
    _free_device_memory(plan.device)
    warnings.warn(
        f"{plan.device.type.upper()} ran out of memory for the Wiener refinement; this plane keeps the fill's "
        "estimate (use refine='none' to skip the refinement)",
        DenoiseWarning,
        stacklevel=3,
    )
    return estimate


#: Planes of a stack the noise check reads (evenly spaced): enough to outvote one odd plane, few to read
NOISE_CHECK_PLANES = 3
#: ... and the middle this many pixels a side of each (~35 ms for a gray plane, 4 ms at 512x512)
NOISE_CHECK_SIDE = 1024


def check_noise(image, *, rgb: bool = False, channel_axis: int | None = None) -> MaskRatioHint:
    """Whether ``image``'s noise looks spatially correlated, from the middle of up to NOISE_CHECK_PLANES of its
    planes (:mod:`napari_mpi.noise`); its ``mask_ratio`` is the ratio to suggest (None: keep the default).

    Only a hint: it also fires on some nearly clean images, where a high mask ratio blurs detail away."""
    image = _as_array(image)
    layout = plane_layout(tuple(image.shape), rgb=rgb, channel_axis=channel_axis)
    indices = list(layout.indices()) if layout.n_planes <= NOISE_CHECK_PLANES else None
    if indices is None:
        wanted = {round(i * (layout.n_planes - 1) / (NOISE_CHECK_PLANES - 1)) for i in range(NOISE_CHECK_PLANES)}
        indices = [index for number, index in enumerate(layout.indices()) if number in wanted]
    planes = []
    for index in indices:
        plane = layout.take(image, index)
        top, left = (max(0, (side - NOISE_CHECK_SIDE) // 2) for side in plane.shape[:2])
        planes.append(plane[top:top + NOISE_CHECK_SIDE, left:left + NOISE_CHECK_SIDE])  # the middle: bounded time
    return mask_ratio_hint(planes, rgb=rgb)


def warn_if_noise_looks_correlated(image, mask_ratio: float | None, *, rgb: bool, channel_axis: int | None,
                                   option: str = "pass mask_ratio=", stacklevel: int = 3) -> None:
    """A DenoiseWarning when no mask ratio was chosen and the noise looks correlated (``check_noise``); ``option``
    says how to choose one, followed by the ratio (the command line: "run with --mask-ratio ")."""
    if mask_ratio is not None:
        return
    hint = check_noise(image, rgb=rgb, channel_axis=channel_axis)
    if hint.correlated:
        warnings.warn(f"{hint.describe()}; {option}{hint.mask_ratio} to try it", DenoiseWarning, stacklevel=stacklevel)


def denoise(
    image,
    *,
    mask_ratio: float | None = None,
    beta: float | None = None,
    iterations: int | None = None,
    preset: str = DEFAULT_PRESET,
    rgb: bool = False,
    channel_axis: int | None = None,
    seed: int = 0,
    device: str | torch.device = "auto",
    weights: WeightsSpec = "default",
    progress: Callable[[DenoiseProgress], object] | None = None,
    lr: float | None = None,
    precision: str = "auto",
    out: PlaneSink | None = None,
    reuse_network: bool = False,
    refine: str = "auto",
    crop: str | int = "auto",
):
    """Denoise an image or N-D stack with MPI (Masked Pre-train then Iterative fill).

    Parameters
    ----------
    image : array-like
        2-D (H, W) gray, (..., H, W, 3) RGB with ``rgb=True``, or any N-D stack; every axis but Y, X
        (and the RGB axis) is processed plane by plane. Integer or float pixels; numpy, dask or zarr.
    mask_ratio : float, optional
        Fraction of pixels hidden per step, 0 < p < 1. Default 0.3; raise to 0.8-0.95 for spatially
        correlated noise. Left out, a DenoiseWarning says when the noise looks correlated (``check_noise``).
    beta : float, optional
        EMA weight in [0, 1); default from the preset and the start (fast 0.9, 0.95 for colour; quality 0.95 from
        the shipped weights, 0.99 from a random start; auto chooses its own).
    iterations : int, optional
        Fill steps per plane; default from the preset and the start (fast: 100 for gray images from the shipped
        weights, 300 for colour, 200 from a random start; quality 150 / 450 / 1000; auto at most 300). Then
        ``fill.FINAL_PREDICTIONS`` (30; never more than the steps; not with auto) predictions of the trained network
        without a step go on into the running mean: +0.05 dB on Poisson photos and GigaDB for ~7% more time.
    preset : {"auto", "fast", "quality"}
        Named defaults for ``beta`` and ``iterations``. "auto" decides per plane, without the clean
        image, when to stop and which running mean to output (``FillConfig.selfsup``).
    rgb : bool
        The last axis holds RGB(A) colour: denoise colour planes with per-channel masks (alpha is kept).
    channel_axis : int, optional
        An axis of separate fluorescence channels; each channel is denoised as its own gray plane.
    seed : int
        Seeds masks and, without weights, the network initialisation: same seed, same result.
    device : str
        "auto" (CUDA, then MPS, then CPU), "cpu", "cuda" or "mps".
    weights : "default", "random", path or Checkpoint
        The pre-trained network to start from; "default" picks the shipped checkpoint that fits. Colour
        images (``rgb=True``) start from gray weights spread over their channels (``Checkpoint.as_colour``).
    progress : callable, optional
        Called with a :class:`DenoiseProgress` after every iteration.
    lr : float, optional
        Adam learning rate (default 2e-3; 4e-3 for colour images from the gray weights, ``fill.START_LR``).
    precision : {"auto", "fp32", "bf16"}
        Arithmetic of the forward pass.
    out : array-like, optional
        Where to write the result, one finished plane at a time: e.g. a zarr array or
        ``napari_mpi.stores.create_tiff(...)`` for stacks bigger than memory (float32 recommended).
    reuse_network : bool
        For z-stacks and time-lapses whose neighbouring planes look alike: each plane after the first
        continues from the previous plane's network with ~10% of the iterations (fast, gray: 10 steps + 10
        predictions): measured 4-6x faster at +0.2 to +0.6 dB on such stacks; planes that differ (separate
        fields of view, stains) lose ~0.1 dB on average, up to 0.7 dB on a 128x128 plane. Not with the auto preset.
    refine : {"auto", "wiener", "none"}
        "wiener": after each plane's fill, a collaborative (block-matching) Wiener filter with the fill's
        estimate as its pilot and a noise model fitted to the residual (:mod:`napari_mpi.refine`); measured
        +0.25 to +0.54 dB for about a third of a second per 256x256 plane. "none": the fill's estimate as is. "auto"
        (default): "wiener" for mask ratios up to 0.65, "none" above (the filter assumes independent noise).
    crop : "auto", "none" or int
        A side in pixels: each fill step trains on a random window of this size instead of the whole plane, and
        the plane's estimate gathers the windows' predictions (``fill.crop_fill``); ``iterations`` still counts
        whole-plane steps, and the fill runs CROP_STEP_SCALE of their pixels in windows. Memory is one window's,
        whatever the plane's size. "auto" (default): 256x256 windows on the CPU for gray planes of at least 4 times
        that area, e.g. 512x512 (not for colour, not with the auto preset; with ``reuse_network`` the later planes
        continue in windows too); "none": every step on the whole plane.

    Returns
    -------
    numpy.ndarray or ``out``
        float32, the input's shape, in the input's intensity units; ``out`` itself when given.
    """
    image = _as_array(image)
    plan = prepare(
        tuple(image.shape), image.dtype, mask_ratio=mask_ratio, beta=beta, iterations=iterations, preset=preset,
        rgb=rgb, channel_axis=channel_axis, seed=seed, device=device, weights=weights, lr=lr, precision=precision,
        reuse_network=reuse_network, refine=refine, crop=crop,
    )
    warn_if_noise_looks_correlated(image, mask_ratio, rgb=rgb, channel_axis=channel_axis)
    steps = denoise_steps(image, plan, out)
    while True:
        try:
            event = next(steps)
        except StopIteration as finished:
            return finished.value
        if progress is not None:
            progress(event)


def _as_array(image):
    """Arrays (numpy, dask, zarr: anything with shape and dtype) as they are; nested lists or tuples
    of numbers as numpy; anything else is a TypeError."""
    if hasattr(image, "shape") and hasattr(image, "dtype"):
        return image
    if isinstance(image, (list, tuple)):
        try:
            return np.asarray(image)
        except ValueError as exc:  # ragged nesting
            raise ValueError("cannot make an image from these nested lists: their rows have different lengths") from exc
    raise TypeError(
        f"denoise() needs an image array (numpy, dask or zarr, or nested lists of numbers), got {type(image).__name__}"
    )


def _is_out_of_memory(exc: BaseException) -> bool:
    """torch's CUDA out-of-memory error, or an allocation failure on the CPU or Apple MPS."""
    if isinstance(exc, (torch.OutOfMemoryError, MemoryError)):
        return True
    text = str(exc).lower()
    return isinstance(exc, RuntimeError) and any(
        phrase in text for phrase in ("out of memory", "can't allocate memory", "cannot allocate memory")
    )


#: Memory one CPU fill of the default network takes per pixel of its (padded) input, by precision, beyond
#: the process's baseline: the slope of peak RSS from 512x512 to 1024x1024 (benchmarks/speed.py --isolate,
#: docs/benchmarks.md). Other networks scale it by their width + skip width: the paper's 64/64 network
#: measured 5200 / 3400, which predicted a 2048x2048 fill within 1% (fp32 20.5 GiB, bf16 13.6 GiB).
CPU_BYTES_PER_PIXEL = {"fp32": 3900, "bf16": 2550}
#: Most of the memory available when a plane starts that its CPU fill may plan to use (the rest is
#: left to napari, the image and other programs).
CPU_MEMORY_SHARE = 0.75


def available_memory() -> int | None:
    """Bytes of memory the system can give this process now without swapping; None when unknown."""
    try:
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:  # macOS, Windows: psutil comes with napari
        import psutil
    except ImportError:
        return None
    return int(psutil.virtual_memory().available)


def fill_memory(height: int, width: int, precision: str, network: dict[str, int] | None = None) -> int:
    """Bytes one CPU fill of a height x width plane is expected to take at its peak, with the default
    network or the one ``network`` describes (``DenoisePlan.network``)."""
    scale = 1.0
    if network is not None:
        scale = (network["width"] + network["skip_width"]) / (DEFAULT_WIDTH + DEFAULT_SKIP_WIDTH)
    return int(padded_side(height) * padded_side(width) * CPU_BYTES_PER_PIXEL[precision] * scale)


def _tile_to_fit_memory(height: int, width: int, plan: DenoisePlan) -> tuple[int, int] | None:
    """None when a CPU fill of the whole plane fits CPU_MEMORY_SHARE of the available memory (or the
    device is not the CPU, or the memory is unknown); else the largest tile, halving the sides as after
    running out of memory, that fits (MIN_TILE when none does). A DenoiseWarning says so. Planned before
    the fill because an operating system rarely reports running out of memory: it swaps, or kills the
    program."""
    available = available_memory() if plan.device.type == "cpu" and not plan.crop else None
    if available is None:  # (a crop fill's memory is one window's)
        return None
    precision = resolve_precision(plan.config.precision, plan.device)
    budget = CPU_MEMORY_SHARE * available
    need = fill_memory(height, width, precision, plan.network)
    if need <= budget:
        return None
    tile = (height, width)
    while fill_memory(*tile, precision, plan.network) > budget:
        smaller = _smaller_tile(tile, (height, width))
        if smaller is None:
            break
        tile = smaller
    if tile == (height, width):  # already at the smallest tile: nothing to gain
        return None
    warnings.warn(
        f"denoising a {height}x{width} plane at once would take about {need / 2**30:.1f} GiB of memory and "
        f"{available / 2**30:.1f} GiB is available; denoising it in {_tile_count((height, width), tile)} "
        f"overlapping tiles of {tile[0]}x{tile[1]} pixels instead (the seams are blended)"
        f"{_NO_REUSE_IN_TILES if plan.reuse_network else ''}",
        DenoiseWarning,
        stacklevel=3,
    )
    return tile


#: Tiles train a network each (fill.tiled_fill), so nothing carries from plane to plane.
_NO_REUSE_IN_TILES = "; tiled planes cannot reuse the network from plane to plane, so each runs its full fill"


def _smaller_tile(tile: tuple[int, int], plane: tuple[int, int]) -> tuple[int, int] | None:
    """The tile size to try after running out of memory with ``tile``: about half of each side (two
    such tiles cover it with TILE_OVERLAP), at least MIN_TILE; None when that is no smaller."""
    smaller = tuple(min(side, max(MIN_TILE, math.ceil((t + TILE_OVERLAP) / 2))) for t, side in zip(tile, plane))
    return None if smaller == tuple(tile) else smaller  # type: ignore[return-value]


def _tile_count(plane: tuple[int, int], tile: tuple[int, int]) -> int:
    return len(tile_starts(plane[0], tile[0], TILE_OVERLAP)) * len(tile_starts(plane[1], tile[1], TILE_OVERLAP))


def _memory_advice(device: torch.device) -> str:
    if device.type == "cpu":
        return "close other programs to free memory, or denoise a smaller crop"
    return "close other programs using the GPU, or use device='cpu'"


def _to_tensor(data: np.ndarray, rgb: bool) -> torch.Tensor:
    """(H, W) -> (1, H, W); (H, W, 3|4) -> (3, H, W) (alpha is not denoised)."""
    if rgb:
        return torch.from_numpy(np.ascontiguousarray(data[..., :3].transpose(2, 0, 1)))
    return torch.from_numpy(np.ascontiguousarray(data))[None]


def _to_plane(estimate: torch.Tensor, norm: Normalization, original: np.ndarray) -> np.ndarray:
    """Estimate tensor back to the plane's layout and intensity units; alpha copied from the input."""
    values = estimate.detach().float().cpu().numpy()
    if original.ndim == 3:  # RGB(A)
        result = np.array(original, dtype=np.float32)
        result[..., :3] = norm.invert(values.transpose(1, 2, 0))
        return result
    return norm.invert(values[0])


def _free_device_memory(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()
    elif device.type == "mps":
        torch.mps.empty_cache()
