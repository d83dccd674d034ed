"""Physical pixel sizes and units, read from OME-TIFF, ImageJ TIFF and OME-Zarr inputs and written back.

A :class:`Calibration` holds, per axis of an image, the size of one pixel step and its unit (names as
OME-Zarr and napari spell them: "micrometer", "second"; None where unknown). The helpers below make
the metadata each format wants: keyword arguments for ``tifffile.imwrite`` (OME-TIFF: PhysicalSize and
a MapAnnotation with the run's parameters; ImageJ: resolution, spacing, unit and the Info text) and
OME-NGFF axes and scale. tifffile writes the XML and the ImageJ header: nothing is written by hand here.
numpy and tifffile only.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "Calibration", "axis_letters", "unit_name", "read_calibration", "ome_tiff_metadata", "imagej_options",
    "IMAGEJ_ORDER", "run_text", "ome_zarr_axes",
]

#: canonical unit -> (OME symbol, ImageJ spelling)
UNITS = {
    "angstrom": ("Å", "angstrom"), "nanometer": ("nm", "nm"), "micrometer": ("µm", "micron"),
    "millimeter": ("mm", "mm"), "centimeter": ("cm", "cm"), "meter": ("m", "m"),
    "millisecond": ("ms", "ms"), "second": ("s", "sec"), "minute": ("min", "min"), "hour": ("h", "hour"),
}
_ALIASES = {
    "å": "angstrom", "a": "angstrom", "nm": "nanometer", "nanometre": "nanometer",
    "µm": "micrometer", "μm": "micrometer", "um": "micrometer", "micron": "micrometer", "microns": "micrometer",
    "micrometre": "micrometer", "\\u00b5m": "micrometer", "mm": "millimeter", "millimetre": "millimeter",
    "cm": "centimeter", "centimetre": "centimeter", "m": "meter", "metre": "meter",
    "ms": "millisecond", "msec": "millisecond", "s": "second", "sec": "second", "seconds": "second",
    "min": "minute", "minutes": "minute", "h": "hour", "hr": "hour", "hours": "hour",
}
#: axes that carry a physical size: space, and time
SPATIAL = "XYZ"
#: ImageJ hyperstacks: axes in this order (a subset), pixels of these types
IMAGEJ_ORDER = "TZCYXS"
IMAGEJ_TYPES = (np.dtype(np.uint8), np.dtype(np.uint16), np.dtype(np.float32))


def axis_letters(names: list) -> str:
    """OME / xarray axis names ("t", "c", "z", "y", "x", "channel", ...) as one letter each."""
    known = {"t": "T", "time": "T", "c": "C", "channel": "C", "z": "Z", "y": "Y", "x": "X"}
    letters = [known.get(str(n).lower(), "") for n in names]
    spare = iter(letter for letter in "QIJKLMNOPR" if letter not in letters)
    return "".join(letter or next(spare) for letter in letters)


def unit_name(text: Any) -> str | None:
    """A unit as OME-Zarr and napari name it ("micrometer"), from any common spelling; None for "pixel",
    nothing or a unit not known here."""
    if text is None:
        return None
    key = str(text).strip()
    if key.lower() in UNITS:
        return key.lower()
    return _ALIASES.get(key.lower(), _ALIASES.get(key))


@dataclass(frozen=True)
class Calibration:
    """Per axis (in the image's axis order): the physical size of one pixel step and its unit, None if unknown."""

    sizes: tuple[float | None, ...]
    units: tuple[str | None, ...]

    @classmethod
    def unknown(cls, ndim: int) -> Calibration:
        return cls((None,) * ndim, (None,) * ndim)

    @classmethod
    def from_letters(cls, axes: str, known: dict[str, tuple[float, str | None]]) -> Calibration:
        """From sizes known by axis letter ({"X": (0.108, "micrometer")}) for an image with ``axes``."""
        sizes = tuple(known[a][0] if a in known else None for a in axes)
        return cls(sizes, tuple(known[a][1] if a in known else None for a in axes))

    @property
    def known(self) -> bool:
        return any(s is not None for s in self.sizes)

    def of(self, axes: str, letter: str) -> tuple[float | None, str | None]:
        if letter not in axes or len(axes) != len(self.sizes):
            return None, None
        return self.sizes[axes.index(letter)], self.units[axes.index(letter)]

    def describe(self, axes: str) -> dict[str, dict[str, Any]]:
        """{"Z": {"size": 0.5, "unit": "micrometer"}, ...} for the axes with a known size (for JSON metadata)."""
        return {a: {"size": s, "unit": u} for a, s, u in zip(axes, self.sizes, self.units, strict=True)
                if s is not None}


def _positive(value: Any) -> float | None:
    try:
        value = float(value)
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) and value > 0 else None


# ---------------------------------------------------------------------------------------------- reading


def read_calibration(path: Path) -> dict[str, tuple[float, str | None]]:
    """Pixel sizes by axis letter (as :func:`napari_mpi.io.stores.open_image` names the axes) from an OME-TIFF,
    an ImageJ TIFF or an OME-Zarr image; {} where the file says nothing (or cannot be read: the image reader
    reports that)."""
    path = Path(path)
    try:
        if path.is_dir():
            return _zarr_calibration(path)
        if path.suffix.lower() in (".tif", ".tiff"):
            return _tiff_calibration(path)
    except (OSError, ValueError, KeyError, TypeError, IndexError, AttributeError):
        return {}
    return {}


def _tiff_calibration(path: Path) -> dict[str, tuple[float, str | None]]:
    import tifffile

    with tifffile.TiffFile(path) as tif:
        if tif.is_ome and tif.ome_metadata:
            return _ome_calibration(tifffile.xml2dict(tif.ome_metadata))
        if tif.is_imagej:
            return _imagej_calibration(tif.imagej_metadata or {}, tif.pages.first)
        shaped = tif.shaped_metadata[0] if tif.shaped_metadata else {}
        return {a: (float(v["size"]), unit_name(v.get("unit"))) for a, v in shaped.get("pixel_sizes", {}).items()}


def _ome_calibration(ome: dict) -> dict[str, tuple[float, str | None]]:
    image = ome["OME"]["Image"]
    pixels = (image[0] if isinstance(image, list) else image)["Pixels"]
    found: dict[str, tuple[float, str | None]] = {}
    for letter in SPATIAL:
        size = _positive(pixels.get(f"PhysicalSize{letter}"))
        if size is not None:
            found[letter] = (size, unit_name(pixels.get(f"PhysicalSize{letter}Unit", "µm")))
    step = _positive(pixels.get("TimeIncrement"))
    if step is not None:
        found["T"] = (step, unit_name(pixels.get("TimeIncrementUnit", "s")))
    return found


def _imagej_calibration(meta: dict, page) -> dict[str, tuple[float, str | None]]:
    unit = unit_name(meta.get("unit"))
    found: dict[str, tuple[float, str | None]] = {}
    xres, yres = page.resolution if page is not None else (1.0, 1.0)
    if unit is not None or (xres, yres) != (1.0, 1.0):
        for letter, res in (("X", xres), ("Y", yres)):
            size = _positive(1.0 / res) if res else None
            if size is not None:
                found[letter] = (size, unit_name(meta.get(f"{letter.lower()}unit", unit)) or unit)
    spacing = _positive(meta.get("spacing"))
    if spacing is not None:
        found["Z"] = (spacing, unit_name(meta.get("zunit", unit)) or unit)
    interval = _positive(meta.get("finterval"))
    if interval is not None:
        found["T"] = (interval, unit_name(meta.get("tunit", "sec")) or "second")
    return found


def _zarr_calibration(path: Path) -> dict[str, tuple[float, str | None]]:
    import zarr

    node = zarr.open(str(path), mode="r")
    attrs = dict(node.attrs)
    multiscales = attrs.get("multiscales") or attrs.get("ome", {}).get("multiscales")
    if not multiscales:
        return {}
    image = multiscales[0]
    axes = image.get("axes", [])
    names = [a["name"] if isinstance(a, dict) else a for a in axes]
    scale = [1.0] * len(names)
    transforms = list(image["datasets"][0].get("coordinateTransformations", []))
    transforms += list(image.get("coordinateTransformations", []))  # applied after the dataset's own
    for transform in transforms:
        if transform.get("type") == "scale":
            scale = [a * float(b) for a, b in zip(scale, transform["scale"], strict=True)]
    units = [unit_name(a.get("unit")) if isinstance(a, dict) else None for a in axes]
    return {letter: (s, u) for letter, s, u in zip(axis_letters(names), scale, units, strict=True)
            if _positive(s) is not None and (u is not None or s != 1.0)}


# ---------------------------------------------------------------------------------------------- writing


def run_text(run: dict[str, Any]) -> dict[str, str]:
    """The run's parameters as text by name (nested values as JSON), for OME annotations and ImageJ Info."""
    return {str(k): v if isinstance(v, str) else json.dumps(v) for k, v in run.items()}


def ome_tiff_metadata(axes: str, calibration: Calibration, run: dict[str, Any] | None,
                      extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """tifffile's ``metadata=`` for an OME-TIFF: axes, PhysicalSize per spatial axis, TimeIncrement, and the run's
    parameters (with ``extra``, e.g. a napari layer's state) as a MapAnnotation in the "napari-mpi" namespace."""
    metadata: dict[str, Any] = {"axes": axes}
    for letter in SPATIAL:
        size, unit = calibration.of(axes, letter)
        if size is not None:
            metadata[f"PhysicalSize{letter}"] = size
            metadata[f"PhysicalSize{letter}Unit"] = UNITS[unit][0] if unit in UNITS else "pixel"
    step, unit = calibration.of(axes, "T")
    if step is not None and unit in UNITS:
        metadata.update(TimeIncrement=step, TimeIncrementUnit=UNITS[unit][0])
    values = {**run_text(run or {}), **run_text(extra or {})}
    if values:
        metadata["MapAnnotation"] = {"Namespace": "napari-mpi", "Value": values}
    return metadata


def imagej_options(axes: str, calibration: Calibration, run: dict[str, Any] | None) -> dict[str, Any]:
    """tifffile's keyword arguments for an ImageJ hyperstack with ``axes`` (in ImageJ order): resolution (pixels
    per unit), spacing, unit, frame interval, and the run's parameters in the Info text ("key = value" lines)."""
    metadata: dict[str, Any] = {"axes": axes}
    options: dict[str, Any] = {"imagej": True, "metadata": metadata}
    x, x_unit = calibration.of(axes, "X")
    y, _ = calibration.of(axes, "Y")
    if x is not None or y is not None:
        options["resolution"] = (1.0 / (x or y), 1.0 / (y or x))
    z, z_unit = calibration.of(axes, "Z")
    unit = x_unit or z_unit
    if unit in UNITS:
        metadata["unit"] = UNITS[unit][1]
    if z is not None:
        metadata["spacing"] = z
    t, t_unit = calibration.of(axes, "T")
    if t is not None:
        metadata["finterval"] = t * {"millisecond": 1e-3, "minute": 60.0, "hour": 3600.0}.get(t_unit or "", 1.0)
    if run:
        metadata["Info"] = "\n".join(f"napari-mpi.{k} = {v}" for k, v in run_text(run).items())
    return options


def ome_zarr_axes(letters: str, calibration: Calibration, order: list[int]):
    """OME-NGFF 0.4 axes (with units) and the scale of level 0, in the OME-Zarr's axis order (``order``: the source
    axis of each)."""
    types = {"T": "time", "C": "channel", "Z": "space", "Y": "space", "X": "space"}
    axes, scale = [], []
    for letter, source in zip(letters, order, strict=True):
        size, unit = calibration.sizes[source], calibration.units[source]
        entry = {"name": letter.lower(), "type": types[letter]}
        if unit is not None and letter != "C":
            entry["unit"] = unit
        axes.append(entry)
        scale.append(float(size) if size is not None and letter != "C" else 1.0)
    return axes, scale
