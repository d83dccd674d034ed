"""Can planes of a stack share one network, for ~10x the throughput of denoising each plane alone?

Issue 5 asks for 10x the planes per second on stacks at no more than 0.2 dB mean PSNR loss. On a CPU an
iteration's cost is proportional to its pixels, so batching planes buys nothing: the only lever is
fewer iterations per plane, i.e. letting planes share what the network learned. This script measures,
against ``napari_mpi.denoise`` on every plane alone (fast preset: 100 iterations from ``--weights default``,
200 from a random start), strategies that spend ~15-20 iteration-equivalents per plane (a forward pass without
a step costs ~0.28 of a step):

- ``reuse``: what ships, ``napari_mpi.denoise(..., reuse_network=True)`` (the ``warm`` recipe, with the
  first plane filled by Algorithm 1 as when alone); ``--reuse-variants 7:8,5:5`` adds the same with other
  steps and predictions per later plane;
- ``warm``: the first plane gets 200 iterations; each next plane starts from the previous plane's
  fine-tuned network and Adam state for ``--steps`` steps (+ ``--preds`` forward-only predictions);
- ``shared``: one network trains on the planes in random order for ``--visits`` steps per plane, then
  predicts each plane ``--preds`` times with fresh masks (mean of the hidden-pixel predictions);
- ``shared+tune``: the shared network, then ``--tune`` steps on each plane from that shared state.

Outputs of the variants are running means over hidden-pixel predictions, bias-corrected (no noisy
pixel kept). Stacks: ``synthetic`` (smooth 3-D blobs, Poisson + Gaussian noise; adjacent planes alike),
``fmd-fovs`` (frame 0 of each FMD Confocal_BPAE_B field of view: planes as different as a time-lapse
with cuts), ``fmd-timelapse`` (the raw frames of FOV 1: a real time-lapse of a fixed sample, every frame
against the avg50 ground truth), ``fmd-3slice`` (the 3-plane FMD R/G/B stack: three stains) and
``colour-still`` (a colour time-lapse of a still scene, fresh Gaussian noise per frame; reuse rows only).

    python benchmarks/stack_sharing.py --stack synthetic --planes 32 --crop 128
    python benchmarks/stack_sharing.py --stack fmd-fovs --planes 19 --crop 128 --out stack.json
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from datasets import center_crop, load, machine_info, parse_study_args, require_data_root

import napari_mpi
from napari_mpi import fill
from napari_mpi.fill import DEFAULT_MASK_RATIO, build_model
from napari_mpi.masking import draw_mask, make_generator, masked_mse
from napari_mpi.planes import normalize

CPU = torch.device("cpu")


def synthetic_stack(planes: int, side: int, seed: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Smooth 3-D blobs sampled every few slices, Poisson (30 photons at white) + Gaussian noise."""
    from scipy.ndimage import gaussian_filter
    from skimage.data import binary_blobs

    volume = binary_blobs(length=side, n_dim=3, volume_fraction=0.2, blob_size_fraction=0.08, rng=seed)
    volume = gaussian_filter(volume.astype(np.float32), 1.5)[:: max(1, side // planes)][:planes]
    clean = (0.05 + 0.9 * volume / volume.max()).astype(np.float32)
    rng = np.random.default_rng(seed)
    noisy = rng.poisson(clean * 30) / 30 + rng.normal(0, 0.03, clean.shape)
    return noisy.astype(np.float32), clean


def colour_still_stack(planes: int, side: int, seed: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """A colour time-lapse of a still scene: scikit-image's astronaut (centre 256², resized to side), fresh
    Gaussian noise (sigma 25 of 255) in every frame."""
    from skimage.data import astronaut
    from skimage.transform import resize

    picture = astronaut()[128:384, 128:384].astype(np.float32) / 255.0
    clean = resize(picture, (side, side, 3), anti_aliasing=True).astype(np.float32)
    rng = np.random.default_rng(seed)
    noisy = clean[None] + rng.normal(0, 25 / 255, (planes, *clean.shape))
    return noisy.astype(np.float32), np.broadcast_to(clean, noisy.shape)


def load_stack(name: str, planes: int, crop: int, data: str | None) -> tuple[np.ndarray, np.ndarray]:
    if name == "synthetic":
        return synthetic_stack(planes, crop)
    if name == "colour-still":
        return colour_still_stack(planes, crop)
    root = require_data_root(data)
    if name == "fmd-fovs":
        samples = list(load("fmd-confocal", root, crop=crop, limit=planes))
        return np.stack([s.noisy for s in samples]), np.stack([s.clean for s in samples])
    if name == "fmd-timelapse":
        from skimage import io

        base = root / "fmd-confocal-bpae-b"
        frames = sorted((base / "raw" / "1").glob("*.png"))[:planes]
        noisy = np.stack([io.imread(f) for f in frames]).astype(np.float32) / 255.0
        clean = io.imread(base / "gt" / "1" / "avg50.png").astype(np.float32) / 255.0
        noisy = center_crop(noisy, crop, "stack")
        return noisy, np.broadcast_to(center_crop(clean, crop, "gray"), noisy.shape)
    if name == "fmd-3slice":
        sample = next(s for s in load("fmd-nd", root) if s.kind == "stack")
        return center_crop(sample.noisy, crop, "stack"), center_crop(sample.clean, crop, "stack")
    raise SystemExit(f"unknown stack {name!r}")


def psnr(output: np.ndarray, clean: np.ndarray) -> float:
    return 10.0 * math.log10(1.0 / float(np.mean((output.astype(np.float64) - clean) ** 2)))


class SharedNetwork:
    """One network and optimiser carried across planes; every plane's hidden-pixel predictions are
    folded into its own bias-corrected running mean."""

    def __init__(self, planes: list[torch.Tensor], beta: float, seed: int = 0):
        self.planes = planes
        self.model = build_model(1, None, seed, CPU).to(memory_format=torch.channels_last)
        self.model.train()
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=2e-3)
        self.generator = make_generator(seed, CPU)
        self.beta = beta
        self.means = [torch.zeros_like(x[0]) for x in planes]
        self.counts = [torch.zeros_like(x[0]) for x in planes]
        self.autocast = torch.autocast("cpu", dtype=torch.bfloat16, enabled=torch.ops.mkldnn._is_mkldnn_bf16_supported())

    def step(self, number: int, train: bool = True, record: bool = True) -> None:
        x = self.planes[number]
        keep = draw_mask(x.shape, DEFAULT_MASK_RATIO, "pixel", self.generator, CPU)
        hidden = 1.0 - keep
        network_input = torch.cat([x * keep, keep], dim=1).contiguous(memory_format=torch.channels_last)
        with torch.set_grad_enabled(train), self.autocast:
            prediction = self.model(network_input)
        prediction = prediction.float()
        if train:
            loss = masked_mse(prediction, x, hidden)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
        if record:
            mean, count = self.means[number], self.counts[number]
            mean.add_(hidden[0] * (1.0 - self.beta) * (prediction.detach()[0] - mean))
            count.add_(hidden[0])

    def forget(self, number: int) -> None:
        self.means[number].zero_()
        self.counts[number].zero_()

    def estimate(self, number: int) -> np.ndarray:
        mean, count = self.means[number], self.counts[number]
        corrected = mean / (1.0 - self.beta ** count).clamp_min(1e-12)
        return torch.where(count > 0, corrected, self.planes[number][0])[0].numpy()


def run(strategy: str, planes: list[torch.Tensor], args: argparse.Namespace) -> list[np.ndarray]:
    """Normalised estimates of the planes by ``warm``, ``shared`` or ``shared+tune`` (``reuse`` is
    ``napari_mpi.denoise`` itself, run in ``main``)."""
    order = torch.Generator().manual_seed(0)
    if strategy == "warm":
        shared = SharedNetwork(planes, beta=0.9)
        for _ in range(200):
            shared.step(0)
        for number in range(1, len(planes)):
            for _ in range(args.steps):
                shared.step(number)
            for _ in range(args.preds):
                shared.step(number, train=False)
        return [shared.estimate(n) for n in range(len(planes))]
    shared = SharedNetwork(planes, beta=0.9 if strategy == "shared" else 0.8)
    for _ in range(args.visits):
        for number in torch.randperm(len(planes), generator=order).tolist():
            shared.step(number, record=False)
    if strategy == "shared":
        for number in range(len(planes)):
            for _ in range(args.preds):
                shared.step(number, train=False)
        return [shared.estimate(n) for n in range(len(planes))]
    model_state = {k: v.clone() for k, v in shared.model.state_dict().items()}
    optimizer_state = shared.optimizer.state_dict()
    for number in range(len(planes)):  # shared+tune: each plane from the shared state
        shared.model.load_state_dict(model_state)
        shared.optimizer.load_state_dict(optimizer_state)
        for _ in range(args.tune):
            shared.step(number)
    return [shared.estimate(n) for n in range(len(planes))]


@contextlib.contextmanager
def reuse_settings(strategy: str, iterations: int):
    """For "reuse STEPS:PREDICTIONS": napari_mpi.fill's reuse constants set to them meanwhile ("reuse": as shipped)."""
    saved = fill.REUSE_STEP_FRACTION, fill.REUSE_PREDICTIONS
    if " " in strategy:
        steps, predictions = (int(v) for v in strategy.split()[1].split(":"))
        fill.REUSE_STEP_FRACTION, fill.REUSE_PREDICTIONS = steps / iterations, predictions
    try:
        yield
    finally:
        fill.REUSE_STEP_FRACTION, fill.REUSE_PREDICTIONS = saved


FORWARD_COST = 0.28  # measured: a forward pass in training mode, no backward, at 128x128 and 256x256


def cost_per_plane(strategy: str, args: argparse.Namespace, planes: int, iterations: int = 200) -> float:
    """Iteration-equivalents per plane (a forward-only prediction counted as FORWARD_COST of a step);
    ``iterations``: the first plane's (the fast preset's for the start used)."""
    if strategy.startswith("reuse"):
        with reuse_settings(strategy, iterations):
            later = fill.continuation_steps(iterations) + FORWARD_COST * fill.REUSE_PREDICTIONS
        return (iterations + (planes - 1) * later) / planes
    if strategy == "warm":
        return (200 + (planes - 1) * (args.steps + FORWARD_COST * args.preds)) / planes
    if strategy == "shared":
        return args.visits + FORWARD_COST * args.preds
    return args.visits + args.tune


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--stack", default="synthetic",
                        choices=("synthetic", "fmd-fovs", "fmd-timelapse", "fmd-3slice", "colour-still"))
    parser.add_argument("--planes", type=int, default=32)
    parser.add_argument("--crop", type=int, default=128)
    parser.add_argument("--strategies", default="reuse,warm,shared,shared+tune")
    parser.add_argument("--steps", type=int, default=14, help="warm: steps per plane after the first")
    parser.add_argument("--preds", type=int, default=20, help="warm / shared: forward-only predictions per plane")
    parser.add_argument("--visits", type=int, default=20, help="shared: training steps per plane")
    parser.add_argument("--tune", type=int, default=14, help="shared+tune: steps per plane after the shared phase")
    parser.add_argument("--weights", default="random",
                        help='start of the "alone" and "reuse" rows: "random" (sessions 1-4) or "default" (the shipped prior)')
    parser.add_argument("--reuse-variants", default="",
                        help='extra "reuse" rows, "STEPS:PREDICTIONS" per later plane, comma-separated (e.g. '
                             '"7:8,10:10"): napari_mpi.fill\'s REUSE_STEP_FRACTION and REUSE_PREDICTIONS set for the run')
    parser.add_argument("--fill-crop", default="auto",
                        help='the "crop" of the alone and reuse rows: "auto" (256x256 windows from 512x512 up), "none"')
    parser.add_argument("--refine", default="auto", choices=("auto", "wiener", "none"),
                        help="what follows each plane's fill in the alone and reuse rows (napari_mpi.refine)")
    args = parse_study_args(parser, argv)
    noisy, clean = load_stack(args.stack, args.planes, args.crop, args.data)
    rgb = noisy.ndim == 4  # (planes, H, W, 3)
    if rgb and any(not s.startswith("reuse") for s in args.strategies.split(",") if s):
        raise SystemExit("a colour stack runs the reuse strategies only: --strategies reuse")
    normalised = [normalize(plane) for plane in noisy]
    planes = [torch.from_numpy(np.ascontiguousarray(data))[None, None].float() for data, _ in normalised]

    start = time.perf_counter()
    alone = napari_mpi.denoise(noisy, preset="fast", weights=args.weights, refine=args.refine, rgb=rgb,
                               crop=args.fill_crop)  # plane by plane, as users run it
    alone_seconds = time.perf_counter() - start
    alone_psnr = np.array([psnr(o, c) for o, c in zip(alone, clean)])
    iterations = napari_mpi.prepare(noisy.shape[1:], noisy.dtype, weights=args.weights, rgb=rgb).config.iterations
    results = [{"strategy": "alone (fast preset)", "psnr": alone_psnr.mean(), "seconds": alone_seconds,
                "cost_per_plane": float(iterations)}]
    print(f"{args.stack}, {len(planes)} planes of {args.crop}²: alone {alone_psnr.mean():.2f} dB, {alone_seconds:.0f} s",
          file=sys.stderr, flush=True)
    variants = [f"reuse {v}" for v in args.reuse_variants.split(",") if v]
    for strategy in [s for s in args.strategies.split(",") if s] + variants:
        start = time.perf_counter()
        if strategy.startswith("reuse"):
            with reuse_settings(strategy, iterations):
                outputs = napari_mpi.denoise(noisy, preset="fast", weights=args.weights, reuse_network=True,
                                             refine=args.refine, rgb=rgb, crop=args.fill_crop)
        else:
            outputs = [norm.invert(e) for e, (_, norm) in zip(run(strategy, planes, args), normalised)]
        seconds = time.perf_counter() - start
        values = np.array([psnr(o, c) for o, c in zip(outputs, clean)])
        gap = values - alone_psnr
        results.append({"strategy": strategy, "psnr": values.mean(), "gap_mean": gap.mean(), "gap_worst": gap.min(),
                        "seconds": seconds, "speedup": alone_seconds / seconds,
                        "cost_per_plane": cost_per_plane(strategy, args, len(planes), iterations)})
        print(f"  {strategy}: {values.mean():.2f} dB ({gap.mean():+.2f}, worst plane {gap.min():+.2f}), "
              f"{seconds:.0f} s = {alone_seconds / seconds:.1f}x", file=sys.stderr, flush=True)
    print("| strategy | iterations / plane | mean PSNR | vs alone: mean | worst plane | seconds | speed-up |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for r in results:
        gaps = (f"{r['gap_mean']:+.2f} | {r['gap_worst']:+.2f}" if "gap_mean" in r else "– | –")
        print(f"| {r['strategy']} | {r['cost_per_plane']:.0f} | {r['psnr']:.2f} | {gaps} | {r['seconds']:.0f} | "
              f"{r.get('speedup', 1.0):.1f}x |")
    if args.out:
        args.out.write_text(json.dumps({"config": vars(args) | {"out": str(args.out)}, "machine": machine_info(),
                                        "results": results}, indent=1, default=float))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
