"""The "auto" preset's self-supervised decisions: when to stop, and which running mean to output."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ..settings import FillConfig
from .estimates import bias_corrected

__all__ = ["AutoReport", "SelfSupervision"]


@dataclass(frozen=True)
class AutoReport:
    """What the "auto" preset measured at its last check, and what it decided."""

    iteration: int
    beta: float  # running-mean weight whose estimate has the lowest held-out error
    holdout_error: float  # that estimate's mean squared error at held-out pixels (noise variance included)
    memorisation: float  # (held-out - trained-on) / held-out squared error of the predictions at hidden pixels
    rise: float  # memorisation now minus its lowest value so far
    stopped: bool  # True when this check ended the fill early

    def describe(self) -> str:
        """One sentence for a status line or a log."""
        if self.stopped:
            why = (f"stopped at iteration {self.iteration}: the network started to learn the noise (its error on "
                   f"the pixels it trains on fell {self.rise:.0%} further below that on held-out pixels)")
        else:
            why = f"ran {self.iteration} iterations without learning the noise"
        return f"Auto {why}; beta {self.beta:g} has the lowest held-out error"


class SelfSupervision:
    """The bookkeeping of ``FillConfig.selfsup``: held-out pixels, a bank of bias-corrected running
    means, and the two errors that tell generalising from learning the noise.

    For pixel-independent noise, a prediction made with a pixel hidden and by a network that never
    trained on it has expected squared error to the noisy pixel = its error to the clean pixel + the
    noise variance (Noise2Self's J-invariance). Held-out pixels stay that way; trained-on pixels lose
    it as the network memorises their noise, which shows as their error falling below the held-out one.
    The running means start at 0 and are bias-corrected, so no estimate ever contains the noisy pixel
    itself and the held-out error ranks them honestly.
    """

    def __init__(self, x: torch.Tensor, generator: torch.Generator, config: FillConfig):
        _, channels, height, width = x.shape
        self.x = x
        self.config = config
        held = torch.rand((1, 1, height, width), generator=generator, device=x.device) < config.auto_holdout
        self.held = held.to(x.dtype)
        self.trained = 1.0 - self.held
        betas = config.auto_betas
        self.betas = torch.tensor(betas, device=x.device).view(-1, 1, 1, 1)
        self.means = torch.zeros((len(betas), channels, height, width), device=x.device)
        self.count = torch.zeros((channels, height, width), device=x.device)
        self.sums = torch.zeros(4, device=x.device)  # squared error and count: held-out, trained-on
        self.smoothed: torch.Tensor | None = None
        self.lowest = math.inf  # lowest memorisation since ``auto_settle`` iterations
        self.choice = min(range(len(betas)), key=lambda i: abs(betas[i] - 0.9))  # until the first check

    def update(self, prediction: torch.Tensor, hidden: torch.Tensor) -> None:
        """Fold this step's predictions at hidden pixels into every running mean; add up the errors."""
        self.means.add_(hidden * (1.0 - self.betas) * (prediction - self.means))
        self.count.add_(hidden[0])
        error = (prediction - self.x).square_() * hidden
        self.sums.add_(torch.stack([
            (error * self.held).sum(), (hidden * self.held).sum(),
            (error * self.trained).sum(), (hidden * self.trained).sum(),
        ]))

    def corrected(self) -> torch.Tensor:
        """All bias-corrected running means, (len(auto_betas), C, H, W)."""
        return bias_corrected(self.means, self.betas, self.count, self.x[0])

    def estimate(self) -> torch.Tensor:
        """The bias-corrected running mean of the chosen beta, (C, H, W)."""
        return bias_corrected(self.means[self.choice], self.config.auto_betas[self.choice], self.count, self.x[0])

    def due(self, iteration: int, iterations: int) -> bool:
        """Whether ``check`` runs after this iteration."""
        return iteration % self.config.auto_check_every == 0 or iteration == iterations

    def check(self, iteration: int) -> AutoReport:
        """Choose beta by held-out error and decide whether to stop (one device sync)."""
        config = self.config
        held_sse, held_n, trained_sse, trained_n = self.sums
        window = torch.stack([held_sse / held_n.clamp_min(1.0), trained_sse / trained_n.clamp_min(1.0)])
        self.sums.zero_()
        self.smoothed = window if self.smoothed is None else 0.5 * self.smoothed + 0.5 * window
        held_out = ((self.corrected() - self.x[0]).square() * self.held[0]).sum(dim=(1, 2, 3))
        errors = (held_out / (self.held.sum() * self.x.shape[1]).clamp_min(1.0)).tolist()
        held_error, trained_error = self.smoothed.tolist()
        self.choice = min(range(len(errors)), key=errors.__getitem__)
        memorisation = (held_error - trained_error) / held_error if held_error > 0 else 0.0
        if iteration >= config.auto_settle:
            self.lowest = min(self.lowest, memorisation)
        rise = memorisation - self.lowest if math.isfinite(self.lowest) else 0.0
        stop = iteration >= config.auto_min_iterations and rise >= config.auto_memorisation_rise
        return AutoReport(iteration, config.auto_betas[self.choice], errors[self.choice], memorisation, rise, stop)
