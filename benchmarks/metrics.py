"""The image-quality metrics of every benchmark: PSNR, SSIM and the affine fit used for GigaDB.

* PSNR in dB against the clean image, with a data range (default 1.0: the 8-bit range of the reference
  files after the /255 scaling of ``datasets.py``, as the FMD and MPI papers report).
* SSIM with Gaussian weights of sigma 1.5 and population covariance (Wang et al. 2004); colour images over
  their channels (``channel_axis=-1``), stacks as the mean over planes.
* ``affine_fit``: ``a * output + b`` with a, b minimising the squared error to the clean image (least
  squares, as CARE scores its data). Pairs whose images were contrast-stretched separately (GigaDB:
  ``Sample.compare == "affine"``) are scored after it, the noisy input included.

``score`` is what the scripts call: ``score(output, clean, kind, compare, data_range) -> (psnr, ssim)``.
"""

from __future__ import annotations

import math

import numpy as np

__all__ = ["affine_fit", "data_range_of", "psnr", "ssim", "score"]


def affine_fit(output: np.ndarray, clean: np.ndarray) -> np.ndarray:
    """``a * output + b`` with a, b minimising the squared error to ``clean`` (least squares), as float32."""
    x = output.astype(np.float64).ravel()
    y = clean.astype(np.float64).ravel()
    x_mean, y_mean = x.mean(), y.mean()
    var = ((x - x_mean) ** 2).sum()
    a = ((x - x_mean) * (y - y_mean)).sum() / var if var > 0 else 0.0
    b = y_mean - a * x_mean
    return (a * output.astype(np.float64) + b).astype(np.float32)


def data_range_of(clean: np.ndarray, mode: str = "unit") -> float:
    """The data range of the metrics: ``"unit"`` = 1.0 (the 8-bit range of the files), ``"clean"`` = max - min
    of ``clean`` (1.0 when it is flat). Beware ``"clean"`` on a background-only crop: a tiny range, a
    meaningless PSNR."""
    if mode == "unit":
        return 1.0
    if mode != "clean":
        raise ValueError(f"data range must be 'unit' or 'clean', got {mode!r}")
    span = float(clean.max() - clean.min())
    return span if span > 0 else 1.0


def psnr(output: np.ndarray, clean: np.ndarray, data_range: float = 1.0) -> float:
    """Peak signal-to-noise ratio in dB over all values (inf when the two are equal)."""
    output, clean = _checked(output, clean)
    mse = float(np.mean((output.astype(np.float64) - clean.astype(np.float64)) ** 2))
    return 10.0 * math.log10(data_range**2 / mse) if mse > 0 else float("inf")


def ssim(output: np.ndarray, clean: np.ndarray, kind: str = "gray", data_range: float = 1.0) -> float:
    """Structural similarity, Gaussian window sigma 1.5: ``kind`` "gray" (H, W), "rgb" (H, W, 3: over the
    channels) or "stack" (Z, H, W: the mean over planes)."""
    from skimage.metrics import structural_similarity

    output, clean = _checked(output, clean)
    options = dict(data_range=data_range, gaussian_weights=True, sigma=1.5, use_sample_covariance=False)
    if kind == "rgb":
        return float(structural_similarity(clean, output, channel_axis=-1, **options))
    if kind == "stack":
        return float(np.mean([structural_similarity(c, o, **options) for c, o in zip(clean, output, strict=True)]))
    if kind != "gray":
        raise ValueError(f"kind must be 'gray', 'rgb' or 'stack', got {kind!r}")
    return float(structural_similarity(clean, output, **options))


def score(output: np.ndarray, clean: np.ndarray, kind: str, compare: str = "direct",
          data_range: str = "unit") -> tuple[float, float]:
    """(PSNR in dB, SSIM) of ``output`` against ``clean``; ``compare="affine"`` scores ``affine_fit(output)``;
    ``data_range``: ``"unit"`` or ``"clean"`` (``data_range_of``)."""
    output, clean = _checked(output, clean)
    if compare == "affine":
        output = affine_fit(output, clean)
    elif compare != "direct":
        raise ValueError(f"compare must be 'direct' or 'affine', got {compare!r}")
    span = data_range_of(clean, data_range)
    return psnr(output, clean, span), ssim(output, clean, kind, span)


def _checked(output: np.ndarray, clean: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    output = np.asarray(output, dtype=np.float32)
    clean = np.asarray(clean, dtype=np.float32)
    if output.shape != clean.shape:
        raise ValueError(f"output shape {output.shape} != clean shape {clean.shape}")
    return output, clean
