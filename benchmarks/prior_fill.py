"""How should the fill use a pre-trained prior? PSNR against fill iterations and learning rate, pre-trained
weights against the random initialisation.

Sessions 2-4 measured that longer pre-training made the fixed fast preset (200 iterations at lr 2e-3) *worse*
on small crops: a better prior fits the noise sooner. This script scores, for each starting point and each
``--lrs`` value, the estimate after each of ``--iterations`` steps (one fill per image: the fill has no
schedule), so that the iteration count and learning rate that harvest the prior can be read off.

    python benchmarks/prior_fill.py --gray runs/gpu/gray-pixel.pt --random 64/64 --lrs 2e-3 5e-4 \\
        --iterations 25 50 100 200 300 --datasets fmd-confocal kodak-poisson30 --out runs/prior/p.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from datasets import load, machine_info, parse_study_args, require_data_root
from network_width import random_weights, snapshot_scores

from napari_mpi.weights import Checkpoint, load_checkpoint


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--gray", type=Path, action="append", default=[], help="gray checkpoint (repeatable)")
    parser.add_argument("--rgb", type=Path, action="append", default=[], help="RGB checkpoint (repeatable)")
    parser.add_argument("--random", default="48/48", help="width/skip of the random start to compare with ('' = none)")
    parser.add_argument("--lrs", type=float, nargs="+", default=[2e-3])
    parser.add_argument("--beta", type=float, default=None, help="the running mean's weight (default: the fast preset's)")
    parser.add_argument("--iterations", type=int, nargs="+", default=[50, 100, 200])
    parser.add_argument("--datasets", nargs="+", default=["fmd-confocal", "kodak-poisson30", "kodak-gauss25"])
    parser.add_argument("--seeds", type=int, default=1, help="also score the mean of the first 2..N seeds' outputs")
    parser.add_argument("--crop", type=int, default=128)
    parser.add_argument("--limit", type=int, default=6)
    args = parse_study_args(parser, argv)
    root = require_data_root(args.data)
    samples = {name: list(load(name, root, crop=args.crop, limit=args.limit)) for name in args.datasets}
    gray: list[Checkpoint] = [load_checkpoint(p) for p in args.gray]
    rgb: list[Checkpoint] = [load_checkpoint(p) for p in args.rgb]
    # starts[name] = (gray or None, rgb or None); each dataset uses the one for its channels
    starts: dict[str, tuple[object, object]] = {}
    if args.random:
        w, s = (int(v) for v in args.random.split("/"))
        starts[f"random {args.random}"] = ("random", (w, s))
    for i in range(max(len(gray), len(rgb))):
        g = gray[i] if i < len(gray) else None
        c = rgb[i] if i < len(rgb) else None
        label = " + ".join(f"{ck.name} @ {ck.metadata.get('steps', '?')} steps" for ck in (g, c) if ck is not None)
        starts[label] = ("checkpoints", (g, c))

    results: dict = {"machine": machine_info(), "args": {k: str(v) for k, v in vars(args).items()}, "rows": []}
    for label, (kind, spec) in starts.items():
        for lr in args.lrs:

            def weights_for(channels: int, seed: int, kind=kind, spec=spec):
                if kind == "random":
                    return random_weights(channels, spec[0], spec[1], seed)
                return spec[0] if channels == 1 else spec[1]

            row: dict = {"start": label, "lr": lr, "beta": args.beta}
            for name, items in samples.items():
                channels = 3 if items and items[0].kind == "rgb" else 1
                if weights_for(channels, 0) is None:
                    continue  # no checkpoint for this dataset's channels
                for (n, k), psnrs in snapshot_scores(items, args.iterations, args.seeds, lr, weights_for,
                                                     args.beta).items():
                    key = f"{name}@{n}" if k == 1 else f"{name}@{n}x{k}seeds"
                    row[key] = float(np.mean(psnrs))
                    row[f"{key}/per_image"] = psnrs
            results["rows"].append(row)
            print(json.dumps({k: (round(v, 2) if "@" in k else v) for k, v in row.items() if "/" not in k}),
                  flush=True)
            if args.out:
                args.out.parent.mkdir(parents=True, exist_ok=True)
                args.out.write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
