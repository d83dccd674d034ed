"""An input file read plane by plane that names the file and the plane when something is wrong with it.

A damaged plane of a compressed TIFF or a corrupt Zarr chunk makes the decoder raise whatever it raises
(``zlib.error``, a numcodecs ``RuntimeError``, ...): :class:`CheckedSource` turns that into one ValueError
naming the file and the plane. A Zarr chunk that is not stored is read as the array's fill value, as
Zarr itself does (writers skip chunks that hold only the fill value), with one :class:`MissingChunkWarning`
the first time, so a chunk lost by a copy does not pass unnoticed. numpy and zarr only.
"""

from __future__ import annotations

import itertools
import math
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from .planes import PlaneLayout, plane_name

__all__ = ["CheckedSource", "MissingChunkWarning"]


class MissingChunkWarning(UserWarning):
    """A Zarr chunk that is not stored was read as the array's fill value."""


class CheckedSource:
    """Reads ``array`` (a zarr array, a TIFF page view, :class:`~napari_mpi.io.stores.MappedArray`) like the array
    itself, but a plane that cannot be decoded is a ValueError naming ``path`` and the plane."""

    def __init__(self, array: Any, path: Path, layout: PlaneLayout, axes: str):
        self.array, self.path, self.layout, self.axes = array, Path(path), layout, axes
        self.shape, self.dtype, self.ndim = tuple(array.shape), array.dtype, len(array.shape)
        self._chunk_files = _chunk_files(array)
        self._warned = False

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        data = np.asarray(self[tuple(slice(None) for _ in self.shape)])
        return data if dtype is None else data.astype(dtype)

    def __getitem__(self, index):
        try:
            data = self.array[index]
        except MemoryError:
            raise
        except Exception as exc:  # noqa: BLE001 (decoders raise anything: zlib.error, RuntimeError, ValueError...)
            detail = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise ValueError(f"cannot read {self._where(index)} of {self.path.name}: its data are damaged "
                             f"({detail}); repair or export the file again") from exc
        if self._chunk_files is not None and not self._warned:
            self._warn_if_missing(index)
        return data

    def _where(self, index) -> str:
        index = index if isinstance(index, tuple) else (index,)
        if len(index) == len(self.shape) and all(isinstance(index[a], (int, np.integer))
                                                 for a in self.layout.iter_axes):
            return plane_name(self.layout, index, self.axes)
        return "part of the image"

    def _warn_if_missing(self, index) -> None:
        root, grid, key = self._chunk_files
        missing = [coords for coords in _chunks_of(index, self.shape, grid) if not (root / key(coords)).exists()]
        if missing:
            self._warned = True
            fill = getattr(self.array, "fill_value", 0)
            warnings.warn(f"{self.path.name}: {len(missing)} chunk(s) of {self._where(index)} are not stored; "
                          f"read as the fill value {fill}, as Zarr reads chunks never written (a stack copied "
                          "in part? further ones are read the same way without a warning)", MissingChunkWarning,
                          stacklevel=3)


def _chunk_files(array: Any):
    """(folder, chunk grid, chunk coordinates -> key) for a zarr array in a folder on disk, else None."""
    try:
        import zarr
        from zarr.storage import LocalStore

        if not isinstance(array, zarr.Array) or not isinstance(array.store_path.store, LocalStore):
            return None
        root = Path(array.store_path.store.root) / array.store_path.path
        grid = tuple(getattr(array, "shards", None) or array.chunks)
        return root, grid, array.metadata.encode_chunk_key
    except (ImportError, AttributeError, TypeError):  # another zarr version or store: no check
        return None


def _chunks_of(index, shape: tuple[int, ...], grid: tuple[int, ...]):
    """Chunk coordinates an index of integers and slices touches."""
    index = index if isinstance(index, tuple) else (index,)
    index = index + (slice(None),) * (len(shape) - len(index))
    ranges = []
    for item, size, chunk in zip(index, shape, grid, strict=True):
        if isinstance(item, (int, np.integer)):
            ranges.append([int(item) % size // chunk])
        else:
            start, stop, _ = item.indices(size)
            ranges.append(range(start // chunk, max(start // chunk, math.ceil(stop / chunk))))
    return itertools.product(*ranges)
