"""napari-mpi: zero-shot denoising of microscopy images with MPI (Masked Pre-train then Iterative fill).

The engine (``denoise``, ``denoise_steps``, ``iterative_fill``) needs only numpy and torch;
the napari widget lives in ``napari_mpi._widget``. Every tuning knob is a field of :class:`FillConfig`.

The public names load on first use, so that ``import napari_mpi`` (and the command line's start, its help,
and a Ctrl-C while it starts) does not wait for torch.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

from ._version import __version__

#: public name -> the module that defines it
_HOMES = {
    "DenoisePlan": ".plan",
    "DenoiseProgress": ".api",
    "DenoiseWarning": ".plan",
    "check_noise": ".noise_check",
    "denoise": ".api",
    "denoise_plane": ".api",
    "denoise_steps": ".api",
    "drain": ".api",
    "prepare": ".api",
    "PlaneReport": ".chains",
    "iterative_fill": ".engine.fill",
    "DEFAULT_PRESET": ".settings",
    "PRESETS": ".settings",
    "FillConfig": ".settings",
    "Preset": ".settings",
    "config_for": ".settings",
}

__all__ = [  # the names of _HOMES, and the version
    "DEFAULT_PRESET", "PRESETS", "DenoisePlan", "DenoiseProgress", "DenoiseWarning", "FillConfig", "PlaneReport",
    "Preset", "__version__", "check_noise", "config_for", "denoise", "denoise_plane", "denoise_steps", "drain",
    "iterative_fill", "prepare",
]

if TYPE_CHECKING:
    from .api import (
        DenoiseProgress,
        denoise,
        denoise_plane,
        denoise_steps,
        drain,
        prepare,
    )
    from .chains import PlaneReport
    from .engine.fill import iterative_fill
    from .noise_check import check_noise
    from .plan import DenoisePlan, DenoiseWarning
    from .settings import DEFAULT_PRESET, PRESETS, FillConfig, Preset, config_for


def __getattr__(name: str) -> Any:
    if name not in _HOMES:
        raise AttributeError(f"module 'napari_mpi' has no attribute {name!r}")
    value = getattr(import_module(_HOMES[name], __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_HOMES})
