"""A stack's planes carrying one network against each plane denoised alone: PSNR per plane and speed-up.

Every row is ``napari_mpi.denoise_steps`` on the whole stack, as users run it (``--preset``, default fast, from
``--weights``, default the shipped prior):

- ``alone``: ``reuse_network=False``, every plane gets its own full fill;
- ``auto``: ``reuse_network="auto"``, the default: each later plane is checked without the clean image and
  continues from the previous plane's network where alike (``napari_mpi.engine.chain``), else starts from the
  weights; each row records what every plane did;
- ``always``: ``reuse_network=True``: every later plane continues, with ``FillConfig.reuse_step_fraction`` of the
  iterations as training steps, then ``FillConfig.reuse_predictions`` predictions without a step;
- ``always STEPS:PREDICTIONS`` (``--reuse-variants``, comma-separated): the same with other steps and
  predictions per later plane, passed as ``tuning={"reuse_step_fraction": STEPS / iterations,
  "reuse_predictions": PREDICTIONS}``.

Every plane is scored against its clean plane (PSNR, data range 1.0, ``metrics.py``); each other row reports its
mean PSNR, its mean and worst per-plane gap to ``alone``, its seconds and its speed-up over ``alone``, and the
fill iterations per plane that the progress reports count (training steps and predictions together; window
steps when the planes are filled in windows).

Stacks (``--stack``, built by ``datasets.load_stack``): ``synthetic`` (smooth 3-D blobs, Poisson + Gaussian
noise; adjacent planes alike), ``fmd-fovs`` (frame 0 of each FMD Confocal_BPAE_B field of view: planes as
different as a time-lapse with cuts), ``fmd-timelapse`` (the raw frames of FMD FOV 1: a time-lapse of a fixed
sample), ``fmd-3slice`` (the 3-plane FMD R/G/B stack: three stains), ``colour-still`` (a colour time-lapse of a
still scene, fresh Gaussian noise per frame). Run from the repository root::

    python benchmarks/stacks.py --stack synthetic --planes 32 --crop 128 --out stacks-synthetic.json
    python benchmarks/stacks.py --stack fmd-fovs --planes 19 --crop 256 --reuse-variants 6:15,14:20 --threads 2
    python benchmarks/stacks.py --stack colour-still --planes 8 --crop 128 --weights random

``--out FILE.json`` is what ``plots.py --stacks`` draws (one file per stack; give it several), and
``--table FILE.json ...`` prints the table of docs/benchmarks.md from such files (without running anything)::

    python benchmarks/stacks.py --table benchmarks/results/stacks-*.json
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np
from datasets import STACKS, load_stack, run_record, write_json
from metrics import psnr

import napari_mpi


def parse_variants(text: str) -> list[tuple[int, int]]:
    """``"6:15,14:20"`` -> ``[(6, 15), (14, 20)]``: training steps and predictions per later plane."""
    variants = []
    for item in (v.strip() for v in text.split(",")):
        if not item:
            continue
        steps, sep, predictions = item.partition(":")
        if not sep or not steps.isdigit() or not predictions.isdigit() or int(steps) < 1:
            raise SystemExit(f"--reuse-variants takes STEPS:PREDICTIONS pairs (STEPS >= 1), got {item!r}")
        variants.append((int(steps), int(predictions)))
    return variants


def fill_crop(text: str) -> str | int:
    """The ``crop`` option of ``napari_mpi.denoise``: "auto", "none" or a window side."""
    return int(text) if text.isdigit() else text


def denoise_stack(noisy: np.ndarray, clean: np.ndarray, args: argparse.Namespace, reuse: bool | str,
                  tuning: dict | None = None) -> dict:
    """One run of ``napari_mpi.denoise_steps`` on the stack (what ``napari_mpi.denoise`` runs), scored plane by
    plane, with how each plane was filled."""
    options = dict(preset=args.preset, iterations=args.iterations, weights=args.weights, refine=args.refine,
                   rgb=noisy.ndim == 4, crop=fill_crop(args.fill_crop), reuse_network=reuse, tuning=tuning)
    plan = napari_mpi.prepare(noisy.shape, noisy.dtype, **options)
    reports: list = []
    start = time.perf_counter()
    outputs = napari_mpi.drain(napari_mpi.denoise_steps(noisy, plan, reports=reports))
    seconds = time.perf_counter() - start
    values = [psnr(o, c) for o, c in zip(outputs, clean, strict=True)]
    reports.sort(key=lambda r: r.plane)
    return {
        "iterations": plan.config.iterations,
        "reuse_network": reuse,
        "tuning": tuning,
        "psnr": float(np.mean(values)),
        "psnr_per_plane": values,
        "seconds": seconds,
        "steps_per_plane": float(np.mean([r.iterations for r in reports])),
        "planes": [r.as_dict() for r in reports],
    }


def compare(row: dict, alone: dict) -> dict:
    """``row`` with its gap to ``alone`` (mean and worst plane, dB) and its speed-up."""
    gap = np.subtract(row["psnr_per_plane"], alone["psnr_per_plane"])
    return row | {"gap_mean": float(gap.mean()), "gap_worst": float(gap.min()),
                  "speedup": alone["seconds"] / row["seconds"]}


def table(results: list[dict]) -> str:
    lines = ["| strategy | fill iterations / plane | mean PSNR (dB) | vs alone: mean | worst plane | seconds "
             "| speed-up |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for r in results:
        gaps = f"{r['gap_mean']:+.2f} | {r['gap_worst']:+.2f}" if "gap_mean" in r else "– | –"
        lines.append(f"| {r['strategy']} | {r['steps_per_plane']:.0f} | {r['psnr']:.2f} | {gaps} | {r['seconds']:.0f} "
                     f"| {r.get('speedup', 1.0):.1f}x |")
    return "\n".join(lines)


def _gap(row: dict) -> str:
    return f"{row['gap_mean']:+.2f} ({row['gap_worst']:+.2f})"


def summary_table(records: list[dict]) -> str:
    """One row per stack (a ``--out`` file): the default (``auto``) and ``always`` against every plane alone, with
    how many planes the default carried."""
    lines = ["| stack | planes | default: vs alone, mean (worst plane) | speed-up | carried / from the weights "
             "| every plane carried: vs alone | speed-up | measured |",
             "|---|---|---:|---:|---:|---:|---:|---|"]
    for record in records:
        rows = {r["strategy"]: r for r in record["results"]}
        auto, always = rows["auto"], rows.get("always")
        carried = sum(p["start"] == "carried" for p in auto["planes"])
        shape = record["stack"]["shape"]
        side = "x".join(map(str, shape[1:3]))
        threads = record["config"].get("threads") or "all"
        every = f"{_gap(always)} | {always['speedup']:.1f}x" if always else "– | –"
        lines.append(f"| {record['stack']['name']} | {shape[0]} of {side} | {_gap(auto)} | {auto['speedup']:.1f}x "
                     f"| {carried} / {len(auto['planes']) - carried} | {every} | {record['date'][:10]}, "
                     f"{threads} threads |")
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--stack", default="synthetic", choices=STACKS)
    parser.add_argument("--planes", type=int, default=32, help="at most this many planes (default 32)")
    parser.add_argument("--crop", type=int, default=128, help="centre crop side (synthetic stacks: their side)")
    parser.add_argument("--preset", default="fast", help="the preset of every row (default fast)")
    parser.add_argument("--iterations", type=int, default=None, help="iterations per plane (default: the preset's)")
    parser.add_argument("--weights", default="default",
                        help='start of every row: "default" (the shipped prior), "random" or a checkpoint path')
    parser.add_argument("--reuse-variants", default="",
                        help='extra reuse rows, comma-separated "STEPS:PREDICTIONS" per later plane, e.g. "6:15,14:20"')
    parser.add_argument("--fill-crop", default="auto",
                        help='the "crop" option of every row: "auto" (windows on large planes), "none" or a side')
    parser.add_argument("--refine", default="auto", choices=("auto", "wiener", "none"),
                        help="what follows each plane's fill (the Wiener refinement)")
    parser.add_argument("--threads", type=int, default=0, help="torch.set_num_threads (0 = torch's choice)")
    parser.add_argument("--data", default=None, help="shared data folder (default $NAPARI_MPI_DATA or ../shared/data)")
    parser.add_argument("--out", default=None, help="write the rows as JSON (what plots.py --stacks reads)")
    parser.add_argument("--table", nargs="+", default=None, metavar="FILE.json",
                        help="print the docs table of these --out files and stop")
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    if args.table:
        import json
        from pathlib import Path

        print(summary_table([json.loads(Path(name).read_text()) for name in args.table]))
        return 0
    variants = parse_variants(args.reuse_variants)
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    noisy, clean = load_stack(args.stack, args.planes, args.crop, args.data)
    # warm-up (first-call costs of torch and the refinement), so that the first row's seconds are not charged them
    napari_mpi.denoise(noisy[:1], iterations=3, rgb=noisy.ndim == 4, weights=args.weights, refine=args.refine)
    alone = denoise_stack(noisy, clean, args, reuse=False) | {"strategy": "alone"}
    print(f"{args.stack}, {len(noisy)} planes of {noisy.shape[1]}x{noisy.shape[2]}: alone {alone['psnr']:.2f} dB, "
          f"{alone['seconds']:.0f} s", file=sys.stderr, flush=True)
    runs = [("auto", "auto", None), ("always", True, None)]
    for steps, predictions in variants:
        if steps > alone["iterations"]:
            raise SystemExit(f"--reuse-variants: {steps} steps is more than the {alone['iterations']} iterations")
        runs.append((f"always {steps}:{predictions}", True,
                     {"reuse_step_fraction": steps / alone["iterations"], "reuse_predictions": predictions}))
    results = [alone]
    for strategy, reuse, tuning in runs:
        row = compare(denoise_stack(noisy, clean, args, reuse=reuse, tuning=tuning), alone) | {"strategy": strategy}
        results.append(row)
        decisions = " ".join(f"{'C' if p['start'] == 'carried' else 'W'}{p['steps']}"
                             + (f"({p['mismatch']:.2f}/{p['change']:.2f})" if p["mismatch"] is not None else "")
                             for p in row["planes"])
        print(f"  {strategy}: {row['psnr']:.2f} dB ({row['gap_mean']:+.2f}, worst plane {row['gap_worst']:+.2f}), "
              f"{row['seconds']:.0f} s = {row['speedup']:.1f}x; planes {decisions}", file=sys.stderr, flush=True)
    print(table(results))
    if args.out:
        stack = {"name": args.stack, "shape": list(noisy.shape), "planes": len(noisy)}
        config = {k: v for k, v in vars(args).items() if k != "out"}
        write_json(args.out, run_record(config, argv) | {"stack": stack, "results": results})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
