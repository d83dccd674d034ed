"""Issue 5: a fill that trains on random windows of a big plane (``crop``) against the whole-plane fill.

Each image is denoised whole (no centre crop) with the shipped defaults and ``crop="none"`` (every step on the whole
plane), then with ``crop=SIZE`` at several ``fill.CROP_STEP_SCALE`` values (the fraction of the whole-plane steps'
pixels the windows train on); PSNR and seconds of each, refinement included (``--refine``, default "auto"). A
dataset's colour images run the colour defaults. One JSON row per image.

    python benchmarks/crop_fill_study.py --datasets fmd-confocal --skip 2 --limit 8 --scales 0.5 0.75 1.0
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from datasets import load, parse_study_args, require_data_root  # noqa: E402
from quality import metrics  # noqa: E402

import napari_mpi  # noqa: E402
from napari_mpi import fill  # noqa: E402


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--datasets", nargs="+", default=["fmd-confocal"])
    parser.add_argument("--skip", type=int, default=0, help="leave out the first N images of each dataset")
    parser.add_argument("--limit", type=int, default=2, help="images per dataset, counting the skipped ones")
    parser.add_argument("--crop-size", type=int, default=fill.CROP_SIZE)
    parser.add_argument("--scales", type=float, nargs="+", default=[0.5, 0.75, 1.0])
    parser.add_argument("--refine", default="auto")
    parser.add_argument("--no-whole", action="store_true", help="skip the whole-plane fill (known from a past run)")
    args = parse_study_args(parser, argv, threads=1)  # --threads (one per job: two jobs share the 2 cores), --data, --out
    root = require_data_root(args.data)
    rows = []
    for dataset in args.datasets:
        for sample in itertools.islice(load(dataset, root, crop=None, limit=args.limit), args.skip, None):
            if sample.kind == "stack":
                continue
            rgb = sample.kind == "rgb"
            row = {"dataset": dataset, "image": sample.name, "shape": list(sample.noisy.shape)}
            runs = [("whole", "none", None)] if not args.no_whole else []
            runs += [(f"crop{args.crop_size}@{scale:g}", args.crop_size, scale) for scale in args.scales]
            for label, crop, scale in runs:
                if scale is not None:
                    fill.CROP_STEP_SCALE = scale
                plan = napari_mpi.prepare(sample.noisy.shape, sample.noisy.dtype, rgb=rgb, crop=crop,
                                          refine=args.refine)
                start = time.perf_counter()
                out = napari_mpi.denoise(sample.noisy, rgb=rgb, crop=crop, refine=args.refine)
                seconds = time.perf_counter() - start
                psnr = metrics(out, sample.clean, sample.kind, sample.compare)[0]
                row[label] = {"psnr": round(psnr, 3), "seconds": round(seconds, 1), "steps": plan.steps_per_plane}
            rows.append(row)
            print(json.dumps(row), flush=True)
    if args.out:
        args.out.write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
