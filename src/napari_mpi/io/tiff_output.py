"""The TIFF outputs of a batch run, written plane by plane with their calibration and the run's parameters.

``.ome.tif``: an OME-TIFF (PhysicalSize per axis, the run's parameters in a MapAnnotation). ``.tif``: an
ImageJ hyperstack (resolution, z spacing, unit, frame interval, the run's parameters in the Info text) when
ImageJ can hold the image (axes among T, Z, C, Y, X, S; 8-bit, 16-bit or float32 pixels; 8-bit RGB), its axes
put in ImageJ's order; otherwise a plain TIFF with the axes, pixel sizes and parameters in tifffile's JSON
description, and a warning. Each is created empty, uncompressed, and filled plane by plane through
:class:`~napari_mpi.io.arrays.MappedArray`. tifffile writes every header; numpy and tifffile only.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import numpy as np

from .arrays import MappedArray, Transposed
from .calibration import IMAGEJ_ORDER, IMAGEJ_TYPES, Calibration, imagej_options, ome_tiff_metadata, run_text
from .planes import PlaneLayout

__all__ = ["tiff_format", "create_tiff_output", "open_tiff_output", "add_tiff_run_metadata", "OME_TIFF_AXES"]

#: Axes an OME-TIFF names (S: RGB samples)
OME_TIFF_AXES = "TZCYXS"


def tiff_format(kind: str, axes: str, dtype: np.dtype) -> tuple[str, list[int], str]:
    """("ome", "imagej" or "plain"; the source axis of each axis in the file; why not ImageJ, or "")."""
    dtype = np.dtype(dtype)
    identity = list(range(len(axes)))
    if kind == "ome-tiff":
        other = [a for a in axes if a not in OME_TIFF_AXES]
        if other:
            raise ValueError(f"an OME-TIFF names axes T, Z, C, Y, X and S (RGB), and this image's axes are {axes}: "
                             f"name them with --axes (e.g. --axes {_suggest(axes)}) or write .tif")
        return "ome", identity, ""
    if any(a not in IMAGEJ_ORDER for a in axes):
        return "plain", identity, f"ImageJ names axes T, Z, C, Y, X only, and this image's axes are {axes}"
    if dtype not in IMAGEJ_TYPES or (axes.endswith("S") and dtype != np.uint8):
        kind_of = "RGB images of 8-bit" if axes.endswith("S") else "8-bit, 16-bit or float32"
        return "plain", identity, f"ImageJ holds {kind_of} pixels only, and this output is {dtype.name}"
    return "imagej", sorted(identity, key=lambda a: IMAGEJ_ORDER.index(axes[a])), ""


def _suggest(axes: str) -> str:
    spare = iter(a for a in "ZTC" if a not in axes)
    return "".join(a if a in OME_TIFF_AXES else next(spare, "Q") for a in axes)


def _reordered(calibration: Calibration, order: list[int]) -> Calibration:
    return Calibration(tuple(calibration.sizes[a] for a in order), tuple(calibration.units[a] for a in order))


def create_tiff_output(path: Path, kind: str, layout: PlaneLayout, dtype: np.dtype, axes: str,
                       calibration: Calibration | None = None, run: dict[str, Any] | None = None,
                       name: str | None = None):
    """An empty TIFF of ``kind`` ("tiff" or "ome-tiff") to fill plane by plane, indexed in the source's axis order;
    ``name``: the file's name in a warning (the final one, where ``path`` is a partial file)."""
    import tifffile

    dtype = np.dtype(dtype)
    calibration = calibration or Calibration.unknown(len(axes))
    flavour, order, why = tiff_format(kind, axes, dtype)
    target_axes = "".join(axes[a] for a in order)
    shape = tuple(layout.shape[a] for a in order)
    target_calibration = _reordered(calibration, order)
    if flavour == "ome":
        options: dict[str, Any] = {"ome": True, "metadata": ome_tiff_metadata(axes, calibration, run)}
    elif flavour == "imagej":
        options = imagej_options(target_axes, target_calibration, run)
    else:
        warnings.warn(f"{name or Path(path).name} is a plain TIFF, not an ImageJ "
                      f"hyperstack: {why}; its axes, pixel sizes and run parameters are in tifffile's metadata "
                      "(write .ome.tif or .zarr for other programs)", UserWarning, stacklevel=2)
        options = {"metadata": {"axes": axes, "pixel_sizes": calibration.describe(axes), "napari_mpi": run or {}}}
    photometric = "rgb" if axes.endswith("S") else "minisblack"
    try:
        offset, _ = tifffile.imwrite(path, data=None, shape=shape, dtype=dtype, photometric=photometric,
                                     returnoffset=True, **options)
    except tifffile.OmeXmlError as exc:
        raise ValueError(f"cannot write an OME-TIFF of this image ({exc}); write .tif or .zarr instead") from exc
    mapped = MappedArray(path, offset, shape, dtype, writable=True)
    return mapped if order == sorted(order) else Transposed(mapped, order)


def open_tiff_output(path: Path, kind: str, layout: PlaneLayout, dtype: np.dtype, axes: str):
    """The TIFF :func:`create_tiff_output` made, opened again to write the planes still missing; ValueError when it
    is not the output of this run."""
    import tifffile

    dtype = np.dtype(dtype)
    _, order, _ = tiff_format(kind, axes, dtype)
    shape = tuple(layout.shape[a] for a in order)
    with tifffile.TiffFile(path) as tif:
        series = tif.series[0]
        size = int(np.prod(series.shape, dtype=np.int64))
        if series.dataoffset is None or size != int(np.prod(shape, dtype=np.int64)) or series.dtype != dtype:
            raise ValueError(f"{path} is not the unfinished output of this run")
        mapped = MappedArray(path, series.dataoffset, shape, np.dtype(tif.byteorder + dtype.char), writable=True)
    return mapped if order == sorted(order) else Transposed(mapped, order)


def add_tiff_run_metadata(path: Path, extra: dict[str, Any]) -> None:
    """Add ``extra`` to the run's parameters in a TIFF :func:`create_tiff_output` made (after its planes are written):
    entries of the OME MapAnnotation, lines of the ImageJ Info text, or keys of tifffile's JSON description. The tags
    are rewritten in place (tifffile moves a longer value to the end of the file); the pixels are not touched."""
    import html
    import json

    import tifffile

    text = run_text(extra)
    with tifffile.TiffFile(path, mode="r+b") as tif:
        page = tif.pages[0]
        if tif.is_ome:
            entries = "".join(f'<M K="{html.escape(k)}">{html.escape(v)}</M>' for k, v in text.items())
            description = page.description
            at = description.find("</Value>", description.find('Namespace="napari-mpi"'))
            if at < 0:
                raise ValueError(f"{path} has no napari-mpi annotation to add to")
            # OME-XML is UTF-8 (units such as µm): written as bytes, which tifffile takes as they are
            page.tags["ImageDescription"].overwrite((description[:at] + entries + description[at:]).encode("utf-8"))
        elif tif.is_imagej:
            info = "\n".join([(page.tags.valueof(50839) or {}).get("Info", "")]
                             + [f"napari-mpi.{k} = {v}" for k, v in text.items()])
            for code, dtype, _, value, _ in tifffile.imagej_metadata_tag({"Info": info.strip()}, tif.byteorder):
                page.tags[code].overwrite(value, dtype=dtype)
        else:
            metadata = json.loads(page.description)
            metadata.setdefault("napari_mpi", {}).update(extra)
            page.tags["ImageDescription"].overwrite(json.dumps(metadata))
