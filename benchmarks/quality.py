"""PSNR / SSIM / seconds of MPI and of zero-shot classical baselines on real and synthetic noisy data.

Every method gets the same noisy float input (see ``datasets.py``) and no method sees the clean image:
the classical baselines are tuned only from the noisy image (noise-level estimates or J-invariant
self-supervised calibration, Batson & Royer 2019). Run from the repository root, e.g.::

    python benchmarks/quality.py --crop 256                                     # everything (slow on a CPU)
    python benchmarks/quality.py --datasets fmd-confocal --limit 4 --methods noisy,box3,gauss-cal,mpi-fast
    python benchmarks/quality.py --crop 64 --limit 2 --iterations 5 --out quality.json --md quality.md
    python benchmarks/quality.py --methods noisy,mpi-fast --tuning final_predictions=0 --out q-nofinal.json

``--out FILE.json`` is what ``plots.py --quality`` draws.

Rows (``--methods``, comma separated; ``mpi-<preset>`` works for any preset the engine knows):

noisy          the input itself (reference, not a baseline)
box3           3x3 box blur (sanity reference; counted as a baseline)
bm3d-est       BM3D (``bm3d`` package; ``bm3d_rgb`` for colour) at the ``estimate_sigma`` noise level
bm3d-cal       BM3D at the sigma (0.5x-16x the estimate, factors of 2, then +-sqrt 2 around the
               best) that minimises the J-invariant loss
nlm-est        non-local means, h = 0.8 sigma, sigma = ``estimate_sigma`` (skimage's recipe), fast mode
nlm-cal        non-local means with h (0.2x-3.2x sigma) calibrated by J-invariance
gauss-cal      Gaussian filter, sigma (0.25-8 px) calibrated by ``calibrate_denoiser``, applied normally
wavelet-cal    BayesShrink wavelet, sigma (0.5x-4x estimate) x wavelet (db1/db2/sym4) (x YCbCr for
               colour) calibrated, applied normally
tv-cal         Chambolle TV, weight (0.1x-30x the estimated sigma) calibrated, applied normally
*-jinv         gauss / wavelet / tv / bm3d: the J-invariant denoiser ``calibrate_denoiser``
               returns (the scikit-image tutorial recipe: the calibrated filter with each pixel's own
               value replaced by its neighbours' mean; 16 passes). bm3d-jinv is slow (24 BM3D runs).
mpi-fast       napari_mpi.denoise(preset="fast"); ``--mask-ratio/--beta/--iterations/--weights/
mpi-quality    --precision/--seed/--device/--refine`` override the preset for every mpi row, ``--tuning``
               passes other FillConfig fields (``napari_mpi.denoise(tuning=...)``)

"Calibrated" = the parameters minimising the self-supervised J-invariant loss of
``skimage.restoration.calibrate_denoiser`` (one stride-4 mask, ``approximate_loss=True``); a chosen
value at the end of its grid is flagged ``at_grid_edge`` in the JSON. A ``-cal`` and a ``-jinv`` row
share one search per image, but each row's seconds include the search.

Metrics: PSNR and SSIM (Gaussian window sigma 1.5, as Wang et al.) with the data range of the clean
reference's file format: 8-bit, i.e. 1.0 after the /255 scaling (as the FMD and MPI papers report).
``--data-range clean`` uses max - min of the clean crop instead (beware: a background-only crop then
gets a tiny range and a meaningless PSNR). RGB: over all channels (SSIM with ``channel_axis``);
stacks: PSNR over the volume, SSIM averaged over planes (``metrics.py``). GigaDB pairs were
contrast-stretched separately, so every output there (the noisy input included) is first mapped to the
clean image by a least-squares affine fit ``a * output + b`` (as in CARE), then scored.

The table per dataset: mean PSNR, mean SSIM, mean gain over the noisy input, the worst single-image
PSNR gap to the best baseline (the classical row with the highest mean PSNR; negative = loses), and
mean seconds per image (wall clock, this process's threads).
"""

from __future__ import annotations

import argparse
import ast
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from datasets import DATASETS, DEFAULT_DATASETS, Sample, load, require_data_root, run_record, write_json
from metrics import score

import napari_mpi

# ---------------------------------------------------------------------------------------------- baselines
# Each 2-D function takes one plane (H, W) or colour image (H, W, 3) and ``rgb``; it returns
# (denoised, info) where info records what was chosen without ground truth.

BM3D_FACTORS = (0.5, 1.0, 2.0, 4.0, 8.0, 16.0)  # then refined by x 2**(+-1/2) around the best
GAUSS_SIGMAS = tuple(float(s) for s in np.round(np.geomspace(0.25, 8.0, 16), 3))
TV_FACTORS = tuple(float(s) for s in np.round(np.geomspace(0.1, 30.0, 16), 3))
WAVELET_FACTORS = (0.5, 0.71, 1.0, 1.41, 2.0, 2.83, 4.0)
NLM_FACTORS = (0.2, 0.3, 0.4, 0.6, 0.8, 1.0, 1.2, 1.6, 2.4, 3.2)


def _ca(rgb: bool):
    return -1 if rgb else None


def _sigma(image: np.ndarray, rgb: bool, average: bool = True):
    """Gaussian noise level by wavelet MAD (skimage.restoration.estimate_sigma)."""
    from skimage.restoration import estimate_sigma

    sigma = estimate_sigma(image, channel_axis=_ca(rgb), average_sigmas=average)
    if np.ndim(sigma) == 0:
        return max(float(sigma), 1e-4)
    return [max(float(s), 1e-4) for s in sigma]


# Calibrations are cached per image so that a "-cal" and a "-jinv" row share one search; the row
# that reuses a search is still charged its seconds (see ``reused_seconds``), so the table's
# seconds are what each row costs on its own.
_CACHE: dict[tuple, tuple] = {}
_REUSED = [0.0]


def reused_seconds() -> float:
    """Seconds of cached calibrations reused since the last call (charged to the current row)."""
    value, _REUSED[0] = _REUSED[0], 0.0
    return value


def _calibrate(image, function, grid: dict, rgb: bool, key: str, stride: int = 4):
    """Parameters minimising the J-invariant self-supervised loss (skimage.calibrate_denoiser)."""
    import hashlib

    from skimage.restoration import calibrate_denoiser

    digest = hashlib.sha1(np.ascontiguousarray(image).tobytes()).hexdigest()
    cache_key = (key, image.shape, image.dtype.str, rgb, digest)
    if cache_key in _CACHE:
        best, jinv, info, seconds = _CACHE[cache_key]
        _REUSED[0] += seconds
        return best, jinv, dict(info)
    start = time.perf_counter()
    grid = dict(grid)
    if rgb:
        grid["channel_axis"] = [-1]
    jinv, (tested, losses) = calibrate_denoiser(image, function, grid, stride=stride, extra_output=True)
    best = dict(tested[int(np.argmin(losses))])
    info = {"tested": len(tested), "loss": float(np.min(losses))}
    edges = [name for name, values in grid.items() if len(values) > 1 and name != "channel_axis"
             and all(isinstance(v, (int, float, np.number)) and not isinstance(v, (bool, np.bool_)) for v in values)
             and best[name] in (min(values), max(values))]
    if edges:  # the optimum may lie outside the searched range
        info["at_grid_edge"] = edges
    if len(_CACHE) >= 8:
        _CACHE.pop(next(iter(_CACHE)))
    _CACHE[cache_key] = (best, jinv, info, time.perf_counter() - start)
    return best, jinv, dict(info)


def _public(params: dict) -> dict:
    out = {}
    for key, value in params.items():
        if key == "channel_axis":
            continue
        if isinstance(value, (list, tuple, np.ndarray)):
            out[key] = [round(float(v), 5) for v in value]
        elif isinstance(value, (float, np.floating)):
            out[key] = round(float(value), 5)
        else:
            out[key] = value
    return out


def _bm3d(image, sigma_psd, channel_axis=None):
    import bm3d

    image = np.asarray(image, dtype=np.float64)
    if channel_axis is not None:
        return bm3d.bm3d_rgb(image, sigma_psd).astype(np.float32)
    return np.asarray(bm3d.bm3d(image, sigma_psd), dtype=np.float32)


def _gauss(image, sigma, channel_axis=None):
    from skimage.filters import gaussian

    return gaussian(image, sigma=sigma, channel_axis=channel_axis, preserve_range=True, mode="reflect")


def _tv(image, weight, channel_axis=None):
    from skimage.restoration import denoise_tv_chambolle

    return denoise_tv_chambolle(image, weight=weight, channel_axis=channel_axis)


def _wavelet(image, sigma, wavelet="db1", convert2ycbcr=False, channel_axis=None):
    from skimage.restoration import denoise_wavelet

    if channel_axis is None:
        convert2ycbcr = False
    return denoise_wavelet(image, sigma=sigma, wavelet=wavelet, mode="soft", method="BayesShrink",
                           convert2ycbcr=convert2ycbcr, rescale_sigma=True, channel_axis=channel_axis)


def _nlm(image, h, sigma, channel_axis=None):
    from skimage.restoration import denoise_nl_means

    return denoise_nl_means(image, h=h, sigma=sigma, patch_size=5, patch_distance=6, fast_mode=True,
                            channel_axis=channel_axis, preserve_range=True)


def box3(image, rgb):
    from scipy import ndimage as ndi

    size = (3, 3, 1) if rgb else (3, 3)
    return ndi.uniform_filter(image, size=size, mode="reflect"), {}


def bm3d_est(image, rgb):
    sigma = _sigma(image, rgb, average=not rgb)
    return _bm3d(image, sigma, channel_axis=_ca(rgb)), {"sigma_psd": _public({"s": sigma})["s"]}


def nlm_est(image, rgb):
    sigma = float(np.mean(_sigma(image, rgb)))
    info = {"sigma": round(sigma, 5), "h": round(0.8 * sigma, 5)}
    return _nlm(image, h=0.8 * sigma, sigma=sigma, channel_axis=_ca(rgb)), info


# Search grids: (grid, estimated sigma or None) from the noisy image alone.


def _bm3d_grid(image, rgb):
    sigma = _sigma(image, rgb, average=not rgb)
    if rgb:
        return {"sigma_psd": [[s * f for s in sigma] for f in BM3D_FACTORS]}, sigma
    return {"sigma_psd": [sigma * f for f in BM3D_FACTORS]}, sigma


def _nlm_grid(image, rgb):
    sigma = float(np.mean(_sigma(image, rgb)))
    return {"h": [f * sigma for f in NLM_FACTORS], "sigma": [sigma]}, sigma


def _gauss_grid(image, rgb):
    return {"sigma": list(GAUSS_SIGMAS)}, None


def _tv_grid(image, rgb):
    sigma = float(np.mean(_sigma(image, rgb)))
    return {"weight": [f * sigma for f in TV_FACTORS]}, sigma


def _wavelet_grid(image, rgb):
    sigma = float(np.mean(_sigma(image, rgb)))
    grid = {"sigma": [f * sigma for f in WAVELET_FACTORS], "wavelet": ["db1", "db2", "sym4"]}
    if rgb:
        grid["convert2ycbcr"] = [True, False]
    return grid, sigma


def _bm3d_refine(best: dict, grid: dict) -> dict:
    """Second BM3D search: the best coarse sigma x 2**(-1/2) and x 2**(1/2); the coarse ends stay flagged."""
    sigma = best["sigma_psd"]
    scale = lambda f: [s * f for s in sigma] if isinstance(sigma, list) else sigma * f  # noqa: E731
    return {"sigma_psd": [scale(2**-0.5), scale(2**0.5)]}


def _calibrated(key: str, function, grid_of, jinv_output: bool, refine=None):
    """A baseline: calibrate on the noisy image (``refine(best, grid)`` may add a second, finer
    search), then apply the plain filter (``-cal``) or its J-invariant version (``-jinv``, what
    calibrate_denoiser returns)."""

    def run(image, rgb):
        from skimage.restoration import denoise_invariant

        grid, estimate = grid_of(image, rgb)
        best, _, info = _calibrate(image, function, grid, rgb, key)
        if refine is not None:
            fine, _, fine_info = _calibrate(image, function, refine(best, grid), rgb, key + "-refine")
            info["tested"] += fine_info["tested"]
            if fine_info["loss"] < info["loss"]:
                best, info["loss"] = fine, fine_info["loss"]
        if jinv_output:
            kwargs = dict(best, channel_axis=-1) if rgb else best
            out = denoise_invariant(image, function, stride=4, denoiser_kwargs=kwargs)
        else:
            out = function(image, **best)
        if estimate is not None:
            info["estimated_sigma"] = _public({"s": estimate})["s"]
        return np.asarray(out, dtype=np.float32), {**_public(best), **info}

    return run


# ---------------------------------------------------------------------------------------------- MPI


@dataclass
class MpiOptions:
    mask_ratio: float | None = None
    beta: float | None = None
    iterations: int | None = None
    weights: str = "default"
    precision: str = "auto"
    seed: int = 0
    device: str = "auto"
    refine: str = "auto"
    tuning: dict = field(default_factory=dict)


def mpi_method(preset: str, options: MpiOptions) -> Callable[[Sample], tuple[np.ndarray, dict]]:
    def run(sample: Sample):
        from napari_mpi.engine.devices import resolve_precision

        kwargs = dict(mask_ratio=options.mask_ratio, beta=options.beta, iterations=options.iterations,
                      preset=preset, rgb=sample.kind == "rgb", seed=options.seed, device=options.device,
                      weights=options.weights, precision=options.precision, refine=options.refine,
                      tuning=options.tuning or None)
        plan = napari_mpi.prepare(sample.noisy.shape, sample.noisy.dtype, **kwargs)
        out = napari_mpi.denoise(sample.noisy, **kwargs)
        keep = ("preset", "mask_ratio", "beta", "iterations", "precision", "device", "weights", "refine", "crop")
        info = {k: v for k, v in plan.describe().items() if k in keep}
        info["precision_used"] = resolve_precision(plan.config.precision, plan.device)  # what "auto" became here
        if options.tuning:
            info["tuning"] = dict(options.tuning)
        return out, info

    return run


def parse_tuning(text: str | None) -> dict:
    """``"final_predictions=0,crop_size=128"`` -> ``{"final_predictions": 0, "crop_size": 128}``: FillConfig fields
    for ``napari_mpi.denoise(tuning=...)`` (values read as Python literals, else kept as text)."""
    tuning = {}
    for item in (text or "").split(","):
        if not item.strip():
            continue
        key, sep, value = item.partition("=")
        if not sep:
            raise SystemExit(f"--tuning takes NAME=VALUE pairs, got {item!r}")
        try:
            tuning[key.strip()] = ast.literal_eval(value.strip())
        except (ValueError, SyntaxError):
            tuning[key.strip()] = value.strip()
    return tuning


# ---------------------------------------------------------------------------------------------- registry


def _per_plane(function) -> Callable[[Sample], tuple[np.ndarray, dict]]:
    """A 2-D baseline applied to a sample: colour as colour, gray as gray, stacks plane by plane."""

    def run(sample: Sample):
        if sample.kind == "stack":
            results = [function(plane, False) for plane in sample.noisy]
            return np.stack([out for out, _ in results]), {"planes": [info for _, info in results]}
        return function(sample.noisy, sample.kind == "rgb")

    return run


BASELINES: dict[str, Callable] = {
    "box3": box3,
    "bm3d-est": bm3d_est,
    "bm3d-cal": _calibrated("bm3d", _bm3d, _bm3d_grid, jinv_output=False, refine=_bm3d_refine),
    "bm3d-jinv": _calibrated("bm3d", _bm3d, _bm3d_grid, jinv_output=True, refine=_bm3d_refine),
    "nlm-est": nlm_est,
    "nlm-cal": _calibrated("nlm", _nlm, _nlm_grid, jinv_output=False),
    "gauss-cal": _calibrated("gauss", _gauss, _gauss_grid, jinv_output=False),
    "gauss-jinv": _calibrated("gauss", _gauss, _gauss_grid, jinv_output=True),
    "wavelet-cal": _calibrated("wavelet", _wavelet, _wavelet_grid, jinv_output=False),
    "wavelet-jinv": _calibrated("wavelet", _wavelet, _wavelet_grid, jinv_output=True),
    "tv-cal": _calibrated("tv", _tv, _tv_grid, jinv_output=False),
    "tv-jinv": _calibrated("tv", _tv, _tv_grid, jinv_output=True),
}
DEFAULT_METHODS = ("noisy", "box3", "bm3d-est", "bm3d-cal", "bm3d-jinv", "nlm-est", "nlm-cal", "gauss-cal",
                   "gauss-jinv", "wavelet-cal", "wavelet-jinv", "tv-cal", "tv-jinv", "mpi-fast", "mpi-quality")
ALL_METHODS = ("noisy", *BASELINES, "mpi-fast", "mpi-quality")


def make_method(name: str, mpi: MpiOptions):
    if name == "noisy":
        return lambda sample: (sample.noisy.copy(), {})
    if name in BASELINES:
        return _per_plane(BASELINES[name])
    if name.startswith("mpi-"):
        return mpi_method(name[4:], mpi)
    raise SystemExit(f"unknown method {name!r}; choose from {', '.join(ALL_METHODS)} (or mpi-<preset>)")


def is_baseline(name: str) -> bool:
    return name in BASELINES


# ---------------------------------------------------------------------------------------------- report


def summarise(rows: list[dict], methods: list[str]) -> dict[str, dict]:
    """Per dataset and method: means, worst gap to the best baseline, seconds."""
    summary: dict[str, dict] = {}
    for dataset in dict.fromkeys(r["dataset"] for r in rows):
        drows = [r for r in rows if r["dataset"] == dataset]
        table: dict[str, dict] = {}
        for method in methods:
            mrows = [r for r in drows if r["method"] == method and r.get("psnr") is not None]
            if not mrows:
                continue
            table[method] = {
                "images": len(mrows),
                "psnr": float(np.mean([r["psnr"] for r in mrows])),
                "ssim": float(np.mean([r["ssim"] for r in mrows])),
                "seconds": float(np.mean([r["seconds"] for r in mrows])),
            }
        noisy = {r["image"]: r["psnr"] for r in drows if r["method"] == "noisy"}
        baselines = [m for m in table if is_baseline(m)]
        best = max(baselines, key=lambda m: table[m]["psnr"]) if baselines else None
        best_psnr = {r["image"]: r["psnr"] for r in drows if r["method"] == best} if best else {}
        for method, entry in table.items():
            mine = {r["image"]: r["psnr"] for r in drows if r["method"] == method and r.get("psnr") is not None}
            if noisy:
                gains = [mine[i] - noisy[i] for i in mine if i in noisy]
                entry["gain"] = float(np.mean(gains)) if gains else None
            gaps = [mine[i] - best_psnr[i] for i in mine if i in best_psnr]
            entry["worst_gap"] = 0.0 if method == best else (float(min(gaps)) if gaps else None)
            if gaps:
                worst_image = min((i for i in mine if i in best_psnr), key=lambda i: mine[i] - best_psnr[i])
                entry["worst_image"] = worst_image
        summary[dataset] = {"best_baseline": best, "methods": table}
    return summary


def markdown(summary: dict, rows: list[dict], per_image: bool = False) -> str:
    def fmt(value, spec):
        return "—" if value is None else format(value, spec)

    parts = []
    for dataset, entry in summary.items():
        table = entry["methods"]
        n = max((t["images"] for t in table.values()), default=0)
        kinds = sorted({r["kind"] for r in rows if r["dataset"] == dataset})
        shape = next((r["shape"] for r in rows if r["dataset"] == dataset), None)
        parts.append(f"### {dataset}  ({n} images, {'/'.join(kinds)}, e.g. {shape}; "
                     f"best baseline: {entry['best_baseline'] or '—'})\n")
        parts.append("| method | PSNR (dB) | SSIM | gain vs noisy (dB) | worst gap to best baseline (dB) | s / image |")
        parts.append("|---|---:|---:|---:|---:|---:|")
        for method, t in table.items():
            gap = fmt(t.get("worst_gap"), "+.2f")
            if t.get("worst_image") and method != entry["best_baseline"] and method != "noisy":
                gap += f" ({t['worst_image']})"
            parts.append(f"| {method} | {t['psnr']:.2f} | {t['ssim']:.4f} | {fmt(t.get('gain'), '+.2f')} | "
                         f"{gap} | {t['seconds']:.2f} |")
        if per_image:
            methods = list(table)
            images = list(dict.fromkeys(r["image"] for r in rows if r["dataset"] == dataset))
            lookup = {(r["image"], r["method"]): r for r in rows if r["dataset"] == dataset}
            parts.append("\nPer image, PSNR (dB):\n")
            parts.append("| image | " + " | ".join(methods) + " |")
            parts.append("|---|" + "---:|" * len(methods))
            for image in images:
                cells = [fmt(lookup.get((image, m), {}).get("psnr"), ".2f") for m in methods]
                parts.append(f"| {image} | " + " | ".join(cells) + " |")
        parts.append("")
    return "\n".join(parts)


# ---------------------------------------------------------------------------------------------- main


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=None, help="shared data folder (default $NAPARI_MPI_DATA or ../shared/data)")
    parser.add_argument("--datasets", default=",".join(DEFAULT_DATASETS),
                        help=f"comma-separated, from: {', '.join(DATASETS)}")
    parser.add_argument("--methods", default=",".join(DEFAULT_METHODS),
                        help=f"comma-separated rows, from: {', '.join(ALL_METHODS)}, mpi-<preset>; 'all' = every one")
    parser.add_argument("--crop", type=int, default=256,
                        help="centre crop side in pixels, 0 = whole images (default 256)")
    parser.add_argument("--limit", type=int, default=None, help="at most K images per dataset")
    parser.add_argument("--sigma", type=float, default=25.0, help="kodak-gauss25 noise std in 0-255 units (default 25)")
    parser.add_argument("--peak", type=float, default=30.0, help="kodak-poisson30 photons at white (default 30)")
    parser.add_argument("--data-range", choices=("unit", "clean"), default="unit",
                        help="PSNR/SSIM data range: 1.0 = the 8-bit range of the reference files (default), "
                             "or max-min of the clean crop")
    mpi = parser.add_argument_group("MPI rows (override the presets of every mpi-* row)")
    mpi.add_argument("--mask-ratio", type=float, default=None)
    mpi.add_argument("--beta", type=float, default=None)
    mpi.add_argument("--iterations", type=int, default=None)
    mpi.add_argument("--weights", default="default", help='"default", "random" or a checkpoint path')
    mpi.add_argument("--precision", default="auto", choices=("auto", "fp32", "bf16"))
    mpi.add_argument("--seed", type=int, default=0)
    mpi.add_argument("--device", default="auto")
    mpi.add_argument("--refine", default="auto", choices=("auto", "wiener", "none"),
                     help="what follows the fill (the Wiener refinement); none = the fill's estimate alone")
    mpi.add_argument("--tuning", default=None, metavar="NAME=VALUE,...",
                     help="other FillConfig fields for every mpi row, e.g. final_predictions=0,crop_size=128 "
                          "(napari_mpi.denoise(tuning=...))")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's choice)")
    parser.add_argument("--out", default=None, help="write every per-image result and the summary as JSON (rewritten "
                                                    "after every image)")
    parser.add_argument("--md", default=None, help="write the Markdown tables to this file")
    parser.add_argument("--per-image", action="store_true", help="add per-image PSNR tables to the Markdown")
    parser.add_argument("--fail-fast", action="store_true",
                        help="stop at the first method error instead of recording it")
    return parser.parse_args(argv)


def run_method(method: str, runner, sample: Sample, data_range: str, fail_fast: bool) -> dict:
    """One row: the method on one sample, scored; an error is recorded in the row (or raised with ``fail_fast``)."""
    row = {"dataset": sample.dataset, "image": sample.name, "kind": sample.kind, "shape": list(sample.noisy.shape),
           "method": method}
    reused_seconds()
    start = time.perf_counter()
    try:
        output, info = runner(sample)
        # a calibration shared with an earlier row is charged to this row too
        row["seconds"] = time.perf_counter() - start + reused_seconds()
        row["psnr"], row["ssim"] = score(output, sample.clean, sample.kind, sample.compare, data_range)
        row["info"] = info
    except Exception as exc:  # a failing method must not lose the rest of a long run
        if fail_fast:
            raise
        row.update(seconds=time.perf_counter() - start, psnr=None, ssim=None, error=repr(exc))
    scored = row.get("psnr") is not None
    status = f"{row['psnr']:6.2f} dB  SSIM {row['ssim']:.4f}" if scored else f"ERROR {row['error']}"
    print(f"[{sample.dataset} {sample.name} {method}] {status}  {row['seconds']:.2f} s", file=sys.stderr, flush=True)
    return row


def header(record: dict) -> str:
    """One line naming the crop, data range, machine and versions of a result file."""
    config, machine, versions = record["config"], record["machine"], record["versions"]
    gpu = f", GPU {machine['gpu']}" if machine.get("gpu") else ""
    return (f"Crop {config['crop'] or 'full'}, data range '{config['data_range']}', {machine['cpu']} "
            f"({machine.get('torch_threads')} torch threads){gpu}, torch {versions['torch']}, "
            f"napari-mpi {versions['napari_mpi']}, {record['date']}.\n")


def main(argv=None) -> int:
    args = parse_args(argv)
    root = require_data_root(args.data)
    datasets = [d.strip() for d in args.datasets.split(",") if d.strip()]
    for d in datasets:
        if d not in DATASETS:
            raise SystemExit(f"unknown dataset {d!r}; choose from {', '.join(DATASETS)}")
    methods = list(ALL_METHODS) if args.methods == "all" else [m.strip() for m in args.methods.split(",") if m.strip()]
    options = MpiOptions(args.mask_ratio, args.beta, args.iterations, args.weights, args.precision, args.seed,
                         args.device, args.refine, parse_tuning(args.tuning))
    runners = {m: make_method(m, options) for m in methods}
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)

    config = {k: v for k, v in vars(args).items() if k not in ("out", "md")}
    config.update(methods=methods, datasets=datasets, data=str(root), tuning=options.tuning)
    record = run_record(config, argv) | {"rows": [], "summary": {}}
    rows: list[dict] = record["rows"]

    def save():
        record["summary"] = summarise(rows, methods)
        if args.out:
            write_json(args.out, record)

    for dataset in datasets:
        for sample in load(dataset, root, crop=args.crop or None, limit=args.limit, sigma=args.sigma, peak=args.peak):
            rows.extend(run_method(m, runners[m], sample, args.data_range, args.fail_fast) for m in methods)
            save()
    save()
    text = header(record) + "\n" + markdown(record["summary"], rows, args.per_image)
    print(text)
    if args.md:
        Path(args.md).write_text(text)
    return 1 if any(r.get("error") for r in rows) else 0


if __name__ == "__main__":
    raise SystemExit(main())
