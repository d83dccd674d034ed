"""Does an image's noise look spatially correlated? The mask-ratio hint of ``denoise``, the command line and the
widget, read from a few planes of any array (:mod:`napari_mpi.engine.noise` judges one plane)."""

from __future__ import annotations

import warnings

import numpy as np
import torch

from .engine.noise import MaskRatioHint, mask_ratio_hint
from .io.planes import plane_layout
from .plan import DenoiseWarning

__all__ = ["NOISE_CHECK_PLANES", "NOISE_CHECK_SIDE", "as_array", "check_noise", "warn_if_noise_looks_correlated"]


#: Planes of a stack the noise check reads (evenly spaced): enough to outvote one odd plane, few to read
NOISE_CHECK_PLANES = 3
#: ... and the middle this many pixels a side of each (~35 ms for a gray plane, 4 ms at 512x512)
NOISE_CHECK_SIDE = 1024


def check_noise(image, *, rgb: bool = False, channel_axis: int | None = None) -> MaskRatioHint:
    """Whether ``image``'s noise looks spatially correlated, from the middle of up to NOISE_CHECK_PLANES of its
    planes (:mod:`napari_mpi.noise`); its ``mask_ratio`` is the ratio to suggest (None: keep the default).

    Only a hint: it also fires on some nearly clean images, where a high mask ratio blurs detail away."""
    image = as_array(image)
    layout = plane_layout(tuple(image.shape), rgb=rgb, channel_axis=channel_axis)
    indices = list(layout.indices()) if layout.n_planes <= NOISE_CHECK_PLANES else None
    if indices is None:
        wanted = {round(i * (layout.n_planes - 1) / (NOISE_CHECK_PLANES - 1)) for i in range(NOISE_CHECK_PLANES)}
        indices = [index for number, index in enumerate(layout.indices()) if number in wanted]
    planes = []
    for index in indices:
        plane = layout.take(image, index)
        top, left = (max(0, (side - NOISE_CHECK_SIDE) // 2) for side in plane.shape[:2])
        planes.append(plane[top:top + NOISE_CHECK_SIDE, left:left + NOISE_CHECK_SIDE])  # the middle: bounded time
    return mask_ratio_hint(planes, rgb=rgb)


def warn_if_noise_looks_correlated(image, mask_ratio: float | None, *, rgb: bool, channel_axis: int | None,
                                   option: str = "pass mask_ratio=", stacklevel: int = 3) -> None:
    """A DenoiseWarning when no mask ratio was chosen and the noise looks correlated (``check_noise``); ``option``
    says how to choose one, followed by the ratio (the command line: "run with --mask-ratio ")."""
    if mask_ratio is not None:
        return
    hint = check_noise(image, rgb=rgb, channel_axis=channel_axis)
    if hint.correlated:
        warnings.warn(f"{hint.describe()}; {option}{hint.mask_ratio} to try it", DenoiseWarning, stacklevel=stacklevel)


def as_array(image):
    """Arrays (numpy, dask, zarr: anything with shape and dtype) as they are; nested lists or tuples
    of numbers as numpy; anything else is a TypeError."""
    if isinstance(image, torch.Tensor):
        raise TypeError("denoise() takes numpy, dask or zarr arrays, not a torch tensor; pass "
                        "tensor.detach().cpu().numpy()")
    if hasattr(image, "shape") and hasattr(image, "dtype"):
        return image
    if isinstance(image, (list, tuple)):
        try:
            return np.asarray(image)
        except ValueError as exc:  # ragged nesting
            raise ValueError("cannot make an image from these nested lists: their rows have different lengths") from exc
    raise TypeError(
        f"denoise() needs an image array (numpy, dask or zarr, or nested lists of numbers), got {type(image).__name__}"
    )
