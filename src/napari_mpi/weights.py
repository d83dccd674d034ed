"""Pre-trained checkpoints: the shipped ones (found with importlib.resources), user files,
their metadata and checksums, and which one fits an image.

A checkpoint is a ``torch.save`` dict::

    {"format": "napari-mpi-weights", "version": 1, "channels": 1 | 3,
     "mask_mode": "pixel" | "channel", "mask_ratios": [low, high],
     "state_dict": {...}, "metadata": {...}, "training": {...}  # training state: pretrain.py only}

Shipped files store the state dict in fp16 and have a JSON sidecar (same name, ``.json``) that
records how they were made and their sha256, which the loader checks.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field, replace
from importlib import resources
from pathlib import Path
from typing import Any

import torch

from .settings import MaskMode, Start

__all__ = [
    "Checkpoint",
    "FORMAT",
    "WeightsSpec",
    "load_checkpoint",
    "read_payload",
    "save_checkpoint",
    "shipped_checkpoints",
    "default_checkpoint",
    "default_checkpoint_path",
    "default_start",
    "inflate_to_rgb",
    "resolve_weights",
    "sha256_of",
]

FORMAT = "napari-mpi-weights"
VERSION = 1


@dataclass(frozen=True)
class Checkpoint:
    """Network weights with what they were trained for."""

    state_dict: dict[str, torch.Tensor]
    channels: int
    mask_mode: MaskMode
    mask_ratios: tuple[float, float]
    metadata: dict[str, Any] = field(default_factory=dict)
    path: Path | None = None
    #: Gray weights spread over colour channels (:meth:`as_colour`): a start that knows images but not yet
    #: colour, with its own preset lengths and learning rate (``settings.PRESETS``).
    from_gray: bool = False

    @property
    def name(self) -> str:
        name = self.path.name if self.path is not None else "in-memory weights"
        return f"{name} (gray weights for colour)" if self.from_gray else name

    @property
    def start(self) -> Start:
        """What a fill from these weights starts from, which sets the presets' lengths (``settings.PRESETS``)."""
        return "gray_as_colour" if self.from_gray else "pretrained"

    def as_colour(self, channels: int = 3) -> Checkpoint:
        """These gray weights as a ``channels``-channel network with per-channel masks (:func:`inflate_to_rgb`).

        No colour checkpoint ships (the RGB run trained alongside the gray one beat no random start); for colour
        images prefer the gray prior spread over the channels to a random start: with the fast preset's 200
        iterations it fills better in the same time (figures in docs/benchmarks.md, "Colour from the gray
        weights")."""
        if self.channels != 1:
            raise ValueError(f"only gray weights can be spread over colour channels, {self.name} has {self.channels}")
        return replace(self, state_dict=inflate_to_rgb(self.state_dict, channels), channels=channels,
                       mask_mode="channel", from_gray=True)

    def fits(self, channels: int, mask_mode: MaskMode) -> bool:
        return self.channels == channels and self.mask_mode == mask_mode


#: What ``weights=`` accepts: "default" (the shipped checkpoint that fits), "random" or None
#: (random initialisation), a path to a checkpoint file, or a loaded Checkpoint.
WeightsSpec = str | Path | Checkpoint | None


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def save_checkpoint(
    path: str | Path,
    state_dict: dict[str, torch.Tensor],
    *,
    channels: int,
    mask_mode: MaskMode,
    mask_ratios: tuple[float, float],
    metadata: dict[str, Any] | None = None,
    training: dict[str, Any] | None = None,
    half: bool = False,
    sidecar: bool = False,
) -> Path:
    """Write a checkpoint atomically (temporary file + rename, so a kill never leaves half a file).

    ``half`` stores floating tensors as fp16 (shipping); ``sidecar`` writes ``<name>.json`` with the
    metadata and the file's sha256.
    """
    path = Path(path)
    tensors = {
        k: (v.detach().to("cpu", torch.float16) if half and v.is_floating_point() else v.detach().to("cpu"))
        for k, v in state_dict.items()
    }
    payload: dict[str, Any] = {
        "format": FORMAT,
        "version": VERSION,
        "channels": int(channels),
        "mask_mode": mask_mode,
        "mask_ratios": [float(mask_ratios[0]), float(mask_ratios[1])],
        "state_dict": tensors,
        "metadata": dict(metadata or {}),
    }
    if training is not None:
        payload["training"] = training
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save(payload, tmp)
    tmp.replace(path)
    if sidecar:
        info = {
            "channels": int(channels),
            "mask_mode": mask_mode,
            "mask_ratios": payload["mask_ratios"],
            **payload["metadata"],
            "sha256": sha256_of(path),
        }
        path.with_suffix(".json").write_text(json.dumps(info, indent=2) + "\n")
    return path


def read_payload(path: str | Path) -> dict[str, Any]:
    """Read and validate a checkpoint file's dict; raise ValueError with a clear sentence when it is
    missing, corrupt, fails its sidecar checksum, or is not a napari-mpi checkpoint."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"weights file not found: {path}")
    side = path.with_suffix(".json")
    if side.is_file():
        try:
            expected = json.loads(side.read_text()).get("sha256")
        except (OSError, json.JSONDecodeError) as exc:
            raise ValueError(f"weights sidecar {side} is unreadable: {exc}") from exc
        if expected and sha256_of(path) != expected:
            raise ValueError(
                f"weights file {path} is corrupt: its sha256 does not match {side.name}; reinstall napari-mpi "
                "or re-create the file"
            )
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for truncated / foreign files
        raise ValueError(f"weights file {path} is corrupt or not a PyTorch checkpoint ({type(exc).__name__})") from exc
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise ValueError(f"{path} is not a napari-mpi checkpoint (make one with `napari-mpi pretrain`)")
    if payload.get("version", 0) > VERSION:
        raise ValueError(f"{path} was written by a newer napari-mpi (format {payload['version']}); upgrade napari-mpi")
    return payload


def load_checkpoint(path: str | Path) -> Checkpoint:
    """Load the network weights of a shipped or ``napari-mpi pretrain`` checkpoint (as float32)."""
    from .engine.network import SkipNet, architecture_of

    payload = read_payload(path)
    state = {k: (v.float() if v.is_floating_point() else v) for k, v in payload["state_dict"].items()}
    channels = int(payload["channels"])
    try:  # refuse here, before any run starts, a file made for another network
        SkipNet(2 * channels, channels, **architecture_of(state)).load_state_dict(state)
    except (RuntimeError, ValueError) as exc:
        raise ValueError(
            f"{path} does not hold weights for napari-mpi's network with {channels} channel(s) "
            f"({str(exc).splitlines()[0].rstrip(':')}); make one with 'napari-mpi pretrain'"
        ) from exc
    return Checkpoint(
        state_dict=state,
        channels=channels,
        mask_mode=payload["mask_mode"],
        mask_ratios=(float(payload["mask_ratios"][0]), float(payload["mask_ratios"][1])),
        metadata=dict(payload.get("metadata", {})),
        path=Path(path),
    )


def shipped_checkpoints() -> list[Path]:
    """The checkpoint files bundled in the package's ``weights/`` folder."""
    folder = resources.files("napari_mpi") / "weights"
    if not folder.is_dir():
        return []
    return sorted(Path(str(item)) for item in folder.iterdir() if item.name.endswith(".pt"))


def _describe(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.with_suffix(".json").read_text())
    except (OSError, json.JSONDecodeError):
        return None


#: A shipped checkpoint serves the mask ratios it was trained on, and this far beyond them.
RATIO_TOLERANCE = 0.05


def default_checkpoint_path(channels: int, mask_mode: MaskMode, mask_ratio: float) -> Path | None:
    """The shipped checkpoint for this channel count and mask mode whose trained mask-ratio range is
    closest to ``mask_ratio``, if within RATIO_TOLERANCE of it; None (a random start) otherwise."""
    best: tuple[float, Path] | None = None
    for path in shipped_checkpoints():
        info = _describe(path)
        if not info or info.get("channels") != channels or info.get("mask_mode") != mask_mode:
            continue
        low, high = info.get("mask_ratios", [0.0, 1.0])
        distance = max(low - mask_ratio, mask_ratio - high, 0.0)
        if distance <= RATIO_TOLERANCE + 1e-9 and (best is None or distance < best[0]):
            best = (distance, path)
    return best[1] if best is not None else None


def _default_source(channels: int, mask_mode: MaskMode, mask_ratio: float) -> tuple[Path, bool] | None:
    """The shipped file ``weights="default"`` uses, and whether it is gray weights for a colour image; None when
    nothing fits (a random start)."""
    path = default_checkpoint_path(channels, mask_mode, mask_ratio)
    if path is not None:
        return path, False
    if channels == 3 and mask_mode == "channel":  # no colour checkpoint fits: the gray one, as colour
        gray = default_checkpoint_path(1, "pixel", mask_ratio)
        return (gray, True) if gray is not None else None
    return None


def default_checkpoint(channels: int, mask_mode: MaskMode, mask_ratio: float) -> Checkpoint | None:
    """The shipped checkpoint ``default_checkpoint_path`` picks, loaded. A colour image with per-channel masks
    for which no colour checkpoint fits gets the gray one spread over its channels (:meth:`Checkpoint.as_colour`).
    None (a random start) when nothing fits."""
    source = _default_source(channels, mask_mode, mask_ratio)
    if source is None:
        return None
    checkpoint = load_checkpoint(source[0])
    return checkpoint.as_colour(channels) if source[1] else checkpoint


def default_start(channels: int, mask_mode: MaskMode, mask_ratio: float) -> Start:
    """What ``weights="default"`` starts a fill from (``settings.Start``), without loading the weights."""
    source = _default_source(channels, mask_mode, mask_ratio)
    return "random" if source is None else "gray_as_colour" if source[1] else "pretrained"


def resolve_weights(weights: WeightsSpec, channels: int, mask_mode: MaskMode, mask_ratio: float) -> Checkpoint | None:
    """Turn a ``weights=`` argument into a Checkpoint (or None for random initialisation) and check it fits."""
    if weights is None or (isinstance(weights, str) and weights.lower() == "random"):
        return None
    if isinstance(weights, str) and weights.lower() == "default":
        return default_checkpoint(channels, mask_mode, mask_ratio)
    if isinstance(weights, Checkpoint):
        ckpt = weights
    elif isinstance(weights, (str, Path)):
        ckpt = load_checkpoint(weights)
    else:
        raise ValueError(
            f"weights must be 'default', 'random', a file path or a Checkpoint, got {type(weights).__name__}"
        )
    if ckpt.channels == 1 and channels == 3 and mask_mode == "channel":
        ckpt = ckpt.as_colour(channels)  # gray weights serve colour images spread over the channels
    if not ckpt.fits(channels, mask_mode):
        raise ValueError(
            f"weights {ckpt.name} were trained for {ckpt.channels}-channel images with '{ckpt.mask_mode}' masks, "
            f"but this image needs {channels}-channel '{mask_mode}' weights"
        )
    return ckpt


#: The convolutions that read the network input (image channels, then mask channels) and the one that writes its output.
_INPUT_CONVS = ("body.skip.0.weight", "body.down.1.weight")
_OUTPUT_CONV = "head.0"


def inflate_to_rgb(gray: dict[str, torch.Tensor], channels: int = 3) -> dict[str, torch.Tensor]:
    """A gray network's weights as a ``channels``-channel network that starts as the gray one applied to the
    mean of the channels, the same prediction in every channel; the fill then learns the colour.

    The input convolutions' image and mask weights are spread over the channels (divided by their number),
    the output convolution is repeated per channel.
    """
    state = dict(gray)
    for key in _INPUT_CONVS:
        weight = gray[key]
        if weight.shape[1] != 2:
            raise ValueError(f"inflate_to_rgb needs gray weights (2 input channels at {key}), got {weight.shape[1]}")
        image, mask = weight[:, :1], weight[:, 1:]
        state[key] = torch.cat([image.repeat(1, channels, 1, 1), mask.repeat(1, channels, 1, 1)], dim=1) / channels
    state[f"{_OUTPUT_CONV}.weight"] = gray[f"{_OUTPUT_CONV}.weight"].repeat(channels, 1, 1, 1)
    state[f"{_OUTPUT_CONV}.bias"] = gray[f"{_OUTPUT_CONV}.bias"].repeat(channels)
    return state
