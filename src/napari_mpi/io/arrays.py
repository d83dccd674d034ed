"""Arrays whose planes live in files: :class:`MappedArray` (the raw image data of an uncompressed TIFF, read and
written one block at a time), :func:`create_tiff` (an empty TIFF to fill plane by plane) and :class:`Transposed`
(planes given in the source's axis order, written into an array whose axes are permuted). numpy and tifffile only.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

__all__ = ["MappedArray", "Transposed", "create_tiff"]


class MappedArray:
    """A C-ordered array stored raw in a file at a byte offset (the image data of an uncompressed TIFF).

    Every read or write reads or writes only the block that holds the requested plane, with plain file
    reads and writes, so memory stays about one plane whatever the file size; and a full disk or a file cut
    short is an ``OSError`` or ``ValueError`` (a memory map of the file would kill the process with SIGBUS).
    Writes are on disk (fsync) before ``__setitem__`` returns.
    """

    def __init__(self, path: str | os.PathLike, offset: int, shape: tuple[int, ...], dtype, writable: bool = False):
        self.path = Path(path)
        self.offset = int(offset)
        self.shape = tuple(int(s) for s in shape)
        self.dtype = np.dtype(dtype)
        self.writable = writable

    @property
    def ndim(self) -> int:
        return len(self.shape)

    @property
    def size(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64))

    @property
    def nbytes(self) -> int:
        return self.size * self.dtype.itemsize

    def __len__(self) -> int:
        return self.shape[0]

    def __repr__(self) -> str:
        return f"MappedArray({str(self.path)!r}, shape={self.shape}, dtype={self.dtype})"

    def _block(self, index) -> tuple[int, tuple[int, ...], tuple]:
        """Byte offset and shape of the contiguous block that the index's leading integers fix, and the
        rest of the index (to apply within the block)."""
        index = index if isinstance(index, tuple) else (index,)
        if any(item is Ellipsis or item is None for item in index):
            raise IndexError("MappedArray takes integers and slices only")
        lead: list[int] = []
        for item in index:
            if len(lead) == self.ndim or not isinstance(item, (int, np.integer)):
                break
            size = self.shape[len(lead)]
            if not -size <= item < size:
                raise IndexError(f"index {item} is out of bounds for axis {len(lead)} with size {size}")
            lead.append(int(item) % size)
        block_shape = self.shape[len(lead):]
        first = int(np.ravel_multi_index(lead, self.shape[: len(lead)])) if lead else 0
        per_block = int(np.prod(block_shape, dtype=np.int64))
        return self.offset + first * per_block * self.dtype.itemsize, block_shape, index[len(lead):]

    def _read(self, offset: int, shape: tuple[int, ...]) -> np.ndarray:
        count = int(np.prod(shape, dtype=np.int64)) * self.dtype.itemsize
        with open(self.path, "rb") as fh:
            fh.seek(offset)
            data = fh.read(count)
        if len(data) < count:
            raise ValueError(f"{self.path.name} is truncated: {count} bytes expected at offset {offset}, "
                             f"{len(data)} found")
        return np.frombuffer(data, dtype=self.dtype).reshape(shape)

    def __getitem__(self, index) -> np.ndarray:
        offset, shape, rest = self._block(index)
        if not shape:
            shape, rest = (1,), (0,)
        return np.array(self._read(offset, shape)[rest])  # a writable copy

    def __setitem__(self, index, value) -> None:
        if not self.writable:
            raise ValueError(f"{self.path} is open read-only")
        offset, shape, rest = self._block(index)
        if not shape:
            shape, rest = (1,), (0,)
        whole = all(isinstance(r, slice) and r == slice(None) for r in rest)
        block = np.empty(shape, self.dtype) if whole else np.array(self._read(offset, shape))
        block[rest] = value
        with open(self.path, "r+b") as fh:  # explicit writes: a full disk is an OSError (a mapping would SIGBUS)
            fh.seek(offset)
            fh.write(block.tobytes())
            fh.flush()
            os.fsync(fh.fileno())

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        data = self[()]
        return data if dtype is None else data.astype(dtype)


def create_tiff(
    path: str | os.PathLike, shape: tuple[int, ...], dtype=np.float32, axes: str | None = None
) -> MappedArray:
    """An empty, uncompressed TIFF of ``shape`` (BigTIFF when large) to fill plane by plane: a sink for
    :func:`napari_mpi.denoise` with stacks bigger than memory. ``axes`` (e.g. "ZYX", "YXS") goes in the metadata."""
    import tifffile

    photometric = "rgb" if axes and axes.endswith("S") else "minisblack"
    metadata = {"axes": axes} if axes else {}
    offset, _ = tifffile.imwrite(path, data=None, shape=tuple(shape), dtype=np.dtype(dtype), metadata=metadata,
                                 photometric=photometric, returnoffset=True)
    return MappedArray(path, offset, shape, dtype, writable=True)


class Transposed:
    """Writes planes given in source axis order into an array whose axes are permuted (for OME order)."""

    def __init__(self, target, order: list[int]):
        self.target, self.order = target, order
        self.shape = tuple(target.shape[order.index(a)] for a in range(len(order)))

    def target_index(self, index: tuple) -> tuple:
        return tuple(index[a] for a in self.order)

    def __setitem__(self, index: tuple, value: np.ndarray) -> None:
        sliced = [a for a in range(len(index)) if not isinstance(index[a], (int, np.integer))]
        in_target = [a for a in self.order if a in sliced]
        self.target[self.target_index(index)] = np.transpose(value, [sliced.index(a) for a in in_target])
