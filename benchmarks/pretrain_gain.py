"""What pre-training buys: fill PSNR / SSIM with pre-trained weights against a random initialisation.

Same seeds, same inputs, ``--iterations`` fill iterations (default 200, the fast preset's from a random start) on
FMD confocal (gray model), kodak24 with Gaussian noise sigma 25 (RGB model) and with Poisson noise (gray model);
for the checkpoints given (``--gray``, ``--rgb``) or for a series of snapshots saved during pre-training
(``--history DIR`` of ``gray-pixel-<step>.pt`` / ``rgb-channel-<step>.pt``, as ``napari-mpi pretrain --history``
writes them), to plot the gain against pre-training steps. Run from the repository root::

    python benchmarks/pretrain_gain.py --gray src/napari_mpi/weights/gray-pixel.pt --crop 128 --out pretrain_gain.json
    python benchmarks/pretrain_gain.py --history history/ --crop 96 --limit 6 --out pretrain_gain.json
    python benchmarks/pretrain_gain.py --export-samples pairs.npz --crop 128 --limit 6   # for a machine without data
    python benchmarks/pretrain_gain.py --samples pairs.npz --history history/ --device cuda --out pretrain_gain.json

``--out FILE.json`` is what ``plots.py --pretrain`` draws.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from pathlib import Path

import numpy as np
from datasets import Sample, load, require_data_root, run_record, write_json
from metrics import score

import napari_mpi
from napari_mpi.weights import load_checkpoint

#: dataset -> which model serves it
DATASET_MODEL = {"fmd-confocal": "gray", "kodak-gauss25": "rgb", "kodak-poisson30": "gray"}
HISTORY_NAME = re.compile(r"(gray-pixel|rgb-channel)-(\d+)\.pt")


def export_samples(path: Path, root: Path, datasets: list[str], crop: int, limit: int | None) -> None:
    """Save the benchmark pairs to one .npz, for a machine without the shared data (a GPU one)."""
    arrays, index = {}, []
    for dataset in datasets:
        for i, sample in enumerate(load(dataset, root, crop=crop, limit=limit)):
            # fp16 halves the file; its rounding (< 5e-4) is far under the noise
            arrays[f"{dataset}/{i}/noisy"] = sample.noisy.astype(np.float16)
            arrays[f"{dataset}/{i}/clean"] = sample.clean.astype(np.float16)
            index.append([dataset, i, sample.name, sample.kind, sample.compare])
    np.savez_compressed(path, index=json.dumps(index), **arrays)


def import_samples(path: Path) -> dict[str, list[Sample]]:
    data = np.load(path)
    samples: dict[str, list[Sample]] = {}
    for dataset, i, name, kind, compare in json.loads(str(data["index"])):
        noisy = data[f"{dataset}/{i}/noisy"].astype(np.float32)
        clean = data[f"{dataset}/{i}/clean"].astype(np.float32)
        samples.setdefault(dataset, []).append(Sample(name, noisy, clean, kind, dataset, compare))
    return samples


def evaluate(weights: str, samples: list[Sample], iterations: int, mask_ratio: float | None, device: str) -> dict:
    """Mean PSNR / SSIM / seconds of ``napari_mpi.denoise`` from ``weights`` over ``samples``."""
    psnrs, ssims, seconds = [], [], []
    for sample in samples:
        start = time.perf_counter()
        out = napari_mpi.denoise(sample.noisy, rgb=sample.kind == "rgb", weights=weights, iterations=iterations,
                                 mask_ratio=mask_ratio, seed=0, device=device)
        seconds.append(time.perf_counter() - start)
        psnr, ssim = score(out, sample.clean, sample.kind, sample.compare)
        psnrs.append(psnr)
        ssims.append(ssim)
    return {"psnr": float(np.mean(psnrs)), "ssim": float(np.mean(ssims)), "seconds": float(np.mean(seconds)),
            "per_image_psnr": psnrs}


def candidates(args: argparse.Namespace) -> dict[str, list[tuple[int, Path | None]]]:
    """Per model ("gray", "rgb"): (pre-training steps, checkpoint) pairs, the random start as (0, None) first."""
    found: dict[str, list[tuple[int, Path | None]]] = {"gray": [(0, None)], "rgb": [(0, None)]}
    for model, path in (("gray", args.gray), ("rgb", args.rgb)):
        if path is not None:
            found[model].append((int(load_checkpoint(path).metadata.get("steps", -1)), path))
    if args.history:
        for path in sorted(args.history.glob("*.pt")):
            match = HISTORY_NAME.fullmatch(path.name)
            if match:
                found["gray" if match[1] == "gray-pixel" else "rgb"].append((int(match[2]), path))
    return {model: sorted(pairs, key=lambda pair: pair[0]) for model, pairs in found.items()}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--gray", type=Path, help="gray (pixel-mask) checkpoint")
    parser.add_argument("--rgb", type=Path, help="RGB (channel-mask) checkpoint")
    parser.add_argument("--history", type=Path, help="folder of <gray-pixel|rgb-channel>-<step>.pt snapshots")
    parser.add_argument("--datasets", nargs="+", default=list(DATASET_MODEL), choices=list(DATASET_MODEL))
    parser.add_argument("--crop", type=int, default=128, help="centre crop side (default 128)")
    parser.add_argument("--limit", type=int, default=None, help="at most K images per dataset")
    parser.add_argument("--iterations", type=int, default=200, help="fill iterations (default 200)")
    parser.add_argument("--mask-ratio", type=float, default=None)
    parser.add_argument("--threads", type=int, default=0, help="torch.set_num_threads (0 = torch's choice)")
    parser.add_argument("--data", default=None, help="shared data folder (default $NAPARI_MPI_DATA or ../shared/data)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--export-samples", type=Path, help="write the (cropped) pairs to this .npz and stop")
    parser.add_argument("--samples", type=Path, help="read the pairs from an .npz made by --export-samples")
    parser.add_argument("--out", type=Path, help="write the rows as JSON (what plots.py --pretrain reads)")
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    if args.samples:
        sets = import_samples(args.samples)
    else:
        root = require_data_root(args.data)
        if args.export_samples:
            export_samples(args.export_samples, root, args.datasets, args.crop, args.limit)
            return 0
        sets = {d: list(load(d, root, crop=args.crop, limit=args.limit)) for d in args.datasets}
    config = {k: v for k, v in vars(args).items() if k != "out"}
    record = run_record(config, argv) | {"rows": []}
    starts = candidates(args)
    for dataset in args.datasets:
        for steps, path in starts[DATASET_MODEL[dataset]]:
            weights = str(path) if path else "random"
            row = evaluate(weights, sets[dataset][: args.limit], args.iterations, args.mask_ratio, args.device)
            row.update(dataset=dataset, weights=weights, steps=steps)
            if path is not None:
                recipe = load_checkpoint(path).metadata
                row.update(batch=recipe.get("batch"), crop=recipe.get("crop"))
            record["rows"].append(row)
            print(f"{dataset:16s} {weights:50s} steps {steps:6d}  PSNR {row['psnr']:.2f}  SSIM {row['ssim']:.4f}"
                  f"  {row['seconds']:.1f} s/image", file=sys.stderr, flush=True)
            if args.out:
                write_json(args.out, record)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
