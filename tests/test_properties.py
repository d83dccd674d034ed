"""Property-based tests (hypothesis) over the shapes, dtypes and values the API may be handed.

``napari_mpi.denoise`` on any array either returns a finite float32 array of the input's shape or
raises ValueError / TypeError with a one-line message, never another exception, and never modifies
its input. Tiny arrays and 1-2 iterations keep each example to a few tens of milliseconds.
"""

from __future__ import annotations

import itertools

import numpy as np
import torch
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import napari_mpi
from napari_mpi.engine.network import MIN_SIDE
from napari_mpi.engine.tiles import _axis_weights, tile_starts
from napari_mpi.io.planes import FLOAT32_MAX, MAX_OUTLIER, normalize

TINY32 = float(np.finfo(np.float32).tiny)  # float32 results flush smaller values towards 0
FAST = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])

NUMERIC = [np.uint8, np.int8, np.uint16, np.int16, np.int32, np.uint32, np.int64, np.uint64,
           np.float16, np.float32, np.float64]
OTHER = [np.bool_, np.complex64, np.complex128, np.dtype("datetime64[s]"), np.dtype("U2")]


@st.composite
def images(draw):
    """Arrays of 0-6 dimensions with at most 2 planes; sides around the network's minimum (8),
    empty axes included; any numeric dtype with any values (NaN, inf, extremes), or a non-numeric one."""
    ndim = draw(st.integers(0, 6))
    sides = st.integers(0, 12) | st.sampled_from([MIN_SIDE - 1, MIN_SIDE, 1])
    shape = tuple(draw(sides) for _ in range(ndim))
    if ndim > 2 and int(np.prod(shape[:-2])) > 2:  # keep the number of planes small
        shape = (1,) * (ndim - 3) + (draw(st.integers(0, 2)),) + shape[-2:]
    if draw(st.booleans()):  # half of the examples big enough to be denoised
        shape = shape[:-2] + tuple(max(MIN_SIDE, s) for s in shape[-2:]) if ndim >= 2 else shape
    if draw(st.integers(0, 9)) == 0:
        return np.zeros(shape, dtype=draw(st.sampled_from(OTHER))) if draw(st.booleans()) else np.empty(shape, object)
    dtype = np.dtype(draw(st.sampled_from(NUMERIC)))
    if dtype.kind == "f" and draw(st.booleans()):  # finite but wide-ranging values
        bound = float(np.finfo(dtype).max)
        elements = st.floats(-bound, bound, width=8 * dtype.itemsize)
        return draw(hnp.arrays(dtype, shape, elements=elements))
    return draw(hnp.arrays(dtype, shape))  # floats: NaN, inf and extremes included


@st.composite
def valid_images(draw):
    """Gray images and stacks (at most 2 planes) that must be denoised: any real dtype, finite values
    within float32 (extremes, constants and subnormals included), sides from the network's minimum."""
    leading = draw(st.lists(st.integers(1, 2), max_size=4).filter(lambda axes: int(np.prod(axes)) <= 2))
    shape = (*leading, draw(st.integers(MIN_SIDE, 14)), draw(st.integers(MIN_SIDE, 14)))
    dtype = np.dtype(draw(st.sampled_from(NUMERIC)))
    if dtype.kind == "f":
        bound = float(np.finfo(np.float32).max if dtype.itemsize > 4 else np.finfo(dtype).max)
        elements = st.floats(-bound, bound, allow_nan=False, allow_infinity=False, width=8 * dtype.itemsize)
        return draw(hnp.arrays(dtype, shape, elements=elements))
    return draw(hnp.arrays(dtype, shape))


def ok_for_denoising(image: np.ndarray, rgb: bool, channel_axis) -> bool:
    """Inputs that must be denoised (not refused): gray, real numbers, finite, float32-sized, big enough."""
    if rgb or channel_axis is not None or image.dtype.kind not in "uif" or image.ndim < 2 or image.size == 0:
        return False
    if min(image.shape[-2:]) < MIN_SIDE:
        return False
    values = image.astype(np.float64)
    return bool(np.isfinite(values).all() and np.abs(values).max() <= FLOAT32_MAX)


@FAST
@given(image=images(), iterations=st.integers(1, 2), options=st.sampled_from(["gray", "gray", "rgb", "channel"]),
       axis=st.integers(-7, 6), seed=st.integers(0, 3))
def test_denoise_returns_a_finite_float_image_or_a_clear_error(image, iterations, options, axis, seed):
    rgb = options == "rgb"
    channel_axis = axis if options == "channel" else None
    before = image.copy()
    try:
        result = napari_mpi.denoise(image, iterations=iterations, weights="random", device="cpu", seed=seed,
                                    rgb=rgb, channel_axis=channel_axis)
    except (ValueError, TypeError) as exc:
        message = str(exc)
        assert message and "\n" not in message and "Traceback" not in message
        assert not ok_for_denoising(image, rgb, channel_axis), f"refused a valid image: {message}"
        event("refused")
    else:
        event("denoised")
        assert result.shape == image.shape and result.dtype == np.float32
        assert np.isfinite(result).all()
    if image.dtype.kind == "f":
        np.testing.assert_array_equal(image, before)  # NaNs compare equal here
    else:
        assert image.dtype == before.dtype and (image == before).all()


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(image=valid_images(), seed=st.integers(0, 3))
def test_valid_images_are_denoised_to_finite_float32_of_their_shape(image, seed):
    assert ok_for_denoising(image, False, None)
    before = image.copy()
    result = napari_mpi.denoise(image, iterations=1, weights="random", device="cpu", seed=seed)
    assert result.shape == image.shape and result.dtype == np.float32 and np.isfinite(result).all()
    np.testing.assert_array_equal(image, before)


@FAST
@given(plane=hnp.arrays(np.float64, hnp.array_shapes(min_dims=2, max_dims=2, min_side=1, max_side=40),
                        elements=st.floats(-1e30, 1e30, allow_nan=False)))
def test_normalisation_is_finite_and_inverts_exactly_up_to_the_clip(plane):
    data, norm = normalize(plane)
    assert data.dtype == np.float32 and np.isfinite(data).all()
    assert data.min() >= -MAX_OUTLIER and data.max() <= 1 + MAX_OUTLIER
    exact = (plane - norm.low) / norm.scale
    kept = (exact > -MAX_OUTLIER) & (exact < 1 + MAX_OUTLIER)
    back = norm.invert(data).astype(np.float64)
    # + float32 output rounding
    tolerance = 1e-6 * (np.abs(plane - norm.low) + norm.scale) + np.abs(plane) * 2.0**-23 + TINY32
    assert (np.abs(back - plane)[kept] <= tolerance[kept]).all()
    # clipped defects come back between the robust range and their own value
    clipped = ~kept
    assert (np.abs(back - norm.low)[clipped] <= np.abs(plane - norm.low)[clipped] * (1 + 1e-6)
            + np.abs(plane)[clipped] * 2.0**-23 + TINY32).all()


@settings(max_examples=100, deadline=None)
@given(length=st.integers(1, 3000), tile=st.integers(33, 700), overlap=st.integers(0, 32))
def test_tiles_cover_every_pixel_with_weights_adding_up_to_one(length, tile, overlap):
    starts = tile_starts(length, tile, overlap)
    tile = min(tile, length)
    assert starts == sorted(set(starts)) and starts[0] == 0 and starts[-1] + tile == length
    assert all(b - a <= tile - overlap for a, b in itertools.pairwise(starts))
    total = torch.zeros(length)
    for start, weights in zip(starts, _axis_weights(starts, tile), strict=True):
        assert (weights > 0).all() and weights.shape == (tile,)
        total[start:start + tile] += weights
    torch.testing.assert_close(total, torch.ones(length))  # a partition of unity: blending keeps values
