"""The DIP "skip" hourglass network used by MPI (Ulyanov et al., Deep Image Prior).

Five levels; each level has a 1x1 skip branch and a deeper branch of a stride-2 3x3
convolution, a 3x3 convolution, the next level and a nearest-neighbour x2 upsampling.
Every convolution is reflection-padded and followed by BatchNorm and LeakyReLU(0.2).
The output is a 1x1 convolution and a sigmoid, so predictions live in [0, 1].

The module knows nothing about masks or training; it only maps a tensor of shape
(N, in_channels, H, W) to (N, out_channels, H, W) for any H, W at or above
``MIN_SIDE``, padding internally to a multiple of 2**depth and cropping back.
"""

from __future__ import annotations

import threading

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "SkipNet", "MIN_SIDE", "DEFAULT_WIDTH", "DEFAULT_SKIP_WIDTH", "DEFAULT_DEPTH", "architecture_of",
    "check_plane_size", "padded_side", "reflect_pad", "build_model",
]

#: Smallest image side the network accepts. Smaller planes carry too little context
#: for a 5-level hourglass to be meaningful, so we refuse them with a clear error.
MIN_SIDE = 8


#: The network built when no checkpoint says otherwise. The paper's is 64 / 64 / 5; 48 channels fill about as
#: well at the fast preset in roughly half the time per iteration, while 40 or fewer channels, or narrower skip
#: branches, lose quality: keep 48 unless a benchmark says otherwise (figures in docs/benchmarks.md,
#: "Network width").
DEFAULT_WIDTH = 48
DEFAULT_SKIP_WIDTH = 48
DEFAULT_DEPTH = 5


def check_plane_size(height: int, width: int) -> None:
    """ValueError with a clear sentence for planes below ``MIN_SIDE`` pixels per side."""
    if min(height, width) < MIN_SIDE:
        raise ValueError(
            f"image planes of {height}x{width} pixels are too small: "
            f"napari-mpi needs at least {MIN_SIDE} pixels per side"
        )


def _conv_block(in_ch: int, out_ch: int, kernel: int, stride: int = 1) -> list[nn.Module]:
    layers: list[nn.Module] = []
    pad = (kernel - 1) // 2
    if pad:
        layers.append(nn.ReflectionPad2d(pad))
    layers += [
        nn.Conv2d(in_ch, out_ch, kernel, stride=stride, bias=True),
        nn.BatchNorm2d(out_ch),
        nn.LeakyReLU(0.2, inplace=True),
    ]
    return layers


class _Level(nn.Module):
    """One hourglass level: concat(skip(x), up(deeper(x))) -> BN -> 3x3 -> 1x1."""

    def __init__(self, in_ch: int, width: int, skip_ch: int, inner: nn.Module | None, inner_out: int):
        super().__init__()
        self.skip = nn.Sequential(*_conv_block(in_ch, skip_ch, 1))
        down = _conv_block(in_ch, width, 3, stride=2) + _conv_block(width, width, 3)
        self.down = nn.Sequential(*down)
        self.inner = inner if inner is not None else nn.Identity()
        self.up = nn.Upsample(scale_factor=2, mode="nearest")
        self.merge_bn = nn.BatchNorm2d(skip_ch + inner_out)
        self.merge = nn.Sequential(*_conv_block(skip_ch + inner_out, width, 3), *_conv_block(width, width, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        deeper = self.up(self.inner(self.down(x)))
        return self.merge(self.merge_bn(torch.cat([self.skip(x), deeper], dim=1)))


def padded_side(side: int, depth: int = 5) -> int:
    """A side length after the network's internal padding: a multiple of 2**depth, and at least
    2 * 2**depth so the deepest feature map is 2x2 or larger (reflection padding and BatchNorm need that)."""
    multiple = 2**depth
    return max(2 * multiple, -(-side // multiple) * multiple)


class SkipNet(nn.Module):
    """DIP skip hourglass; ``in_channels`` counts the image channels plus the mask channels.

    Parameters
    ----------
    in_channels : int
        Channels of the network input (for MPI: image channels + mask channels).
    out_channels : int
        Channels of the prediction (image channels).
    width : int
        Channels of every down/up convolution (the paper: 64; default ``DEFAULT_WIDTH``).
    skip_width : int
        Channels of each level's 1x1 skip branch (the paper: 64; default ``DEFAULT_SKIP_WIDTH``).
    depth : int
        Number of stride-2 levels (the paper: 5).
    """

    def __init__(self, in_channels: int, out_channels: int, width: int = DEFAULT_WIDTH,
                 skip_width: int = DEFAULT_SKIP_WIDTH, depth: int = DEFAULT_DEPTH):
        super().__init__()
        if depth < 1:
            raise ValueError(f"depth must be >= 1, got {depth}")
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.depth = depth
        inner: nn.Module | None = None
        # Build from the deepest level outwards; every level below the top takes width channels in.
        for level in reversed(range(depth)):
            level_in = in_channels if level == 0 else width
            inner = _Level(level_in, width, skip_width, inner, width)
        self.body = inner
        self.head = nn.Sequential(nn.Conv2d(width, out_channels, 1, bias=True), nn.Sigmoid())

    @property
    def multiple(self) -> int:
        """Side lengths are padded to a multiple of this (2**depth)."""
        return 2**self.depth

    def padded_size(self, side: int) -> int:
        """Side after internal padding (see :func:`padded_side`)."""
        return padded_side(side, self.depth)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 4 or x.shape[1] != self.in_channels:
            raise ValueError(
                f"SkipNet expects a (N, {self.in_channels}, H, W) tensor, got shape {tuple(x.shape)}"
            )
        h, w = x.shape[-2:]
        check_plane_size(h, w)
        ph, pw = self.padded_size(h), self.padded_size(w)
        x = reflect_pad(x, ph - h, pw - w)
        return self.head(self.body(x))[..., :h, :w]


def architecture_of(state_dict: dict[str, torch.Tensor]) -> dict[str, int]:
    """``width``, ``skip_width`` and ``depth`` of the SkipNet a state dict was saved from, so a
    checkpoint describes its own network (files made before the default width changed still load)."""
    try:
        width = int(state_dict["head.0.weight"].shape[1])
        skip_width = int(state_dict["body.skip.0.weight"].shape[0])
    except (KeyError, IndexError, AttributeError) as exc:
        raise ValueError(f"not the state of a napari-mpi SkipNet (no {exc})") from exc
    depth = sum(1 for key in state_dict if key.endswith("skip.0.weight"))
    return {"width": width, "skip_width": skip_width, "depth": depth}


def reflect_pad(x: torch.Tensor, extra_h: int, extra_w: int) -> torch.Tensor:
    """Pad bottom/right by mirror reflection, in steps where the pad exceeds the image
    (torch's reflect mode needs pad < size)."""
    while extra_h > 0 or extra_w > 0:
        step_h = min(extra_h, x.shape[-2] - 1)
        step_w = min(extra_w, x.shape[-1] - 1)
        x = F.pad(x, (0, step_w, 0, step_h), mode="reflect")
        extra_h -= step_h
        extra_w -= step_w
    return x


#: serialises seeded initialisations (see build_model)
_INIT_LOCK = threading.Lock()


def build_model(channels: int, state_dict: dict[str, torch.Tensor] | None, seed: int, device: torch.device) -> SkipNet:
    """A SkipNet for ``channels`` image channels (input = image + mask), with the given weights (and
    the width they were trained at) or a seeded random initialisation of the default network."""
    # torch's global generator is shared by all threads: planes denoised in parallel threads (Dask
    # workers in one process) would interleave their draws and get other weights than a serial run
    # (the CPU generator only: torch.manual_seed would also re-seed the GPUs' global generators, outside the fork,
    # and records a formatted stack on every call until CUDA starts)
    with _INIT_LOCK, torch.random.fork_rng(devices=[]):
        torch.default_generator.manual_seed(seed)
        model = SkipNet(2 * channels, channels, **(architecture_of(state_dict) if state_dict is not None else {}))
    if state_dict is not None:
        model.load_state_dict(state_dict)
    return model.to(device)
