"""Bernoulli pixel masks for masked pre-training and iterative filling.

Convention (paper Eq. 3): a mask value of 1 keeps a pixel visible, 0 hides it; each element
is hidden with probability ``ratio``. Masks are drawn on the compute device from a seeded
``torch.Generator`` so that runs are reproducible and no host copy happens per iteration.
"""

from __future__ import annotations

import torch

from ..settings import MaskMode

__all__ = ["MaskMode", "draw_mask", "make_generator", "masked_mse"]


def make_generator(seed: int, device: torch.device | str) -> torch.Generator:
    """A generator on ``device`` seeded with ``seed`` (CUDA/MPS masks must come from a device generator)."""
    gen = torch.Generator(device=torch.device(device))
    gen.manual_seed(int(seed))
    return gen


def draw_mask(
    shape: tuple[int, ...] | torch.Size,
    ratio: float | torch.Tensor,
    mode: MaskMode,
    generator: torch.Generator,
    device: torch.device | str,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Draw a keep-mask of ``shape`` = (N, C, H, W): 1 = visible, 0 = hidden with probability ``ratio``.

    ``ratio`` may be a float or a tensor of shape (N,) to use a different ratio per sample
    (pre-training over a range of ratios).
    """
    if len(shape) != 4:
        raise ValueError(f"mask shape must be (N, C, H, W), got {tuple(shape)}")
    n, c, h, w = shape
    draw_shape = (n, 1, h, w) if mode == "pixel" else (n, c, h, w)
    if mode not in ("pixel", "channel"):
        raise ValueError(f"mask mode must be 'pixel' or 'channel', got {mode!r}")
    uniform = torch.rand(draw_shape, generator=generator, device=device)
    if isinstance(ratio, torch.Tensor):
        ratio = ratio.to(device=device, dtype=uniform.dtype).view(-1, 1, 1, 1)
    keep = (uniform >= ratio).to(dtype)
    return keep.expand(n, c, h, w) if mode == "pixel" else keep


def masked_mse(prediction: torch.Tensor, target: torch.Tensor, hidden: torch.Tensor) -> torch.Tensor:
    """Mean squared error over the hidden pixels only (paper Eq. 5): the network is never scored on
    pixels it could see, so it cannot learn to copy its input (noise included)."""
    return ((prediction - target) ** 2 * hidden).sum() / hidden.sum().clamp_min(1.0)
