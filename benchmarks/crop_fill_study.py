"""Issue 5: does a fill that trains on random crops of a big plane reach the whole-plane fill's quality sooner?

A fill step costs in proportion to its pixels. Here each step draws a random ``--crop`` x ``--crop`` window of
the plane (the plane's borders drawn as often as its middle), masks it, trains on it and folds its hidden-pixel
predictions into a bias-corrected running mean of the whole plane (predictions within 16 pixels of a window
edge that is not a plane edge are left out: the network sees padding there). The score after several step
counts, with and without the Wiener refinement, is set against the shipped default (whole-plane steps) on the
same plane, with the seconds each took.

    python benchmarks/crop_fill_study.py --datasets fmd-confocal --limit 2 --crop-size 256 --steps 100 200 300 400
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from datasets import load, parse_study_args, require_data_root  # noqa: E402
from quality import metrics  # noqa: E402

import napari_mpi  # noqa: E402
from napari_mpi.fill import DEFAULT_LR, _train_step, build_model  # noqa: E402
from napari_mpi.masking import draw_mask  # noqa: E402
from napari_mpi.planes import normalize  # noqa: E402
from napari_mpi.refine import refine_estimate  # noqa: E402
from napari_mpi.weights import default_checkpoint  # noqa: E402

MARGIN = 16


def crop_fill(x: torch.Tensor, size: int, checkpoints: list[int], beta: float, ratio: float, seed: int = 0):
    """Yield (steps, estimate, seconds) at each checkpoint; ``x`` is (1, 1, H, W), normalised."""
    _, _, height, width = x.shape
    checkpoint = default_checkpoint(1, "pixel", ratio)
    model = build_model(1, checkpoint.state_dict, seed, torch.device("cpu")).to(memory_format=torch.channels_last)
    model.train()
    optimizer = torch.optim.Adam(model.parameters(), lr=DEFAULT_LR)
    generator = torch.Generator().manual_seed(seed)
    rng = np.random.default_rng(seed)
    mean = torch.zeros_like(x[0, 0])
    count = torch.zeros_like(x[0, 0])
    autocast = torch.autocast("cpu", dtype=torch.bfloat16, enabled=torch.ops.mkldnn._is_mkldnn_bf16_supported(),
                              cache_enabled=False)
    start = time.perf_counter()
    size_h, size_w = min(size, height), min(size, width)
    for step in range(1, max(checkpoints) + 1):
        # the border is drawn as often as the middle: clamp a range widened by a quarter crop on each side
        top = int(np.clip(rng.integers(-size_h // 4, height - size_h + size_h // 4 + 1), 0, height - size_h))
        left = int(np.clip(rng.integers(-size_w // 4, width - size_w + size_w // 4 + 1), 0, width - size_w))
        window = x[..., top:top + size_h, left:left + size_w]
        keep = draw_mask(window.shape, ratio, "pixel", generator, torch.device("cpu"))
        hidden = 1.0 - keep
        prediction, _ = _train_step(model, optimizer, window, keep, hidden, autocast)  # the fill's own step
        use = hidden[0, 0].clone()
        if top > 0:
            use[:MARGIN] = 0
        if top + size_h < height:
            use[-MARGIN:] = 0
        if left > 0:
            use[:, :MARGIN] = 0
        if left + size_w < width:
            use[:, -MARGIN:] = 0
        region = (slice(top, top + size_h), slice(left, left + size_w))
        mean[region].add_(use * (1.0 - beta) * (prediction[0, 0] - mean[region]))
        count[region].add_(use)
        if step in checkpoints:
            corrected = torch.where(count > 0, mean / (1.0 - beta**count).clamp_min(1e-12), x[0, 0])
            yield step, corrected.clone(), time.perf_counter() - start


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--datasets", nargs="+", default=["fmd-confocal"])
    parser.add_argument("--limit", type=int, default=2)
    parser.add_argument("--crop-size", type=int, default=256)
    parser.add_argument("--steps", type=int, nargs="+", default=[100, 200, 300, 400])
    parser.add_argument("--beta", type=float, default=0.9)
    args = parse_study_args(parser, argv, threads=1)  # --threads (one per job: two jobs share the 2 cores), --data, --out
    root = require_data_root(args.data)
    rows = []
    for dataset in args.datasets:
        for sample in load(dataset, root, crop=None, limit=args.limit):
            if sample.kind != "gray":
                continue
            row = {"dataset": dataset, "image": sample.name, "shape": list(sample.noisy.shape)}
            for refine in ("none", "auto"):
                start = time.perf_counter()
                out = napari_mpi.denoise(sample.noisy, refine=refine)
                row[f"default/{refine}"] = (round(metrics(out, sample.clean, "gray", sample.compare)[0], 3),
                                            round(time.perf_counter() - start, 1))
            data, norm = normalize(sample.noisy)
            x = torch.from_numpy(np.ascontiguousarray(data))[None, None].float()
            for steps, estimate, seconds in crop_fill(x, args.crop_size, args.steps, args.beta, 0.3):
                plain = norm.invert(estimate.numpy())
                t = time.perf_counter()
                refined, _ = refine_estimate(x[0], estimate[None])
                refine_seconds = time.perf_counter() - t
                refined = norm.invert(refined[0].numpy())
                row[f"crop{args.crop_size}x{steps}/none"] = (round(metrics(plain, sample.clean, "gray", sample.compare)[0], 3),
                                                             round(seconds, 1))
                row[f"crop{args.crop_size}x{steps}/auto"] = (round(metrics(refined, sample.clean, "gray", sample.compare)[0], 3),
                                                             round(seconds + refine_seconds, 1))
            rows.append(row)
            print(json.dumps(row), flush=True)
    if args.out:
        args.out.write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
