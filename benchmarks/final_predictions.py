"""How many predictions without a step should end a plane's fill? (``fill.FINAL_PREDICTIONS``, session 11)

For each image: the default fill with no final predictions (``FINAL_PREDICTIONS`` set to 0 for the run), then K
more forward passes of its trained network, each K in ``--counts`` scored along the way, in two variants:

- ``ema+K``: the predictions go on into the running mean (what ships, K = 30);
- ``mean+K``: the output is the plain mean of the K predictions at hidden pixels (the running mean where none hid
  a pixel).

Every output goes through the Wiener refinement, as the default does; the summary gives the mean gain over the fill
without final predictions and the worst image.

    python benchmarks/final_predictions.py --datasets kodak-poisson30 gigadb --limit 10 --counts 10 20 30 50
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from datasets import load, parse_study_args, report_variants, require_data_root  # noqa: E402
from quality import metrics  # noqa: E402

from napari_mpi import fill, refine  # noqa: E402
from napari_mpi.masking import draw_mask  # noqa: E402

api = importlib.import_module("napari_mpi.denoise")  # the module; napari_mpi.denoise is the function


def score_counts(sample, counts: list[int]) -> dict[str, float]:
    """PSNR of the refined output with no final predictions ("base") and after each count, both variants."""
    rgb = sample.kind == "rgb"
    plan = api.prepare(sample.noisy.shape, sample.noisy.dtype, seed=0, rgb=rgb)
    state = plan.checkpoint.state_dict if plan.checkpoint is not None else None
    data, norm = api.normalize(sample.noisy)
    x = api._to_tensor(data, rgb)
    carried = fill.CarriedNetwork()  # keeps the trained network and the mask generator after the fill
    saved, fill.FINAL_PREDICTIONS = fill.FINAL_PREDICTIONS, 0
    try:
        for step in fill.iterative_fill(x, plan.config, state, plan.device, carried):
            pass
    finally:
        fill.FINAL_PREDICTIONS = saved

    def psnr(estimate: torch.Tensor) -> float:
        refined, _ = refine.refine_estimate(x, estimate, colour=rgb)
        return metrics(api._to_plane(refined, norm, sample.noisy), sample.clean, sample.kind, sample.compare)[0]

    base = step.estimate.clone()
    running = base.clone()
    total, count = torch.zeros_like(base), torch.zeros_like(base)
    batch = x.unsqueeze(0)
    autocast = fill._autocast(plan.device, fill.resolve_precision(plan.config.precision, plan.device))
    scores = {"base": psnr(base)}
    for k in range(1, max(counts) + 1):
        keep = draw_mask(batch.shape, plan.config.mask_ratio, plan.config.mask_mode, carried.generator, plan.device)
        hidden = 1.0 - keep
        prediction, _ = fill._predict(carried.model, batch, keep, hidden, autocast)
        fill.ema_update_(running, prediction[0], hidden[0], plan.config.beta)
        total += hidden[0] * prediction[0]
        count += hidden[0]
        if k in counts:
            scores[f"ema+{k}"] = psnr(running)
            scores[f"mean+{k}"] = psnr(torch.where(count > 0, total / count.clamp_min(1), running))
    return scores


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--datasets", nargs="+", default=["kodak-poisson30"])
    parser.add_argument("--crop", type=int, default=256)
    parser.add_argument("--limit", type=int, default=10)
    parser.add_argument("--counts", nargs="+", type=int, default=[10, 20, 30, 50])
    args = parse_study_args(parser, argv, threads=1)  # --threads, --data, --out
    root = require_data_root(args.data)
    counts = sorted(set(args.counts))
    variants = ["base", *(f"{kind}+{k}" for k in counts for kind in ("ema", "mean"))]
    rows = []
    for dataset in args.datasets:
        for sample in load(dataset, root, crop=args.crop, limit=args.limit):
            if sample.kind not in ("gray", "rgb"):
                continue
            scores = score_counts(sample, counts)
            rows.append({"dataset": dataset, "image": sample.name, **{v: {"psnr": round(scores[v], 3)} for v in variants}})
            print(json.dumps(rows[-1]), flush=True)
    report_variants(rows, variants, args.out, args)  # gains over "base": no final predictions
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
