"""The widget's remembered settings: a small JSON file read when the widget opens and written when a value changes.

The file lies in the user's configuration folder, as Qt names it for every platform
(``QStandardPaths.GenericConfigLocation``): ``~/.config/napari-mpi/widget.json`` on Linux,
``~/Library/Preferences/napari-mpi/widget.json`` on macOS, ``%LOCALAPPDATA%\\napari-mpi\\widget.json`` on
Windows. The environment variable :data:`ENVIRONMENT` names another file (tests point it at a temporary one).
A missing, unreadable or damaged file means the defaults; a value of the wrong type is ignored on its own.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

from qtpy.QtCore import QStandardPaths

__all__ = ["DEFAULTS", "ENVIRONMENT", "load", "save", "settings_path"]

log = logging.getLogger(__name__)

#: Names another settings file than the one in the user's configuration folder.
ENVIRONMENT = "NAPARI_MPI_SETTINGS"
#: Bumped when a stored value changes meaning; a file of another version is ignored.
VERSION = 1

#: What the widget remembers, with the type each value must have (None: the value may be None too).
#: ``preset`` is a label of the form; ``beta`` and ``iterations`` matter for Custom and Auto only (a fixed
#: preset sets its own for the chosen layer); ``lr`` is None while it follows the chosen layer.
DEFAULTS: dict[str, Any] = {
    "preset": None,  # the engine's default preset (filled in by the widget)
    "mask_ratio": None,  # the default preset's
    "beta": None,
    "iterations": None,
    "lr": None,
    "seed": 0,
    "device": "auto",
    "threads": 0,
    "refine": True,
    "crop": True,
    "reuse_network": "auto",
    "follow": True,
    "advanced": False,
}

_TYPES: dict[str, tuple[type, ...]] = {
    "preset": (str,), "mask_ratio": (float, int), "beta": (float, int), "iterations": (int,), "lr": (float, int),
    "seed": (int,), "device": (str,), "threads": (int,), "refine": (bool,), "crop": (bool,),
    "reuse_network": (str, bool), "follow": (bool,), "advanced": (bool,),
}


def settings_path() -> Path:
    """The settings file: :data:`ENVIRONMENT` when set, else ``napari-mpi/widget.json`` in the configuration folder."""
    override = os.environ.get(ENVIRONMENT)
    if override:
        return Path(override)
    folder = QStandardPaths.writableLocation(QStandardPaths.StandardLocation.GenericConfigLocation)
    return Path(folder or Path.home() / ".config") / "napari-mpi" / "widget.json"


def _valid(name: str, value: Any) -> bool:
    if value is None:
        return DEFAULTS[name] is None
    types = _TYPES[name]
    if isinstance(value, bool) and bool not in types:
        return False  # JSON's true is no number here
    return isinstance(value, types)


def load() -> dict[str, Any]:
    """The remembered values (only those present and of the right type); empty when nothing is remembered."""
    path = settings_path()
    try:
        stored = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    except (OSError, ValueError):
        log.warning("napari-mpi: could not read the widget settings in %s; using the defaults", path)
        return {}
    if not isinstance(stored, dict) or stored.get("version") != VERSION or not isinstance(stored.get("values"), dict):
        return {}
    return {name: value for name, value in stored["values"].items() if name in DEFAULTS and _valid(name, value)}


def save(values: dict[str, Any]) -> None:
    """Remember ``values`` (names of :data:`DEFAULTS`); a failure to write is logged, never raised."""
    path = settings_path()
    text = json.dumps({"version": VERSION, "values": {k: v for k, v in values.items() if k in DEFAULTS}}, indent=1)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(path.name + ".partial")
        partial.write_text(text + "\n", encoding="utf-8")
        os.replace(partial, path)  # a crash mid-write leaves the previous file
    except OSError:
        log.warning("napari-mpi: could not save the widget settings in %s", path, exc_info=True)
