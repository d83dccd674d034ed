"""Does a Wiener refinement with the MPI estimate as its pilot beat the estimate itself? (issue 7)

BM3D's second stage shrinks the noisy image's transform coefficients by an empirical Wiener factor
computed from a pilot estimate. MPI's estimate can be that pilot. This study scores, per image:

- ``mpi``: the default fill (the pilot), cached under ``--cache`` so that refinements can be re-scored;
- ``dct-wiener``: a sliding-window DCT Wiener filter (no block matching; pure torch, what the package
  could ship) with the pilot, and a Poisson-Gaussian noise model ``var = a * pilot + b`` fitted to the
  residual ``(noisy - pilot)**2`` (no ground truth);
- ``bm3d-wiener``: BM3D's own Wiener stage (block matching) with the pilot, at the residual's noise level
  (the ``bm3d`` package, not a candidate dependency: an upper reference).

    python benchmarks/wiener_study.py --datasets kodak-gauss25 --crop 256 --limit 6 --threads 1
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

from napari_mpi import refine  # noqa: E402

# The package's orthonormal opponent colour transform (luminance, red-green, blue-yellow).
OPPONENT = refine._OPPONENT.numpy()


def fit_noise_model(noisy: np.ndarray, pilot: np.ndarray) -> tuple[float, float]:
    """``var = a * pilot + b`` by least squares on the squared residual (a >= 0, b >= 0)."""
    x = pilot.astype(np.float64).ravel()
    r2 = (noisy.astype(np.float64).ravel() - x) ** 2
    design = np.stack([x, np.ones_like(x)], axis=1)
    (a, b), *_ = np.linalg.lstsq(design, r2, rcond=None)
    if a < 0:
        a, b = 0.0, float(r2.mean())
    if b < 0:
        a, b = float((x * r2).sum() / max((x * x).sum(), 1e-12)), 0.0
    return float(a), float(b)


def dct_wiener_plane(noisy: np.ndarray, pilot: np.ndarray, variance: np.ndarray, patch: int = 8,
                     stride: int = 2) -> np.ndarray:
    """Sliding-window DCT empirical Wiener filter of one plane, BM3D-style aggregation weights."""
    import torch.nn.functional as F

    h, w = noisy.shape
    pad = patch - 1
    tensors = [torch.from_numpy(np.ascontiguousarray(a, dtype=np.float64))[None, None] for a in (noisy, pilot, variance)]
    tensors = [F.pad(t, (pad, pad, pad, pad), mode="reflect") for t in tensors]
    cols = [F.unfold(t, patch, stride=stride)[0] for t in tensors]  # (patch*patch, n)
    dct = refine._dct_matrix(patch, "cpu", torch.float64)
    basis = torch.kron(dct, dct)  # (p*p, p*p)
    coef_noisy, coef_pilot = basis @ cols[0], basis @ cols[1]
    var = cols[2].mean(dim=0, keepdim=True).clamp_min(1e-12)
    gain = coef_pilot**2 / (coef_pilot**2 + var)
    estimate = basis.T @ (gain * coef_noisy)
    weight = 1.0 / (var * (gain**2).sum(dim=0, keepdim=True)).clamp_min(1e-12)
    size = (h + 2 * pad, w + 2 * pad)
    numerator = F.fold(estimate * weight, size, patch, stride=stride)
    denominator = F.fold(weight.expand_as(estimate).contiguous(), size, patch, stride=stride)
    out = (numerator / denominator.clamp_min(1e-30))[0, pad:pad + h, pad:pad + w]
    return out.numpy().astype(np.float32)


def to_opponent(image: np.ndarray) -> np.ndarray:
    return image.astype(np.float64) @ OPPONENT.T


def from_opponent(image: np.ndarray) -> np.ndarray:
    return (image @ OPPONENT).astype(np.float32)


def dct_wiener(noisy: np.ndarray, pilot: np.ndarray, rgb: bool, stride: int = 2) -> tuple[np.ndarray, dict]:
    a, b = fit_noise_model(noisy, pilot)
    variance = np.clip(a * pilot.astype(np.float64) + b, 1e-10, None)
    if not rgb:
        return dct_wiener_plane(noisy, pilot, variance, stride=stride), {"a": a, "b": b}
    # The transform is orthonormal, so each opponent channel keeps the per-pixel noise variance
    # (mean over the colour channels, assuming independent channels).
    noisy_o, pilot_o = to_opponent(noisy), to_opponent(pilot)
    var_o = variance.mean(axis=-1)
    out = np.stack([dct_wiener_plane(noisy_o[..., c], pilot_o[..., c], var_o, stride=stride) for c in range(3)], -1)
    return from_opponent(out), {"a": a, "b": b}


def bm3d_wiener(noisy: np.ndarray, pilot: np.ndarray, rgb: bool) -> tuple[np.ndarray, dict]:
    import bm3d

    sigma = float(np.sqrt(np.mean((noisy.astype(np.float64) - pilot) ** 2)))
    if not rgb:
        return np.asarray(bm3d.bm3d(noisy.astype(np.float64), sigma, stage_arg=pilot.astype(np.float64)),
                          dtype=np.float32), {"sigma": sigma}
    noisy_o, pilot_o = to_opponent(noisy), to_opponent(pilot)
    out = np.stack([bm3d.bm3d(noisy_o[..., c], sigma, stage_arg=pilot_o[..., c]) for c in range(3)], -1)
    return from_opponent(out), {"sigma": sigma}


def ours(noisy: np.ndarray, pilot: np.ndarray, rgb: bool, **options) -> tuple[np.ndarray, dict]:
    to_t = lambda a: torch.from_numpy(np.ascontiguousarray(a.transpose(2, 0, 1) if rgb else a[None], dtype=np.float32))  # noqa: E731
    out, model = refine.refine_estimate(to_t(noisy), to_t(pilot), colour=rgb, **options)
    out = out.numpy()
    return (out.transpose(1, 2, 0) if rgb else out[0]), {"a": model.a, "b": model.b}


def ours_separate(noisy: np.ndarray, pilot: np.ndarray, rgb: bool) -> tuple[np.ndarray, dict]:
    """Colour: each opponent channel with its own block matches (as ``bm3d-wiener`` here), not the luminance's."""
    if not rgb:
        return ours(noisy, pilot, rgb)
    n, p = (torch.from_numpy(np.ascontiguousarray(to_opponent(a).transpose(2, 0, 1), dtype=np.float32)) for a in (noisy, pilot))
    model = refine.fit_noise_model(torch.from_numpy(noisy), torch.from_numpy(pilot))
    variance = model.variance(torch.from_numpy(pilot).float().mean(-1))
    out = torch.cat([refine.collaborative_wiener(n[c:c + 1], p[c:c + 1], variance) for c in range(3)]).numpy()
    return from_opponent(out.transpose(1, 2, 0)), {"a": model.a, "b": model.b}


def ours_twice(noisy: np.ndarray, pilot: np.ndarray, rgb: bool) -> tuple[np.ndarray, dict]:
    """The refinement applied again with its own output as the pilot."""
    once, _ = ours(noisy, pilot, rgb)
    return ours(noisy, once, rgb)


def ours_scaled(noisy: np.ndarray, pilot: np.ndarray, rgb: bool, scale: float = 1.0) -> tuple[np.ndarray, dict]:
    """The shipped refinement with the fitted noise variance multiplied by ``scale``."""
    fit = refine.fit_noise_model
    refine.fit_noise_model = lambda n, p: (lambda m: refine.NoiseModel(m.a * scale, m.b * scale))(fit(n, p))
    try:
        return ours(noisy, pilot, rgb)
    finally:
        refine.fit_noise_model = fit


def ours_dihedral(noisy: np.ndarray, pilot: np.ndarray, rgb: bool, n: int = 4, **options) -> tuple[np.ndarray, dict]:
    """The shipped refinement of the first ``n`` dihedral transforms (flips, then transposed flips), averaged.

    Each transform puts the reference blocks on another grid and the groups in another order (cycle
    spinning), so their errors are partly independent.
    """
    transforms = [(False, f0, f1) for f0 in (False, True) for f1 in (False, True)]
    transforms += [(True, f0, f1) for _, f0, f1 in transforms]
    outputs, info = [], {}
    for transpose, flip0, flip1 in transforms[:n]:
        def forward(a):
            a = np.swapaxes(a, 0, 1) if transpose else a
            return a[::-1 if flip0 else 1, ::-1 if flip1 else 1]

        def back(a):
            a = a[::-1 if flip0 else 1, ::-1 if flip1 else 1]
            return np.swapaxes(a, 0, 1) if transpose else a

        out, info = ours(forward(noisy), forward(pilot), rgb, **options)
        outputs.append(back(out))
    return np.mean(outputs, axis=0).astype(np.float32), info


def pilot_for(sample, cache: Path, mask_ratio: float | None = None) -> tuple[np.ndarray, float]:
    import napari_mpi

    suffix = "" if mask_ratio is None else f"-p{mask_ratio}"
    path = cache / f"{sample.dataset}-{sample.name}{suffix}.npy".replace("/", "_")
    if path.exists():
        return np.load(path), float("nan")
    start = time.perf_counter()
    out = napari_mpi.denoise(sample.noisy, rgb=sample.kind == "rgb", seed=0, mask_ratio=mask_ratio, refine="none")
    seconds = time.perf_counter() - start
    cache.mkdir(parents=True, exist_ok=True)
    np.save(path, out)
    return out, seconds


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--datasets", nargs="+", default=["kodak-gauss25"])
    parser.add_argument("--crop", type=int, default=256)
    parser.add_argument("--limit", type=int, default=6)
    parser.add_argument("--methods", nargs="+", default=["mpi", "dct-wiener", "bm3d-wiener"])
    parser.add_argument("--stride", type=int, default=2, help="DCT window stride in pixels")
    parser.add_argument("--cache", type=Path, default=Path("runs/s8/pilots"))
    parser.add_argument("--mask-ratio", type=float, default=None, help="the fill's mask ratio (default: the default)")
    args = parse_study_args(parser, argv, threads=1)  # --threads (one per job: two jobs share the 2 cores), --data, --out
    root = require_data_root(args.data)
    rows = []
    for dataset in args.datasets:
        for sample in load(dataset, root, crop=args.crop, limit=args.limit):
            if sample.kind == "stack":
                continue
            rgb = sample.kind == "rgb"
            pilot, mpi_seconds = pilot_for(sample, args.cache, args.mask_ratio)
            row = {"dataset": dataset, "image": sample.name}
            for method in args.methods:
                start = time.perf_counter()
                if method == "mpi":
                    out, info, seconds = pilot, {}, mpi_seconds
                else:
                    function = {"dct-wiener": dct_wiener, "bm3d-wiener": bm3d_wiener, "ours-separate": ours_separate, "ours-twice": ours_twice, "dihedral": ours_dihedral}.get(method, ours)
                    kwargs = {"stride": args.stride} if method == "dct-wiener" else {}
                    if method.startswith("scaled"):  # e.g. scaled:scale=1.3
                        function = ours_scaled
                    if method.startswith("dihedral"):  # e.g. dihedral:n=8
                        function = ours_dihedral
                    if method.startswith(("ours", "scaled", "dihedral")):  # e.g. ours, ours:group=32, dihedral:n=8
                        kwargs = {k: (float(v) if "." in v else int(v)) for k, v in (part.split("=") for part in method.split(":")[1:])}
                    out, info = function(sample.noisy, pilot, rgb, **kwargs)
                    seconds = time.perf_counter() - start
                psnr, ssim = metrics(out, sample.clean, sample.kind, sample.compare)
                row[method] = {"psnr": round(psnr, 3), "ssim": round(ssim, 4), "seconds": round(seconds, 2), **info}
            rows.append(row)
            print(json.dumps(row), flush=True)
    print("\nmean PSNR (dB) per dataset, difference to mpi, worst image:")
    for dataset in args.datasets:
        subset = [r for r in rows if r["dataset"] == dataset]
        if not subset:
            continue
        base = np.array([r["mpi"]["psnr"] for r in subset])
        parts = []
        for method in args.methods:
            values = np.array([r[method]["psnr"] for r in subset])
            diff = values - base
            parts.append(f"{method} {values.mean():.2f} ({diff.mean():+.2f}, worst {diff.min():+.2f})")
        print(f"  {dataset} ({len(subset)}): " + "; ".join(parts))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
