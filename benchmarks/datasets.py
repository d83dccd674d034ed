"""Noisy / clean image pairs for the benchmarks, read from the shared data folder.

Nothing here is part of the package and no image is stored in the repository: the data is read from
``$NAPARI_MPI_DATA`` when set, else from ``../shared/data`` next to the repository root (see
``../shared/data/README.md``). Every loader yields :class:`Sample` tuples
``(name, noisy, clean, kind)`` — unpack the first four fields — with

* ``noisy``, ``clean``: float32 in the 8-bit range scaled to [0, 1] (value / 255). Synthetic noise is
  not clipped, so noisy kodak images go slightly outside [0, 1];
* ``kind``: ``"gray"`` (H, W), ``"rgb"`` (H, W, 3) or ``"stack"`` (Z, H, W: denoised plane by plane);
* ``dataset``: the dataset key below; ``compare``: ``"direct"`` or ``"affine"`` (see ``metrics.py``).

Datasets (``DATASETS``):

========================  ================================================================================
``fmd-confocal``          FMD Confocal_BPAE_B: raw frame 0 (``raw/<fov>/HV110_P0500510000.png``) of each of
                          the 19 FOVs against ``gt/<fov>/avg50.png`` (512x512 uint8 gray). Real noise.
``fmd-nd``                Other FMD pairs: Confocal_FISH 3, Confocal_BPAE_R FOV 1 (gray), WideField_BPAE
                          (R/G/B channels merged as an RGB picture), and the 3-slice Confocal_BPAE R/G/B
                          z-stack of FOV 1 (float32 TIFF, values 0-255) as one ``stack`` sample.
``gigadb``                GigaDB 100888 low-SNR / high-SNR pairs (nucleus, mito-confocal, membrane,
                          actin-60x, mito-60x). Stored as pseudo-colour RGB PNGs whose signal sits in one
                          or two channels; the gray image is the maximum over channels. Each image was
                          contrast-stretched separately, so ``compare="affine"``.
``kodak-gauss25``         Kodak24 RGB with additive white Gaussian noise, sigma 25/255 (not clipped).
``kodak-poisson30``       Kodak24 as gray (``skimage.color.rgb2gray``) with Poisson noise at peak 30:
                          ``noisy = Poisson(30 * clean) / 30``.
``cbsd68-gauss25``        Held out (not in ``DEFAULT_DATASETS``; nothing is tuned on it): CBSD68 RGB sorted by
                          name with Gaussian noise, sigma 25/255 (not clipped).
========================  ================================================================================

``load_stack`` builds the stacks of ``stacks.py`` (``STACKS``: synthetic, FMD fields of view, an FMD
time-lapse, the FMD 3-slice stack, a colour time-lapse of a still scene).

Crops are centred (``crop=None`` or 0 keeps the whole image) and taken before synthetic noise is
drawn; synthetic noise uses a fixed seed per image (``numpy.random.default_rng([seed, index])``), so
every method and every run sees the same noisy input.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import NamedTuple

import numpy as np

__all__ = [
    "Sample",
    "DATASETS",
    "DEFAULT_DATASETS",
    "STACKS",
    "data_root",
    "require_data_root",
    "load",
    "load_stack",
    "center_crop",
    "machine_info",
    "versions",
    "run_record",
    "write_json",
]

ENV_VAR = "NAPARI_MPI_DATA"
REPO_ROOT = Path(__file__).resolve().parents[1]


class Sample(NamedTuple):
    """One benchmark image: ``name, noisy, clean, kind`` plus the dataset key and comparison mode."""

    name: str
    noisy: np.ndarray
    clean: np.ndarray
    kind: str  # "gray" | "rgb" | "stack"
    dataset: str = ""
    compare: str = "direct"  # "direct" | "affine"


def data_root(explicit: str | os.PathLike | None = None) -> Path | None:
    """The shared data folder: ``explicit``, else ``$NAPARI_MPI_DATA``, else ``<repo>/../shared/data``;
    None when it does not exist."""
    chosen = explicit or os.environ.get(ENV_VAR)  # a folder named explicitly is never silently replaced
    path = Path(chosen).expanduser().resolve() if chosen else REPO_ROOT.parent / "shared" / "data"
    return path if path.is_dir() else None


def require_data_root(explicit: str | os.PathLike | None = None) -> Path:
    """``data_root`` or exit(0) with a message saying where the data was looked for."""
    root = data_root(explicit)
    if root is None:
        where = explicit or os.environ.get(ENV_VAR) or REPO_ROOT.parent / "shared" / "data"
        print(
            f"benchmark data not found at {where}; set {ENV_VAR} or pass --data to the folder described in "
            "../shared/data/README.md. Nothing to do.",
            file=sys.stderr,
        )
        raise SystemExit(0)
    return root


# ---------------------------------------------------------------------------------------------- records


def machine_info() -> dict:
    """Platform, CPU model and count, the vector instructions torch computes with (``cpu_capability``: AVX2,
    AVX512, ...; ``cpu_bf16``: whether oneDNN computes bf16 natively, i.e. whether ``precision="auto"`` means bf16
    on the CPU), torch's thread count and the GPU, if any: recorded with every result. Timings of the fp32 path and
    the bf16 path are told apart by these and by each result's own ``precision``."""
    import platform

    info: dict = {"platform": platform.platform(), "python": platform.python_version()}
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as handle:
            names = [line.split(":", 1)[1].strip() for line in handle if line.startswith("model name")]
        if names:
            cpu = names[0]
    except OSError:
        pass
    info["cpu"] = cpu
    info["cpu_count"] = os.cpu_count()
    try:
        info["affinity_cpus"] = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        pass
    try:
        import torch

        info["torch_threads"] = torch.get_num_threads()
        info["cpu_capability"] = torch.backends.cpu.get_cpu_capability()
        info["cpu_bf16"] = bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
        if torch.cuda.is_available():
            info["gpu"] = torch.cuda.get_device_name(0)
            info["cuda"] = torch.version.cuda
    except ImportError:
        pass
    return info


def versions() -> dict:
    """Versions of napari-mpi (``napari_mpi.__version__``) and of what the benchmarks measure with (None = not
    installed), and the repository's commit when it is a git checkout."""
    import subprocess
    from importlib import metadata

    found = {}
    for key, distribution in (("napari_mpi", "napari-mpi"), ("torch", "torch"), ("numpy", "numpy"),
                              ("scikit-image", "scikit-image"), ("scipy", "scipy"), ("bm3d", "bm3d")):
        try:
            found[key] = metadata.version(distribution)
        except metadata.PackageNotFoundError:
            found[key] = None
    try:
        import napari_mpi

        found["napari_mpi"] = napari_mpi.__version__
    except ImportError:
        pass
    try:
        commit = subprocess.run(["git", "-C", str(REPO_ROOT), "rev-parse", "--short", "HEAD"], capture_output=True,
                                text=True, timeout=10, check=True).stdout.strip()
        found["commit"] = commit or None
    except (OSError, subprocess.SubprocessError):
        found["commit"] = None
    return found


def run_record(config: dict, argv: list[str] | None = None) -> dict:
    """The head of every result file: date (UTC), command line, machine, versions and the script's options
    (``config``); ``argv``: the arguments when ``main(argv)`` was called from Python, else ``sys.argv``'s."""
    import shlex
    from datetime import UTC, datetime

    arguments = sys.argv[1:] if argv is None else list(argv)
    return {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": shlex.join([Path(sys.executable).name, sys.argv[0], *arguments]),
        "machine": machine_info(),
        "versions": versions(),
        "config": {key: _plain(value) for key, value in config.items()},
    }


def write_json(path: str | os.PathLike, record: dict) -> None:
    """Write ``record`` to ``path`` (folders made as needed), replacing the file only once the new text is
    complete, so that a run stopped while writing keeps its last whole record."""
    import json

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    partial.write_text(json.dumps(record, indent=1, default=_plain) + "\n")
    partial.replace(path)


def _plain(value):
    """JSON-friendly: numpy scalars and arrays as numbers and lists, paths and anything else as text."""
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if value is None or isinstance(value, (bool, int, float, str, list, tuple, dict)):
        return value
    return str(value)


# ---------------------------------------------------------------------------------------------- helpers


def center_crop(image: np.ndarray, crop: int | None, kind: str) -> np.ndarray:
    """Centre crop of the spatial axes (H, W) to at most ``crop`` x ``crop``; None/0 = no crop."""
    if not crop:
        return image
    if kind == "rgb":
        height, width = image.shape[:2]
    else:  # gray (H, W) or stack (Z, H, W)
        height, width = image.shape[-2:]
    ch, cw = min(crop, height), min(crop, width)
    top, left = (height - ch) // 2, (width - cw) // 2
    if kind == "rgb":
        return image[top : top + ch, left : left + cw]
    return image[..., top : top + ch, left : left + cw]


def _imread(path: Path) -> np.ndarray:
    if not path.is_file():
        raise FileNotFoundError(f"benchmark data file missing: {path}")
    if path.suffix.lower() in (".tif", ".tiff"):
        import tifffile

        return tifffile.imread(path)
    from skimage import io

    return io.imread(path)


def _unit(array: np.ndarray) -> np.ndarray:
    """8-bit values (uint8, or floats holding 0-255) -> float32 / 255."""
    return np.ascontiguousarray(array, dtype=np.float32) / np.float32(255.0)


def _pair(name, noisy, clean, kind, crop, dataset, compare="direct") -> Sample:
    if noisy.shape != clean.shape:
        raise ValueError(f"{dataset}/{name}: noisy {noisy.shape} and clean {clean.shape} differ in shape")
    return Sample(
        name,
        np.ascontiguousarray(center_crop(noisy, crop, kind)),
        np.ascontiguousarray(center_crop(clean, crop, kind)),
        kind,
        dataset,
        compare,
    )


def _fov_key(path: Path):
    return (0, int(path.name)) if path.name.isdigit() else (1, path.name)


# ---------------------------------------------------------------------------------------------- loaders


def load_fmd_confocal(root: Path, crop: int | None = None, limit: int | None = None, **_) -> Iterator[Sample]:
    """FMD Confocal_BPAE_B: frame 0 of every FOV vs its avg50 ground truth."""
    base = root / "fmd-confocal-bpae-b"
    fovs = sorted((p for p in (base / "gt").iterdir() if p.is_dir()), key=_fov_key)
    for fov in fovs[:limit]:
        raw_dir = base / "raw" / fov.name
        frames = sorted(raw_dir.glob("*.png"))
        if not frames:
            raise FileNotFoundError(f"no raw frames in {raw_dir}")
        frame0 = raw_dir / "HV110_P0500510000.png"
        raw = frame0 if frame0.is_file() else frames[0]
        clean = _unit(_imread(fov / "avg50.png"))
        yield _pair(f"fov{fov.name}", _unit(_imread(raw)), clean, "gray", crop, "fmd-confocal")


def load_fmd_nd(root: Path, crop: int | None = None, limit: int | None = None, **_) -> Iterator[Sample]:
    """The other FMD pairs: FISH, BPAE_R (gray), WideField BPAE (RGB), the 3-slice BPAE R/G/B stack."""
    base = root / "fmd-nd-samples"
    r_fov1 = "confocal_bpae_r_fov1"
    pairs = [
        ("Confocal_FISH_3", "2D_raw/Confocal_FISH_3.png", "2D_gt/gt_Confocal_FISH_3.png", "gray"),
        ("Confocal_BPAE_R_1", f"{r_fov1}/image_R_1_001.png", f"{r_fov1}/image_R_1_avg50.png", "gray"),
        ("WideField_BPAE_rgb", "2D_raw/WideField_BPAE_raw_rgb_new1.png", "2D_gt/WideField_BPAE_gt_rgb_new1.png", "rgb"),
        ("Confocal_BPAE_stack", "3D_raw/3D_volume_raw_stack1_32bit.tif", "3D_gt/3D_volume_gt_stack1_32bit.tif",
         "stack"),
    ]
    for name, raw, gt, kind in pairs[:limit]:
        noisy, clean = _imread(base / raw), _imread(base / gt)
        if kind == "rgb":
            noisy, clean = noisy[..., :3], clean[..., :3]
        yield _pair(name, _unit(noisy), _unit(clean), kind, crop, "fmd-nd")


GIGADB_NAMES = ("nucleus", "mito-confocal", "membrane", "actin-60x-noise1", "mito-60x-noise1")


def _gigadb_gray(array: np.ndarray) -> np.ndarray:
    # Pseudo-colour PNGs: the signal is in one channel (or two equal ones), the rest is zero.
    return array.max(axis=-1) if array.ndim == 3 else array


def load_gigadb(root: Path, crop: int | None = None, limit: int | None = None, **_) -> Iterator[Sample]:
    """GigaDB low-SNR vs high-SNR pairs, gray, compared after an affine fit."""
    base = root / "gigadb-samples"
    for name in GIGADB_NAMES[:limit]:
        noisy = _gigadb_gray(_imread(base / "low_snr" / f"{name}-lowsnr-sample.png"))
        clean = _gigadb_gray(_imread(base / "high_snr" / f"{name}-highsnr-sample.png"))
        yield _pair(name, _unit(noisy), _unit(clean), "gray", crop, "gigadb", compare="affine")


def _kodak_files(root: Path) -> list[Path]:
    files = sorted((root / "kodak24").glob("kodim*.png"))
    if not files:
        raise FileNotFoundError(f"no kodim*.png in {root / 'kodak24'}")
    return files


def load_kodak_gauss(root: Path, crop: int | None = None, limit: int | None = None, *, sigma: float = 25.0,
                     seed: int = 2025, **_) -> Iterator[Sample]:
    """Kodak24 RGB + Gaussian noise of standard deviation ``sigma`` (in 0-255 units), not clipped."""
    for index, path in enumerate(_kodak_files(root)[:limit]):
        clean = center_crop(_unit(_imread(path)[..., :3]), crop, "rgb")
        rng = np.random.default_rng([seed, index])
        noisy = clean + rng.standard_normal(clean.shape, dtype=np.float32) * np.float32(sigma / 255.0)
        yield Sample(path.stem, np.ascontiguousarray(noisy), np.ascontiguousarray(clean), "rgb", "kodak-gauss25")


def load_kodak_poisson(root: Path, crop: int | None = None, limit: int | None = None, *, peak: float = 30.0,
                       seed: int = 2026, **_) -> Iterator[Sample]:
    """Kodak24 as gray + Poisson noise with ``peak`` expected photons at white: Poisson(peak * x) / peak."""
    from skimage.color import rgb2gray

    for index, path in enumerate(_kodak_files(root)[:limit]):
        clean = center_crop(rgb2gray(_unit(_imread(path)[..., :3])).astype(np.float32), crop, "gray")
        rng = np.random.default_rng([seed, index])
        noisy = (rng.poisson(clean.astype(np.float64) * peak) / peak).astype(np.float32)
        yield Sample(path.stem, noisy, np.ascontiguousarray(clean), "gray", "kodak-poisson30")


def load_cbsd68_gauss(root: Path, crop: int | None = None, limit: int | None = None, *, sigma: float = 25.0,
                      seed: int = 2027, **_) -> Iterator[Sample]:
    """Held-out colour set: CBSD68 RGB (sorted by name) + Gaussian noise of ``sigma`` (0-255 units), not clipped.

    Not in DEFAULT_DATASETS: nothing is tuned on it, it checks what was tuned on kodak24."""
    files = sorted((root / "cbsd68").glob("*.png"))
    if not files:
        raise FileNotFoundError(f"no *.png in {root / 'cbsd68'}")
    for index, path in enumerate(files[:limit]):
        clean = center_crop(_unit(_imread(path)[..., :3]), crop, "rgb")
        rng = np.random.default_rng([seed, index])
        noisy = clean + rng.standard_normal(clean.shape, dtype=np.float32) * np.float32(sigma / 255.0)
        yield Sample(path.stem, np.ascontiguousarray(noisy), np.ascontiguousarray(clean), "rgb", "cbsd68-gauss25")


DATASETS: dict[str, Callable[..., Iterator[Sample]]] = {
    "fmd-confocal": load_fmd_confocal,
    "fmd-nd": load_fmd_nd,
    "gigadb": load_gigadb,
    "kodak-gauss25": load_kodak_gauss,
    "kodak-poisson30": load_kodak_poisson,
    "cbsd68-gauss25": load_cbsd68_gauss,
}
#: what quality.py runs by default; cbsd68-gauss25 is held out (checks, not tuning)
DEFAULT_DATASETS = ("fmd-confocal", "fmd-nd", "gigadb", "kodak-gauss25", "kodak-poisson30")


def load(dataset: str, root: Path, crop: int | None = None, limit: int | None = None, **options) -> Iterator[Sample]:
    """Samples of one dataset (a key of ``DATASETS``); ``options``: ``sigma``, ``peak`` for the kodak sets."""
    if dataset not in DATASETS:
        raise ValueError(f"unknown dataset {dataset!r}; choose from {', '.join(DATASETS)}")
    return DATASETS[dataset](root, crop=crop, limit=limit, **options)


# ---------------------------------------------------------------------------------------------- stacks
# Noisy / clean (planes, H, W) stacks for stacks.py ((planes, H, W, 3) for colour-still); the clean stack is
# broadcast where every plane shows the same scene.

STACKS = ("synthetic", "fmd-fovs", "fmd-timelapse", "fmd-3slice", "colour-still")


def synthetic_stack(planes: int, side: int, seed: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Smooth 3-D blobs sampled every few slices (adjacent planes alike), Poisson (30 photons at white) +
    Gaussian (sigma 0.03) noise."""
    from scipy.ndimage import gaussian_filter
    from skimage.data import binary_blobs

    volume = binary_blobs(length=side, n_dim=3, volume_fraction=0.2, blob_size_fraction=0.08, rng=seed)
    volume = gaussian_filter(volume.astype(np.float32), 1.5)[:: max(1, side // planes)][:planes]
    clean = (0.05 + 0.9 * volume / volume.max()).astype(np.float32)
    rng = np.random.default_rng(seed)
    noisy = rng.poisson(clean * 30) / 30 + rng.normal(0, 0.03, clean.shape)
    return noisy.astype(np.float32), clean


def colour_still_stack(planes: int, side: int, seed: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """A colour time-lapse of a still scene: scikit-image's astronaut (centre 256x256, resized to ``side``),
    fresh Gaussian noise (sigma 25/255) in every frame."""
    from skimage.data import astronaut
    from skimage.transform import resize

    picture = astronaut()[128:384, 128:384].astype(np.float32) / 255.0
    clean = resize(picture, (side, side, 3), anti_aliasing=True).astype(np.float32)
    rng = np.random.default_rng(seed)
    noisy = clean[None] + rng.normal(0, 25 / 255, (planes, *clean.shape))
    return noisy.astype(np.float32), np.broadcast_to(clean, noisy.shape)


def load_stack(name: str, planes: int, crop: int, data: str | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(noisy, clean) of one of ``STACKS``, at most ``planes`` planes, centre-cropped to ``crop``:

    ``synthetic`` and ``colour-still`` (above; ``crop`` is their side), ``fmd-fovs`` (frame 0 of each FMD
    Confocal_BPAE_B field of view: planes as different as a time-lapse with cuts), ``fmd-timelapse`` (the
    raw frames of FOV 1: a time-lapse of a fixed sample, every frame against the avg50 ground truth),
    ``fmd-3slice`` (the 3-plane FMD R/G/B z-stack: three stains)."""
    if name == "synthetic":
        return synthetic_stack(planes, crop)
    if name == "colour-still":
        return colour_still_stack(planes, crop)
    root = require_data_root(data)
    if name == "fmd-fovs":
        samples = list(load("fmd-confocal", root, crop=crop, limit=planes))
        return np.stack([s.noisy for s in samples]), np.stack([s.clean for s in samples])
    if name == "fmd-timelapse":
        base = root / "fmd-confocal-bpae-b"
        frames = sorted((base / "raw" / "1").glob("*.png"))[:planes]
        if not frames:
            raise FileNotFoundError(f"no raw frames in {base / 'raw' / '1'}")
        noisy = center_crop(np.stack([_unit(_imread(f)) for f in frames]), crop, "stack")
        clean = center_crop(_unit(_imread(base / "gt" / "1" / "avg50.png")), crop, "gray")
        return noisy, np.broadcast_to(clean, noisy.shape)
    if name == "fmd-3slice":
        sample = next(s for s in load("fmd-nd", root) if s.kind == "stack")
        return center_crop(sample.noisy, crop, "stack")[:planes], center_crop(sample.clean, crop, "stack")[:planes]
    raise ValueError(f"unknown stack {name!r}; choose from {', '.join(STACKS)}")


if __name__ == "__main__":  # a quick inventory: python benchmarks/datasets.py [--crop N]
    import argparse

    from metrics import score

    parser = argparse.ArgumentParser(description="List the benchmark pairs and their noisy-input PSNR / SSIM.")
    parser.add_argument("--data", default=None)
    parser.add_argument("--crop", type=int, default=256)
    parser.add_argument("--limit", type=int, default=None)
    args = parser.parse_args()
    root = require_data_root(args.data)
    for key in DATASETS:
        for s in load(key, root, crop=args.crop, limit=args.limit):
            psnr, ssim = score(s.noisy, s.clean, s.kind, s.compare)
            print(f"{key:16s} {s.name:22s} {s.kind:5s} {str(s.noisy.shape):15s} {s.noisy.dtype} "
                  f"clean [{s.clean.min():.3f}, {s.clean.max():.3f}]  noisy PSNR {psnr:6.2f} SSIM {ssim:.3f}")
