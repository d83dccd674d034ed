"""Every tuning knob of a run, in one frozen and validated object, and the named presets.

:class:`FillConfig` holds the fill's parameters (mask ratio, beta, iterations, ...) and every other knob the
engine reads (predictions after the last step, how a stack's later planes continue, training windows, CUDA
graphs, the Auto preset's stopping rule, when the Wiener refinement runs). Each field is documented once, here,
with its range; a bad value is a ValueError that names the field. Presets are :class:`Preset` instances: one
FillConfig per start (a random network, the shipped pre-trained weights, gray weights spread over colour).
Why each default is what it is: ``docs/decisions.md``; measured figures: ``docs/benchmarks.md``.

This module imports neither torch nor Qt, so the command line can show its help and validate options fast.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, fields, replace
from typing import Any, Literal, get_args

__all__ = [
    "DEFAULT_MASK_RATIO",
    "DEFAULT_PRESET",
    "PRESETS",
    "PRESET_NAMES",
    "FillConfig",
    "MaskMode",
    "Precision",
    "Preset",
    "Start",
    "config_for",
    "crop_steps",
    "final_predictions",
    "plane_steps",
    "tuned",
    "tuning_fields",
]

Precision = Literal["auto", "fp32", "bf16"]
#: One mask shared by all channels (gray, fluorescence) or one per channel (RGB photos).
MaskMode = Literal["pixel", "channel"]
#: Where a fill starts: a seeded random network; weights pre-trained for this kind of image; or gray weights
#: spread over a colour image's channels (``weights.Checkpoint.as_colour``), which still have to learn colour.
Start = Literal["random", "pretrained", "gray_as_colour"]

#: The mask ratio used when none is given: right for pixel-independent (shot / read) noise.
DEFAULT_MASK_RATIO = 0.3
#: Smallest training-window side: the margins left out at window edges must leave pixels to predict.
MIN_CROP = 64


@dataclass(frozen=True)
class FillConfig:
    """Validated settings of a run's fill: every tuning knob, with its range.

    Attributes
    ----------
    mask_ratio : float, 0 < p < 1
        Probability that a pixel is hidden in a step. Keep 0.3 for pixel-independent noise; raise it to
        0.8-0.95 when the noise is spatially correlated (streaks, blotches).
    beta : float, 0 <= beta < 1
        Weight of the running mean of predictions. Higher averages more predictions: smoother, and it
        needs more iterations.
    iterations : int, >= 1
        Training steps of a plane's fill.
    lr : float, > 0
        Adam learning rate.
    mask_mode : {"pixel", "channel"}
        One mask shared by all channels (gray / fluorescence) or one per channel (RGB photos).
    seed : int, >= 0
        Seeds the masks, the training windows and, without weights, the network's initialisation.
    precision : {"auto", "fp32", "bf16"}
        Arithmetic of the forward pass; "auto" picks bf16 where the hardware computes it natively.
    selfsup : bool
        Decide per plane without the clean image (the "auto" preset): hold out ``auto_holdout`` of the pixels
        from the loss, stop when the network starts to learn the noise (at most ``iterations``) and output the
        bias-corrected running mean (beta from ``auto_betas``) with the lowest held-out error; ``beta`` is
        then not used.
    final_predictions : int, >= 0
        Forward passes of the trained network without a step that end a plane's fill from the weights; their
        predictions go on into the running mean. Capped at ``iterations``; none with ``selfsup``.
    reuse_step_fraction : float, 0 < f <= 1
        A plane that continues from the previous plane's network (``reuse_network``) trains for this fraction
        of ``iterations`` ...
    reuse_predictions : int, >= 0
        ... then makes this many predictions without a step.
    reuse_max_mismatch : float, >= 1
        ``reuse_network="auto"``: a later plane continues from the previous plane's network only when that network
        fits it nearly as well as it fitted the previous plane: its masked loss on the new plane, relative to a
        network fresh from the weights, is at most this many times what it was on the previous plane, and the
        planes' structures are alike in size (``reuse_max_change``). Otherwise the plane starts from the weights
        with its full length.
    reuse_max_change : float, >= 0
        ``reuse_network="auto"``: the largest mean absolute difference of two planes' log radial power spectra,
        over the lower half of the frequencies, for the later plane to continue (another stain or channel has
        structures of other sizes; ``napari_mpi.engine.chain.structure_spectrum``).
    reuse_max_step_fraction : float, 0 < f <= 1
        ``reuse_network="auto"``: the most training steps of a continuing plane, as a fraction of ``iterations``.
        Past ``reuse_step_fraction`` it trains ``reuse_check_every`` steps more at a time while its masked loss
        still falls (``reuse_min_fall``) and its fit is still worse than the previous plane's
        (``reuse_fit_tolerance``).
    reuse_fit_tolerance : float, >= 0
        A continuing plane trains on while its fit is worse than the previous plane's by more than this fraction.
    reuse_min_fall : float, 0 <= f < 1
        ... and while its masked loss fell by at least this fraction since the last check.
    reuse_check_every : int, >= 1
        Training steps between two such checks.
    reuse_probe_masks : int, >= 1
        Fixed masks of every masked loss these checks measure, on the middle ``crop_size`` x ``crop_size`` of the
        plane (the same masks for the fresh network and the carried one).
    reuse_chain_planes : int, >= 1
        Planes that carry one network, one after the other: every this many planes (of one channel) a chain starts
        from the weights again, so that a resumed run and Dask workers, which each take whole chains, give the
        same result as one uninterrupted run.
    crop_size : int, >= 64
        Side of the random windows that ``crop="auto"`` trains on.
    crop_min_windows : float, >= 1
        ``crop="auto"`` trains on windows (on the CPU, gray planes) from this many windows' pixels per plane.
    crop_step_scale : float, 0 < s <= 4
        A window fill standing for N whole-plane steps trains this fraction of their pixels.
    cuda_graphs : bool
        On CUDA, capture the training step once and replay it (a step of this small network is bound by
        kernel launches). False: always eager.
    cuda_graph_min_steps : int, >= 1
        Fewest training steps for which a capture pays off.
    cuda_graph_warmup : int, >= 1
        Eager steps before the capture.
    auto_holdout : float, 0 < h < 0.5
        Fraction of the pixels the "auto" preset never trains on.
    auto_betas : tuple of float, each in [0, 1)
        Running-mean weights among which "auto" picks the one with the lowest held-out error.
    auto_check_every : int, >= 1
        Iterations between two checks of "auto".
    auto_settle : int, >= 0
        Iterations before "auto" starts to track the lowest memorisation.
    auto_min_iterations : int, >= 1
        "auto" never stops before this many iterations.
    auto_memorisation_rise : float, > 0
        "auto" stops when memorisation rose this much above its lowest value.
    refine_max_mask_ratio : float, 0 < r < 1
        ``refine="auto"`` runs the Wiener refinement up to this mask ratio (it assumes noise independent from
        pixel to pixel).
    refine_fill_weight : float, 0 <= w < 1
        The refined plane is ``(1 - w) x`` the Wiener filter's output ``+ w x`` the fill's estimate: the two err
        in different places, so a little of the fill's estimate improves on either alone (0 = the filter's
        output alone; see docs/decisions.md).
    """

    mask_ratio: float = DEFAULT_MASK_RATIO
    beta: float = 0.9
    iterations: int = 200
    lr: float = 2e-3
    mask_mode: MaskMode = "pixel"
    seed: int = 0
    precision: Precision = "auto"
    selfsup: bool = False
    final_predictions: int = 30
    reuse_step_fraction: float = 0.10
    reuse_predictions: int = 10
    reuse_max_mismatch: float = 2.0
    reuse_max_change: float = 0.25
    reuse_max_step_fraction: float = 0.4
    reuse_fit_tolerance: float = 0.1
    reuse_min_fall: float = 0.02
    reuse_check_every: int = 5
    reuse_probe_masks: int = 2
    reuse_chain_planes: int = 32
    crop_size: int = 256
    crop_min_windows: float = 4.0
    crop_step_scale: float = 1.0
    cuda_graphs: bool = True
    cuda_graph_min_steps: int = 20
    cuda_graph_warmup: int = 3
    auto_holdout: float = 0.1
    auto_betas: tuple[float, ...] = (0.8, 0.9, 0.95, 0.98, 0.99)
    auto_check_every: int = 10
    auto_settle: int = 30
    auto_min_iterations: int = 50
    auto_memorisation_rise: float = 0.08
    refine_max_mask_ratio: float = 0.65
    refine_fill_weight: float = 0.2

    def __post_init__(self) -> None:
        _check_range("mask ratio", self.mask_ratio, 0.0, 1.0, low_open=True, high_open=True)
        _check_range("beta", self.beta, 0.0, 1.0, high_open=True)
        _check_whole("iterations", self.iterations, 1)
        _check_range("learning rate", self.lr, 0.0, math.inf, low_open=True)
        _check_choice("mask mode", self.mask_mode, get_args(MaskMode))
        _check_whole("seed", self.seed, 0)
        _check_choice("precision", self.precision, get_args(Precision))
        _check_flag("selfsup", self.selfsup)
        _check_whole("final_predictions", self.final_predictions, 0)
        _check_range("reuse_step_fraction", self.reuse_step_fraction, 0.0, 1.0, low_open=True)
        _check_whole("reuse_predictions", self.reuse_predictions, 0)
        _check_range("reuse_max_mismatch", self.reuse_max_mismatch, 1.0, math.inf)
        _check_range("reuse_max_change", self.reuse_max_change, 0.0, math.inf)
        _check_range("reuse_max_step_fraction", self.reuse_max_step_fraction, 0.0, 1.0, low_open=True)
        _check_range("reuse_fit_tolerance", self.reuse_fit_tolerance, 0.0, math.inf)
        _check_range("reuse_min_fall", self.reuse_min_fall, 0.0, 1.0, high_open=True)
        _check_whole("reuse_check_every", self.reuse_check_every, 1)
        _check_whole("reuse_probe_masks", self.reuse_probe_masks, 1)
        _check_whole("reuse_chain_planes", self.reuse_chain_planes, 1)
        _check_whole("crop_size", self.crop_size, MIN_CROP)
        _check_range("crop_min_windows", self.crop_min_windows, 1.0, math.inf)
        _check_range("crop_step_scale", self.crop_step_scale, 0.0, 4.0, low_open=True)
        _check_flag("cuda_graphs", self.cuda_graphs)
        _check_whole("cuda_graph_min_steps", self.cuda_graph_min_steps, 1)
        _check_whole("cuda_graph_warmup", self.cuda_graph_warmup, 1)
        _check_range("auto_holdout", self.auto_holdout, 0.0, 0.5, low_open=True, high_open=True)
        if not isinstance(self.auto_betas, tuple) or not self.auto_betas:
            raise ValueError(f"auto_betas must be a non-empty tuple of numbers in [0, 1), got {self.auto_betas!r}")
        for value in self.auto_betas:
            _check_range("each of auto_betas", value, 0.0, 1.0, high_open=True)
        _check_whole("auto_check_every", self.auto_check_every, 1)
        _check_whole("auto_settle", self.auto_settle, 0)
        _check_whole("auto_min_iterations", self.auto_min_iterations, 1)
        _check_range("auto_memorisation_rise", self.auto_memorisation_rise, 0.0, math.inf, low_open=True)
        _check_range("refine_max_mask_ratio", self.refine_max_mask_ratio, 0.0, 1.0, low_open=True, high_open=True)
        _check_range("refine_fill_weight", self.refine_fill_weight, 0.0, 1.0, high_open=True)

    @classmethod
    def field_names(cls) -> tuple[str, ...]:
        """Names of every setting, in declaration order."""
        return tuple(f.name for f in fields(cls))


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _check_range(name: str, value: object, low: float, high: float, *, low_open: bool = False,
                 high_open: bool = False) -> None:
    above = _is_number(value) and (value > low if low_open else value >= low)  # type: ignore[operator]
    below = _is_number(value) and (value < high if high_open else value <= high)  # type: ignore[operator]
    if not (above and below):
        left, right = "(" if low_open else "[", ")" if high_open else "]"
        span = f"> {low:g}" if high == math.inf else f"in {left}{low:g}, {high:g}{right}"
        raise ValueError(f"{name} must be a number {span}, got {value!r}")


def _check_whole(name: str, value: object, low: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ValueError(f"{name} must be a whole number >= {low}, got {value!r}")


def _check_choice(name: str, value: object, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(map(repr, choices))}, got {value!r}")


def _check_flag(name: str, value: object) -> None:
    if not isinstance(value, bool):
        raise ValueError(f"{name} must be True or False, got {value!r}")


@dataclass(frozen=True)
class Preset:
    """Named settings, one :class:`FillConfig` per start: from pre-trained weights a fill reaches its best in
    fewer iterations than from a random network, and gray weights spread over colour learn colour at a higher
    learning rate."""

    name: str
    random: FillConfig
    pretrained: FillConfig
    gray_as_colour: FillConfig

    def config(self, start: Start = "random") -> FillConfig:
        """The settings this preset uses from ``start``."""
        _check_choice("start", start, get_args(Start))
        return getattr(self, start)

    @property
    def selfsup(self) -> bool:
        """Whether the preset decides per plane when to stop (the "auto" preset)."""
        return self.random.selfsup


def _preset(name: str, random: tuple[int, float], pretrained: tuple[int, float], colour: tuple[int, float],
            **common: object) -> Preset:
    """A preset from (iterations, beta) per start; colour from the gray weights learns at twice the rate."""
    base = FillConfig(**common)  # type: ignore[arg-type]
    return Preset(
        name,
        random=replace(base, iterations=random[0], beta=random[1]),
        pretrained=replace(base, iterations=pretrained[0], beta=pretrained[1]),
        gray_as_colour=replace(base, iterations=colour[0], beta=colour[1], lr=4e-3),
    )


#: "fast" from a random start and "quality" from a random start are the paper's settings (Sec. 4.1); from
#: the shipped weights both run fewer iterations, and "auto" (experimental) decides per plane when to stop.
PRESETS: dict[str, Preset] = {
    "fast": _preset("fast", random=(200, 0.9), pretrained=(100, 0.9), colour=(300, 0.95)),
    "quality": _preset("quality", random=(1000, 0.99), pretrained=(150, 0.95), colour=(450, 0.95)),
    "auto": _preset("auto", random=(300, 0.9), pretrained=(300, 0.9), colour=(300, 0.9), selfsup=True),
}
PRESET_NAMES = tuple(PRESETS)
#: The preset used when none is named.
DEFAULT_PRESET = "fast"


def config_for(
    preset: str = DEFAULT_PRESET,
    *,
    mask_ratio: float | None = None,
    beta: float | None = None,
    iterations: int | None = None,
    lr: float | None = None,
    start: Start = "random",
    **other: object,
) -> FillConfig:
    """The settings of ``preset`` from ``start``, with any value overridden (None = keep the preset's);
    ``other``: any further :class:`FillConfig` field by name."""
    if not isinstance(preset, str):
        raise ValueError(f"preset must be the name of a preset ({', '.join(map(repr, PRESETS))}; "
                         f"leave it out for {DEFAULT_PRESET!r}), got {preset!r}")
    if preset.lower() not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; choose one of: {', '.join(PRESETS)}")
    unknown = sorted(set(other) - set(FillConfig.field_names()))
    if unknown:
        raise ValueError(f"unknown setting {unknown[0]!r}; the settings are: {', '.join(FillConfig.field_names())}")
    overrides = {"mask_ratio": mask_ratio, "beta": beta, "iterations": iterations, "lr": lr}
    values = {k: v for k, v in overrides.items() if v is not None} | other
    return replace(PRESETS[preset.lower()].config(start), **values)


#: FillConfig fields with a parameter of their own in ``prepare()`` and ``denoise()`` (or set by the preset)
OWN_PARAMETERS = ("mask_ratio", "beta", "iterations", "lr", "mask_mode", "seed", "precision", "selfsup")


def tuning_fields(tuning: Mapping[str, Any] | None) -> dict[str, Any]:
    """The FillConfig fields a ``tuning=`` mapping sets (their values are validated by FillConfig itself);
    ValueError naming the fix for anything else."""
    if tuning is None:
        return {}
    if not isinstance(tuning, Mapping):
        raise ValueError(f"tuning must be a dict of settings by name, got {type(tuning).__name__}")
    for name in tuning:
        if name in OWN_PARAMETERS:
            hint = "choose the preset" if name in ("selfsup", "mask_mode") else f"pass {name}= itself"
            raise ValueError(f"{name!r} is not a tuning setting: {hint}")
        if name not in FillConfig.field_names():
            raise ValueError(f"unknown setting {name!r} in tuning; the settings are: "
                             f"{', '.join(n for n in FillConfig.field_names() if n not in OWN_PARAMETERS)}")
    return dict(tuning)


def tuned(config: FillConfig) -> dict[str, Any]:
    """The settings of ``config`` without a parameter of their own that differ from the defaults (what
    ``tuning=`` set), for a run's metadata."""
    default = FillConfig()
    return {name: getattr(config, name) for name in FillConfig.field_names()
            if name not in OWN_PARAMETERS and getattr(config, name) != getattr(default, name)}


def final_predictions(config: FillConfig) -> int:
    """Predictions without a step that end the fill of a plane started from the weights:
    ``config.final_predictions``, never more than the training steps; none for the auto preset, which ends
    where it decides."""
    return 0 if config.selfsup else min(config.final_predictions, config.iterations)


def crop_steps(iterations: int, height: int, width: int, crop: int, config: FillConfig) -> int:
    """Training steps of a window fill that stands for ``iterations`` whole-plane steps on a height x width
    plane: ``config.crop_step_scale`` of their pixels in windows of crop x crop (never fewer than
    ``iterations``)."""
    windows = height * width / (min(crop, height) * min(crop, width))
    return max(iterations, round(config.crop_step_scale * iterations * windows))


def plane_steps(config: FillConfig, height: int, width: int, crop: int = 0) -> int:
    """Iterations of the fill of a height x width plane started from the weights (not continuing a carried
    network): ``config.iterations`` training steps, then ``final_predictions(config)`` predictions without a step;
    in crop x crop windows (``engine.windows.crop_fill``) as many window steps as those stand for. The auto preset runs
    at most its iterations."""
    predictions = final_predictions(config)
    if crop:
        return (crop_steps(config.iterations, height, width, crop, config)
                + crop_steps(predictions, height, width, crop, config))
    return config.iterations + predictions
