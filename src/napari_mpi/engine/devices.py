"""Devices, arithmetic and memory: which device and precision a fill uses, how much CPU memory it will take,
and recognising running out of memory (with advice on what to do)."""

from __future__ import annotations

from typing import Literal

import torch

from ..settings import Precision
from .network import DEFAULT_SKIP_WIDTH, DEFAULT_WIDTH, padded_side

__all__ = [
    "available_devices",
    "resolve_device",
    "resolve_precision",
    "cpu_computes_bf16",
    "precision_advice",
    "autocast",
    "same_device",
    "free_device_memory",
    "is_out_of_memory",
    "memory_advice",
    "DeviceMemoryError",
    "available_memory",
    "fill_memory",
    "CPU_BYTES_PER_PIXEL",
    "CPU_MEMORY_SHARE",
]

#: Memory one CPU fill of the default network takes per pixel of its (padded) input, by precision, beyond
#: the process's baseline: the slope of peak RSS from 512x512 to 1024x1024 (``benchmarks/speed.py --isolate``).
#: Other networks scale it by their width + skip width.
CPU_BYTES_PER_PIXEL = {"fp32": 3900, "bf16": 2550}
#: Kinds of device the network runs on
_DEVICE_TYPES = ("cpu", "cuda", "mps")
#: Most of the memory available when a plane starts that its CPU fill may plan to use (the rest is
#: left to napari, the image and other programs).
CPU_MEMORY_SHARE = 0.75


def available_devices() -> list[str]:
    """Device names this machine can use, in the order "auto" prefers them after "auto" itself:
    ["auto", "cpu"] plus "cuda" and / or "mps" when present."""
    devices = ["auto", "cpu"]
    if torch.cuda.is_available():
        devices.append("cuda")
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        devices.append("mps")
    return devices


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """"auto" picks CUDA, then Apple MPS, then the CPU; an explicit name must be available, and of a kind that
    computes (not e.g. "meta")."""
    kind = device.type if isinstance(device, torch.device) else str(device).split(":")[0].strip().lower()
    if kind not in ("auto", *_DEVICE_TYPES):
        raise ValueError(f"device {str(device)!r} cannot run the network; use 'auto', 'cpu', 'cuda' or 'mps'")
    if isinstance(device, torch.device):
        return device
    name = str(device).lower()
    available = available_devices()
    if name == "auto":
        return torch.device(next((d for d in ("cuda", "mps") if d in available), "cpu"))
    if name.startswith("cuda") and "cuda" not in available:
        raise ValueError("device 'cuda' was requested but no CUDA GPU is available; use device='auto' or 'cpu'")
    if name == "mps" and "mps" not in available:
        raise ValueError("device 'mps' was requested but Apple MPS is not available; use device='auto' or 'cpu'")
    try:
        return torch.device(name)
    except RuntimeError as exc:
        raise ValueError(f"unknown device {device!r}; use 'auto', 'cpu', 'cuda' or 'mps'") from exc


def resolve_precision(precision: Precision, device: torch.device) -> Literal["fp32", "bf16"]:
    """The arithmetic "auto" stands for on ``device`` (docs/decisions.md):

    - CPU: bf16 autocast where the hardware computes bf16 natively, fp32 elsewhere (older CPUs emulate bf16
      slowly);
    - CUDA: bf16 where supported;
    - MPS: fp32 (autocast support varies).
    """
    if precision != "auto":
        return precision
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    if device.type == "cpu":
        return "bf16" if cpu_computes_bf16() else "fp32"
    return "fp32"


def cpu_computes_bf16() -> bool:
    """Whether this CPU computes bf16 natively (AVX-512 BF16 or AMX); others emulate it, far slower than fp32."""
    return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


def precision_advice(precision: Precision, device: torch.device) -> str | None:
    """A warning's text when ``precision`` will be much slower than the alternative on ``device``, else None."""
    if precision == "bf16" and device.type == "cpu" and not cpu_computes_bf16():
        return ("this CPU has no native bf16 (no AVX-512 BF16), so precision='bf16' is emulated and about 10x "
                "slower than fp32 (docs/benchmarks.md); use precision='auto' or 'fp32'")
    return None


def autocast(device: torch.device, precision: str) -> torch.autocast:
    """The fill's forward-pass arithmetic ("fp32" or "bf16"). No cast cache: a captured CUDA step must recast the
    weights that Adam changed in place."""
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=precision == "bf16",
                          cache_enabled=False)


def same_device(a: torch.device, b: torch.device) -> bool:
    """``torch.device("cuda") != torch.device("cuda:0")``, though both may name the same GPU."""
    def index(d: torch.device) -> int:
        return d.index if d.index is not None else torch.cuda.current_device() if d.type == "cuda" else 0

    return a.type == b.type and index(a) == index(b)


def free_device_memory(device: torch.device) -> None:
    """Hand the caching allocator's free blocks back to the GPU (nothing to do on the CPU)."""
    if device.type == "cuda":
        torch.cuda.empty_cache()
    elif device.type == "mps":
        torch.mps.empty_cache()


def is_out_of_memory(exc: BaseException) -> bool:
    """torch's CUDA out-of-memory error, or an allocation failure on the CPU or Apple MPS."""
    if isinstance(exc, (torch.OutOfMemoryError, MemoryError)):
        return True
    text = str(exc).lower()
    return isinstance(exc, RuntimeError) and any(
        phrase in text for phrase in ("out of memory", "can't allocate memory", "cannot allocate memory")
    )


def memory_advice(device: torch.device | str, cpu_option: str = "use device='cpu'") -> str:
    """What a user can do after running out of memory on ``device``; ``cpu_option`` says how to choose the CPU
    where the user is (the API's argument, the command line's flag, the widget's field)."""
    if torch.device(device).type == "cpu":
        return "close other programs to free memory, or denoise a smaller crop"
    return f"close other programs using the GPU, or {cpu_option}"


class DeviceMemoryError(MemoryError):
    """A device ran out of memory where the run could not work around it (no smaller tile left): ``what`` ran out,
    on ``device``. Its text gives the advice in the API's words; a shell words it its own way with :meth:`advice`."""

    def __init__(self, what: str, device: torch.device | str):
        self.what, self.device = what, torch.device(device)
        super().__init__(f"{what}; {memory_advice(self.device)}")

    def advice(self, cpu_option: str) -> str:
        """:func:`memory_advice` for this device, choosing the CPU as ``cpu_option`` says (e.g. "use --device cpu")."""
        return memory_advice(self.device, cpu_option)

    def __reduce__(self):  # Dask workers send it back to the client
        return type(self), (self.what, str(self.device))


def available_memory() -> int | None:
    """Bytes of memory the system can give this process now without swapping; None when unknown."""
    try:
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:  # macOS, Windows
        import psutil
    except ImportError:
        return None
    return int(psutil.virtual_memory().available)


def fill_memory(height: int, width: int, precision: str, network: dict[str, int] | None = None) -> int:
    """Bytes one CPU fill of a height x width plane is expected to take at its peak, with the default
    network or the one ``network`` describes (``DenoisePlan.network``)."""
    scale = 1.0
    if network is not None:
        scale = (network["width"] + network["skip_width"]) / (DEFAULT_WIDTH + DEFAULT_SKIP_WIDTH)
    return int(padded_side(height) * padded_side(width) * CPU_BYTES_PER_PIXEL[precision] * scale)
