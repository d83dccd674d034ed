"""Every name the widget takes from the rest of napari_mpi, imported here and nowhere else.

The widget is a client of the engine's public names: it validates with ``prepare``, drives ``denoise_steps``
in a thread worker, asks ``check_noise`` for the mask-ratio hint, and reads each preset's values from the
config that ``config_for`` builds for it. The other widget modules import these names from this module only.
"""

from __future__ import annotations

from .. import (
    DEFAULT_PRESET,
    PRESETS,
    DenoisePlan,
    DenoiseProgress,
    DenoiseWarning,
    check_noise,
    config_for,
    denoise_steps,
    prepare,
)
from ..chains import summarise_reports
from ..engine.devices import DeviceMemoryError, available_devices, is_out_of_memory, memory_advice
from ..weights import default_start

__all__ = [
    "DEFAULT_PRESET",
    "PRESETS",
    "DenoisePlan",
    "DenoiseProgress",
    "DenoiseWarning",
    "DeviceMemoryError",
    "available_devices",
    "is_out_of_memory",
    "memory_advice",
    "check_noise",
    "config_for",
    "default_start",
    "denoise_steps",
    "prepare",
    "summarise_reports",
]
