"""A small noisy fluorescence-like sample, made locally (no download): cells with nuclei, filaments
and puncta, imaged with Poisson shot noise plus Gaussian read noise. Numpy only."""

from __future__ import annotations

import numpy as np

__all__ = ["clean_fluorescence", "noisy_fluorescence", "expected_counts", "make_sample_2d", "make_sample_3d"]


def clean_fluorescence(shape: tuple[int, int] = (256, 256), seed: int = 0, z: float = 0.0) -> np.ndarray:
    """Noise-free synthetic fluorescence in [0, 1]: blurred nuclei, curved filaments, bright puncta.
    ``z`` shifts the structures slightly so consecutive values form a plausible z-stack."""
    rng = np.random.default_rng(seed)
    height, width = shape
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float64)
    image = np.zeros(shape)
    scale = min(height, width)
    for _ in range(max(2, scale // 48)):  # nuclei: soft ellipses
        cy, cx = rng.uniform(0.1, 0.9) * height, rng.uniform(0.1, 0.9) * width
        ry, rx = rng.uniform(0.06, 0.12, size=2) * scale * (1.0 - 0.15 * abs(z))
        angle = rng.uniform(0, np.pi)
        dy, dx = yy - cy, xx - cx
        u = (dy * np.cos(angle) + dx * np.sin(angle)) / ry
        v = (-dy * np.sin(angle) + dx * np.cos(angle)) / rx
        image += 0.5 / (1.0 + np.exp((np.sqrt(u**2 + v**2) - 1.0) * 8.0))
    for _ in range(max(4, scale // 16)):  # filaments: random smooth curves
        t = np.linspace(0, 1, 4 * scale)
        y0, x0 = rng.uniform(0, height), rng.uniform(0, width)
        a1, a2 = rng.uniform(-1, 1, size=2) * scale * 0.6
        b1, b2 = rng.uniform(-1, 1, size=2) * scale * 0.6
        ys = y0 + a1 * t + b1 * t**2 + 2.0 * z
        xs = x0 + a2 * t + b2 * np.sin(3 * t)
        keep = (ys >= 0) & (ys < height) & (xs >= 0) & (xs < width)
        np.add.at(image, (ys[keep].astype(int), xs[keep].astype(int)), rng.uniform(0.3, 0.6))
    for _ in range(scale // 8):  # puncta
        image[rng.integers(height), rng.integers(width)] += rng.uniform(1.0, 2.0)
    from scipy.ndimage import gaussian_filter

    image = gaussian_filter(image, 1.2)
    image = np.clip(image / np.percentile(image, 99.5), 0.0, 1.0) * 0.95 + 0.05  # + autofluorescence
    return image.astype(np.float32)


#: Camera model of the sample: photons at the brightest pixel and the camera's dark offset in counts.
PHOTONS = 60.0
OFFSET = 100.0


def expected_counts(clean: np.ndarray, photons: float = PHOTONS) -> np.ndarray:
    """The noise-free image in camera counts: the ground truth of :func:`noisy_fluorescence`."""
    return (clean * photons + OFFSET).astype(np.float32)


def noisy_fluorescence(
    clean: np.ndarray, photons: float = PHOTONS, read_noise: float = 2.0, seed: int = 1
) -> np.ndarray:
    """Poisson-Gaussian camera model: ``photons`` at the brightest pixel, Gaussian read noise in
    counts, plus the dark offset; returns uint16 counts like a real camera."""
    rng = np.random.default_rng(seed)
    counts = rng.poisson(clean * photons) + rng.normal(OFFSET, read_noise, size=clean.shape)
    return np.clip(np.round(counts), 0, 65535).astype(np.uint16)


def make_sample_2d() -> list[tuple[np.ndarray, dict, str]]:
    """napari sample: a 256x256 noisy 2-D image."""
    image = noisy_fluorescence(clean_fluorescence((256, 256), seed=0))
    return [(image, {"name": "noisy fluorescence 2D", "colormap": "gray"}, "image")]


def make_sample_3d() -> list[tuple[np.ndarray, dict, str]]:
    """napari sample: a small 5x128x128 noisy z-stack."""
    stack = np.stack([clean_fluorescence((128, 128), seed=3, z=z) for z in np.linspace(-1, 1, 5)])
    image = noisy_fluorescence(stack, seed=4)
    return [(image, {"name": "noisy fluorescence 3D", "colormap": "gray", "scale": (2.0, 1.0, 1.0)}, "image")]
