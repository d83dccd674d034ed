"""napari-mpi: zero-shot denoising of microscopy images with MPI (Masked Pre-train then Iterative fill).

The engine (``denoise``, ``denoise_steps``, ``iterative_fill``) needs only numpy and torch;
the napari widget lives in ``napari_mpi._widget``. Every tuning knob is a field of :class:`FillConfig`.
"""

from __future__ import annotations

from ._version import __version__
from .api import (
    DenoisePlan,
    DenoiseProgress,
    DenoiseWarning,
    check_noise,
    denoise,
    denoise_plane,
    denoise_steps,
    drain,
    prepare,
)
from .engine.fill import iterative_fill
from .settings import DEFAULT_PRESET, PRESETS, FillConfig, Preset, config_for

__all__ = [
    "DEFAULT_PRESET",
    "PRESETS",
    "DenoisePlan",
    "DenoiseProgress",
    "DenoiseWarning",
    "FillConfig",
    "Preset",
    "__version__",
    "check_noise",
    "config_for",
    "denoise",
    "denoise_plane",
    "denoise_steps",
    "drain",
    "iterative_fill",
    "prepare",
]
