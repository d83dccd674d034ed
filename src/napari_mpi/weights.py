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
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import torch

from .masking import MaskMode

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

    @property
    def name(self) -> str:
        return self.path.name if self.path is not None else "in-memory weights"

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
    from .network import SkipNet, architecture_of

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


def default_checkpoint(channels: int, mask_mode: MaskMode, mask_ratio: float) -> Checkpoint | None:
    """The shipped checkpoint ``default_checkpoint_path`` picks, loaded; None when none fits."""
    path = default_checkpoint_path(channels, mask_mode, mask_ratio)
    return load_checkpoint(path) if path is not None else None


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
        raise ValueError(f"weights must be 'default', 'random', a file path or a Checkpoint, got {type(weights).__name__}")
    if not ckpt.fits(channels, mask_mode):
        raise ValueError(
            f"weights {ckpt.name} were trained for {ckpt.channels}-channel images with '{ckpt.mask_mode}' masks, "
            f"but this image needs {channels}-channel '{mask_mode}' weights"
        )
    return ckpt
