"""The public API: denoise any N-D array plane by plane with MPI's iterative fill.

``denoise`` is the one-call function. ``prepare`` validates everything up front (so a GUI or a
command line can report bad input before starting a thread), and ``denoise_steps`` is the
generator the widget and the command line consume: it yields a :class:`DenoiseProgress` after
every iteration — the cancellation point — and writes each finished plane into the output.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable, Container, Generator, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

import numpy as np
import torch

from .chains import PlaneReport, needed_planes, plane_chains
from .engine.auto import AutoReport
from .engine.chain import CarriedNetwork, PlaneStart
from .engine.devices import free_device_memory, precision_advice, resolve_device
from .engine.fill import FillStep, check_reuse
from .engine.network import DEFAULT_DEPTH, DEFAULT_SKIP_WIDTH, DEFAULT_WIDTH, architecture_of, check_plane_size
from .engine.plane import fill_plane, tile_to_fit_memory, to_plane
from .engine.refine import resolve_refine
from .io.planes import Normalization, check_dtype, check_values, plane_layout
from .io.sinks import fitting
from .noise_check import as_array, check_noise, warn_if_noise_looks_correlated
from .plan import DenoisePlan, DenoiseWarning
from .settings import DEFAULT_PRESET, MIN_CROP, FillConfig, config_for, tuning_fields
from .weights import WeightsSpec, resolve_weights

__all__ = [
    "DenoisePlan", "DenoiseProgress", "DenoiseWarning", "PlaneSink", "prepare", "denoise_steps", "denoise_plane",
    "denoise_chain", "denoise", "check_noise", "warn_if_noise_looks_correlated", "drain",
]

T = TypeVar("T")


def drain(steps: Generator[Any, None, T], progress: Callable[[Any], object] | None = None) -> T:
    """Run a generator to its end, passing every value it yields to ``progress``; its return value."""
    while True:
        try:
            event = next(steps)
        except StopIteration as finished:
            return finished.value
        if progress is not None:
            progress(event)


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
    #: True for a plane a resumed run fills again only to carry its network on to the next plane (not written)
    replay: bool = False
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
    def start(self) -> PlaneStart:
        """What this plane's fill started from: the previous plane's network (``.carried``) or the weights."""
        return getattr(self._step, "start", PlaneStart())

    @property
    def training(self) -> int:
        """Training steps of this plane's fill so far planned (the rest of ``iterations`` are predictions)."""
        return getattr(self._step, "training", 0)

    @property
    def auto(self) -> AutoReport | None:
        """With the "auto" preset: what it measured at its last check and decided (beta, stop)."""
        return getattr(self._step, "auto", None)

    def estimate(self) -> np.ndarray:
        """The current estimate of this plane, in the input's intensity units (a copy; costs a device sync)."""
        if self._step is None:
            return np.asarray(self._plane_data, dtype=np.float32)
        return to_plane(self._step.estimate, self._norm, self._plane_data)


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
    reuse_network: bool | str = "auto",
    refine: str = "auto",
    crop: str | int = "auto",
    tuning: Mapping[str, Any] | None = None,
) -> DenoisePlan:
    """Validate the parameters against an image's shape and dtype; ValueError with a clear message otherwise.

    The parameters are :func:`denoise`'s; ``tuning`` sets any other :class:`~napari_mpi.settings.FillConfig`
    field by name."""
    _check_shape(image_shape)
    check_dtype(image_dtype)
    layout = plane_layout(tuple(image_shape), rgb=rgb, channel_axis=channel_axis)
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or not 0 <= seed <= MAX_SEED:
        raise ValueError(f"seed must be a whole number from 0 to {MAX_SEED} (2**32 - 1), got {seed!r}")
    mask_mode = "channel" if rgb else "pixel"
    options = dict(mask_ratio=mask_ratio, beta=beta, iterations=iterations, lr=lr, mask_mode=mask_mode,
                   seed=int(seed), precision=precision, **tuning_fields(tuning))
    config = config_for(preset, **options)  # the mask ratio picks the weights; they set the preset's length
    check_plane_size(*layout.plane_shape[:2])
    if not (isinstance(reuse_network, bool) or reuse_network == "auto"):
        raise ValueError(f"reuse_network must be 'auto', True or False, got {reuse_network!r}")
    if reuse_network is True:
        check_reuse(config)
    elif reuse_network == "auto" and config.selfsup:
        reuse_network = False  # the auto preset decides per plane on its own
    refine = resolve_refine(refine, config.mask_ratio, config.refine_max_mask_ratio)
    channels = 3 if rgb else 1
    checkpoint = resolve_weights(weights, channels, mask_mode, config.mask_ratio)
    if checkpoint is not None:
        config = config_for(preset, start=checkpoint.start, **options)
    device = resolve_device(device)
    crop = _resolve_crop(crop, layout.plane_shape[:2], device, config, layout.rgb)
    network = (architecture_of(checkpoint.state_dict) if checkpoint is not None
               else {"width": DEFAULT_WIDTH, "skip_width": DEFAULT_SKIP_WIDTH, "depth": DEFAULT_DEPTH})
    return DenoisePlan(layout=layout, config=config, checkpoint=checkpoint, device=device, preset=preset.lower(),
                       network=network, channel_axis=channel_axis, reuse_network=reuse_network, refine=refine,
                       crop=crop)


#: The largest seed (numpy's and most tools' seed range; tiles add their number to it)
MAX_SEED = 2**32 - 1


def _check_shape(image_shape: tuple) -> None:
    """ValueError that says what to change for a shape of unknown lengths."""
    if any(not isinstance(n, (int, np.integer)) for n in image_shape):
        raise ValueError(f"the image's shape {tuple(image_shape)} has unknown lengths (a dask array after boolean "
                         "indexing?); call .compute_chunk_sizes() on it first")




def _resolve_crop(crop: str | int, plane: tuple[int, int], device: torch.device, config: FillConfig,
                  rgb: bool) -> int:
    """The window side a plan's fill trains on (0 = the whole plane), from ``crop``: "auto", "none" or a side.

    "auto": ``config.crop_size`` on the CPU for gray planes of at least ``config.crop_min_windows`` windows'
    pixels, unless the fill decides per plane (auto preset); the whole plane otherwise (planes reusing a network
    continue in windows too). Colour planes stay whole, and so does every plane on a GPU, where a step of this
    network is bound by kernel launches rather than pixels (docs/decisions.md)."""
    height, width = plane
    if crop == "none":
        return 0
    if crop == "auto":
        big = height * width >= config.crop_min_windows * config.crop_size**2
        whole = device.type != "cpu" or rgb or config.selfsup
        return config.crop_size if big and not whole else 0
    if isinstance(crop, bool) or not isinstance(crop, (int, np.integer)) or crop < MIN_CROP:
        raise ValueError(f"crop must be 'auto', 'none' or a window side of at least {MIN_CROP} pixels, got {crop!r}")
    if crop >= height and crop >= width:
        return 0  # the window would be the whole plane
    if config.selfsup:
        raise ValueError("the auto preset decides on whole planes and cannot train on crops; use crop='none'")
    return int(crop)


class PlaneSink(Protocol):
    """Where finished planes go: anything that takes ``sink[index] = plane`` for the layout's plane indices.

    A numpy array, a ``numpy.memmap``, a zarr array, or :class:`napari_mpi.io.stores.MappedArray` (an
    uncompressed TIFF on disk): with an on-disk sink only one plane is ever held in memory.
    """

    def __setitem__(self, index: tuple, value: np.ndarray) -> None: ...


def denoise_steps(
    image, plan: DenoisePlan, out: PlaneSink | None = None, *, skip: Container[int] = (),
    reports: list[PlaneReport] | None = None,
) -> Generator[DenoiseProgress, None, PlaneSink]:
    """Denoise ``image`` plane by plane, yielding progress after every iteration; returns ``out``.

    ``image`` may be numpy, dask or zarr: planes are read one at a time. ``out`` (float32, the
    input's shape) is allocated in memory when not given; pass an on-disk :class:`PlaneSink` (zarr,
    memmap) for stacks bigger than memory. Each plane is written when its fill finishes, so a consumer
    that stops early keeps every finished plane. Plane numbers in ``skip`` (C order of the iterated
    axes, as ``DenoiseProgress.plane``) are not written: a resumed run passes the planes it already has.
    With ``plan.reuse_network`` the planes are filled chain by chain (``plane_chains``), and a skipped plane that
    comes before one still to fill in its chain is filled again (progress with ``replay``, not written), so that
    the result is the same as an uninterrupted run's. ``reports`` (a list) receives a :class:`PlaneReport` for
    every plane written, once it is written.
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
    fit = fitting(out, DenoiseWarning)
    state = plan.checkpoint.state_dict if plan.checkpoint is not None else None
    advice = precision_advice(plan.config.precision, plan.device)
    if advice is not None:
        warnings.warn(advice, DenoiseWarning, stacklevel=2)
    tile = tile_to_fit_memory(*layout.plane_shape[:2], plan)  # once per run: one warning, not one per plane
    start = time.monotonic()
    try:
        for chain in plane_chains(plan):
            carried = _carried(plan)
            for number, index in needed_planes(chain, skip):
                replay = number in skip
                plane = layout.take(image, index)
                fill = _plane_events(plane, plan, state, carried, tile, start,
                                     dict(plane=number, n_planes=layout.n_planes, index=index, replay=replay))
                result, report, constant = yield from fill
                if not replay:
                    out[index] = fit(result)
                    if reports is not None:
                        reports.append(report)
                if constant is not None:  # a constant plane is its own result: one event, after it is written
                    yield constant
    finally:  # also when the consumer cancels (closes the generator) or an error ends the run
        free_device_memory(plan.device)
    return out


def _carried(plan: DenoisePlan) -> CarriedNetwork | None:
    """What carries the network along a chain (None without reuse)."""
    if not plan.reuse_network:
        return None
    return CarriedNetwork(mode="auto" if plan.reuse_network == "auto" else "always")


def _plane_events(plane: np.ndarray, plan: DenoisePlan, state: dict | None, carried: CarriedNetwork | None,
                  tile: tuple[int, int] | None, start: float, progress: dict[str, Any]):
    """One plane's fill as DenoiseProgress events; returns its result, its PlaneReport and, for a constant plane
    (its own result, no fill), the one event to yield once it is written."""
    fill = fill_plane(plane, plan, state, carried, tile)
    step: FillStep | None = None
    while True:
        try:
            step, norm = next(fill)
        except StopIteration as finished:
            result = finished.value
            break
        yield DenoiseProgress(iteration=step.iteration, iterations=step.iterations, elapsed=time.monotonic() - start,
                              tiles=getattr(step, "tiles", 1), _step=step, _norm=norm, _plane_data=plane, **progress)
    constant = None
    if step is None:
        constant = DenoiseProgress(iteration=plan.config.iterations, iterations=plan.config.iterations,
                                   elapsed=time.monotonic() - start, _plane_data=plane, **progress)
    begun = getattr(step, "start", PlaneStart())
    report = PlaneReport(progress["plane"], progress["index"], begun.carried, begun.mismatch, begun.change,
                         getattr(step, "training", 0), step.iterations if step is not None else 0)
    return result, report, constant


def denoise_plane(plane: np.ndarray, plan: DenoisePlan) -> np.ndarray:
    """Denoise one plane ((H, W), or (H, W, 3|4) for an RGB plan) exactly as :func:`denoise_steps` would without
    ``reuse_network``."""
    state = plan.checkpoint.state_dict if plan.checkpoint is not None else None
    plane = np.asarray(plane)
    fill = fill_plane(plane, plan, state, None, tile_to_fit_memory(*plane.shape[:2], plan))
    try:
        return drain(fill)
    finally:
        free_device_memory(plan.device)


def denoise_chain(planes: list[np.ndarray], plan: DenoisePlan) -> tuple[list[np.ndarray], list[PlaneReport]]:
    """Denoise one chain of planes (``plane_chains``) exactly as :func:`denoise_steps` would: the unit of work for
    Dask workers (:mod:`napari_mpi.distributed`), same plan, same result. Returns the planes and their reports
    (plane numbers counted within the chain)."""
    state = plan.checkpoint.state_dict if plan.checkpoint is not None else None
    carried = _carried(plan)
    results, reports = [], []
    try:
        for number, plane in enumerate(planes):
            plane = np.asarray(plane)
            events = _plane_events(plane, plan, state, carried, tile_to_fit_memory(*plane.shape[:2], plan), 0.0,
                                   dict(plane=number, n_planes=len(planes), index=(), replay=False))
            result, report, _ = drain(events)
            results.append(result)
            reports.append(report)
    finally:
        free_device_memory(plan.device)
    return results, reports


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
    reuse_network: bool | str = "auto",
    refine: str = "auto",
    crop: str | int = "auto",
    tuning: Mapping[str, Any] | None = None,
):
    """Denoise an image or N-D stack with MPI (Masked Pre-train then Iterative fill).

    Parameters
    ----------
    image : array-like
        2-D (H, W) gray, (..., H, W, 3) RGB with ``rgb=True``, or any N-D stack; every axis but Y, X
        (and the RGB axis) is processed plane by plane. Integer or float pixels; numpy, dask or zarr.
    mask_ratio, beta, iterations, lr, precision
        The :class:`~napari_mpi.settings.FillConfig` fields of these names (their ranges, and when to change
        them, are documented there); None keeps the preset's value. Left out, ``mask_ratio`` is 0.3, right for
        pixel-independent noise, and a DenoiseWarning says when the noise looks spatially correlated.
    preset : {"fast", "quality", "auto"}
        Named defaults for ``beta`` and ``iterations`` (``napari_mpi.PRESETS``). "quality" runs longer; "auto"
        (experimental) decides per plane, without the clean image, when to stop and which running mean to output.
    rgb : bool
        The last axis holds RGB(A) colour: denoise colour planes with per-channel masks (alpha is kept).
    channel_axis : int, optional
        An axis of separate fluorescence channels; each channel is denoised as its own gray plane.
    seed : int
        Seeds masks and, without weights, the network initialisation: same seed, same result.
    device : str
        "auto" (CUDA, then MPS, then CPU), "cpu", "cuda" or "mps".
    weights : "default", "random", path or Checkpoint
        The pre-trained network to start from; "default" picks the shipped checkpoint that fits (gray weights
        spread over the channels of colour images, ``Checkpoint.as_colour``).
    progress : callable, optional
        Called with a :class:`DenoiseProgress` after every iteration.
    out : array-like, optional
        Where to write the result, one finished plane at a time: e.g. a zarr array or
        ``napari_mpi.io.stores.create_tiff(...)`` for stacks bigger than memory (float32 recommended).
    reuse_network, refine, crop
        How a stack's later planes start, what follows each plane's fill, and the training windows: the
        :class:`~napari_mpi.plan.DenoisePlan` fields of these names say what each choice does ("auto" decides).
    tuning : dict, optional
        Any other :class:`~napari_mpi.settings.FillConfig` field by name, e.g. ``{"final_predictions": 0}``.

    Measured quality and speed: docs/benchmarks.md.

    Returns
    -------
    numpy.ndarray or ``out``
        float32, the input's shape, in the input's intensity units; ``out`` itself when given.
    """
    image = as_array(image)
    plan = prepare(
        tuple(image.shape), image.dtype, mask_ratio=mask_ratio, beta=beta, iterations=iterations, preset=preset,
        rgb=rgb, channel_axis=channel_axis, seed=seed, device=device, weights=weights, lr=lr, precision=precision,
        reuse_network=reuse_network, refine=refine, crop=crop, tuning=tuning,
    )
    warn_if_noise_looks_correlated(image, mask_ratio, rgb=rgb, channel_axis=channel_axis)
    return drain(denoise_steps(image, plan, out), progress)
