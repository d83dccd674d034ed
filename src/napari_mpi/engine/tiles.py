"""Overlapping tiles for planes whose fill does not fit in the device's memory at once."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import replace

import torch

from ..settings import FillConfig, plane_steps
from .chain import PlaneStart
from .fill import FillStep, iterative_fill
from .network import check_plane_size

__all__ = ["TILE_OVERLAP", "MIN_TILE", "TiledStep", "tiled_fill", "tile_starts", "smaller_tile", "tile_count"]

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


def smaller_tile(tile: tuple[int, int], plane: tuple[int, int]) -> tuple[int, int] | None:
    """The tile size to try after running out of memory with ``tile``: about half of each side (two
    such tiles cover it with TILE_OVERLAP), at least MIN_TILE; None when that is no smaller."""
    smaller = tuple(min(side, max(MIN_TILE, math.ceil((t + TILE_OVERLAP) / 2)))
                    for t, side in zip(tile, plane, strict=True))
    return None if smaller == tuple(tile) else smaller  # type: ignore[return-value]


def tile_count(plane: tuple[int, int], tile: tuple[int, int]) -> int:
    """How many tiles of ``tile`` cover ``plane``."""
    return len(tile_starts(plane[0], tile[0], TILE_OVERLAP)) * len(tile_starts(plane[1], tile[1], TILE_OVERLAP))


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
    for start, weights in zip(starts, tents, strict=True):
        total[start:start + tile] += weights
    return [weights / total[start:start + tile] for start, weights in zip(starts, tents, strict=True)]


class TiledStep:
    """One step of :func:`tiled_fill`: the same interface as ``FillStep`` (``estimate`` of the
    whole plane, ``loss``), with the estimate blended from the tiles on demand (on the CPU)."""

    def __init__(self, iteration: int, iterations: int, tiles: int, blend: Callable[[], torch.Tensor],
                 loss_tensor: torch.Tensor, training: int = 0) -> None:
        self.iteration = iteration
        self.iterations = iterations
        self.tiles = tiles
        self.training = training  # each tile's training steps (every tile starts from the weights)
        self.start = PlaneStart()
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


class _Blend:
    """The whole plane's estimate while tiles are filled one after the other: finished tiles, the live one and
    the input elsewhere, each weighted by its blending weight."""

    def __init__(self, image: torch.Tensor, grid: list[tuple[int, int]], rows: list[int], columns: list[int],
                 tile: tuple[int, int]):
        self.x = image.detach().to("cpu", torch.float32)
        _, height, width = self.x.shape
        tile_h, tile_w = tile
        self.regions = [(slice(None), slice(y, y + tile_h), slice(x, x + tile_w)) for y, x in grid]
        row_weights, column_weights = _axis_weights(rows, tile_h), _axis_weights(columns, tile_w)
        self.weights = [row[:, None] * column[None, :] for row in row_weights for column in column_weights]
        self.total = torch.zeros(1, height, width)
        for region, w in zip(self.regions, self.weights, strict=True):
            self.total[region] += w
        self.done = torch.zeros_like(self.x)  # weighted sum of finished tiles' estimates
        self.pending = self.total.clone()  # weight still given to the input (tiles not finished)
        self.live: tuple[int, FillStep] | None = None

    def __call__(self) -> torch.Tensor:
        result = self.done + self.x * self.pending
        if self.live is not None:
            # the live tile replaces its share of the input by its current estimate
            number, step = self.live
            region, w = self.regions[number], self.weights[number]
            result[region] += w * (step.estimate.detach().float().cpu() - self.x[region])
        return result / self.total

    def finish(self, number: int, step: FillStep) -> None:
        region, w = self.regions[number], self.weights[number]
        self.done[region] += w * step.estimate.detach().float().cpu()
        self.pending[region] -= w
        self.live = None


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
    _, height, width = image.shape
    tile_h, tile_w = min(tile[0], height), min(tile[1], width)
    check_plane_size(tile_h, tile_w)
    overlap = min(overlap, tile_h - 1, tile_w - 1)
    rows, columns = tile_starts(height, tile_h, overlap), tile_starts(width, tile_w, overlap)
    grid = [(y, x) for y in rows for x in columns]
    blend = _Blend(image, grid, rows, columns, (tile_h, tile_w))
    iterations = plane_steps(config, tile_h, tile_w)  # each tile's fill
    count = len(grid)
    for number, region in enumerate(blend.regions):
        step: FillStep | None = None
        tile_config = replace(config, seed=config.seed + number)
        for step in iterative_fill(image[region], tile_config, state_dict, device):
            blend.live = (number, step)
            work = number * iterations + step.iteration
            yield TiledStep(work // count, iterations, count, blend, step.loss_tensor, step.training)
        assert step is not None
        blend.finish(number, step)
