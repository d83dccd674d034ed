"""The noise check (napari_mpi.engine.noise): does an image's noise look spatially correlated?"""

import warnings

import numpy as np
import pytest
from scipy.ndimage import gaussian_filter

import napari_mpi
from napari_mpi.api import DenoiseWarning, check_noise
from napari_mpi.engine.noise import CORRELATED_MASK_RATIO, CORRELATED_NOISE_THRESHOLD, noise_correlation


@pytest.fixture(scope="module")
def camera() -> np.ndarray:
    from skimage import data

    return data.camera()[128:384, 128:384].astype(np.float64) / 255.0


def white(shape, std, seed=0):
    return np.random.default_rng(seed).normal(0, std, shape)


def correlated(shape, std, sigma=1.0, seed=0):
    noise = gaussian_filter(white(shape, 1.0, seed), sigma)
    return noise * (std / noise.std())


@pytest.mark.parametrize("std", [0.03, 0.1])
def test_independent_noise_is_not_called_correlated_and_filtered_noise_is(camera, std):
    assert noise_correlation(camera + white(camera.shape, std)) < 0.15
    assert noise_correlation(camera + correlated(camera.shape, std)) > CORRELATED_NOISE_THRESHOLD
    # Poisson noise (its variance grows with the signal) is independent too
    photons = np.random.default_rng(1).poisson(30 * camera) / 30
    assert noise_correlation(photons) < 0.15


def test_the_score_ignores_intensity_units_and_averages_colour_channels(camera):
    noisy = camera + correlated(camera.shape, 0.05)
    score = noise_correlation(noisy)
    assert noise_correlation(4095 * noisy + 100) == pytest.approx(score, abs=1e-9)  # raw 12-bit counts
    rgb = np.stack([noisy, noisy, noisy], axis=-1)
    assert noise_correlation(rgb, rgb=True) == pytest.approx(score, abs=1e-9)


def test_planes_it_cannot_judge_score_zero():
    assert noise_correlation(np.zeros((64, 64))) == 0.0  # constant
    assert noise_correlation(white((20, 200), 0.1)) == 0.0  # under 32 pixels a side
    with_nan = white((64, 64), 0.1)
    with_nan[3, 3] = np.nan
    assert noise_correlation(with_nan) == 0.0


def test_check_noise_reads_three_planes_of_a_stack_and_suggests_the_ratio(camera):
    read = []

    class Stack:  # an array-like that records the planes read, as a dask or zarr array would be read
        def __init__(self, data):
            self.data, self.shape, self.dtype, self.ndim = data, data.shape, data.dtype, data.ndim

        def __getitem__(self, index):
            read.append(index[0])
            return self.data[index]

    planes = [camera + (correlated if z in (0, 5) else white)(camera.shape, 0.05, seed=z) for z in range(10)]
    hint = check_noise(Stack(np.stack(planes)))
    assert read == [0, 4, 9]  # evenly spaced, the first and the last
    assert not hint.correlated and hint.mask_ratio is None  # one correlated plane of three is outvoted
    hint = check_noise(np.stack(planes[:1] + planes[5:6]))
    assert hint.correlated and hint.mask_ratio == CORRELATED_MASK_RATIO
    assert "spatially correlated" in hint.describe() and f"{CORRELATED_MASK_RATIO}" in hint.describe()


def test_denoise_warns_about_correlated_noise_only_when_no_mask_ratio_was_chosen(camera):
    noisy = (camera + correlated(camera.shape, 0.08))[:64, :64].astype(np.float32)
    with pytest.warns(DenoiseWarning, match="spatially correlated .* pass mask_ratio=0.85"):
        napari_mpi.denoise(noisy, iterations=1, weights="random", refine="none")
    with warnings.catch_warnings():
        warnings.simplefilter("error", DenoiseWarning)
        napari_mpi.denoise(noisy, iterations=1, weights="random", refine="none", mask_ratio=0.3)
        napari_mpi.denoise((camera + white(camera.shape, 0.08))[:64, :64], iterations=1, weights="random",
                           refine="none")
