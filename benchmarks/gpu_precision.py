"""Does bf16 keep the fill's quality on a GPU? ``precision="auto"`` picks fp32 on CUDA below 1024² because
bf16's PSNR there was never measured. This runs ``napari_mpi.denoise`` at the default settings (the fast
preset, from the shipped weights) in fp32 and in bf16 on scikit-image's bundled 512² pictures (they travel
with the package, unlike ../shared/data) with Poisson (peak 30) and Gaussian (sigma 25/255) noise, and
prints PSNR per image and the mean difference, with seconds per image.

Usage: ``python benchmarks/gpu_precision.py --device cuda [--out results.json]``
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
import napari_mpi

PICTURES = ("camera", "moon", "brick", "grass", "gravel", "astronaut")


def pictures(size: int) -> dict[str, np.ndarray]:
    """Gray [0, 1] float32 crops of scikit-image's bundled pictures."""
    from skimage import color, data

    out = {}
    for name in PICTURES:
        image = getattr(data, name)()
        if image.ndim == 3:
            image = color.rgb2gray(image)
        image = image.astype(np.float64)
        if image.max() > 1.0:
            image = image / 255.0
        out[name] = image[:size, :size].astype(np.float32)
    return out


def psnr(clean: np.ndarray, estimate: np.ndarray) -> float:
    return float(10 * np.log10(1.0 / np.mean((clean.astype(np.float64) - estimate) ** 2)))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--iterations", type=int, default=None, help="default: the preset's count")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    rows = []
    for name, clean in pictures(args.size).items():
        noises = {
            "poisson30": (rng.poisson(clean.astype(np.float64) * 30.0) / 30.0).astype(np.float32),
            "gauss25": (clean + rng.normal(0, 25 / 255, clean.shape)).astype(np.float32),
        }
        for noise, noisy in noises.items():
            row = {"image": name, "noise": noise, "noisy": psnr(clean, noisy)}
            for precision in ("fp32", "bf16"):
                start = time.perf_counter()
                result = napari_mpi.denoise(noisy, device=args.device, precision=precision, iterations=args.iterations)
                row[precision] = psnr(clean, result)
                row[f"{precision}_s"] = time.perf_counter() - start
            rows.append(row)
            print(f"{name:10s} {noise:9s} noisy {row['noisy']:.2f}  fp32 {row['fp32']:.2f} ({row['fp32_s']:.1f} s)  "
                  f"bf16 {row['bf16']:.2f} ({row['bf16_s']:.1f} s)  diff {row['bf16'] - row['fp32']:+.2f}", flush=True)
    diffs = np.array([r["bf16"] - r["fp32"] for r in rows])
    print(f"bf16 - fp32 over {len(rows)} images: mean {diffs.mean():+.3f} dB, worst {diffs.min():+.3f}, best {diffs.max():+.3f}")
    if args.out:
        args.out.write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
