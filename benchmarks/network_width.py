"""How wide must the network be? Fill PSNR and seconds per iteration against the network's width.

Issue 5 asks for a CPU iteration at 1x512x512 of at most 0.25x the eager fp32 step at equal quality.
The profiler puts the convolutions at only a third of a bf16 step, so cutting overhead cannot get
there; fewer channels can. This script runs the fast preset (random initialisation, same seeds) with
SkipNet(width=w, skip_width=s) for each ``--widths w/s`` pair and reports the mean PSNR per dataset
and the seconds per iteration at ``--time-side``. With ``--seeds N`` it also scores the mean of the
outputs of N fills with different seeds (a cheap ensemble when the network is narrow).

    python benchmarks/network_width.py --widths 64/64 48/48 32/32 --crop 128 --limit 6 --out runs/width/w.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from datasets import load, machine_info, parse_study_args, require_data_root
from quality import metrics

import napari_mpi
from napari_mpi.fill import build_model
from napari_mpi.network import SkipNet
from napari_mpi.weights import Checkpoint


def random_weights(channels: int, width: int, skip_width: int, seed: int) -> Checkpoint:
    """The seeded random initialisation the fill makes itself (``build_model``), at another width: the fill
    builds the network a checkpoint's state dict describes."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        state = SkipNet(2 * channels, channels, width=width, skip_width=skip_width).state_dict()
    return Checkpoint(state, channels, "pixel" if channels == 1 else "channel", (0.0, 1.0))


def seconds_per_iteration(side: int, precision: str, iterations: int, weights: Checkpoint) -> float:
    image = np.random.default_rng(0).random((side, side), dtype=np.float32)
    napari_mpi.denoise(image[:64, :64], iterations=3, precision=precision, weights=weights)  # warm up
    start = time.perf_counter()
    napari_mpi.denoise(image, iterations=iterations, precision=precision, weights=weights)
    return (time.perf_counter() - start) / iterations


def snapshot_scores(items, iterations: list[int], seeds: int, lr: float | None,
                    weights_for: Callable[[int, int], Checkpoint | str | None],
                    beta: float | None = None) -> dict[tuple[int, int], list[float]]:
    """PSNR per image of the fill's estimate after each of ``iterations`` steps, for the mean of the first k
    of ``seeds`` seeds' estimates: ``{(iterations, k): [psnr per image]}``. ``weights_for(channels, seed)``
    gives the network's start. One fill of max(iterations) steps per image and seed: the fill has no schedule,
    so the estimate after n steps of a longer run is the n-step result."""
    scores: dict[tuple[int, int], list[float]] = {}
    for sample in items:
        # snapshots[n][seed][plane]: the estimate after n steps (stacks are filled plane by plane)
        snapshots: dict[int, list[dict[int, np.ndarray]]] = {n: [] for n in iterations}
        channels = 3 if sample.kind == "rgb" else 1
        for seed in range(seeds):
            for per_seed in snapshots.values():
                per_seed.append({})

            def keep(event, snapshots=snapshots):
                if event.iteration in snapshots:
                    snapshots[event.iteration][-1][event.plane] = event.estimate()

            napari_mpi.denoise(sample.noisy, rgb=sample.kind == "rgb", iterations=max(iterations), seed=seed,
                               progress=keep, lr=lr, beta=beta, weights=weights_for(channels, seed))
        for n, per_seed in snapshots.items():
            estimates = [
                planes[0] if len(planes) == 1 else np.stack([planes[i] for i in sorted(planes)])
                for planes in per_seed
            ]
            for k in range(1, seeds + 1):
                psnr = metrics(np.mean(estimates[:k], axis=0), sample.clean, sample.kind, sample.compare)[0]
                scores.setdefault((n, k), []).append(psnr)
    return scores


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--widths", nargs="+", default=["64/64", "48/48", "32/32"], help="width/skip_width pairs")
    parser.add_argument("--datasets", nargs="+", default=["fmd-confocal", "kodak-poisson30", "kodak-gauss25"])
    parser.add_argument("--crop", type=int, default=128)
    parser.add_argument("--limit", type=int, default=6)
    parser.add_argument("--iterations", type=int, nargs="+", default=[200], help="fill lengths to score")
    parser.add_argument("--lr", type=float, default=None, help="the fill's learning rate (default: the preset's)")
    parser.add_argument("--seeds", type=int, default=1, help="also score the mean of 2..N seeds' outputs")
    parser.add_argument("--time-side", type=int, default=512)
    parser.add_argument("--time-iterations", type=int, default=5)
    args = parse_study_args(parser, argv)
    root = require_data_root(args.data)
    samples = {name: list(load(name, root, crop=args.crop, limit=args.limit)) for name in args.datasets}
    results: dict = {"machine": machine_info(), "args": {k: str(v) for k, v in vars(args).items()}, "rows": []}
    for pair in args.widths:
        width, skip_width = (int(v) for v in pair.split("/"))
        gray = random_weights(1, width, skip_width, 0)
        params = sum(p.numel() for p in build_model(1, gray.state_dict, 0, torch.device("cpu")).parameters())
        row: dict = {"width": width, "skip_width": skip_width, "params": params}
        if args.time_side:
            for precision in ("fp32", "bf16"):
                row[f"s_per_it_{precision}"] = seconds_per_iteration(args.time_side, precision, args.time_iterations, gray)
        for name, items in samples.items():
            scores = snapshot_scores(items, args.iterations, args.seeds, args.lr,
                                     lambda channels, seed, w=width, s=skip_width: random_weights(channels, w, s, seed))
            for (iterations, k), psnrs in scores.items():
                key = f"{name}@{iterations}" + (f"x{k}" if k > 1 else "")
                row[key] = float(np.mean(psnrs))
                row[f"{key}/per_image"] = psnrs
        results["rows"].append(row)
        summary = {k: (round(v, 3) if isinstance(v, float) else v) for k, v in row.items() if "/" not in k}
        print(json.dumps(summary), flush=True)
        if args.out:
            args.out.write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
