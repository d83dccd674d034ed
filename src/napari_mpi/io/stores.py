"""Plane-by-plane file access for stacks bigger than memory: TIFF, Zarr and OME-Zarr stores.

Reading: an uncompressed TIFF is read one block at a time (:class:`~napari_mpi.io.arrays.MappedArray`); a
compressed TIFF goes through tifffile's zarr view (one page decoded at a time); Zarr arrays and OME-Zarr images
through zarr. Writing: an uncompressed TIFF created empty at full size and filled plane by plane (again through
:class:`MappedArray`; the OME-TIFF and ImageJ flavours are :mod:`napari_mpi.io.tiff_output`), or a Zarr /
OME-Zarr array with one chunk per plane, with the pixel sizes of :mod:`napari_mpi.io.calibration`. Either way
only the plane in hand is in memory. The resumable batch output that writes into these stores is
:mod:`napari_mpi.io.batch_output`. numpy, tifffile and zarr only: no torch, no Qt.
"""

from __future__ import annotations

import logging
import os
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import numpy as np

from .arrays import MappedArray, Transposed, create_tiff
from .calibration import Calibration, axis_letters, ome_zarr_axes
from .planes import PlaneLayout
from .tiff_output import add_tiff_run_metadata, create_tiff_output, open_tiff_output

__all__ = [
    "MappedArray",  # napari_mpi.io.arrays, kept here beside create_output
    "add_run_metadata",
    "open_image",
    "unique_axes",
    "create_tiff",
    "output_kind",
    "output_dtype",
    "ome_axes_order",
    "convert",
    "create_output",
    "open_output",
    "plane_chunk",
]

#: Readers raise many exception types on bad files; all of them mean "cannot read this file".
READ_ERRORS = (OSError, ValueError, IndexError, KeyError, SyntaxError, RuntimeError, TypeError)
#: OME-NGFF 0.4: at most 5 axes, ordered time, channel, then space (z, y, x).
OME_ORDER = "TCZYX"
#: every plane's chunk is written, even one that holds only the fill value: a chunk missing from an output
#: then always means a lost one (readers warn about it, napari_mpi.io.checked)
WRITE_EVERY_CHUNK = {"write_empty_chunks": True}
#: output kinds written as TIFF
TIFF_KINDS = ("tiff", "ome-tiff")


# ---------------------------------------------------------------------------------------------- reading


def open_image(path: str | os.PathLike, stack: ExitStack) -> tuple[Any, str]:
    """Open an image lazily where the format allows; return (array-like, axes found or "").

    TIFF: read block by block when uncompressed, else a zarr view of its pages (files stay open in ``stack``);
    a directory: a Zarr array or group, or an OME-Zarr image (its first, full-resolution level); other
    formats (PNG, ...) are read whole. ValueError with a one-line reason for anything unreadable.
    """
    path = Path(path)
    if not path.exists():
        raise ValueError(f"input file not found: {path}")
    if path.is_dir():
        return _open_zarr(path)
    logging.getLogger("tifffile").setLevel(logging.CRITICAL)  # we report unreadable files ourselves, in one line
    try:
        if path.suffix.lower() in (".tif", ".tiff"):
            return _open_tiff(path, stack)
        from skimage.io import imread

        data = np.asarray(imread(path))
    except _Damaged as exc:
        raise ValueError(f"cannot read {path}: {exc}") from exc
    except READ_ERRORS as exc:
        raise ValueError(f"cannot read {path}: not a valid image file ({exc.__class__.__name__}: {exc})") from exc
    found = "YXS" if data.ndim == 3 and data.shape[-1] in (3, 4) else "YX"[-data.ndim:] if data.ndim <= 2 else ""
    return data, found


class _Damaged(ValueError):
    """A file that opens but is cut off or damaged (the message says how)."""


class _Errors(logging.Handler):
    """Collects tifffile's ERROR records: it logs damage (a cut-off stack, a bad page offset) and then
    falls back to whatever it can still read, e.g. the first page of a truncated ImageJ stack."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def _open_tiff(path: Path, stack: ExitStack) -> tuple[Any, str]:
    import tifffile

    errors = _Errors()
    log = logging.getLogger("tifffile")
    level, propagate = log.level, log.propagate
    log.setLevel(logging.ERROR)  # hear tifffile's errors here, and only here (not on stderr)
    log.propagate = False
    log.addHandler(errors)
    try:
        tif = stack.enter_context(tifffile.TiffFile(path))
        series = tif.series[0].levels[0]
        axes = series.axes
        shape = series.shape
    finally:
        log.removeHandler(errors)
        log.setLevel(level)
        log.propagate = propagate
    if 0 in tuple(shape):
        raise _Damaged(f"it holds no image data (shape {tuple(shape)}); choose a file with at least one plane")
    if errors.messages:  # a damaged file: refuse it rather than denoise the part tifffile salvaged
        reason = errors.messages[0].split("> ", 1)[-1]
        raise _Damaged(f"the file is truncated or damaged: {reason}")
    held = int(np.prod([n for n, a in zip(shape, axes, strict=False) if a not in "YXS"], dtype=np.int64))
    if tif.is_imagej and int((tif.imagej_metadata or {}).get("images", 1)) > held:
        raise _Damaged("the file is truncated: its ImageJ header announces more images than it holds")
    axes = unique_axes(axes)
    if series.dataoffset is not None and series.dtype is not None:
        dtype = np.dtype(tif.byteorder + series.dtype.char)
        size = path.stat().st_size
        needed = series.dataoffset + int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
        if size < needed:
            raise _Damaged(f"the file is truncated: {size} bytes, but its image data need {needed}")
        return MappedArray(path, series.dataoffset, shape, dtype), axes
    try:
        import zarr

        return zarr.open_array(series.aszarr(), mode="r"), axes
    except ImportError:  # zarr is a dependency, but keep a plain install able to read small files
        return series.asarray(), axes


def unique_axes(axes: str) -> str:
    """tifffile names every unknown axis Q (a 5-D TIFF without metadata is "QQQYX"): give each its own
    letter, so the axes string stays valid; they are iterated plane by plane like any other axis."""
    if axes.count("Q") < 2:
        return axes
    spare = iter(letter for letter in "QIJKLMNOPRUVW" if letter not in axes.replace("Q", ""))
    return "".join(next(spare) if a == "Q" else a for a in axes)


def _is_zarr(path: Path) -> bool:
    return any((path / name).is_file() for name in (".zarray", ".zgroup", "zarr.json"))


def _open_zarr(path: Path) -> tuple[Any, str]:
    """A Zarr array, a group holding one array, or an OME-Zarr image (level 0): (array, axes or "")."""
    if not _is_zarr(path):
        raise ValueError(f"input {path} is a folder but not a Zarr store (no .zarray, .zgroup or zarr.json)")
    import zarr

    try:
        node = zarr.open(str(path), mode="r")
        if isinstance(node, zarr.Array):
            return node, _axes_attribute(dict(node.attrs))
        attrs = dict(node.attrs)
        multiscales = attrs.get("multiscales") or attrs.get("ome", {}).get("multiscales")
        if multiscales:
            image = multiscales[0]
            array = node[image["datasets"][0]["path"]]
            return array, axis_letters([a["name"] if isinstance(a, dict) else a for a in image.get("axes", [])])
        arrays = list(node.array_keys())
    except READ_ERRORS as exc:
        raise ValueError(f"cannot read {path}: not a valid Zarr store ({exc.__class__.__name__}: {exc})") from exc
    if len(arrays) != 1:
        raise ValueError(
            f"Zarr group {path} holds {len(arrays)} arrays and no OME-Zarr metadata; give the array's folder"
        )
    array = node[arrays[0]]
    return array, _axes_attribute(dict(array.attrs))


def _axes_attribute(attrs: dict) -> str:
    """Axes recorded by napari-mpi ("axes") or xarray ("_ARRAY_DIMENSIONS")."""
    if isinstance(attrs.get("axes"), str):
        return attrs["axes"].upper()
    names = attrs.get("_ARRAY_DIMENSIONS")
    return axis_letters(names) if isinstance(names, list) else ""


# ---------------------------------------------------------------------------------------------- writing


def output_kind(path: str | os.PathLike) -> str:
    """"tiff", "ome-tiff", "zarr", "ome-zarr" or "png", from the output's name; ValueError otherwise."""
    name = Path(path).name.lower()
    if name.endswith((".ome.tif", ".ome.tiff")):
        return "ome-tiff"
    if name.endswith((".tif", ".tiff")):
        return "tiff"
    if name.endswith(".ome.zarr"):
        return "ome-zarr"
    if name.endswith(".zarr"):
        return "zarr"
    if name.endswith(".png"):
        return "png"
    raise ValueError(f"output must end in .tif, .ome.tif, .zarr, .ome.zarr or .png, got {Path(path).name}")


def output_dtype(source: np.dtype, kind: str, keep_dtype: bool) -> np.dtype:
    """float32, or with ``keep_dtype`` (and always for PNG) the input's integer type."""
    source = np.dtype(source)
    png = kind == "png"
    if not (png or keep_dtype):
        return np.dtype(np.float32)
    dtype = source if source.kind in "ui" else np.dtype(np.uint16 if png else np.float32)
    return np.dtype(np.uint16) if png and dtype.itemsize > 2 else dtype


def convert(plane: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """A finished float32 plane in the output's type: integers rounded and clipped to their range."""
    if dtype.kind in "ui":
        info = np.iinfo(dtype)
        return np.clip(np.rint(plane), info.min, info.max).astype(dtype)
    return np.asarray(plane, dtype=dtype)


def ome_axes_order(axes: str) -> list[int]:
    """Source axis for each OME-Zarr axis: OME-NGFF 0.4 wants (t, c, z, y, x) order; RGB samples (S) become c."""
    letters = axes.replace("S", "C") if "C" not in axes else axes
    if "S" in letters or any(a not in OME_ORDER for a in letters):
        raise ValueError(f"OME-Zarr holds axes T, C, Z, Y, X only (RGB counts as C), not {axes}; write .zarr or .tif")
    return sorted(range(len(letters)), key=lambda i: OME_ORDER.index(letters[i]))


def _plane_chunks(shape: tuple[int, ...], layout: PlaneLayout, order: list[int]) -> tuple[int, ...]:
    """One chunk per plane: 1 along the iterated axes, the whole extent along the others."""
    return tuple(1 if a in layout.iter_axes else shape[a] for a in order)


def _create_zarr(path: Path, kind: str, layout: PlaneLayout, dtype: np.dtype, axes: str, attrs: dict,
                 calibration: Calibration):
    import zarr

    order = ome_axes_order(axes) if kind == "ome-zarr" else list(range(len(axes)))
    shape = tuple(layout.shape[a] for a in order)
    options = dict(shape=shape, chunks=_plane_chunks(layout.shape, layout, order), dtype=dtype, fill_value=0,
                   chunk_key_encoding={"name": "v2", "separator": "/"}, config=WRITE_EVERY_CHUNK)
    if kind == "zarr":
        attributes = {"axes": axes, "pixel_sizes": calibration.describe(axes), "napari_mpi": attrs}
        return zarr.create_array(str(path), zarr_format=2, attributes=attributes, **options)
    letters = "".join(axes[a] for a in order).replace("S", "C")
    ome_axes, scale = ome_zarr_axes(letters, calibration, order)
    root = zarr.open_group(str(path), mode="w", zarr_format=2)
    root.attrs.update({
        "multiscales": [{
            "version": "0.4",
            "name": path.name.lstrip(".").split(".")[0],
            "axes": ome_axes,
            "datasets": [{"path": "0", "coordinateTransformations": [{"type": "scale", "scale": scale}]}],
            "metadata": {"method": "napari-mpi denoise", "napari_mpi": attrs},
        }],
        "napari_mpi": attrs,
    })
    return Transposed(root.create_array("0", **options), order)


def _open_zarr_output(path: Path, kind: str, layout: PlaneLayout, dtype: np.dtype, axes: str):
    import zarr

    order = ome_axes_order(axes) if kind == "ome-zarr" else list(range(len(axes)))
    try:
        array = zarr.open_array(str(path / "0") if kind == "ome-zarr" else str(path), mode="r+",
                                config=WRITE_EVERY_CHUNK)
    except READ_ERRORS as exc:
        raise ValueError(f"{path} is not the unfinished output of this run ({exc.__class__.__name__})") from exc
    if tuple(array.shape) != tuple(layout.shape[a] for a in order) or array.dtype != dtype:
        raise ValueError(f"{path} is not the unfinished output of this run")
    return Transposed(array, order) if kind == "ome-zarr" else array


def create_output(path: Path, kind: str, layout: PlaneLayout, dtype: np.dtype, axes: str, attrs: dict,
                  calibration: Calibration | None = None, name: str | None = None):
    """An empty output store of ``kind`` ("tiff", "ome-tiff", "zarr" or "ome-zarr") to write plane by plane, indexed
    in the source's axis order, with ``calibration`` (pixel sizes and units) and ``attrs`` (the run's parameters) in
    its metadata; ``name``: the output's name in messages."""
    calibration = calibration or Calibration.unknown(len(axes))
    if kind in TIFF_KINDS:
        return create_tiff_output(path, kind, layout, dtype, axes, calibration, attrs, name)
    return _create_zarr(path, kind, layout, dtype, axes, attrs, calibration)


def add_run_metadata(path: Path, kind: str, extra: dict) -> None:
    """Add ``extra`` (e.g. how each plane was filled) to the run's parameters in an output :func:`create_output` made,
    once its planes are written."""
    if kind in TIFF_KINDS:
        add_tiff_run_metadata(path, extra)
        return
    import zarr

    node = zarr.open_array(str(path), mode="r+") if kind == "zarr" else zarr.open_group(str(path), mode="r+")
    attrs = dict(node.attrs)
    attrs["napari_mpi"] = {**attrs.get("napari_mpi", {}), **extra}
    if kind == "ome-zarr":
        multiscales = attrs["multiscales"]
        multiscales[0]["metadata"]["napari_mpi"] = attrs["napari_mpi"]
    node.attrs.update(attrs)


def open_output(path: Path, kind: str, layout: PlaneLayout, dtype: np.dtype, axes: str):
    """The store :func:`create_output` made, opened again to write the planes still missing; ValueError
    when it is not the output of this run (another shape or type)."""
    if kind in TIFF_KINDS:
        return open_tiff_output(path, kind, layout, dtype, axes)
    return _open_zarr_output(path, kind, layout, dtype, axes)


def plane_chunk(store, root: Path, index: tuple) -> Path:
    """The chunk file of the plane at ``index`` (source axis order) in a Zarr store with one chunk per plane,
    key "i/j/0/0" under the array folder ``root``."""
    target_index = store.target_index(index) if isinstance(store, Transposed) else index
    key = [str(i) if isinstance(i, (int, np.integer)) else "0" for i in target_index]
    return root.joinpath(*key)
