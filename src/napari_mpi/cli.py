"""Command line: ``napari-mpi denoise``, ``napari-mpi pretrain``, ``napari-mpi demo``."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import get_args

import numpy as np

from ._cli_batch import run_denoise
from ._cli_denoise import REUSE, check_threads, error_text, progress_bar, unexpected_text
from .settings import DEFAULT_PRESET, PRESET_NAMES, Precision


def _ratio_range(text: str) -> tuple[float, float]:
    try:
        if "-" in text.strip("-"):
            low, high = (float(v) for v in text.split("-", 1))
        else:
            low = high = float(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"expected a ratio like 0.3 or a range like 0.2-0.9, got {text!r}") from exc
    return low, high


def _crop_option(text: str) -> str | int:
    """--crop: "auto", "none" or a window side in pixels."""
    if text.strip().lower() in ("auto", "none"):
        return text.strip().lower()
    try:
        return int(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(
            f"expected auto, none or a window side in pixels like 256, got {text!r}"
        ) from exc


def _steps(text: str) -> int:
    if text.strip().lower() == "auto":
        return 0
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f'expected a whole number of steps >= 1 or "auto", got {text!r}')
    return value


def _pretrain(args: argparse.Namespace) -> int:
    import torch

    from .engine.devices import resolve_device
    from .pretrain import PretrainConfig, pretrain

    config = PretrainConfig(
        channels=args.channels,
        mask_mode=args.mask_mode or ("pixel" if args.channels == 1 else "channel"),
        mask_ratios=args.mask_ratio,
        crop=args.crop,
        batch=args.batch,
        steps=args.steps,
        loss=args.loss,
        seed=args.seed,
        precision=args.precision,
        checkpoint_minutes=args.checkpoint_minutes,
        short_side=args.short_side,
        width=args.width,
    )
    check_threads(args.threads)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    run = pretrain(args.images, args.out, config, resume=args.resume, init=args.init, max_minutes=args.max_minutes,
                   device=device, history=args.history)
    with progress_bar(total=config.steps or None, unit="step") as bar:
        for record in run:
            if bar.n == 0:
                bar.n = record.step - 1
            if bar.total != record.steps and record.steps:
                bar.total = record.steps  # "auto" planned its schedule
            bar.update(1)
            saved = "yes" if record.checkpointed else ""
            bar.set_postfix(loss=f"{record.loss:.4g}", lr=f"{record.lr:.2e}", saved=saved, refresh=False)
    print(f"checkpoint: {args.out}")
    return 0


def _demo(args: argparse.Namespace) -> int:
    from ._sample_data import clean_fluorescence, expected_counts, noisy_fluorescence
    from .api import denoise

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    clean = clean_fluorescence((args.size, args.size), seed=0)
    noisy = noisy_fluorescence(clean)
    with progress_bar(total=None, unit="it", desc="denoising the demo sample") as bar:
        def progress(event) -> None:
            bar.total = event.iterations
            bar.update(1)

        result = denoise(noisy, preset=args.preset, iterations=args.iterations, device=args.device, progress=progress)
    import tifffile

    tifffile.imwrite(out / "noisy.tif", noisy, metadata={"axes": "YX"})
    tifffile.imwrite(out / "denoised.tif", result, metadata={"axes": "YX"})
    reference = expected_counts(clean).astype(np.float64)
    data_range = float(reference.max() - reference.min())

    def psnr(image: np.ndarray) -> float:
        return float(10 * np.log10(data_range**2 / np.mean((image.astype(np.float64) - reference) ** 2)))

    panel = np.concatenate([noisy.astype(np.float64), result.astype(np.float64)], axis=1)
    lo, hi = np.percentile(panel, [0.5, 99.8])
    from skimage.io import imsave

    picture = (np.clip((panel - lo) / (hi - lo), 0, 1) * 255).astype(np.uint8)
    imsave(out / "before_after.png", picture, check_contrast=False)
    print(f"PSNR vs the known clean image: noisy {psnr(noisy):.2f} dB -> denoised {psnr(result):.2f} dB")
    print(f"wrote {out / 'noisy.tif'}, {out / 'denoised.tif'} and {out / 'before_after.png'}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="napari-mpi", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    _add_denoise_parser(sub)
    _add_demo_parser(sub)
    _add_pretrain_parser(sub)
    return parser


def _add_denoise_parser(sub) -> None:
    den = sub.add_parser("denoise", help="denoise TIFF, Zarr / OME-Zarr or PNG images plane by plane")
    den.add_argument("inputs", nargs="+", metavar="input",
                     help="noisy image: .tif/.tiff (any N-D), a Zarr or OME-Zarr folder, or .png; or several, folders "
                          "of them, or quoted globs like 'run*/**/*.tif' (then -o names an output folder)")
    den.add_argument("-o", "--output", required=True, type=Path,
                     help="where to write the result: .tif/.tiff, .zarr, .ome.zarr (written plane by plane) or .png; "
                          "a folder for several inputs, where each output keeps its input's name and format")
    den.add_argument("--suffix", default="", help="several inputs: added to each output's name, e.g. _denoised")
    den.add_argument("--summary", type=Path, default=None,
                     help="several inputs: the summary file, .csv or .json (default OUTPUT/napari-mpi-summary.csv)")
    den.add_argument("--preset", choices=PRESET_NAMES, default=DEFAULT_PRESET)
    den.add_argument("--mask-ratio", type=float, default=None,
                     help="fraction hidden per step (default 0.3; 0.8-0.95 for correlated noise)")
    den.add_argument("--beta", type=float, default=None, help="EMA weight in [0, 1) (default from the preset)")
    den.add_argument("--iterations", type=int, default=None, help="fill steps per plane (default from the preset)")
    den.add_argument("--axes", default=None, help="axis letters, e.g. YX, ZYX, TZCYX, YXS (RGB); default from the file")
    den.add_argument("--device", default="auto", help="auto, cpu, cuda or mps")
    den.add_argument("--seed", type=int, default=0)
    den.add_argument("--weights", default="default", help="'default', 'random' or a checkpoint file")
    den.add_argument("--precision", choices=("auto", "fp32", "bf16"), default="auto")
    den.add_argument("--threads", type=int, default=0,
                     help="CPU threads (0 = torch's default; use fewer on a busy machine)")
    den.add_argument("--keep-dtype", action="store_true",
                     help="write the input's integer type (rounded) instead of float32")
    den.add_argument("--reuse-network", choices=tuple(REUSE), default="auto", nargs="?", const="yes",
                     help="stacks: a plane may continue from the previous plane's network with a fraction of the "
                          "steps, several times faster on z-stacks and time-lapses. auto (default): decided per plane "
                          "(a plane unlike the previous one starts afresh); yes (or the bare flag): every plane "
                          "continues; no: every plane alone (docs/benchmarks.md)")
    den.add_argument("--refine", choices=("auto", "wiener", "none"), default="auto",
                     help="after each plane's fill: a block-matching Wiener filter with the fill's estimate as its "
                          "pilot, which gives back texture; auto (default): wiener for mask "
                          "ratios up to 0.65, none above (it assumes independent noise)")
    den.add_argument("--crop", type=_crop_option, default="auto",
                     help="train each fill step on a random window of this many pixels per side instead of the whole "
                          "plane (as good on big planes, faster, the memory of one window); auto (default): "
                          "256 on the CPU for gray planes of 4x that area (512x512) or more; none: whole planes")
    den.add_argument("--resume", action="store_true",
                     help="continue an interrupted run into the same output, skipping the planes it finished")
    den.add_argument("--scheduler", default=None,
                     help="spread planes over Dask workers: 'local' (a cluster on this machine) or tcp://host:port")
    den.add_argument("--workers", type=int, default=None,
                     help="worker processes for --scheduler local (default: one per GPU, else one per 4 CPU cores)")
    den.add_argument("--overwrite", action="store_true", help="replace the output if it exists (refused otherwise)")
    den.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    den.set_defaults(func=run_denoise)


def _add_demo_parser(sub) -> None:
    demo = sub.add_parser("demo", help="denoise a locally made noisy fluorescence sample and write a before/after PNG")
    demo.add_argument("--out", default="demo-output", help="folder for noisy.tif, denoised.tif, before_after.png")
    demo.add_argument("--size", type=int, default=256)
    demo.add_argument("--preset", choices=PRESET_NAMES, default=DEFAULT_PRESET)
    demo.add_argument("--iterations", type=int, default=None)
    demo.add_argument("--device", default="auto")
    demo.set_defaults(func=_demo)


def _add_pretrain_parser(sub) -> None:
    pre = sub.add_parser("pretrain", help="masked pre-training on a folder of clean natural images")
    pre.add_argument("--images", required=True, type=Path, help="folder of clean training images")
    pre.add_argument("--out", required=True, type=Path, help="checkpoint file to write (and update)")
    pre.add_argument("--channels", type=int, choices=(1, 3), default=1)
    pre.add_argument("--mask-mode", choices=("pixel", "channel"), default=None,
                     help="default: pixel for 1, channel for 3")
    pre.add_argument("--mask-ratio", type=_ratio_range, default=(0.3, 0.3), help="0.3, or a range like 0.2-0.9")
    pre.add_argument("--crop", type=int, default=128)
    pre.add_argument("--batch", type=int, default=16)
    pre.add_argument("--steps", type=_steps, default=10000,
                     help='planned steps (length of the cosine schedule), or "auto" to fit it to --max-minutes')
    pre.add_argument("--short-side", type=int, default=None,
                     help="shrink larger training images to this shorter side (pixels) when loading")
    pre.add_argument("--history", type=Path, default=None,
                     help="folder for a weights-only copy of every checkpoint, named by step")
    pre.add_argument("--loss", choices=("mse", "psnr"), default="mse",
                     help="MSE on hidden pixels (default; measured better, docs/pretraining.md) or its log, as the "
                          "reference code")
    pre.add_argument("--precision", choices=get_args(Precision), default="auto",
                     help="auto (default): bf16 on CUDA and on CPUs with native bf16 (AVX-512 BF16), fp32 elsewhere")
    pre.add_argument("--width", type=int, default=None,
                     help="channels of every convolution of a fresh network (default 48; --init and --resume keep "
                          "their weights' width); 24 is about 3x faster a step on an AVX2 CPU (docs/decisions.md)")
    pre.add_argument("--max-minutes", type=float, default=None, help="stop cleanly with a checkpoint after this long")
    pre.add_argument("--checkpoint-minutes", type=float, default=5.0)
    pre.add_argument("--resume", type=Path, default=None, help="continue a run from its checkpoint")
    pre.add_argument("--init", type=Path, default=None,
                     help="start from these weights (a finished run or a shipped file) with a fresh schedule; gray "
                          "weights can start a colour run")
    pre.add_argument("--device", default="auto")
    pre.add_argument("--threads", type=int, default=0, help="CPU threads (0 = torch's default)")
    pre.add_argument("--seed", type=int, default=0)
    pre.set_defaults(func=_pretrain)


def _one_line_warning(message, category, filename, lineno, line=None) -> str:
    """Warnings (e.g. a plane denoised in tiles after running out of memory) as one line, not two."""
    return f"napari-mpi: warning: {message}\n"


def main(argv: list[str] | None = None) -> int:
    import warnings

    command = argv[0] if argv else (sys.argv[1] if len(sys.argv) > 1 else None)
    try:
        args = build_parser().parse_args(argv)
        warnings.formatwarning = _one_line_warning
        return args.func(args)
    except (ValueError, OSError, MemoryError) as exc:
        print(f"napari-mpi: error: {error_text(exc)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        more = " (run again with --resume to continue)" if command == "denoise" else ""
        print(f"napari-mpi: interrupted{more}", file=sys.stderr)
        return 130
    except Exception as exc:  # noqa: BLE001 (a driver or library failure: one line, and how to see more)
        if os.environ.get("NAPARI_MPI_DEBUG"):
            raise
        print(f"napari-mpi: error: {unexpected_text(exc)} "
              "(set NAPARI_MPI_DEBUG=1 to see the traceback)", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
