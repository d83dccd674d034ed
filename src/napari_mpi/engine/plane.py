"""One numpy plane through the engine: normalised, filled (on the whole plane, in windows, or in tiles when
memory runs short), refined, and brought back to the input's layout and intensity units."""

from __future__ import annotations

import gc
import warnings
from collections.abc import Generator

import numpy as np
import torch

from ..io.planes import Normalization, normalize
from ..plan import DenoisePlan, DenoiseWarning
from .devices import (
    CPU_MEMORY_SHARE,
    DeviceMemoryError,
    available_memory,
    fill_memory,
    free_device_memory,
    is_out_of_memory,
    resolve_precision,
)
from .fill import CarriedNetwork, FillStep, iterative_fill
from .refine import refine_estimate
from .tiles import TILE_OVERLAP, smaller_tile, tile_count, tiled_fill
from .windows import crop_fill

__all__ = ["DenoiseWarning", "fill_plane", "tile_to_fit_memory", "to_plane", "to_tensor"]


#: Tiles train a network each (tiles.tiled_fill), so nothing carries from plane to plane.
_NO_REUSE_IN_TILES = "; tiled planes cannot reuse the network from plane to plane, so each runs its full fill"


def fill_plane(
    plane: np.ndarray, plan: DenoisePlan, state: dict | None, carried: CarriedNetwork | None,
    tile: tuple[int, int] | None,
) -> Generator[tuple[FillStep, Normalization], None, np.ndarray]:
    """Algorithm 1 on one plane: yields every fill step; returns the plane in the input's units (float32).

    ``tile``: the tile size to start with, from :func:`tile_to_fit_memory` (None: the whole plane, until
    memory runs out); ``carried``: the previous plane's network, when planes reuse it. When the device
    runs out of memory the plane starts again in overlapping tiles (about half the side each time, down
    to MIN_TILE pixels; a DenoiseWarning says so); MemoryError when even those fail.
    """
    data, norm = normalize(plane)
    if np.ptp(data) == 0:  # a constant plane is its own denoised result
        return np.asarray(plane, dtype=np.float32)
    tensor = to_tensor(data, plan.layout.rgb)
    while True:
        step: FillStep | None = None
        try:
            for step in _fill(tensor, plan, state, carried, tile):
                yield step, norm
            break
        except Exception as exc:
            if not is_out_of_memory(exc):
                raise
            failure = f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else 'no detail'}"
        # out of memory: let go of the failed attempt first (its traceback held the network's tensors)
        step = None
        if carried is not None:
            carried.clear()
        gc.collect()
        free_device_memory(plan.device)
        tile = _next_tile(plane.shape[:2], tile, plan, failure, carried is not None)
    assert step is not None
    estimate = step.estimate
    if plan.refine == "wiener":
        estimate = _refined(tensor, estimate, plan)
    return to_plane(estimate, norm, plane)


def _fill(tensor: torch.Tensor, plan: DenoisePlan, state: dict | None, carried: CarriedNetwork | None,
          tile: tuple[int, int] | None):
    if plan.crop:
        return crop_fill(tensor, plan.config, state, plan.device, plan.crop, carried)
    if tile is None:
        return iterative_fill(tensor, plan.config, state, plan.device, carried)
    return tiled_fill(tensor, plan.config, state, plan.device, tile, TILE_OVERLAP)


def _next_tile(shape: tuple[int, int], tile: tuple[int, int] | None, plan: DenoisePlan, failure: str,
               reusing: bool) -> tuple[int, int]:
    """The tile size to try after running out of memory (with a DenoiseWarning); MemoryError when there is none."""
    height, width = shape
    device = plan.device.type.upper()
    if plan.crop:
        raise DeviceMemoryError(f"{device} ran out of memory training on {plan.crop}x{plan.crop} windows of a "
                                f"{height}x{width} plane", plan.device)
    smaller = smaller_tile(tile or (height, width), (height, width))
    if smaller is None:
        where = f", even in tiles of {tile[0]}x{tile[1]} pixels" if tile is not None else ""
        raise DeviceMemoryError(f"{device} ran out of memory on a {height}x{width} plane{where}", plan.device)
    warnings.warn(
        f"{device} ran out of memory on a {height}x{width} plane ({failure}); denoising it in "
        f"{tile_count((height, width), smaller)} overlapping tiles of {smaller[0]}x{smaller[1]} pixels instead "
        f"(slower; the seams are blended){_NO_REUSE_IN_TILES if reusing else ''}",
        DenoiseWarning,
        stacklevel=3,
    )
    return smaller


def _refined(noisy: torch.Tensor, estimate: torch.Tensor, plan: DenoisePlan) -> torch.Tensor:
    """The fill's estimate after the collaborative Wiener filter; the estimate itself if memory runs out for it."""
    try:
        refined, _ = refine_estimate(noisy.to(estimate.device), estimate, colour=plan.layout.rgb,
                                     fill_weight=plan.config.refine_fill_weight)
        return refined
    except Exception as exc:
        if not is_out_of_memory(exc):
            raise
    gc.collect()
    free_device_memory(plan.device)
    warnings.warn(
        f"{plan.device.type.upper()} ran out of memory for the Wiener refinement; this plane keeps the fill's "
        "estimate (use refine='none' to skip the refinement)",
        DenoiseWarning,
        stacklevel=3,
    )
    return estimate


def tile_to_fit_memory(height: int, width: int, plan: DenoisePlan) -> tuple[int, int] | None:
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
        smaller = smaller_tile(tile, (height, width))
        if smaller is None:
            break
        tile = smaller
    if tile == (height, width):  # already at the smallest tile: nothing to gain
        return None
    warnings.warn(
        f"denoising a {height}x{width} plane at once would take about {need / 2**30:.1f} GiB of memory and "
        f"{available / 2**30:.1f} GiB is available; denoising it in {tile_count((height, width), tile)} "
        f"overlapping tiles of {tile[0]}x{tile[1]} pixels instead (the seams are blended)"
        f"{_NO_REUSE_IN_TILES if plan.reuse_network else ''}",
        DenoiseWarning,
        stacklevel=3,
    )
    return tile


def to_tensor(data: np.ndarray, rgb: bool) -> torch.Tensor:
    """(H, W) -> (1, H, W); (H, W, 3|4) -> (3, H, W) (alpha is not denoised)."""
    if rgb:
        return torch.from_numpy(np.ascontiguousarray(data[..., :3].transpose(2, 0, 1)))
    return torch.from_numpy(np.ascontiguousarray(data))[None]


def to_plane(estimate: torch.Tensor, norm: Normalization, original: np.ndarray) -> np.ndarray:
    """Estimate tensor back to the plane's layout and intensity units; alpha copied from the input."""
    values = estimate.detach().float().cpu().numpy()
    if original.ndim == 3:  # RGB(A)
        result = np.array(original, dtype=np.float32)
        result[..., :3] = norm.invert(values.transpose(1, 2, 0))
        return result
    return norm.invert(values[0])
