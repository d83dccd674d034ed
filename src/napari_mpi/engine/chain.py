"""Carrying one network from plane to plane of a stack, and deciding per plane, without the clean image, whether to.

A plane of a z-stack or time-lapse can continue from the network the previous plane trained, with a fraction of
the steps. Whether that is wise depends on the planes: a neighbouring slice or frame looks alike, another field of
view or another stain does not. With ``mode="auto"`` :class:`CarriedNetwork` measures it on every plane:

- **fit**: the masked loss of a network on a plane, on ``reuse_probe_masks`` fixed masks of the plane's middle,
  divided by that of a network fresh from the weights on the same masks. The noise variance is in both losses, so
  the ratio says how much better than the weights the network predicts this plane's hidden pixels, whatever the
  plane's noise level or brightness.
- **mismatch**: the carried network's fit on the new plane divided by its fit on the previous plane when that plane
  ended. About 1 for planes alike; much more for a plane unlike the previous one.
- **change**: how much the sizes of the structures differ between the two planes: the mean absolute difference
  of their radially averaged log power spectra over the lower half of the frequencies (``structure_spectrum``).
  Frames of one scene and neighbouring slices differ by at most ~0.2; another stain or channel, with structures
  of other sizes, or a cut to another field of view by more.
- A plane continues from the carried network when its mismatch is at most ``reuse_max_mismatch`` and its change
  at most ``reuse_max_change``, and then trains
  past ``reuse_step_fraction`` of the iterations (checked every ``reuse_check_every`` steps, at most
  ``reuse_max_step_fraction``) while its masked loss still falls by ``reuse_min_fall`` per check and its fit is
  still worse than the previous plane's by more than ``reuse_fit_tolerance``. (The loss falls on every plane as
  the network learns the plane's own noise, a percent or so per check; a plane that is still learning its
  structure falls faster.) Otherwise it starts from the weights with its full length.

With ``mode="always"`` every plane that can continues, for the fixed ``reuse_step_fraction``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..settings import FillConfig
from .cuda_graph import CudaGraphStep
from .devices import same_device
from .masking import draw_mask, make_generator
from .network import SkipNet, build_model
from .steps import predict

__all__ = [
    "REUSE_MODES", "PlaneStart", "CarriedNetwork", "PlaneLength", "continuation_steps", "most_continuation_steps",
]

#: How a stack's planes may carry the network: decided per plane, or whenever the plane can
REUSE_MODES = ("auto", "always")

#: Added to the run's seed for the fixed masks of the fit check (seeds are at most 2**32 - 1, so this never meets
#: the masks of a fill)
_PROBE_SEED = 2**32


@dataclass(frozen=True)
class PlaneStart:
    """What a plane's fill started from: the previous plane's network (``carried``) or the weights, and with
    ``mode="auto"`` the mismatch and the change that decided it (None for a chain's first plane or
    ``mode="always"``)."""

    carried: bool = False
    mismatch: float | None = None
    change: float | None = None


def continuation_steps(config: FillConfig) -> int:
    """Training steps of a plane that continues from the previous plane's network (``mode="auto"``: at least)."""
    return max(1, round(config.reuse_step_fraction * config.iterations))


def most_continuation_steps(config: FillConfig) -> int:
    """The most training steps of a continuing plane with ``mode="auto"``."""
    return max(continuation_steps(config), round(config.reuse_max_step_fraction * config.iterations))


class PlaneLength:
    """Training steps and iterations (steps and predictions) of one plane's fill; ``extend`` adds ``grow`` training
    steps, up to ``most`` (a continuing plane that still learns)."""

    def __init__(self, training: int, predictions: int, most: int | None = None, grow: int = 0):
        self.training, self.iterations = training, training + predictions
        self.most, self.grow = most if most is not None else training, grow

    def can_extend(self, iteration: int) -> bool:
        """Whether this is the last training step and a few more may follow."""
        return iteration == self.training and self.training < self.most

    def extend(self) -> None:
        grow = min(self.grow, self.most - self.training)
        self.training += grow
        self.iterations += grow


def probe_window(x: torch.Tensor, side: int) -> torch.Tensor:
    """The middle ``side`` x ``side`` of a (1, C, H, W) plane (all of a smaller one)."""
    height, width = x.shape[-2:]
    h, w = min(side, height), min(side, width)
    top, left = (height - h) // 2, (width - w) // 2
    return x[..., top:top + h, left:left + w]


def probe_loss(model: SkipNet, window: torch.Tensor, config: FillConfig, cast: torch.autocast) -> float:
    """Mean masked loss of ``model`` on ``window`` over ``config.reuse_probe_masks`` fixed masks (the same masks on
    every call for a window of this shape); no training step."""
    generator = make_generator(config.seed + _PROBE_SEED, window.device)
    total = window.new_zeros(())
    for _ in range(config.reuse_probe_masks):
        keep = draw_mask(window.shape, config.mask_ratio, config.mask_mode, generator, window.device)
        total += predict(model, window, keep, 1.0 - keep, cast)[1]
    return max(float(total) / config.reuse_probe_masks, 1e-12)


#: Radial frequency bins of ``structure_spectrum`` up to the Nyquist frequency; the lower half count
SPECTRUM_BINS = 16


def structure_spectrum(window: torch.Tensor) -> torch.Tensor:
    """The log of the radially averaged power spectrum of a (1, C, h, w) plane (channels averaged, mean removed),
    in the lower half of SPECTRUM_BINS bins from 0 to 0.5 cycles per pixel: where the structures are, above the
    flat floor of pixel-independent noise. Computed on the CPU (at most crop_size x crop_size pixels; every device
    gets the same numbers)."""
    plane = window[0].detach().float().mean(dim=0).cpu()
    power = torch.fft.fft2(plane - plane.mean()).abs().square() / plane.numel()
    fy = torch.fft.fftfreq(plane.shape[0])[:, None]
    fx = torch.fft.fftfreq(plane.shape[1])[None, :]
    bins = torch.clamp((torch.sqrt(fy.square() + fx.square()) * 2 * SPECTRUM_BINS).long(), max=SPECTRUM_BINS - 1)
    sums = torch.zeros(SPECTRUM_BINS).index_add_(0, bins.flatten(), power.flatten())
    counts = torch.bincount(bins.flatten(), minlength=SPECTRUM_BINS).clamp_min(1)
    return torch.log((sums / counts)[: SPECTRUM_BINS // 2].clamp_min(1e-12))


@dataclass
class CarriedNetwork:
    """The network and Adam state one plane's fill hands to the next plane's (a stack's planes reusing one
    network), and with ``mode="auto"`` what decides whether the next plane continues from them. Empty until the
    first fill; ``iterative_fill`` and ``crop_fill`` fill and update it; ``clear`` starts a new chain."""

    model: SkipNet | None = None
    optimizer: torch.optim.Optimizer | None = None
    #: the masks go on from the previous plane's: planes of a still scene reseeded alike would get the
    #: same masks over the same content, and predictions that agree with each other's errors
    generator: torch.Generator | None = None
    #: the captured training step (CUDA), replayed for the next plane of the same shape
    graph: CudaGraphStep | None = None
    #: "auto" (decide per plane) or "always" (REUSE_MODES)
    mode: str = "always"
    #: auto: a network fresh from the weights, the yardstick of every fit
    reference: SkipNet | None = None
    #: auto: the carried network's fit on the previous plane when it ended
    fitted: float | None = None
    #: auto: the fresh network's probe loss on the current plane, and the carried network's at the last check
    _fresh_loss: float = 1.0
    _last_loss: float = 1.0
    #: auto: whether ``_last_loss`` is the network's as it is now (it stopped training at a check)
    _settled: bool = False
    #: auto: ``structure_spectrum`` of the current plane, and of the previous one
    _spectrum: torch.Tensor | None = None
    _previous_spectrum: torch.Tensor | None = None

    def __post_init__(self) -> None:
        if self.mode not in REUSE_MODES:
            raise ValueError(f"mode must be one of {', '.join(REUSE_MODES)}, got {self.mode!r}")

    @property
    def channels(self) -> int:
        """Image channels of the carried network (0 when empty)."""
        return self.model.out_channels if self.model is not None else 0

    def fits(self, channels: int, device: torch.device) -> bool:
        """Whether a plane of ``channels`` on ``device`` can continue from the carried network."""
        return self.channels == channels and same_device(next(self.model.parameters()).device, device)

    def clear(self) -> None:
        """Forget the network: the next plane starts a new chain from the weights."""
        self.model, self.optimizer, self.generator, self.graph = None, None, None, None
        self.reference, self.fitted, self._spectrum, self._previous_spectrum = None, None, None, None

    def begin(self, x: torch.Tensor, state_dict: dict | None, config: FillConfig, cast: torch.autocast) -> PlaneStart:
        """Whether the plane ``x`` (1, C, H, W, on the compute device) continues from the carried network."""
        self._settled = False
        window = probe_window(x, config.crop_size)
        if self.mode == "auto":
            self._spectrum = structure_spectrum(window)
        if not self.fits(x.shape[1], x.device) or (self.mode == "auto" and self.fitted is None):
            self.fitted = None  # (no fit: the previous plane's fill did not end)
            if self.mode == "auto":  # the yardstick of this plane's fit when it ends
                self._fresh_loss = probe_loss(self._reference(x, state_dict, config), window, config, cast)
            return PlaneStart(False)
        if self.mode == "always":
            return PlaneStart(True)
        self._fresh_loss = probe_loss(self._reference(x, state_dict, config), window, config, cast)
        self._last_loss = probe_loss(self.model, window, config, cast)
        mismatch = self._last_loss / self._fresh_loss / self.fitted
        change = float((self._spectrum - self._previous_spectrum).abs().mean())
        alike = mismatch <= config.reuse_max_mismatch and change <= config.reuse_max_change
        return PlaneStart(alike, mismatch, change)

    def keep_training(self, x: torch.Tensor, config: FillConfig, cast: torch.autocast) -> bool:
        """``mode="auto"``, after a continuing plane's last planned step: whether its masked loss fell by at least
        ``config.reuse_min_fall`` since the last check and its fit is still worse than the previous plane's by more
        than ``config.reuse_fit_tolerance``."""
        loss = probe_loss(self.model, probe_window(x, config.crop_size), config, cast)
        falling, self._last_loss = loss < self._last_loss * (1.0 - config.reuse_min_fall), loss
        self._settled = not (falling and loss / self._fresh_loss > self.fitted * (1.0 + config.reuse_fit_tolerance))
        return not self._settled

    def end(self, x: torch.Tensor, config: FillConfig, cast: torch.autocast) -> None:
        """``mode="auto"``, when a plane's fill ends: remember the network's fit on it for the next plane."""
        if self.mode == "auto" and self.model is not None:
            # the predictions after the last check do not change the network: its loss then still holds
            loss = self._last_loss if self._settled else probe_loss(self.model, probe_window(x, config.crop_size),
                                                                    config, cast)
            self.fitted = loss / self._fresh_loss
            self._previous_spectrum = self._spectrum

    def _reference(self, x: torch.Tensor, state_dict: dict | None, config: FillConfig) -> SkipNet:
        if self.reference is None or not same_device(next(self.reference.parameters()).device, x.device) \
                or self.reference.out_channels != x.shape[1]:
            self.reference = build_model(x.shape[1], state_dict, config.seed, x.device).to(
                memory_format=torch.channels_last).train()
        return self.reference
