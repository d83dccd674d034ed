"""Can the fill pick its own beta and stopping point without the clean image?

Runs the fill loop with a held-out set of pixels V (a fixed random fraction never used as loss
targets) and a bank of running estimates with different betas, and records every ``every``
iterations, for each beta: the true PSNR (against the clean image) and the self-supervised MSE on V,
mean((ybar_V - x_V)^2). For pixel-independent noise E[(ybar_V - x_V)^2] = E[(ybar_V - y_V)^2] +
sigma^2 because ybar_V only ever saw predictions made with x_V hidden and the network never trained
on x_V (the Noise2Self / J-invariance argument), so the V-MSE ranks estimates like the true error.

    python benchmarks/selfsup_study.py --datasets fmd-confocal kodak-gauss25 --crop 128 --limit 4 \
        --iterations 400 --out runs/selfsup.json
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from datasets import load, require_data_root  # noqa: E402

from napari_mpi.fill import build_model, resolve_device, resolve_precision  # noqa: E402
from napari_mpi.masking import draw_mask, make_generator, masked_mse  # noqa: E402
from napari_mpi.planes import normalize  # noqa: E402
from napari_mpi.weights import resolve_weights  # noqa: E402

BETAS = (0.8, 0.9, 0.95, 0.98, 0.99)


def study(noisy: np.ndarray, clean: np.ndarray, rgb: bool, iterations: int, every: int, holdout: float,
          mask_ratio: float, weights: str, seed: int = 0) -> dict:
    data, norm = normalize(noisy)
    x = torch.from_numpy(np.ascontiguousarray(data.transpose(2, 0, 1) if rgb else data[None])).float()[None]
    channels = x.shape[1]
    dev = resolve_device("cpu")
    mode = "channel" if rgb else "pixel"
    ckpt = resolve_weights(weights, channels, mode, mask_ratio)
    model = build_model(channels, ckpt.state_dict if ckpt else None, seed, dev).to(memory_format=torch.channels_last)
    model.train()
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    gen = make_generator(seed, dev)
    held = (torch.rand(x.shape[-2:], generator=gen) < holdout).float()[None, None] if holdout > 0 else torch.zeros(1, 1, *x.shape[-2:])
    train_weight = 1.0 - held
    # Bias-corrected running means (as Adam's moments): they start at 0, not at the noisy image, and are
    # divided by 1 - beta^k (k = how often the pixel was hidden), so no estimate ever contains x itself.
    raw = {b: torch.zeros_like(x[0]) for b in BETAS}
    paper = x[0].clone()  # Algorithm 1's estimate (starts at x) with beta 0.9, for reference
    count = torch.zeros_like(x[0, :1])
    autocast = torch.autocast("cpu", dtype=torch.bfloat16, enabled=resolve_precision("auto", dev) == "bf16")
    rows = []

    def psnr_of(est: torch.Tensor) -> float:
        out = est.numpy().transpose(1, 2, 0) if rgb else est.numpy()[0]
        out = norm.invert(out)
        mse = float(np.mean((out.astype(np.float64) - clean.astype(np.float64)) ** 2))
        return 10 * math.log10(1.0 / mse)

    window_train = window_train_n = window_hold = window_hold_n = 0.0
    for it in range(1, iterations + 1):
        keep = draw_mask(x.shape, mask_ratio, mode, gen, dev)
        hidden = 1.0 - keep
        with autocast:
            pred = model(torch.cat([x * keep, keep], 1).contiguous(memory_format=torch.channels_last))
        pred = pred.float()
        loss = masked_mse(pred, x, hidden * train_weight)
        with torch.no_grad():  # this step's squared error at hidden pixels: trained-on vs held-out pixels
            err = (pred.detach() - x) ** 2 * hidden
            window_train += float((err * train_weight).sum())
            window_train_n += float((hidden * train_weight).sum())
            window_hold += float((err * held).sum())
            window_hold_n += float((hidden * held).sum())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        with torch.no_grad():
            for b, est in raw.items():
                est.add_(hidden[0] * (1 - b) * (pred[0] - est))
            paper.add_(hidden[0] * 0.1 * (pred[0] - paper))
            count += hidden[0, :1]
        if it % every == 0:
            row = {"iteration": it, "loss": float(loss.detach()), "psnr_paper": psnr_of(paper),
                   "loss_train": window_train / max(window_train_n, 1), "loss_hold": window_hold / max(window_hold_n, 1)}
            window_train = window_train_n = window_hold = window_hold_n = 0.0
            for b, r in raw.items():
                est = torch.where(count > 0, r / (1 - b ** count).clamp_min(1e-12), x[0])
                vmse = float(((est - x[0]) ** 2 * held[0]).sum() / (held[0].sum() * channels)) if holdout > 0 else math.nan
                row[f"psnr_{b}"] = psnr_of(est)
                row[f"vmse_{b}"] = vmse
            rows.append(row)
    return {"rows": rows}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--datasets", nargs="+", default=["fmd-confocal", "kodak-gauss25", "kodak-poisson30"])
    parser.add_argument("--crop", type=int, default=128)
    parser.add_argument("--limit", type=int, default=4)
    parser.add_argument("--iterations", type=int, default=400)
    parser.add_argument("--every", type=int, default=10)
    parser.add_argument("--holdout", type=float, default=0.05)
    parser.add_argument("--mask-ratio", type=float, default=0.3)
    parser.add_argument("--gray-weights", default="default")
    parser.add_argument("--rgb-weights", default="default")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    root = require_data_root(None)
    results = []
    for dataset in args.datasets:
        for sample in load(dataset, root, crop=args.crop, limit=args.limit):
            t0 = time.perf_counter()
            res = study(sample.noisy, sample.clean, sample.kind == "rgb", args.iterations, args.every, args.holdout,
                        args.mask_ratio, args.rgb_weights if sample.kind == "rgb" else args.gray_weights)
            res.update(dataset=dataset, name=sample.name, seconds=time.perf_counter() - t0)
            results.append(res)
            last = res["rows"][-1]
            print(dataset, sample.name, f"{res['seconds']:.0f} s", {k: round(v, 2) for k, v in last.items() if k.startswith("psnr")},
                  flush=True)
            args.out.write_text(json.dumps({"config": {k: str(v) for k, v in vars(args).items()}, "results": results}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
