"""N-D arrays <-> 2-D planes, and the per-plane intensity normalisation with its exact inverse.

Which axes are Y and X: the last two axes that are neither the RGB axis (the last one, when
``rgb=True``) nor the ``channel_axis``. Every other axis (Z, T, channels, ...) is iterated, so a
plane is (H, W) for gray data or (H, W, 3) for RGB. No torch here: numpy only.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

__all__ = ["PlaneLayout", "plane_layout", "plane_name", "Normalization", "normalize", "check_dtype", "check_values"]

#: Percentiles that map to 0 and 1: the extremes are ignored so a few hot or dead pixels
#: do not squeeze the useful range; values beyond are kept and round-trip exactly (up to MAX_OUTLIER).
LOW_PERCENTILE = 0.1
HIGH_PERCENTILE = 99.9
#: Normalised values are clipped this many robust ranges beyond [0, 1] (only defects reach that far):
#: the network's squared error of larger values could overflow float32.
MAX_OUTLIER = 1e6
FLOAT32_MAX = float(np.finfo(np.float32).max)
NON_FINITE_MESSAGE = "image contains NaN or infinite values; replace them (e.g. with 0) before denoising"


@dataclass(frozen=True)
class PlaneLayout:
    """How an N-D array splits into planes."""

    shape: tuple[int, ...]
    y_axis: int
    x_axis: int
    rgb: bool
    iter_axes: tuple[int, ...]

    @property
    def n_planes(self) -> int:
        return int(np.prod([self.shape[a] for a in self.iter_axes], dtype=np.int64))

    @property
    def plane_shape(self) -> tuple[int, ...]:
        hw = (self.shape[self.y_axis], self.shape[self.x_axis])
        return (*hw, self.shape[-1]) if self.rgb else hw

    def indices(self) -> Iterator[tuple]:
        """Index tuples selecting each plane, in C order of the iterated axes."""
        for position in np.ndindex(*[self.shape[a] for a in self.iter_axes]):
            index: list = [slice(None)] * len(self.shape)
            for axis, value in zip(self.iter_axes, position, strict=True):
                index[axis] = value
            yield tuple(index)

    def take(self, array, index: tuple) -> np.ndarray:
        """One plane as a numpy array ordered (H, W) or (H, W, C); reads only that plane from dask / zarr."""
        return np.asarray(array[index])


def plane_name(layout: PlaneLayout, index: tuple, axes: str | None = None) -> str:
    """A plane in words for messages: "plane 3 of 8 (Z=2)" (positions counted from 0, as in numpy), or
    "the image" when there is only one."""
    if layout.n_planes == 1:
        return "the image"
    iterated = layout.iter_axes
    number = int(np.ravel_multi_index([index[a] for a in iterated], [layout.shape[a] for a in iterated]))
    letters = axes if axes and len(axes) == len(layout.shape) else None
    where = ", ".join(f"{letters[a] if letters else f'axis {a}'}={index[a]}" for a in layout.iter_axes)
    return f"plane {number + 1} of {layout.n_planes} ({where})"


def plane_layout(shape: tuple[int, ...], *, rgb: bool = False, channel_axis: int | None = None) -> PlaneLayout:
    """Work out Y, X and the iterated axes of an array of ``shape``; ValueError when they do not fit."""
    ndim = len(shape)
    needed = 3 if rgb else 2
    if ndim < needed:
        kind = "an RGB image needs (..., H, W, 3)" if rgb else "an image needs at least 2 dimensions (H, W)"
        raise ValueError(f"cannot denoise an array of shape {tuple(shape)}: {kind}")
    if 0 in shape:
        raise ValueError(f"cannot denoise an array of shape {tuple(shape)}: it is empty (an axis has length 0)")
    if rgb and shape[-1] not in (3, 4):
        raise ValueError(f"rgb=True needs a last axis of 3 (RGB) or 4 (RGBA) values, got shape {tuple(shape)}")
    reserved: set[int] = {ndim - 1} if rgb else set()
    if channel_axis is not None:
        if not -ndim <= channel_axis < ndim:
            raise ValueError(f"channel_axis={channel_axis} is out of range for an array with {ndim} dimensions")
        channel_axis %= ndim
        if channel_axis in reserved:
            raise ValueError("channel_axis cannot be the RGB axis; use rgb=True or channel_axis, not both for one axis")
        reserved.add(channel_axis)
    spatial = [a for a in range(ndim) if a not in reserved][-2:]
    if len(spatial) < 2:
        raise ValueError(f"array of shape {tuple(shape)} has no two spatial axes besides the channel axis")
    y_axis, x_axis = spatial
    iter_axes = tuple(a for a in range(ndim) if a not in (y_axis, x_axis) and not (rgb and a == ndim - 1))
    return PlaneLayout(tuple(int(s) for s in shape), y_axis, x_axis, rgb, iter_axes)


def check_dtype(dtype: np.dtype) -> None:
    """Accept bool-free real numbers only: ints, unsigned ints and floats."""
    try:
        dtype = np.dtype(dtype)
    except TypeError as exc:  # e.g. torch.float32
        raise TypeError(f"{dtype} is not a numpy data type; give the image as a numpy, dask or zarr array "
                        "(a torch tensor: tensor.detach().cpu().numpy())") from exc
    if dtype.kind not in "uif":
        kinds = {"b": "boolean (a mask?)", "c": "complex", "O": "object", "U": "text", "S": "bytes", "V": "structured",
                 "M": "date-time", "m": "time-interval"}
        raise ValueError(
            f"cannot denoise {kinds.get(dtype.kind, dtype.name)} data ({dtype.name}); "
            "napari-mpi needs integer or float pixels"
        )


_FLOAT32_MAX = float(np.finfo(np.float32).max)


@dataclass(frozen=True)
class Normalization:
    """``(x - low) / scale`` maps a plane's robust range to [0, 1]; :meth:`invert` undoes it."""

    low: float
    scale: float

    def apply(self, plane: np.ndarray) -> np.ndarray:
        with np.errstate(over="ignore"):  # a subnormal scale: clipped below
            normalized = (np.asarray(plane, dtype=np.float64) - self.low) / self.scale
        return np.clip(normalized, -MAX_OUTLIER, 1.0 + MAX_OUTLIER).astype(np.float32)

    def invert(self, normalized: np.ndarray) -> np.ndarray:
        # clipped to float32's range: an estimate a hair above an input at float32's maximum must not become inf
        restored = np.asarray(normalized, dtype=np.float64) * self.scale + self.low
        return np.clip(restored, -_FLOAT32_MAX, _FLOAT32_MAX).astype(np.float32)


def check_values(data: np.ndarray) -> None:
    """ValueError for pixels that cannot be denoised: NaN or infinite, or beyond float32's range
    (the result is float32, in the input's units)."""
    data = np.asarray(data)
    if data.dtype.kind != "f":
        return  # integers up to 64 bits are finite and within float32's range
    if not np.isfinite(data).all():
        raise ValueError(NON_FINITE_MESSAGE)
    if data.dtype.itemsize > 4 and data.size and float(np.abs(data).max()) > FLOAT32_MAX:
        raise ValueError(
            f"image contains values beyond +-{FLOAT32_MAX:.2g}, which the float32 result cannot hold; "
            "rescale the image (e.g. divide by a constant) before denoising"
        )


def normalize(plane: np.ndarray) -> tuple[np.ndarray, Normalization]:
    """Normalise one plane by its 0.1 / 99.9 percentiles (all channels together, so RGB colours keep
    their balance). A constant plane gets scale 1. NaN, inf or values beyond float32 raise ValueError.

    Values beyond the percentiles are kept up to :data:`MAX_OUTLIER` ranges away; defects further
    out are clipped there, since the network's squared error of them would overflow float32."""
    check_values(plane)
    data = np.asarray(plane, dtype=np.float64)
    low, high = np.percentile(data, [LOW_PERCENTILE, HIGH_PERCENTILE])
    scale = float(high - low)
    if not scale > 0:
        low, high = float(data.min()), float(data.max())
        scale = float(high - low) if high > low else 1.0
    norm = Normalization(float(low), scale)
    return norm.apply(data), norm
