"""Spatially correlated noise: can it be told apart per image, and what does the mask ratio do there?

The paper raises the mask ratio (0.8-0.95) for spatially correlated noise: with 30% of pixels hidden, the
visible neighbours carry the hidden pixel's noise and the fill learns to copy it. This measures:

1. a per-image statistic, the robust noise sigma (median absolute finest-scale Haar diagonal detail) of
   the 2x2-binned image over that of the image: white noise halves under 2x2 averaging (0.5), noise that is
   correlated between neighbours does not; printed for the noisy and the clean images of each dataset;
2. with ``--fill``, kodak24 gray with Gaussian noise filtered by a Gaussian of sigma 1 (correlated, 20 dB PSNR),
   denoised at the default mask ratio and at 0.85.

    python benchmarks/correlated_noise.py --fill --limit 3
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from datasets import load, parse_study_args, require_data_root
from quality import metrics

import napari_mpi


def _bin2(x: np.ndarray) -> np.ndarray:
    h, w = x.shape[0] // 2 * 2, x.shape[1] // 2 * 2
    x = x[:h, :w]
    return 0.25 * (x[0::2, 0::2] + x[1::2, 0::2] + x[0::2, 1::2] + x[1::2, 1::2])


def _haar_sigma(x: np.ndarray) -> float:
    h, w = x.shape[0] // 2 * 2, x.shape[1] // 2 * 2
    x = x[:h, :w]
    diagonal = (x[0::2, 0::2] - x[1::2, 0::2] - x[0::2, 1::2] + x[1::2, 1::2]) / 2
    return float(np.median(np.abs(diagonal)) / 0.6745)


def scale_ratio(image: np.ndarray) -> float:
    """Noise sigma after 2x2 binning over before, averaged over an RGB image's channels (0.5 = white noise)."""
    x = np.asarray(image, dtype=np.float64)
    planes = [x[..., c] for c in range(3)] if x.ndim == 3 and x.shape[-1] == 3 else [x] if x.ndim == 2 else list(x)
    return float(np.mean([_haar_sigma(_bin2(p)) / max(_haar_sigma(p), 1e-12) for p in planes]))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--datasets", nargs="+", default=["fmd-confocal", "fmd-nd", "gigadb", "kodak-poisson30"])
    parser.add_argument("--crop", type=int, default=256)
    parser.add_argument("--limit", type=int, default=19)
    parser.add_argument("--fill", action="store_true", help="also denoise kodak24 with filtered (correlated) noise")
    args = parse_study_args(parser, argv)
    root = require_data_root(args.data)
    for dataset in args.datasets:
        samples = list(load(dataset, root, crop=args.crop, limit=args.limit))
        print(f"{dataset}: noisy {[round(scale_ratio(s.noisy), 2) for s in samples]}")
        print(f"{' ' * len(dataset)}  clean {[round(scale_ratio(s.clean), 2) for s in samples]}")
    if args.fill:
        from scipy.ndimage import gaussian_filter

        rng = np.random.default_rng(0)
        for sample in load("kodak-poisson30", root, crop=args.crop, limit=args.limit):
            clean = sample.clean.astype(np.float64)
            noise = gaussian_filter(rng.normal(0, 1, clean.shape), 1.0)
            noisy = (clean + noise * (0.1 / noise.std())).astype(np.float32)
            scores = {p: metrics(napari_mpi.denoise(noisy, mask_ratio=p), clean, "gray")[0] for p in (0.3, 0.85)}
            print(f"{sample.name}: ratio {scale_ratio(noisy):.2f}, noisy {metrics(noisy, clean, 'gray')[0]:.2f} dB, "
                  + ", ".join(f"mask ratio {p}: {v:.2f} dB" for p, v in scores.items()), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
