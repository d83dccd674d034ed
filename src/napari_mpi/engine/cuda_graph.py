"""The fill's training step captured in a CUDA graph and replayed: on a GPU a step of this small network is
bound by kernel launches, not arithmetic (``FillConfig.cuda_graphs``)."""

from __future__ import annotations

import warnings

import torch

from .devices import is_out_of_memory
from .network import SkipNet
from .steps import train_step

__all__ = ["CudaGraphStep", "capture"]


class CudaGraphStep:
    """``train_step`` captured in a CUDA graph: the plane, mask and loss weight are copied into its own
    buffers and the whole step (a few hundred kernels) is replayed with one launch."""

    def __init__(self, model: SkipNet, optimizer: torch.optim.Optimizer, x: torch.Tensor, autocast: torch.autocast):
        self.x = x
        self.keep = torch.ones_like(x)
        self.weight = torch.zeros_like(x)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self.prediction, self.loss = train_step(model, optimizer, self.x, self.keep, self.weight, autocast)

    def __call__(self, keep: torch.Tensor, weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        self.keep.copy_(keep)
        self.weight.copy_(weight)
        self.graph.replay()
        # the loss buffer is overwritten by the next replay; the prediction is used before that
        return self.prediction, self.loss.clone()


def capture(model: SkipNet, optimizer: torch.optim.Optimizer, x: torch.Tensor,
            autocast: torch.autocast) -> CudaGraphStep | None:
    """The captured training step, or None (the fill goes on eagerly, with a warning) where this GPU, driver or
    torch build cannot capture it. Running out of memory is not caught: the caller tiles the plane."""
    try:
        return CudaGraphStep(model, optimizer, x, autocast)
    except RuntimeError as exc:
        if is_out_of_memory(exc):
            raise
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        warnings.warn(f"could not capture the fill step in a CUDA graph ({reason}); going on without it (slower)",
                      RuntimeWarning, stacklevel=3)
        return None
