"""What pre-training buys: fill PSNR/SSIM at the fast preset with pre-trained weights vs random
initialisation (same seeds, same inputs), on FMD confocal (gray model) and kodak24 crops with
Gaussian sigma=25 (RGB model) and Poisson noise (gray model); optionally for a series of
checkpoints saved during pre-training, to plot the gain against pre-training steps.

    python benchmarks/pretrain_gain.py --gray src/napari_mpi/weights/gray-pixel.pt \
        --rgb src/napari_mpi/weights/rgb-channel.pt --crop 128 --out gain.json
    python benchmarks/pretrain_gain.py --history runs/history --crop 96 --limit 6 --plot docs/pretrain_gain.png
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from datasets import Sample, load, machine_info, require_data_root  # noqa: E402
from quality import metrics  # noqa: E402

import napari_mpi  # noqa: E402

#: dataset -> which model serves it
DATASET_MODEL = {"fmd-confocal": "gray", "kodak-gauss25": "rgb", "kodak-poisson30": "gray"}


def export_samples(path: Path, root: Path, datasets: list[str], crop: int, limit: int | None) -> None:
    """Save the benchmark pairs to one .npz, for a machine without the shared data (the GPU one)."""
    arrays, index = {}, []
    for dataset in datasets:
        for i, sample in enumerate(load(dataset, root, crop=crop, limit=limit)):
            # fp16 halves the file (what the device call may carry); its rounding (< 5e-4) is far under the noise
            arrays[f"{dataset}/{i}/noisy"] = sample.noisy.astype(np.float16)
            arrays[f"{dataset}/{i}/clean"] = sample.clean.astype(np.float16)
            index.append([dataset, i, sample.name, sample.kind, sample.compare])
    np.savez_compressed(path, index=json.dumps(index), **arrays)


def import_samples(path: Path) -> dict[str, list[Sample]]:
    data = np.load(path)
    samples: dict[str, list[Sample]] = {}
    for dataset, i, name, kind, compare in json.loads(str(data["index"])):
        samples.setdefault(dataset, []).append(
            Sample(name, data[f"{dataset}/{i}/noisy"].astype(np.float32), data[f"{dataset}/{i}/clean"].astype(np.float32),
                   kind, dataset, compare))
    return samples


def evaluate(weights, samples: list[Sample], iterations: int, mask_ratio: float | None, device: str) -> dict:
    psnrs, ssims, seconds = [], [], []
    for sample in samples:
        start = time.perf_counter()
        out = napari_mpi.denoise(sample.noisy, rgb=sample.kind == "rgb", weights=weights, iterations=iterations,
                                 mask_ratio=mask_ratio, seed=0, device=device)
        seconds.append(time.perf_counter() - start)
        psnr, ssim = metrics(out, sample.clean, sample.kind, sample.compare)
        psnrs.append(psnr)
        ssims.append(ssim)
    return {"psnr": float(np.mean(psnrs)), "ssim": float(np.mean(ssims)), "seconds": float(np.mean(seconds)),
            "per_image_psnr": psnrs}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--gray", type=Path, help="gray (pixel-mask) checkpoint")
    parser.add_argument("--rgb", type=Path, help="RGB (channel-mask) checkpoint")
    parser.add_argument("--history", type=Path, help="folder of <gray-pixel|rgb-channel>-<step>.pt snapshots")
    parser.add_argument("--datasets", nargs="+", default=list(DATASET_MODEL))
    parser.add_argument("--crop", type=int, default=128)
    parser.add_argument("--limit", type=int, default=None)
    parser.add_argument("--iterations", type=int, default=200)
    parser.add_argument("--mask-ratio", type=float, default=None)
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--data", default=None)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--export-samples", type=Path, help="write the (cropped) pairs to this .npz and stop")
    parser.add_argument("--samples", type=Path, help="read the pairs from an .npz made by --export-samples")
    parser.add_argument("--out", type=Path, help="JSON results")
    parser.add_argument("--plot", type=Path, help="PNG of gain vs pre-training steps (with --history)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.samples:
        sets = import_samples(args.samples)
    else:
        root = require_data_root(args.data)
        if args.export_samples:
            export_samples(args.export_samples, root, args.datasets, args.crop, args.limit)
            return 0
        sets = {d: list(load(d, root, crop=args.crop, limit=args.limit)) for d in args.datasets}

    candidates: dict[str, list[tuple[int, Path | None]]] = {"gray": [(0, None)], "rgb": [(0, None)]}
    for model, path in (("gray", args.gray), ("rgb", args.rgb)):
        if path is not None:
            steps = napari_mpi.weights.load_checkpoint(path).metadata.get("steps", -1)
            candidates[model].append((int(steps), path))
    if args.history:
        for path in sorted(args.history.glob("*.pt")):
            match = re.fullmatch(r"(gray-pixel|rgb-channel)-(\d+)\.pt", path.name)
            if match:
                candidates["gray" if match[1] == "gray-pixel" else "rgb"].append((int(match[2]), path))
    results = {"machine": machine_info(), "crop": args.crop, "limit": args.limit, "iterations": args.iterations,
               "mask_ratio": args.mask_ratio, "rows": []}
    for dataset in args.datasets:
        model = DATASET_MODEL[dataset]
        for steps, path in sorted(candidates[model], key=lambda item: item[0]):
            row = evaluate(str(path) if path else "random", sets[dataset][: args.limit], args.iterations,
                           args.mask_ratio, args.device)
            row.update(dataset=dataset, weights=str(path) if path else "random", steps=steps)
            if path is not None:
                recipe = napari_mpi.weights.load_checkpoint(path).metadata
                row.update(batch=recipe.get("batch"), crop=recipe.get("crop"))
            results["rows"].append(row)
            print(f"{dataset:16s} {row['weights']:50s} steps {steps:6d}  PSNR {row['psnr']:.2f}  SSIM {row['ssim']:.4f}"
                  f"  {row['seconds']:.1f} s/image", flush=True)
            if args.out:
                args.out.write_text(json.dumps(results, indent=1))
    if args.plot:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(6, 4))
        for dataset in args.datasets:
            rows = sorted((r for r in results["rows"] if r["dataset"] == dataset), key=lambda r: r["steps"])
            base = next(r["psnr"] for r in rows if r["weights"] == "random")
            ax.plot([r["steps"] for r in rows], [r["psnr"] - base for r in rows], "o-", label=dataset)
        ax.axhline(0, color="gray", lw=0.8)
        recipes = {(r.get("batch"), r.get("crop")) for r in results["rows"] if r["weights"] != "random"}
        recipe = ""
        if len(recipes) == 1:
            batch, crop = recipes.pop()
            recipe = f" (batch {batch} of {crop}x{crop} crops)"
        ax.set_xlabel(f"pre-training steps{recipe}")
        ax.set_ylabel("PSNR gain over random init (dB)")
        ax.set_title(f"fast preset ({args.iterations} iterations), {args.crop}px crops")
        ax.legend()
        fig.tight_layout()
        fig.savefig(args.plot, dpi=100)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
