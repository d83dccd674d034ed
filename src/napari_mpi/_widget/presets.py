"""What each preset sets in the form (beta, iterations, learning rate) for what a run would start from.

The values come from the engine's own configs (``config_for``), so the form shows what ``prepare`` would use.
The start depends on the image (gray or colour) and the mask ratio: gray images at ordinary mask ratios start
from the shipped pre-trained network, which needs fewer iterations than a random start.
"""

from __future__ import annotations

import math

from .engine import DEFAULT_PRESET, PRESETS, config_for, default_start
from .form import CUSTOM

__all__ = [
    "DEFAULT_LABEL", "DEFAULT_MASK_RATIO", "DEFAULT_NAME", "NAMES", "PREVIEW_NAME", "is_auto", "label_for",
    "matching_label", "name_for", "preset_values", "start_for", "start_lr",
]

#: The engine's preset names, in the order the form lists them.
NAMES: tuple[str, ...] = tuple(PRESETS)
#: The preset a run uses when none is named (Custom runs it with the form's own beta and iterations).
DEFAULT_NAME = DEFAULT_PRESET
#: The label chosen when the widget opens.
DEFAULT_LABEL = DEFAULT_PRESET.capitalize()
#: The preset a preview runs (whatever the form's): the quickest.
PREVIEW_NAME = "fast" if "fast" in PRESETS else DEFAULT_PRESET
#: The mask ratio the form opens with: the default preset's.
DEFAULT_MASK_RATIO = config_for(DEFAULT_PRESET).mask_ratio


def label_for(name: str) -> str:
    return name.capitalize()


def name_for(label: str) -> str | None:
    """The engine's preset name for a label of the form; None for Custom."""
    name = label.lower()
    return name if name in PRESETS else None


def is_auto(label: str) -> bool:
    """The preset decides per plane itself (Auto): it picks beta and cannot reuse a network across planes."""
    name = name_for(label)
    return name is not None and config_for(name).selfsup


def start_for(rgb: bool, mask_ratio: float) -> str:
    """What a run would start from with the shipped weights: "pretrained", "gray_as_colour" or "random"."""
    return default_start(3 if rgb else 1, "channel" if rgb else "pixel", mask_ratio)


def preset_values(label: str, start: str) -> tuple[float, int] | None:
    """The (beta, iterations) a preset runs from ``start``; None for Custom."""
    name = name_for(label)
    if name is None:
        return None
    config = config_for(name, start=start)
    return config.beta, config.iterations


def start_lr(start: str) -> float:
    """The learning rate a run from ``start`` uses unless the user sets another."""
    return config_for(DEFAULT_PRESET, start=start).lr


def matching_label(beta: float, iterations: int, start: str) -> str:
    """The label of the fixed preset (not Auto) whose values from ``start`` these are, else Custom."""
    label = CUSTOM
    for name in NAMES:
        config = config_for(name, start=start)
        if not config.selfsup and math.isclose(beta, config.beta) and iterations == config.iterations:
            label = label_for(name)
    return label
