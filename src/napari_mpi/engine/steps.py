"""One step of the fill: a training step, or a prediction without a step."""

from __future__ import annotations

import torch

from .masking import masked_mse
from .network import SkipNet

__all__ = ["train_step", "predict"]


def _forward(model: SkipNet, x: torch.Tensor, keep: torch.Tensor, autocast: torch.autocast) -> torch.Tensor:
    """The network's float32 prediction from the visible pixels (input = masked image and mask)."""
    with autocast:
        prediction = model(torch.cat([x * keep, keep], dim=1).contiguous(memory_format=torch.channels_last))
    return prediction.float()


def train_step(model: SkipNet, optimizer: torch.optim.Optimizer, x: torch.Tensor, keep: torch.Tensor,
               weight: torch.Tensor, autocast: torch.autocast) -> tuple[torch.Tensor, torch.Tensor]:
    """One training step of the fill: predict from the visible pixels, take an Adam step on the squared
    error where ``weight`` is 1 (the hidden pixels). Returns the prediction made before the step and the loss."""
    prediction = _forward(model, x, keep, autocast)
    loss = masked_mse(prediction, x, weight)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return prediction.detach(), loss.detach()


@torch.no_grad()
def predict(model: SkipNet, x: torch.Tensor, keep: torch.Tensor, weight: torch.Tensor,
            autocast: torch.autocast) -> tuple[torch.Tensor, torch.Tensor]:
    """A forward pass without a step: the prediction (float32) and its masked loss."""
    prediction = _forward(model, x, keep, autocast)
    return prediction, masked_mse(prediction, x, weight)
