"""PNG output: one 2-D gray or RGB(A) plane of 8- or 16-bit unsigned integers, written whole, with the run's
parameters in a text chunk. Anything a PNG cannot hold is refused before any work."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from .stores import convert, output_dtype

__all__ = ["check_png", "write_png"]


def check_png(data, axes: str) -> None:
    """A PNG holds one gray or RGB(A) plane of 8- or 16-bit unsigned integers: refuse anything else before any work."""
    dtype = np.dtype(data.dtype)
    rgb = axes.endswith("S") and data.ndim == 3
    if dtype.kind != "u" or dtype.itemsize > 2:
        kind = "float" if dtype.kind == "f" else "signed" if dtype.kind == "i" else f"{dtype.itemsize * 8}-bit"
        raise ValueError(f"a PNG holds 8- or 16-bit unsigned whole numbers, and this image is {kind} ({dtype.name}): "
                         "its values would be lost; write .tif, .ome.tif or .zarr instead")
    if data.ndim != 2 and not rgb:
        raise ValueError(f"a PNG holds one 2-D gray or RGB image, and this one is {data.ndim}-D (axes {axes}, shape "
                         f"{tuple(data.shape)}); write .tif, .ome.tif or .zarr instead")


def write_png(target: Path, data: np.ndarray, source_dtype: np.dtype, run: dict) -> None:
    """Write a whole in-memory result as PNG atomically (temporary file, then rename), the run's parameters
    in a text chunk ("napari-mpi", JSON)."""
    from PIL import Image, PngImagePlugin

    data = convert(data, output_dtype(source_dtype, "png", keep_dtype=True))
    tmp = target.with_name(f".{target.name}.partial{target.suffix}")
    info = PngImagePlugin.PngInfo()
    info.add_text("napari-mpi", json.dumps(run))
    try:
        if data.dtype == np.uint16 and data.ndim == 3:  # 16-bit colour: Pillow cannot write it (nor its text)
            from skimage.io import imsave

            imsave(tmp, data, check_contrast=False, extension=".png")
        else:
            Image.fromarray(data).save(tmp, format="PNG", pnginfo=info)
        tmp.replace(target)
    finally:
        tmp.unlink(missing_ok=True)
