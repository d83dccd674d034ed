"""Colour photos without an RGB prior: how should they use the shipped gray weights?

No RGB checkpoint ships (the one trained beat no random start), so until session 7 colour images filled from a
random start with the paper's 200 iterations and trailed BM3D by >1 dB on kodak24 with Gaussian noise (issue 7).
This compares, per image:

- ``rgb`` / ``rgbN``: the RGB network from a random start, the fast preset's 200 (or N) iterations;
- ``inflated`` / ``inflatedN`` / ``inflatedNbB``: the gray weights spread over the colour channels
  (``Checkpoint.as_colour``, the default start for colour since session 7), 100 (or N) iterations, beta 0.9 (or B),
  at that start's learning rate (``fill.START_LR``, 4e-3; session 7's first runs predate it and used 2e-3);
- ``rgb-quality`` / ``inflated-quality``: the quality preset from either start;
- ``opponent``: CBM3D's trick, an orthonormal opponent transform (so i.i.d. noise stays i.i.d. with the same
  sigma), each of the three planes denoised with the gray default (shipped weights, 100 iterations), then back;
- ``channels``: each of R, G, B denoised with the gray default.

    python benchmarks/color_study.py --datasets kodak-gauss25 --crop 256 --limit 6 --variants rgb,inflated200 \
        --out runs/color/c.json

``--lr`` sets the fill's learning rate for every variant.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from datasets import load, parse_study_args, report_variants, require_data_root
from quality import metrics

import napari_mpi
from napari_mpi.weights import Checkpoint, default_checkpoint

#: rows: luminance, red-blue, green-magenta; orthonormal, so OPPONENT.T inverts it
OPPONENT = np.array([
    [1 / np.sqrt(3), 1 / np.sqrt(3), 1 / np.sqrt(3)],
    [1 / np.sqrt(2), 0.0, -1 / np.sqrt(2)],
    [1 / np.sqrt(6), -2 / np.sqrt(6), 1 / np.sqrt(6)],
])


def as_gray_planes(image: np.ndarray, matrix: np.ndarray | None) -> np.ndarray:
    """(H, W, 3) -> (3, H, W), through ``matrix`` when given."""
    planes = np.moveaxis(image.astype(np.float64), -1, 0)
    return planes if matrix is None else np.tensordot(matrix, planes, axes=1)


def from_gray_planes(planes: np.ndarray, matrix: np.ndarray | None) -> np.ndarray:
    restored = planes if matrix is None else np.tensordot(matrix.T, planes, axes=1)
    return np.moveaxis(restored, 0, -1).astype(np.float32)


def inflated_checkpoint() -> Checkpoint:
    """The shipped gray weights as an RGB network (``Checkpoint.as_colour``)."""
    return default_checkpoint(1, "pixel", 0.3).as_colour()


def denoise(noisy: np.ndarray, variant: str, lr: float | None = None) -> np.ndarray:
    if variant in ("rgb-quality", "inflated-quality"):  # the quality preset from either start
        weights = "random" if variant == "rgb-quality" else inflated_checkpoint()
        return napari_mpi.denoise(noisy, rgb=True, weights=weights, preset="quality", lr=lr)
    if variant.startswith("rgb"):  # e.g. rgb300: the RGB network from a random start, 300 iterations
        count = variant.removeprefix("rgb")
        return napari_mpi.denoise(noisy, rgb=True, weights="random", iterations=int(count) if count else None,
                                  lr=lr)
    if variant.startswith("inflated"):  # e.g. inflated300b0.95: the gray prior as RGB, 300 iterations, beta 0.95
        count, _, beta = variant.removeprefix("inflated").partition("b")
        return napari_mpi.denoise(noisy, rgb=True, weights=inflated_checkpoint(), iterations=int(count or 100),
                                  beta=float(beta) if beta else None, lr=lr)
    matrix = OPPONENT if variant == "opponent" else None
    planes = as_gray_planes(noisy, matrix)
    # each plane alone (not as a stack): a stack would share one normalisation-free network across planes
    out = np.stack([napari_mpi.denoise(plane.astype(np.float32), lr=lr) for plane in planes])
    return from_gray_planes(out, matrix)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--datasets", nargs="+", default=["kodak-gauss25"])
    parser.add_argument("--crop", type=int, default=256)
    parser.add_argument("--limit", type=int, default=6)
    parser.add_argument("--variants", default="rgb,opponent,channels")
    parser.add_argument("--lr", type=float, default=None, help="the fill's learning rate (default 2e-3)")
    args = parse_study_args(parser, argv)
    root = require_data_root(args.data)
    variants = args.variants.split(",")
    rows = []
    for dataset in args.datasets:
        for sample in load(dataset, root, crop=args.crop, limit=args.limit):
            if sample.kind != "rgb":
                continue
            row = {"dataset": dataset, "image": sample.name}
            for variant in variants:
                start = time.perf_counter()
                out = denoise(sample.noisy, variant, args.lr)
                seconds = time.perf_counter() - start
                psnr, ssim = metrics(out, sample.clean, sample.kind, sample.compare)[:2]
                row[variant] = {"psnr": psnr, "ssim": ssim, "seconds": seconds}
            rows.append(row)
            scores = "  ".join(f"{v} {row[v]['psnr']:.2f} ({row[v]['seconds']:.0f} s)" for v in variants)
            print(dataset, sample.name, scores, flush=True)
    report_variants(rows, variants, args.out, args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
