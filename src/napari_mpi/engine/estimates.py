"""The running means a fill's estimate is made of."""

from __future__ import annotations

import torch

__all__ = ["ema_update_", "bias_corrected", "RunningMean"]


@torch.no_grad()
def ema_update_(estimate: torch.Tensor, prediction: torch.Tensor, hidden: torch.Tensor, beta: float) -> torch.Tensor:
    """In place: ``estimate = hidden * (beta * estimate + (1 - beta) * prediction) + (1 - hidden) * estimate``,
    computed as ``estimate + hidden * (1 - beta) * (prediction - estimate)`` (hidden is 0 or 1)."""
    return estimate.add_(hidden * (1.0 - beta) * (prediction - estimate))


def bias_corrected(means: torch.Tensor, betas: torch.Tensor | float, count: torch.Tensor,
                   fallback: torch.Tensor) -> torch.Tensor:
    """Running means started at 0, divided by 1 - beta^count (as Adam corrects its moments); ``fallback`` where
    count is 0."""
    scale = 1.0 - torch.pow(betas, count)
    return torch.where(count > 0, means / scale.clamp_min(1e-12), fallback)


class RunningMean:
    """Running mean of predictions at hidden pixels with weight beta, started at 0 and bias-corrected
    (``bias_corrected``; k = how often the pixel was hidden); the noisy value where a pixel was never hidden.
    Works on a whole plane or, through ``update_region``, on windows of it."""

    def __init__(self, x: torch.Tensor, beta: float):
        self.x = x
        self.beta = beta
        self.mean = torch.zeros_like(x)
        self.count = torch.zeros_like(x)

    @torch.no_grad()
    def update(self, prediction: torch.Tensor, hidden: torch.Tensor) -> torch.Tensor:
        """Fold a (C, H, W) prediction in where ``hidden`` is 1; the whole corrected estimate."""
        self.mean.add_(hidden * (1.0 - self.beta) * (prediction - self.mean))
        self.count.add_(hidden)
        return bias_corrected(self.mean, self.beta, self.count, self.x)

    @torch.no_grad()
    def update_region(self, region: tuple[slice, ...], prediction: torch.Tensor, hidden: torch.Tensor,
                      estimate: torch.Tensor) -> None:
        """Fold a prediction of ``region`` in where ``hidden`` is 1 and write the corrected region into
        ``estimate``."""
        mean, count = self.mean[region], self.count[region]
        mean.add_(hidden * (1.0 - self.beta) * (prediction - mean))
        count.add_(hidden)
        estimate[region] = bias_corrected(mean, self.beta, count, self.x[region])
