"""Preview on the view: the part of the current plane that is on screen, cropped, and the layer that shows it.

:func:`view_crop` finds, from napari's camera (centre, zoom) and the size of the canvas, which pixels of the
chosen layer's current plane are on screen, and takes at most :data:`MAX_SIDE` pixels a side of them around
the centre of what is visible (at least :data:`MIN_SIDE`, so that a view zoomed far in still gives the
network some context). :func:`crop_data` reads just those pixels (a lazy layer reads no more), and
:func:`add_preview_layer` adds the result as ``"<input> preview"``, replacing an earlier preview of the same
layer, placed over the crop: same scale, rotation and units as the input, translated to the crop's corner,
on the current plane only (a stack's preview has size 1 along its other axes).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from napari.layers import Image
from napari.utils.transforms import CompositeAffine

from .layers import add_output_layer, layer_data, unwrap

__all__ = ["MAX_SIDE", "MIN_SIDE", "ViewCrop", "add_preview_layer", "crop_data", "preview_title", "view_crop"]

#: The preview denoises at most this many pixels a side (the Fast preset: seconds rather than minutes on a CPU).
MAX_SIDE = 256
#: ... and at least this many (or the whole side of a smaller image), even when the view is zoomed far in.
MIN_SIDE = 64


@dataclass(frozen=True)
class ViewCrop:
    """A rectangle of one plane: ``plane`` indexes the axes before Y and X, then rows and columns from
    ``top``/``left``."""

    plane: tuple[int, ...]
    top: int
    left: int
    height: int
    width: int

    @property
    def index(self) -> tuple:
        return (*self.plane, slice(self.top, self.top + self.height), slice(self.left, self.left + self.width))

    @property
    def offset(self) -> np.ndarray:
        """The crop's first pixel in the layer's data coordinates."""
        return np.array([*self.plane, self.top, self.left], dtype=float)

    def describe(self) -> dict[str, Any]:
        """For the preview layer's metadata."""
        return {"plane": list(self.plane), "top": self.top, "left": self.left,
                "height": self.height, "width": self.width}


def preview_title(name: str) -> str:
    return f"{name} preview"


def _visible_range(low: float, high: float, size: int) -> tuple[int, int] | None:
    """The pixels ``first..last`` of an axis of ``size`` pixels that the data coordinates ``low..high`` cover
    (pixel ``i`` spans ``i - 0.5 .. i + 0.5``); None when none is."""
    first = max(int(np.floor(low + 0.5)), 0)
    last = min(int(np.ceil(high - 0.5)), size - 1)
    return (first, last) if first <= last else None


def _side_and_start(first: int, last: int, size: int) -> tuple[int, int]:
    """At most MAX_SIDE (at least MIN_SIDE) pixels around the middle of ``first..last``, inside ``0..size``."""
    side = min(max(last - first + 1, MIN_SIDE), MAX_SIDE, size)
    start = int(round((first + last + 1) / 2 - side / 2))
    return side, min(max(start, 0), size - side)


def _displayed_axes(viewer: Any, layer: Image) -> list[int]:
    """The layer's axes shown on screen; ValueError unless they are its last two (Y and X) in a 2-D view."""
    dims = viewer.dims
    if dims.ndisplay != 2:
        raise ValueError("the preview works in the 2-D view: switch napari's 3-D view off first")
    offset = dims.ndim - layer.ndim
    displayed = [axis - offset for axis in dims.displayed]
    if sorted(displayed) != [layer.ndim - 2, layer.ndim - 1]:
        raise ValueError("the view does not show the image's last two axes (Y and X); the preview needs them")
    return list(dims.displayed)


def _camera(viewer: Any) -> Any:
    """The viewer's camera (``viewer.scene.camera`` since napari 0.9, ``viewer.camera`` before)."""
    scene = getattr(viewer, "scene", None)
    return scene.camera if scene is not None else viewer.camera


def view_crop(viewer: Any, layer: Image) -> ViewCrop:
    """The part of ``layer``'s current plane on screen, at most MAX_SIDE a side; ValueError (a reason for the
    user) when none of it is, or when the view is 3-D or shows other axes."""
    displayed = _displayed_axes(viewer, layer)
    ndim = layer.ndim
    shape = layer_data(layer).shape[:ndim]
    point = np.asarray(viewer.dims.point, dtype=float)
    here = layer.world_to_data(point)
    plane = tuple(int(np.clip(round(here[axis]), 0, shape[axis] - 1)) for axis in range(ndim - 2))
    height, width = viewer.canvas.viewbox_size(viewer.layers)
    camera = _camera(viewer)
    zoom = camera.zoom
    centre = np.asarray(camera.center, dtype=float)[-2:]
    half = np.array([height, width], dtype=float) / (2 * zoom)
    corners = []
    for rows in (-1, 1):
        for columns in (-1, 1):
            world = point.copy()
            world[displayed] = centre + half * (rows, columns)
            corners.append(np.asarray(layer.world_to_data(world), dtype=float)[-2:])
    low, high = np.min(corners, axis=0), np.max(corners, axis=0)
    ranges = [_visible_range(low[i], high[i], shape[ndim - 2 + i]) for i in range(2)]
    if None in ranges:
        raise ValueError("the image is not on screen: pan or zoom onto the part to preview first")
    (height, top), (width, left) = (_side_and_start(*ranges[i], shape[ndim - 2 + i]) for i in range(2))
    return ViewCrop(plane, top, left, height, width)


def crop_data(layer: Image, crop: ViewCrop) -> np.ndarray:
    """The crop's pixels (colour last for an RGB layer), read from the full-resolution data, in memory."""
    return np.ascontiguousarray(np.asarray(layer_data(layer)[crop.index]))


def add_preview_layer(viewer: Any, source: Image, out: np.ndarray, name: str, *, crop: ViewCrop) -> Image:
    """Show ``out`` (the denoised crop) over the crop, as the layer "<name> preview", replacing an earlier one."""
    title = preview_title(name)
    for layer in list(viewer.layers):
        layer = unwrap(layer)
        if layer.name == title and isinstance(layer, Image) and "input_layer" in layer.metadata:
            viewer.layers.remove(layer)
    lead = source.ndim - 2
    data = out.reshape((1,) * lead + out.shape)  # a view: the run's writes into ``out`` show
    linear = CompositeAffine(scale=source.scale, rotate=source.rotate, shear=source.shear, ndim=source.ndim)
    translate = np.asarray(source.translate, dtype=float) + linear(crop.offset)
    return add_output_layer(viewer, source, data, name, title=title, translate=translate)
