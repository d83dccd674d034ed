import numpy as np
import pytest

from napari_mpi.io.planes import check_dtype, normalize, plane_layout


@pytest.mark.parametrize(
    "shape,kwargs,plane_shape,n_planes",
    [
        ((40, 50), {}, (40, 50), 1),
        ((40, 50, 3), {"rgb": True}, (40, 50, 3), 1),
        ((5, 40, 50), {}, (40, 50), 5),
        ((2, 5, 40, 50), {}, (40, 50), 10),
        ((2, 3, 40, 50), {"channel_axis": 1}, (40, 50), 6),
        ((40, 50, 2), {"channel_axis": -1}, (40, 50), 2),
        ((4, 40, 50, 3), {"rgb": True}, (40, 50, 3), 4),
        ((1, 1, 2, 1, 40, 50), {}, (40, 50), 2),
    ],
)
def test_layouts(shape, kwargs, plane_shape, n_planes):
    layout = plane_layout(shape, **kwargs)
    assert layout.plane_shape == plane_shape
    assert layout.n_planes == n_planes == len(list(layout.indices()))
    array = np.arange(np.prod(shape)).reshape(shape)
    assert layout.take(array, next(layout.indices())).shape == plane_shape


def test_channel_last_planes_are_y_x():
    array = np.random.rand(40, 50, 2)
    layout = plane_layout(array.shape, channel_axis=2)
    planes = [layout.take(array, index) for index in layout.indices()]
    assert np.array_equal(planes[1], array[..., 1])


@pytest.mark.parametrize(
    "shape,kwargs,match",
    [
        ((50,), {}, "at least 2 dimensions"),
        ((40, 50), {"rgb": True}, "RGB"),
        ((40, 50, 5), {"rgb": True}, "3 \\(RGB\\) or 4"),
        ((3, 40, 50), {"channel_axis": 3}, "out of range"),
        ((40, 50, 3), {"rgb": True, "channel_axis": -1}, "RGB axis"),
        ((3, 50), {"channel_axis": 0}, "two spatial axes"),
    ],
)
def test_layout_errors(shape, kwargs, match):
    with pytest.raises(ValueError, match=match):
        plane_layout(shape, **kwargs)


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.int16, np.int32, np.float32, np.float64])
def test_normalisation_round_trip(dtype):
    rng = np.random.default_rng(0)
    plane = (rng.random((30, 30)) * 200 - (50 if np.dtype(dtype).kind != "u" else 0)).astype(dtype)
    plane[0, 0] = 10_000 if np.dtype(dtype).itemsize > 1 else 255  # an outlier does not set the scale
    data, norm = normalize(plane)
    assert data.dtype == np.float32
    assert np.percentile(data, 99.9) == pytest.approx(1.0, abs=1e-5) and data.max() > 1.0
    np.testing.assert_allclose(norm.invert(data), plane.astype(np.float64), rtol=1e-5, atol=1e-3)


def test_constant_plane_and_nan():
    data, norm = normalize(np.full((20, 20), 7.0))
    assert np.all(data == 0) and np.all(norm.invert(data) == 7.0)
    with pytest.raises(ValueError, match="NaN"):
        normalize(np.array([[1.0, np.nan], [0.0, 1.0]]))


@pytest.mark.parametrize("dtype,match", [(bool, "boolean"), (np.complex64, "complex"), (object, "object")])
def test_unsupported_dtypes(dtype, match):
    with pytest.raises(ValueError, match=match):
        check_dtype(np.dtype(dtype))


def test_a_pixel_at_float32s_maximum_does_not_become_inf():
    # found by hypothesis (tests/test_properties.py): the estimate a hair above the input overflowed
    import napari_mpi

    image = np.zeros((8, 11), np.float32)
    image[0, 0] = np.finfo(np.float32).max
    result = napari_mpi.denoise(image, iterations=2, seed=0)
    assert result.dtype == np.float32 and np.isfinite(result).all()
