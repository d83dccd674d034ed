"""napari-mpi: zero-shot denoising of microscopy images with MPI (Masked Pre-train then Iterative fill).

The engine (``denoise``, ``denoise_steps``, ``iterative_fill``) needs only numpy and torch;
the napari widget lives in ``napari_mpi._widget``.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("napari-mpi")
except PackageNotFoundError:  # running from a source tree without an install
    __version__ = "0+unknown"

from .denoise import DenoisePlan, DenoiseProgress, check_noise, denoise, denoise_plane, denoise_steps, prepare
from .fill import PRESETS, FillConfig, iterative_fill

__all__ = [
    "__version__",
    "denoise",
    "denoise_steps",
    "denoise_plane",
    "prepare",
    "check_noise",
    "DenoisePlan",
    "DenoiseProgress",
    "FillConfig",
    "PRESETS",
    "iterative_fill",
]
