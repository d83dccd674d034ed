"""How good a pre-trained prior is, measured directly: PSNR of the pixels a random mask hid from clean
images the network never trained on, predicted in one forward pass.

This is the task pre-training optimises, scored on held-out images (set12 and bsd68 for gray
checkpoints, kodak24 for RGB ones: evaluation sets, never in the pre-training corpus), so it compares
pre-training recipes (MSE vs the reference code's log-MSE loss, steps, mask ratios) without the fill's
own dynamics in the way. The network runs as in the fill: one image at a time, BatchNorm in training
mode (statistics of that image). Every checkpoint sees the same crops and masks.

    python benchmarks/masked_validation.py runs/loss/mse.pt runs/loss/psnr.pt --ratios 0.3,0.6
    python benchmarks/masked_validation.py --history runs/loss/hist-mse --out validation.json
"""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from datasets import center_crop, machine_info, require_data_root

from napari_mpi.fill import build_model
from napari_mpi.masking import draw_mask, make_generator
from napari_mpi.weights import Checkpoint, load_checkpoint

GRAY_SETS = ("set12", "bsd68")
RGB_SETS = ("kodak24",)


def clean_crops(root: Path, channels: int, crop: int, limit: int | None) -> list[np.ndarray]:
    """Centre crops in [0, 1]: (crop, crop) gray or (crop, crop, 3) RGB."""
    from skimage import io
    from skimage.color import rgb2gray

    crops = []
    for folder in GRAY_SETS if channels == 1 else RGB_SETS:
        for path in sorted((root / folder).glob("*.png"))[:limit]:
            image = io.imread(path)
            image = image[..., :3] if image.ndim == 3 else image
            unit = image.astype(np.float32) / 255.0
            if channels == 1 and unit.ndim == 3:
                unit = rgb2gray(unit).astype(np.float32)
            crops.append(center_crop(unit, crop, "rgb" if channels == 3 else "gray"))
    return crops


@torch.no_grad()
def masked_psnr(checkpoint: Checkpoint, crops: list[np.ndarray], ratio: float, masks: int, seed: int = 0) -> dict:
    """Mean over crops of the PSNR (data range 1) at hidden pixels, pooled over ``masks`` masks each."""
    model = build_model(checkpoint.channels, checkpoint.state_dict, seed, torch.device("cpu"))
    model.train()  # BatchNorm uses the image's statistics, as in the fill
    generator = make_generator(seed, "cpu")
    scores = []
    for crop in crops:
        x = torch.from_numpy(crop[None] if crop.ndim == 2 else crop.transpose(2, 0, 1).copy())[None]
        squared, hidden_count = 0.0, 0.0
        for _ in range(masks):
            keep = draw_mask(x.shape, ratio, checkpoint.mask_mode, generator, "cpu")
            hidden = 1.0 - keep
            prediction = model(torch.cat([x * keep, keep], dim=1))
            squared += float(((prediction - x) ** 2 * hidden).sum())
            hidden_count += float(hidden.sum())
        scores.append(10.0 * math.log10(hidden_count / squared))
    return {"psnr": float(np.mean(scores)), "images": len(scores)}


def step_of(path: Path) -> int:
    match = re.search(r"-(\d+)\.pt$", path.name)
    return int(match.group(1)) if match else -1


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoints", nargs="*", type=Path, help="checkpoint files (napari-mpi pretrain)")
    parser.add_argument("--history", type=Path, action="append", default=[],
                        help="a folder of <name>-<step>.pt snapshots (pretrain --history); may repeat")
    parser.add_argument("--ratios", default="0.3", help="comma-separated mask ratios (default 0.3)")
    parser.add_argument("--crop", type=int, default=128)
    parser.add_argument("--limit", type=int, default=None, help="at most K images per set")
    parser.add_argument("--masks", type=int, default=4, help="masks per image (default 4)")
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--data", default=None)
    parser.add_argument("--out", type=Path, help="JSON results")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    paths = list(args.checkpoints)
    for folder in args.history:
        paths += sorted(folder.glob("*.pt"), key=step_of)
    if not paths:
        parser.error("give checkpoint files or --history folders")
    root = require_data_root(args.data)
    ratios = [float(r) for r in args.ratios.split(",")]
    crops_by_channels: dict[int, list[np.ndarray]] = {}
    rows = []
    print("| checkpoint | step | loss | " + " | ".join(f"ratio {r:g}" for r in ratios) + " |")
    print("|---|---:|---|" + "---:|" * len(ratios))
    for path in paths:
        checkpoint = load_checkpoint(path)
        crops = crops_by_channels.setdefault(
            checkpoint.channels, clean_crops(root, checkpoint.channels, args.crop, args.limit))
        row = {"checkpoint": str(path), "step": checkpoint.metadata.get("steps", step_of(path)),
               "loss": checkpoint.metadata.get("loss"), "results": {}}
        for ratio in ratios:
            row["results"][str(ratio)] = masked_psnr(checkpoint, crops, ratio, args.masks)
        rows.append(row)
        cells = " | ".join(f"{row['results'][str(r)]['psnr']:.2f}" for r in ratios)
        print(f"| {path.name} | {row['step']} | {row['loss']} | {cells} |", flush=True)
    if args.out:
        args.out.write_text(json.dumps({"config": {k: str(v) for k, v in vars(args).items()},
                                        "machine": machine_info(), "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
