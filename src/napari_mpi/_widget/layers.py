"""napari layers in and out: the array to denoise, the array the run writes into, the output layer with the
input's geometry and display settings, the viewer following the plane being denoised, and the metadata a
finished layer keeps."""

from __future__ import annotations

import math
import tempfile
from typing import Any

import numpy as np
from napari.layers import Image

__all__ = [
    "IN_MEMORY_OUTPUT_LIMIT",
    "add_output_layer",
    "axis_choices",
    "layer_label",
    "finished_metadata",
    "layer_data",
    "move_dims_to",
    "output_array",
    "unwrap",
]

#: Outputs bigger than this, or of a lazily loaded (dask, zarr) layer, go to a disk-backed array.
IN_MEMORY_OUTPUT_LIMIT = 1 << 30


def unwrap(obj: Any) -> Any:
    """The napari object behind a PublicOnlyProxy (for identity comparisons), or the object itself."""
    return getattr(obj, "__wrapped__", obj)


def layer_data(layer: Image) -> Any:
    """The array to denoise: the layer's data, or the full-resolution level of a multiscale layer."""
    return layer.data[0] if layer.multiscale else layer.data


def output_array(data: Any, shape: tuple[int, ...]) -> np.ndarray:
    """The float32 array the run writes into and the output layer shows.

    In memory for ordinary layers. A layer napari opened lazily (dask or zarr: often bigger than memory)
    or an output over IN_MEMORY_OUTPUT_LIMIT gets a memory-mapped anonymous temporary file instead, so that
    only the planes being written or viewed occupy memory; the file disappears with the layer.
    """
    if isinstance(data, np.ndarray) and math.prod(shape) * 4 <= IN_MEMORY_OUTPUT_LIMIT:
        return np.zeros(shape, dtype=np.float32)
    with tempfile.TemporaryFile(prefix="napari-mpi-") as backing:  # unnamed; the mapping keeps it alive
        return np.memmap(backing, dtype=np.float32, mode="w+", shape=shape)


def layer_label(layer: Image) -> str:
    """The layer chooser's name for a layer."""
    return layer.name + (" (RGB)" if layer.rgb else "")


def axis_choices(layer: Image | None) -> list[tuple[str, int | None]]:
    """"none", then the axes of ``layer`` that could hold channels (none for a single plane)."""
    choices: list[tuple[str, int | None]] = [("none", None)]
    if layer is None:
        return choices
    shape = layer_data(layer).shape
    if len(shape) > (3 if layer.rgb else 2):
        labels = list(layer.axis_labels)
        for axis in range(len(shape) - (1 if layer.rgb else 0)):
            label = labels[axis] if axis < len(labels) else str(axis)
            choices.append((f"axis {axis} ({label}, size {shape[axis]})", axis))
    return choices


def add_output_layer(viewer: Any, source: Image, out: np.ndarray, name: str, *, title: str | None = None,
                     translate: Any = None) -> Image:
    """Add ``out`` as the layer ``title`` (default ``"<name> denoised"``) with the input's geometry, units and
    display settings (``translate``: another translation than the input's, for an output that covers part of it)."""
    kwargs: dict[str, Any] = dict(
        name=title or f"{name} denoised",
        scale=source.scale,
        translate=source.translate if translate is None else translate,
        rotate=source.rotate,
        shear=source.shear,
        affine=source.affine,
        axis_labels=source.axis_labels,
        units=source.units,
        contrast_limits=source.contrast_limits,
        gamma=source.gamma,
        rgb=source.rgb,
        metadata={"napari_mpi": "running", "input_layer": name},
    )
    if not source.rgb:
        kwargs["colormap"] = source.colormap
    return unwrap(viewer.add_image(out, **kwargs))


def move_dims_to(viewer: Any, layer: Image, iter_axes: tuple[int, ...], index: tuple) -> None:
    """Set the viewer's sliders to the plane ``index`` of ``layer`` (``iter_axes``: the axes iterated over)."""
    position = [0.0] * layer.ndim
    for axis in iter_axes:
        position[axis] = float(index[axis])
    world = layer.data_to_world(position)
    dims = viewer.dims
    offset = dims.ndim - layer.ndim
    for axis in iter_axes:
        if offset + axis not in dims.displayed:
            dims.set_point(offset + axis, world[axis])


def _auto_decisions(reports: dict[int, Any]) -> dict[str, dict[str, Any]]:
    """What the Auto preset decided, plane by plane (AutoReports by plane number)."""
    return {
        str(plane): {"iterations": r.iteration, "stopped_early": r.stopped, "beta": r.beta,
                     "memorisation": round(r.memorisation, 4), "memorisation_rise": round(r.rise, 4)}
        for plane, r in sorted(reports.items())
    }


def finished_metadata(run: Any, latest: Any) -> dict[str, Any]:
    """The output layer's metadata after ``run`` (a Run) ended; ``latest``: its last progress event or None."""
    metadata = dict(run.plan.describe())
    metadata.update(run.settings)
    metadata.update(input_layer=run.name, status="complete" if run.state == "done" else "partial",
                    elapsed_s=round(run.elapsed, 2))
    if run.auto_reports:
        metadata["auto"] = _auto_decisions(run.auto_reports)
    if run.plan.reuse_network:
        metadata["planes_filled"] = run.planes_filled()
    if run.state != "done" and latest is not None:
        metadata["stopped_at"] = {"plane": latest.plane + 1, "planes": latest.n_planes,
                                  "iteration": latest.iteration, "iterations": latest.iterations}
    return metadata
