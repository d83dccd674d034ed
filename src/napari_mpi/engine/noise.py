"""Does an image's noise look spatially correlated? A check from the noisy image alone (numpy only).

The fill wants a mask ratio of ~0.3 for noise that is independent from pixel to pixel (shot noise, read noise) and
0.8-0.95 for noise shared by neighbouring pixels (colour cameras' demosaicing, resampled or filtered images): with
30% of the pixels hidden, the visible neighbours carry a hidden pixel's noise and the fill learns to copy it. This
module measures how correlated the noise is where the signal is weakest (``benchmarks/noise_correlation_study.py``,
docs/benchmarks.md): it never called independent noise correlated on 73 noisy images of FMD, GigaDB and the photo
sets, and found every correlated case tried, but it also fires on some clean images whose own fine structure is
correlated (JPEG photos, averaged camera frames), where a mask ratio of 0.85 costs a lot of quality (figures in
docs/benchmarks.md). So it *suggests* the ratio (a hint in the widget, a warning from the API and the command
line) and never changes it by itself.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["CORRELATED_NOISE_THRESHOLD", "CORRELATED_MASK_RATIO", "MaskRatioHint", "noise_correlation",
           "mask_ratio_hint"]

#: A noise_correlation above this: the noise looks spatially correlated (white noise scored -0.06 to +0.10, noise
#: filtered by a Gaussian of sigma 0.7-1 from 0.34 up, FMD's widefield camera 0.43)
CORRELATED_NOISE_THRESHOLD = 0.33
#: The mask ratio suggested for correlated noise (the paper's range is 0.8-0.95; FMD's widefield image: 0.85)
CORRELATED_MASK_RATIO = 0.85

_BLOCK = 8  # block side
_BINS = 8  # intensity bins (shot noise grows with intensity)
_KEEP = 0.25  # the flattest quarter of each bin's blocks
_MIN_AMPLITUDE = 0.012  # residual std / plane range below which the flat blocks hold too little to judge
_MAX_SPREAD = 1.6  # block-variance spread (25th / 5th percentile) above which the flat blocks hold signal


@dataclass(frozen=True)
class MaskRatioHint:
    """What the noise check found on an image: its score and, when the noise looks correlated, a mask ratio."""

    score: float
    correlated: bool

    @property
    def mask_ratio(self) -> float | None:
        """The mask ratio to suggest (CORRELATED_MASK_RATIO), None for independent noise."""
        return CORRELATED_MASK_RATIO if self.correlated else None

    def describe(self) -> str:
        """One sentence for a warning or a status line."""
        if not self.correlated:
            return f"the noise looks independent from pixel to pixel (correlation score {self.score:.2f})"
        return (f"the noise looks spatially correlated (score {self.score:.2f} > {CORRELATED_NOISE_THRESHOLD}): "
                f"a mask ratio of {CORRELATED_MASK_RATIO} may denoise it much better (unless the image is nearly "
                "clean: compare both)")


def _plane_parts(plane: np.ndarray) -> tuple[float, float, float] | None:
    """(lag-1 correlation, amplitude, spread) of one plane's flattest blocks; None with too few blocks."""
    b = _BLOCK
    height, width = plane.shape[0] // b * b, plane.shape[1] // b * b
    if height < 4 * b or width < 4 * b:
        return None
    blocks = plane[:height, :width].reshape(height // b, b, width // b, b).transpose(0, 2, 1, 3).reshape(-1, b * b)
    # what is left of each block after a least-squares plane a + bx + cy: noise, plus any finer structure
    y, x = np.mgrid[:b, :b]
    design = np.stack([np.ones(b * b), x.ravel() - (b - 1) / 2, y.ravel() - (b - 1) / 2], 1)
    residual = (blocks @ (np.eye(b * b) - design @ np.linalg.pinv(design))).reshape(-1, b, b)
    means = blocks.mean(1)
    variance = (residual * residual).mean((1, 2))
    lag1 = 0.5 * ((residual[:, :, 1:] * residual[:, :, :-1]).mean((1, 2))
                  + (residual[:, 1:] * residual[:, :-1]).mean((1, 2)))
    low, high = np.percentile(plane, [0.1, 99.9])
    span = max(high - low, 1e-12)
    valid = np.flatnonzero(variance > 1e-10 * span * span)
    if len(valid) < 4 * _BINS:
        return None
    edges = np.quantile(means[valid], np.linspace(0, 1, _BINS + 1))
    which = np.clip(np.searchsorted(edges, means[valid], side="right") - 1, 0, _BINS - 1)
    kept, spreads, sigmas = [], [], []
    for number in range(_BINS):
        members = valid[which == number]
        if len(members) < 8:
            continue
        lowest, cut = np.quantile(variance[members], [0.05, _KEEP])
        flat = members[variance[members] <= cut]
        kept.append(flat)
        spreads.append(cut / max(lowest, 1e-300))
        sigmas.append(np.sqrt(np.median(variance[flat])))
    if not kept:
        return None
    flat = np.concatenate(kept)
    return float(np.median(lag1[flat] / variance[flat])), float(np.median(sigmas) / span), float(np.median(spreads))


def _plane_score(plane: np.ndarray) -> float | None:
    parts = _plane_parts(np.asarray(plane, dtype=np.float64))
    if parts is None:
        return None
    correlation, amplitude, spread = parts
    # shrink towards 0 where the flattest blocks do not look like noise: too faint (a nearly clean image), or
    # unevenly strong (texture, edges), or exactly alike (repeated synthetic blocks)
    return (correlation * min(1.0, amplitude / _MIN_AMPLITUDE) * min(1.0, _MAX_SPREAD / spread)
            * min(1.0, max(0.0, (spread - 1.0) / 0.2)))


def noise_correlation(plane: np.ndarray, rgb: bool = False) -> float:
    """How correlated one plane's noise is between neighbouring pixels: the median lag-1 autocorrelation of what is
    left in the flattest 8x8 blocks (per intensity bin) after removing each block's linear trend, shrunk towards 0
    when those blocks do not look like noise. About 0 for independent noise; above CORRELATED_NOISE_THRESHOLD:
    correlated. ``plane``: (H, W), or (H, W, C) with ``rgb`` (the channels' mean score). Invariant to the
    intensity scale and offset; 0.0 for planes too small to judge (under 32 pixels a side) or constant."""
    values = np.asarray(plane, dtype=np.float64)
    if not np.isfinite(values).all():
        return 0.0  # (the denoiser refuses such planes with its own message)
    planes = [values[..., c] for c in range(min(values.shape[-1], 3))] if rgb else [values]
    scores = [s for s in map(_plane_score, planes) if s is not None]
    return float(np.mean(scores)) if scores else 0.0


def mask_ratio_hint(planes: list[np.ndarray], rgb: bool = False) -> MaskRatioHint:
    """The noise check on a few planes of an image (the median of their scores)."""
    scores = [noise_correlation(plane, rgb) for plane in planes]
    score = float(np.median(scores)) if scores else 0.0
    return MaskRatioHint(score, score > CORRELATED_NOISE_THRESHOLD)
