"""Does a random flip / rotation of each fill step's input help (issue 7, "test-time flips/rotations")?

Each training step of the fill shows the network its masked plane in one of the 8 orientations of the
square (random per step) and turns the prediction back, so the running mean averages predictions made
in all orientations at no extra cost per step. This compares, per image, the default settings with and
without it (PSNR, SSIM), by wrapping the network that ``napari_mpi.fill.build_model`` returns.

    python benchmarks/augment_study.py --datasets fmd-confocal kodak-poisson30 --crop 256 --limit 8 \\
        --out runs/augment/a.json
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from datasets import load, parse_study_args, report_variants, require_data_root
from quality import metrics

import napari_mpi
from napari_mpi import fill


class RandomOrientation(nn.Module):
    """Runs the wrapped network on one of the 8 orientations of its input, turned back afterwards."""

    def __init__(self, inner: nn.Module, seed: int, flips_only: bool = False):
        super().__init__()
        self.inner = inner
        self.generator = torch.Generator().manual_seed(seed)
        self.choices = 4 if flips_only else 8

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        choice = int(torch.randint(self.choices, (1,), generator=self.generator))
        if self.choices == 8:  # dihedral: 0-3 quarter turns, each with or without a mirror
            turns, dims_flip = choice // 2, ([-1] if choice % 2 else [])
        else:  # flips only: none, left-right, up-down, both
            turns, dims_flip = 0, [[], [-1], [-2], [-2, -1]][choice]
        if dims_flip:
            x = torch.flip(x, dims_flip)
        if turns:
            x = torch.rot90(x, turns, (-2, -1))
        y = self.inner(x.contiguous(memory_format=torch.channels_last))
        if turns:
            y = torch.rot90(y, -turns, (-2, -1))
        if dims_flip:
            y = torch.flip(y, dims_flip)
        return y


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--datasets", nargs="+", default=["fmd-confocal", "kodak-poisson30"])
    parser.add_argument("--crop", type=int, default=256)
    parser.add_argument("--limit", type=int, default=8)
    parser.add_argument("--variants", default="plain,dihedral", help="plain, dihedral, flips")
    parser.add_argument("--iterations", type=int, default=None)
    args = parse_study_args(parser, argv)
    root = require_data_root(args.data)
    original = fill.build_model
    rows = []
    for dataset in args.datasets:
        for sample in load(dataset, root, crop=args.crop, limit=args.limit):
            row = {"dataset": dataset, "image": sample.name}
            for variant in args.variants.split(","):
                def build(channels, state_dict, seed, device, variant=variant):
                    model = original(channels, state_dict, seed, device)
                    if variant == "plain":
                        return model
                    return RandomOrientation(model, seed, flips_only=variant == "flips")

                fill.build_model = build
                try:
                    start = time.perf_counter()
                    out = napari_mpi.denoise(sample.noisy, rgb=sample.kind == "rgb", iterations=args.iterations)
                    seconds = time.perf_counter() - start
                finally:
                    fill.build_model = original
                psnr, ssim = metrics(out, sample.clean, sample.kind, sample.compare)[:2]
                row[variant] = {"psnr": psnr, "ssim": ssim, "seconds": seconds}
            rows.append(row)
            scores = "  ".join(f"{v} {row[v]['psnr']:.2f}" for v in args.variants.split(","))
            print(dataset, sample.name, scores, flush=True)
    report_variants(rows, args.variants.split(","), args.out, args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
