"""napari's *Save Selected Layer(s)* as OME-TIFF through napari-mpi: the pixels and what napari knows about them.

The physical pixel size of each spatial axis (the layer's scale and units) goes where every OME reader
finds it (PhysicalSizeX/Y/Z, TimeIncrement); the layer's scale, translate, units, axis labels and name, and
its metadata (the parameters of the run that made a denoised layer), go in a MapAnnotation in the
"napari-mpi" namespace. tifffile writes the OME-XML. No Qt, no napari import: the writer gets plain data.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from .io.calibration import Calibration, ome_tiff_metadata, unit_name

__all__ = ["write_ome_tiff", "layer_axes"]

_LABELS = {"t": "T", "time": "T", "z": "Z", "depth": "Z", "c": "C", "channel": "C", "channels": "C",
           "y": "Y", "x": "X"}
#: the types an OME-TIFF holds
_OME_TYPES = ("int8", "int16", "int32", "uint8", "uint16", "uint32", "float32", "float64")


def layer_axes(ndim: int, rgb: bool, labels: Any = None) -> str:
    """OME axis letters for a layer: from its axis labels where they name T, Z, C, Y, X once each, else Y and X
    last (then S for RGB) and Z, T, C before them; ValueError beyond five axes."""
    spatial = ndim - 1 if rgb else ndim
    letters = [_LABELS.get(str(label).strip().lower(), "") for label in (labels or ())][:spatial]
    if len(letters) == spatial and all(letters) and len(set(letters)) == spatial and letters[-2:] == ["Y", "X"]:
        return "".join(letters) + ("S" if rgb else "")
    if spatial > 5:
        raise ValueError(f"an OME-TIFF holds at most 5 axes (T, Z, C, Y, X), and this layer has {spatial}; "
                         "save it as .tif or .npy instead")
    return "CTZYX"[5 - spatial:] + ("S" if rgb else "")


def _plain(value: Any) -> Any:
    """JSON for numpy numbers, arrays, tuples and pint units."""
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    return str(value)


def _calibration(axes: str, meta: dict[str, Any]) -> Calibration:
    ndim = len(axes)
    scale = list(meta.get("scale") or [1.0] * ndim)[-ndim:]
    units = [unit_name(u) for u in list(meta.get("units") or [None] * ndim)[-ndim:]]
    scale += [1.0] * (ndim - len(scale))  # an RGB layer's scale has no entry for the colour axis
    units += [None] * (ndim - len(units))
    sizes = tuple(float(s) if (u is not None or float(s) != 1.0) and a != "S" else None
                  for a, s, u in zip(axes, scale, units, strict=True))
    return Calibration(sizes, tuple(units))


def _layer_state(meta: dict[str, Any]) -> dict[str, str]:
    """The layer's geometry and name, and its own metadata, as annotation text."""
    state = {key: meta.get(key) for key in ("name", "scale", "translate", "units", "axis_labels") if key in meta}
    state["units"] = [str(u) for u in state.get("units") or []]
    layer = {"napari_layer": json.dumps(state, default=_plain)}
    own = meta.get("metadata") or {}
    return {**layer, **{str(k): v if isinstance(v, str) else json.dumps(v, default=_plain) for k, v in own.items()}}


def _pixels(data: Any) -> np.ndarray | Any:
    """The full-resolution level of a multiscale layer, in a type an OME-TIFF holds."""
    if isinstance(data, (list, tuple)):
        data = data[0]
    dtype = np.dtype(data.dtype)
    if dtype == np.bool_:
        return np.asarray(data, dtype=np.uint8)
    if dtype == np.float16:
        return np.asarray(data, dtype=np.float32)
    if dtype.name not in _OME_TYPES:
        raise ValueError(f"an OME-TIFF cannot hold {dtype.name} pixels; convert the layer (e.g. to float32) first")
    return data


def write_ome_tiff(path: str, data: Any, meta: dict[str, Any]) -> list[str]:
    """napari writer (one image layer): ``data`` and ``meta`` (the layer's state) to an OME-TIFF at ``path``,
    written plane by plane; returns the paths written."""
    import tifffile

    pixels = _pixels(data)
    rgb = bool(meta.get("rgb"))
    axes = layer_axes(len(pixels.shape), rgb, meta.get("axis_labels"))
    metadata = ome_tiff_metadata(axes, _calibration(axes, meta), None, _layer_state(meta))
    if meta.get("name"):
        metadata["Name"] = str(meta["name"])
    plane = 3 if rgb else 2
    lead = pixels.shape[:-plane]
    planes = (np.asarray(pixels[index]) for index in np.ndindex(*lead)) if lead else None
    target = Path(path)
    tmp = target.with_name(f".{target.name}.partial.ome.tif")
    try:
        tifffile.imwrite(tmp, np.asarray(pixels) if planes is None else planes, shape=tuple(pixels.shape),
                         dtype=pixels.dtype, ome=True, metadata=metadata, photometric="rgb" if rgb else "minisblack")
        tmp.replace(target)
    finally:
        tmp.unlink(missing_ok=True)
    return [str(target)]
