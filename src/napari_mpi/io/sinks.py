"""Where finished planes go: each plane fitted to the type of the caller's ``out`` without wrapping around."""

from __future__ import annotations

import warnings
from collections.abc import Callable

import numpy as np

__all__ = ["fitting"]


def fitting(out, warning: type[Warning] = UserWarning) -> Callable[[np.ndarray], np.ndarray]:
    """How a finished float32 plane goes into ``out``: as it is into float32 or wider; rounded and clipped into an
    integer type, clipped into float16 (never wrapped around), with one ``warning`` the first time values are
    clipped. ValueError for an ``out`` that cannot hold numbers."""
    try:
        dtype = np.dtype(getattr(out, "dtype", np.float32))
    except TypeError:
        return lambda plane: plane  # e.g. a torch tensor: it converts (and checks) itself
    if dtype.kind == "f" and dtype.itemsize >= 4:
        return lambda plane: plane
    if dtype.kind not in "uif":
        raise ValueError(f"out= holds {dtype.name}, which cannot take a denoised image; pass a float32 array "
                         "(or an integer one: the result is rounded and clipped to its range)")
    info = np.iinfo(dtype) if dtype.kind in "ui" else np.finfo(dtype)
    low, high = float(info.min), float(info.max)
    if dtype.kind in "ui" and dtype.itemsize == 8:  # float64 rounds 2**63 - 1 up to 2**63, which would wrap
        low, high = (float(np.nextafter(v, 0.0)) if v else v for v in (low, high))
    warned = []

    def fit(plane: np.ndarray) -> np.ndarray:
        values = np.rint(np.asarray(plane, np.float64)) if dtype.kind in "ui" else plane
        if not warned and plane.size and (float(plane.min()) < low or float(plane.max()) > high):
            warned.append(True)
            warnings.warn(f"the result reaches {float(plane.min()):.6g} to {float(plane.max()):.6g}, beyond the "
                          f"range of out='s {dtype.name} ({low:g} to {high:g}): values are clipped to that range; "
                          "pass a float32 out= to keep them", warning, stacklevel=4)
        return np.clip(values, low, high).astype(dtype)

    return fit
