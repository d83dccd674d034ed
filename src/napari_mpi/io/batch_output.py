"""The resumable batch output: planes written one by one into a store, and the record that lets a killed run resume.

:class:`BatchOutput` writes into a partial output next to the target (a TIFF, Zarr or OME-Zarr store of
:mod:`napari_mpi.stores`), records each plane in a small progress file only once it is on disk
(:class:`PlaneWriter`, :class:`Progress`), and renames the partial output into place when every plane is
there. numpy and the standard library only: no torch, no Qt.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np

from .calibration import Calibration
from .planes import PlaneLayout, plane_name
from .stores import TIFF_KINDS, add_run_metadata, convert, create_output, open_output, plane_chunk

__all__ = ["PlaneWriter", "Progress", "BatchOutput"]


def _fsync(path: Path) -> None:
    """Push a file (or a folder's entries) to disk, where the system allows it. Missing files are fine
    (zarr skips all-zero chunks), and so are folders that cannot be opened (Windows)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:  # some file systems refuse fsync on folders
        pass
    finally:
        os.close(fd)


class PlaneWriter:
    """The sink a batch run writes into: converts each finished plane to the output type, writes it,
    makes it durable (fsync of the TIFF, or of the chunk file for Zarr), and only then records it in
    the progress file, so a plane the record calls finished is always completely on disk."""

    def __init__(self, target, layout: PlaneLayout, dtype: np.dtype, progress: Progress | None = None,
                 chunk_root: Path | None = None, name: str = "the output", axes: str | None = None):
        # the file's type; not ``dtype``, so that denoise_steps hands over float32 planes and this converts them
        # (rounded and clipped: with --keep-dtype the user asked for the input's type)
        self.file_dtype = np.dtype(dtype)
        self.target, self.layout = target, layout
        self.progress, self.chunk_root = progress, chunk_root
        self.shape = layout.shape
        self.name, self.axes = name, axes

    def plane_number(self, index: tuple) -> int:
        iter_shape = [self.layout.shape[a] for a in self.layout.iter_axes]
        position = [index[a] for a in self.layout.iter_axes]
        return int(np.ravel_multi_index(position, iter_shape)) if iter_shape else 0

    def __setitem__(self, index: tuple, plane: np.ndarray) -> None:
        try:
            self.target[index] = convert(plane, self.file_dtype)
            if self.chunk_root is not None:  # Zarr: one chunk per plane
                chunk = plane_chunk(self.target, self.chunk_root, index)
                _fsync(chunk)
                _fsync(chunk.parent)
            if self.progress is not None:
                self.progress.mark(self.plane_number(index))
        except OSError as exc:  # a full disk, a quota, a vanished network share
            resume = " and run again with --resume" if self.progress is not None and self.progress.done else ""
            raise OSError(f"cannot write {plane_name(self.layout, index, self.axes)} of {self.name}: "
                          f"{exc.strerror or exc}; free some space (or choose another disk){resume}") from exc


def _atomic_write_text(path: Path, text: str) -> None:
    """Write, fsync, rename: a reader (or a resumed run) sees the old file or the new one, never half of one."""
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    _fsync(path.parent)


def _ranges(numbers: set[int]) -> list[list[int]]:
    """{0, 1, 2, 5} -> [[0, 2], [5, 5]]: a compact record for runs of thousands of planes."""
    spans: list[list[int]] = []
    for n in sorted(numbers):
        if spans and n == spans[-1][1] + 1:
            spans[-1][1] = n
        else:
            spans.append([n, n])
    return spans


class Progress:
    """Which planes of an unfinished run are on disk, kept in a small JSON file next to the output.

    The file also holds a fingerprint of the input and the parameters, so ``--resume`` refuses to mix
    planes from a different input or different settings into one output. How each plane was filled goes in a
    second file beside it (``reports_path``), one JSON line appended per plane, so that a run of thousands of
    planes never rewrites a record that grows with them.
    """

    VERSION = 1

    def __init__(self, path: Path, fingerprint: dict, done: set[int] | None = None,
                 planes: dict[int, dict] | None = None):
        self.path, self.fingerprint, self.done = path, fingerprint, set(done or ())
        #: how each written plane was filled (``napari_mpi.chains.PlaneReport.as_dict``), by plane number
        self.planes = dict(planes or {})

    @staticmethod
    def reports_path(path: Path) -> Path:
        """The plane reports' file of the progress file ``path``."""
        return path.with_name(path.name.removesuffix(".json") + "-planes.jsonl")

    @staticmethod
    def _load_reports(path: Path) -> dict[int, dict]:
        """The recorded plane reports (a line cut short by a killed run is left out: that plane is reported
        as not recorded)."""
        planes: dict[int, dict] = {}
        try:
            lines = path.read_text().splitlines()
        except FileNotFoundError:
            return planes
        for line in lines:
            try:
                report = json.loads(line)
                planes[int(report["plane"])] = report
            except (ValueError, KeyError, TypeError):
                continue
        return planes

    @classmethod
    def load(cls, path: Path, fingerprint: dict) -> Progress | None:
        """The recorded run, or None when there is none; ValueError when it was a different run."""
        try:
            record = json.loads(path.read_text())
            done = {n for low, high in record["done"] for n in range(low, high + 1)}
            recorded = record["fingerprint"]
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise ValueError(
                f"cannot resume: the progress file {path} is unreadable ({exc}); rerun without --resume"
            ) from exc
        if record.get("version") != cls.VERSION or recorded != fingerprint:
            differ = sorted(k for k in set(recorded) | set(fingerprint) if recorded.get(k) != fingerprint.get(k))
            raise ValueError(f"cannot resume: the unfinished run used another input or other settings "
                             f"({', '.join(differ) or 'format'}); rerun without --resume to start over")
        return cls(path, fingerprint, done, cls._load_reports(cls.reports_path(path)))

    def save(self) -> None:
        _atomic_write_text(self.path, json.dumps({"version": self.VERSION, "fingerprint": self.fingerprint,
                                                  "done": _ranges(self.done)}))

    def start(self) -> None:
        """Save the record of a run that starts over: no planes, no plane reports."""
        self.reports_path(self.path).unlink(missing_ok=True)
        self.save()

    def remove(self) -> None:
        """Delete the record and its plane reports."""
        self.path.unlink(missing_ok=True)
        self.reports_path(self.path).unlink(missing_ok=True)

    def mark(self, number: int) -> None:
        self.done.add(number)
        self.save()

    def record(self, report: dict) -> None:
        """Keep how a written plane was filled (a dict with its "plane" number): one line appended and synced."""
        self.planes[int(report["plane"])] = report
        with open(self.reports_path(self.path), "a") as fh:
            fh.write(json.dumps(report) + "\n")
            fh.flush()
            os.fsync(fh.fileno())


class BatchOutput:
    """A resumable, plane-by-plane output: ``.NAME.partial.EXT`` and ``.NAME.napari-mpi-progress.json``
    next to the target while running; :meth:`finish` renames the partial output into place.

    With ``resume`` an earlier unfinished run of the same input and settings is continued (``done``
    lists its finished planes); without it, any earlier partial output is discarded.
    """

    def __init__(self, target: Path, kind: str, layout: PlaneLayout, dtype: np.dtype, axes: str,
                 fingerprint: dict, attrs: dict | None = None, resume: bool = False,
                 calibration: Calibration | None = None):
        if kind not in (*TIFF_KINDS, "zarr", "ome-zarr"):
            raise ValueError(f"plane-by-plane output is TIFF, OME-TIFF, Zarr or OME-Zarr, not {kind}")
        self.target, self.kind, self.layout, self.dtype, self.axes = target, kind, layout, np.dtype(dtype), axes
        self.calibration = calibration
        suffix = ".tif" if kind in TIFF_KINDS else ".zarr"
        self.partial = target.with_name(f".{target.name}.partial{suffix}")
        progress_path = target.with_name(f".{target.name}.napari-mpi-progress.json")
        fingerprint = {**fingerprint, "output_kind": kind, "output_dtype": self.dtype.str, "axes": axes,
                       "shape": list(layout.shape)}
        #: an unfinished earlier run that this one (without ``resume``) starts over
        self.restarted = not resume and progress_path.exists()
        progress = Progress.load(progress_path, fingerprint) if resume else None
        self.resumed = progress is not None and self.partial.exists()
        if self.resumed:
            assert progress is not None
            store = self._open()
        else:
            progress = Progress(progress_path, fingerprint)
            self._remove(self.partial)
            try:
                store = self._create(attrs or {})
            except OSError as exc:
                self._remove(self.partial)
                raise OSError(f"cannot create {target}: {exc.strerror or exc}; free some space (or choose another "
                              "disk)") from exc
        if self.resumed:
            progress.save()
        else:
            progress.start()
        self.progress = progress
        chunk_root = None if kind in TIFF_KINDS else (self.partial / "0" if kind == "ome-zarr" else self.partial)
        self.writer = PlaneWriter(store, layout, self.dtype, progress, chunk_root, name=str(target), axes=axes)

    @property
    def done(self) -> set[int]:
        """Planes already on disk (from an earlier run when resuming)."""
        return set(self.progress.done)

    def _create(self, attrs: dict):
        return create_output(self.partial, self.kind, self.layout, self.dtype, self.axes, attrs, self.calibration,
                             name=self.target.name)

    def _open(self):
        return open_output(self.partial, self.kind, self.layout, self.dtype, self.axes)

    @staticmethod
    def _remove(path: Path) -> None:
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink(missing_ok=True)

    def discard(self) -> None:
        """Remove the partial output and its record (a run that failed before finishing any plane)."""
        self._remove(self.partial)
        self.progress.remove()

    def record(self, report: dict) -> None:
        """Keep how a written plane was filled (``napari_mpi.chains.PlaneReport.as_dict``), for the metadata."""
        self.progress.record(report)

    def finish(self) -> list[dict]:
        """Every plane is written: add how each was filled to the output's metadata ("planes_filled"), move the output
        into place (replacing an older one), drop the record. Returns those reports, in plane order."""
        missing = self.layout.n_planes - len(self.progress.done)
        if missing:
            raise ValueError(f"{missing} plane(s) of {self.target} are not written yet")
        reports = [self.progress.planes[n] for n in sorted(self.progress.planes)]
        add_run_metadata(self.partial, self.kind, {"planes_filled": reports})
        if self.kind in TIFF_KINDS:
            os.replace(self.partial, self.target)  # atomic
        else:  # a folder cannot replace a non-empty folder atomically: move the old one aside first
            old = self.target.with_name(f".{self.target.name}.replaced-{os.getpid()}")
            if self.target.exists():
                os.replace(self.target, old)
            os.replace(self.partial, self.target)
            self._remove(old)
        _fsync(self.target.parent)
        self.progress.remove()
        return reports
