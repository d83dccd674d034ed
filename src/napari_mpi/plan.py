"""What a run follows and what it may warn about: :class:`DenoisePlan` and :class:`DenoiseWarning`.

The types that the engine, the chains of a stack, the API and the shells (widget, command line, Dask workers)
share. Below all of them: this module imports only the settings, the plane layout and the weights' type, so
that the engine never imports the API. A plan is made and validated by :func:`napari_mpi.api.prepare`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ._version import __version__
from .settings import FillConfig, final_predictions, plane_steps, tuned

if TYPE_CHECKING:
    import torch

    from .io.planes import PlaneLayout
    from .weights import Checkpoint

__all__ = ["DenoisePlan", "DenoiseWarning"]


class DenoiseWarning(RuntimeWarning):
    """A run changed how it works to finish: e.g. a plane too big for the device's memory is denoised in tiles."""


@dataclass(frozen=True, kw_only=True)
class DenoisePlan:
    """Everything a run needs, validated: how to split the array, the fill settings, the weights, the device."""

    layout: PlaneLayout
    config: FillConfig
    checkpoint: Checkpoint | None
    device: torch.device
    preset: str
    #: width, skip width and depth of the network the fill builds: the checkpoint's, else the default
    network: dict[str, int]
    channel_axis: int | None = None
    #: Stacks (z-stacks, time-lapses): whether a plane after the first continues from the previous plane's network
    #: with a fraction of the steps, several times faster where neighbouring planes look alike. ``prepare`` takes
    #: "auto" (its default): decided per plane without the clean image (a plane continues when the carried network
    #: fits it nearly as well as it fitted the previous plane, then trains a little longer while it still learns;
    #: another field of view, stain or channel starts from the weights; :mod:`napari_mpi.engine.chain`); True:
    #: every plane continues, for ``FillConfig.reuse_step_fraction`` of the steps; False: every plane alone. Chains
    #: start from the weights every ``FillConfig.reuse_chain_planes`` planes of a channel. Not with the auto preset
    #: (it decides per plane alone; "auto" then means False).
    reuse_network: bool | str = False
    #: What follows each plane's fill: "wiener", a collaborative (block-matching) Wiener filter with the fill's
    #: estimate as its pilot and a noise model fitted to the residual (:mod:`napari_mpi.engine.refine`), which gives
    #: back texture; or "none". ``prepare`` takes "auto" (its default): "wiener" up to
    #: ``FillConfig.refine_max_mask_ratio``, "none" above (the filter assumes independent noise).
    refine: str = "none"
    #: Side in pixels of the random windows each fill step trains on instead of the whole plane (0: the whole
    #: plane); the plane's estimate gathers the windows' predictions (:mod:`napari_mpi.engine.windows`) and
    #: ``iterations`` still counts whole-plane steps; memory is one window's. ``prepare`` takes a side, "none", or
    #: "auto" (its default): ``FillConfig.crop_size`` windows on the CPU for gray planes of at least
    #: ``crop_min_windows`` times that area (not for colour, not with the auto preset, not on a GPU).
    crop: int = 0

    @property
    def steps_per_plane(self) -> int:
        """Iterations of one plane's fill, its last predictions included: window steps with ``crop`` (planes continuing
        a reused network run fewer)."""
        return plane_steps(self.config, *self.layout.plane_shape[:2], self.crop)

    def describe_length(self) -> str:
        """One plane's fill in words, e.g. "100 iterations, then 30 predictions (as 520 steps on 256x256 windows)"."""
        predictions = final_predictions(self.config)
        text = f"{self.config.iterations} iterations{f', then {predictions} predictions' if predictions else ''}"
        return text + (f" (as {self.steps_per_plane} steps on {self.crop}x{self.crop} windows)" if self.crop else "")

    def describe(self) -> dict[str, Any]:
        """Parameters as plain values, for metadata and logs."""
        return {
            "napari_mpi_version": __version__,
            "preset": self.preset,
            "mask_ratio": self.config.mask_ratio,
            "beta": self.config.beta,
            "iterations": self.config.iterations,
            "lr": self.config.lr,
            "mask_mode": self.config.mask_mode,
            "seed": self.config.seed,
            "precision": self.config.precision,
            "selfsup": self.config.selfsup,
            "final_predictions": final_predictions(self.config),
            "tuning": tuned(self.config),
            "reuse_network": self.reuse_network,
            "refine": self.refine,
            "crop": self.crop,
            "device": str(self.device),
            "weights": self.checkpoint.name if self.checkpoint is not None else "random initialisation",
            "network": dict(self.network),
            "rgb": self.layout.rgb,
            "channel_axis": self.channel_axis,
            "plane_by_plane_axes": list(self.layout.iter_axes),
            "planes": self.layout.n_planes,
        }
