"""Command line: ``napari-mpi denoise``, ``napari-mpi pretrain``, ``napari-mpi demo``."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np


def _progress_bar(**options):
    """A tqdm bar that redraws live on a terminal and only every 30 s in a log file (CI, batch jobs)."""
    from tqdm import tqdm

    return tqdm(dynamic_ncols=True, mininterval=0.1 if sys.stderr.isatty() else 30.0, **options)


def _ratio_range(text: str) -> tuple[float, float]:
    try:
        if "-" in text.strip("-"):
            low, high = (float(v) for v in text.split("-", 1))
        else:
            low = high = float(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"expected a ratio like 0.3 or a range like 0.2-0.9, got {text!r}") from exc
    return low, high


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

    from .fill import resolve_device
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
    )
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    run = pretrain(args.images, args.out, config, resume=args.resume, max_minutes=args.max_minutes, device=device,
                   history=args.history)
    with _progress_bar(total=config.steps or None, unit="step") as bar:
        for record in run:
            if bar.n == 0:
                bar.n = record.step - 1
            if bar.total != record.steps and record.steps:
                bar.total = record.steps  # "auto" planned its schedule
            bar.update(1)
            bar.set_postfix(loss=f"{record.loss:.4g}", lr=f"{record.lr:.2e}", saved="yes" if record.checkpointed else "", refresh=False)
    print(f"checkpoint: {args.out}")
    return 0


def _read_image(path: Path, axes: str | None) -> tuple[np.ndarray, str]:
    """Read TIFF (axes from ImageJ / OME metadata) or another image format; return data and axes."""
    if not path.exists():
        raise ValueError(f"input file not found: {path}")
    if path.is_dir():
        raise ValueError(f"input is a folder, not an image file: {path}")
    suffix = path.suffix.lower()
    import logging

    logging.getLogger("tifffile").setLevel(logging.CRITICAL)  # we report unreadable files ourselves, in one line
    try:
        if suffix in (".tif", ".tiff"):
            import tifffile

            with tifffile.TiffFile(path) as tif:
                series = tif.series[0]
                data = series.asarray()
                found = series.axes
        else:
            from skimage.io import imread

            data = np.asarray(imread(path))
            found = "YXS" if data.ndim == 3 and data.shape[-1] in (3, 4) else "YX"[-data.ndim :] if data.ndim <= 2 else ""
    except (OSError, ValueError, IndexError, SyntaxError, RuntimeError) as exc:  # readers raise many types on bad files
        raise ValueError(f"cannot read {path}: not a valid image file ({exc.__class__.__name__}: {exc})") from exc
    axes_used = (axes or found or "").upper()
    if not axes_used:
        axes_used = "YX" if data.ndim == 2 else "Q" * (data.ndim - 2) + "YX"
    if len(axes_used) != data.ndim:
        raise ValueError(f"--axes {axes_used} has {len(axes_used)} letters but {path.name} has {data.ndim} dimensions {data.shape}")
    if len(set(axes_used)) != len(axes_used) or "Y" not in axes_used or "X" not in axes_used:
        raise ValueError(f"axes {axes_used!r} must name Y and X once each (e.g. YX, ZYX, TZCYX, YXS for RGB)")
    return data, axes_used


def _roles(axes: str, shape: tuple[int, ...]) -> dict:
    """denoise() keyword arguments from an axes string: S (samples) last = RGB, C = channel axis."""
    rgb = axes.endswith("S") and shape[-1] in (3, 4)
    if "S" in axes and not rgb:
        raise ValueError(f"axes {axes}: a samples (S) axis must be last with 3 or 4 values (RGB / RGBA)")
    channel_axis = axes.index("C") if "C" in axes else None
    spatial = [i for i, a in enumerate(axes) if a not in "SC"][-2:]
    if [axes[i] for i in spatial] != ["Y", "X"]:
        raise ValueError(f"axes {axes}: Y and X must be the last two axes apart from C and S")
    return {"rgb": rgb, "channel_axis": channel_axis}


def _check_output(source: Path, target: Path) -> None:
    if target.suffix.lower() not in (".tif", ".tiff", ".png"):
        raise ValueError(f"output must end in .tif, .tiff or .png, got {target.name}")
    if target.resolve() == source.resolve():
        raise ValueError("output path equals the input path; choose another name so the input is never overwritten")
    folder = target.parent if str(target.parent) else Path(".")
    if not folder.is_dir():
        raise ValueError(f"output folder does not exist: {folder}")
    probe = folder / f".{target.name}.napari-mpi-probe"
    try:
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise ValueError(f"cannot write to output folder {folder}: {exc.strerror or exc}") from exc


def _write_image(target: Path, data: np.ndarray, axes: str, source_dtype: np.dtype, keep_dtype: bool) -> None:
    """Write atomically (temporary file, then rename): a failed run leaves no half-written output."""
    png = target.suffix.lower() == ".png"
    if png or keep_dtype:
        dtype = np.dtype(source_dtype) if np.dtype(source_dtype).kind in "ui" else np.dtype(np.uint16 if png else np.float32)
        if png and dtype.itemsize > 2:
            dtype = np.dtype(np.uint16)
        if dtype.kind in "ui":
            info = np.iinfo(dtype)
            data = np.clip(np.rint(data), info.min, info.max).astype(dtype)
    tmp = target.with_name(f".{target.name}.partial{target.suffix}")
    try:
        if png:
            from skimage.io import imsave

            if data.ndim not in (2, 3):
                raise ValueError(f"PNG holds 2-D gray or RGB images only, not shape {data.shape}; write a .tif instead")
            imsave(tmp, data, check_contrast=False)
        else:
            import tifffile

            tifffile.imwrite(tmp, data, metadata={"axes": axes}, photometric="rgb" if axes.endswith("S") else "minisblack")
        tmp.replace(target)
    finally:
        tmp.unlink(missing_ok=True)


def _denoise(args: argparse.Namespace) -> int:
    from .denoise import denoise_steps, prepare

    _check_output(args.input, args.output)
    data, axes = _read_image(args.input, args.axes)
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    plan = prepare(
        data.shape, data.dtype, preset=args.preset, mask_ratio=args.mask_ratio, beta=args.beta,
        iterations=args.iterations, seed=args.seed, device=args.device, weights=args.weights,
        precision=args.precision, **_roles(axes, data.shape),
    )
    n_planes, iterations = plan.layout.n_planes, plan.config.iterations
    quiet = args.quiet
    planes_bar = _progress_bar(total=n_planes, unit="plane", position=0, disable=quiet or n_planes == 1)
    steps_bar = _progress_bar(total=iterations, unit="it", position=1 if n_planes > 1 else 0, disable=quiet, leave=False)
    steps = denoise_steps(data, plan)
    try:
        while True:
            try:
                event = next(steps)
            except StopIteration as finished:
                result = finished.value
                break
            if event.iteration == 1 or event.iteration < steps_bar.n:
                steps_bar.reset()
            steps_bar.update(event.iteration - steps_bar.n)
            if event.iteration == event.iterations:
                planes_bar.update(1)
    finally:
        steps_bar.close()
        planes_bar.close()
    _write_image(args.output, result, axes, data.dtype, args.keep_dtype)
    if not quiet:
        print(f"wrote {args.output} ({'x'.join(map(str, result.shape))}, axes {axes}, {n_planes} plane(s), "
              f"preset {plan.preset}, mask ratio {plan.config.mask_ratio}, {iterations} iterations)")
    return 0


def _demo(args: argparse.Namespace) -> int:
    from ._sample_data import clean_fluorescence, expected_counts, noisy_fluorescence
    from .denoise import denoise

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    clean = clean_fluorescence((args.size, args.size), seed=0)
    noisy = noisy_fluorescence(clean)
    with _progress_bar(total=None, unit="it", desc="denoising the demo sample") as bar:
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

    imsave(out / "before_after.png", (np.clip((panel - lo) / (hi - lo), 0, 1) * 255).astype(np.uint8), check_contrast=False)
    print(f"PSNR vs the known clean image: noisy {psnr(noisy):.2f} dB -> denoised {psnr(result):.2f} dB")
    print(f"wrote {out / 'noisy.tif'}, {out / 'denoised.tif'} and {out / 'before_after.png'}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="napari-mpi", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    den = sub.add_parser("denoise", help="denoise a TIFF or PNG file plane by plane")
    den.add_argument("input", type=Path, help="noisy image: .tif/.tiff (any N-D) or .png")
    den.add_argument("-o", "--output", required=True, type=Path, help="where to write the result (.tif or .png)")
    den.add_argument("--preset", choices=("fast", "quality"), default="fast")
    den.add_argument("--mask-ratio", type=float, default=None, help="fraction hidden per step (default 0.3; 0.8-0.95 for correlated noise)")
    den.add_argument("--beta", type=float, default=None, help="EMA weight in [0, 1) (default from the preset)")
    den.add_argument("--iterations", type=int, default=None, help="fill steps per plane (default from the preset)")
    den.add_argument("--axes", default=None, help="axis letters, e.g. YX, ZYX, TZCYX, YXS (RGB); default from the file")
    den.add_argument("--device", default="auto", help="auto, cpu, cuda or mps")
    den.add_argument("--seed", type=int, default=0)
    den.add_argument("--weights", default="default", help="'default', 'random' or a checkpoint file")
    den.add_argument("--precision", choices=("auto", "fp32", "bf16"), default="auto")
    den.add_argument("--threads", type=int, default=0, help="CPU threads (0 = torch's default; use fewer on a busy machine)")
    den.add_argument("--keep-dtype", action="store_true", help="write the input's integer type (rounded) instead of float32")
    den.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    den.set_defaults(func=_denoise)

    demo = sub.add_parser("demo", help="denoise a locally made noisy fluorescence sample and write a before/after PNG")
    demo.add_argument("--out", default="demo-output", help="folder for noisy.tif, denoised.tif, before_after.png")
    demo.add_argument("--size", type=int, default=256)
    demo.add_argument("--preset", choices=("fast", "quality"), default="fast")
    demo.add_argument("--iterations", type=int, default=None)
    demo.add_argument("--device", default="auto")
    demo.set_defaults(func=_demo)

    pre = sub.add_parser("pretrain", help="masked pre-training on a folder of clean natural images")
    pre.add_argument("--images", required=True, type=Path, help="folder of clean training images")
    pre.add_argument("--out", required=True, type=Path, help="checkpoint file to write (and update)")
    pre.add_argument("--channels", type=int, choices=(1, 3), default=1)
    pre.add_argument("--mask-mode", choices=("pixel", "channel"), default=None, help="default: pixel for 1, channel for 3")
    pre.add_argument("--mask-ratio", type=_ratio_range, default=(0.3, 0.3), help="0.3, or a range like 0.2-0.9")
    pre.add_argument("--crop", type=int, default=128)
    pre.add_argument("--batch", type=int, default=16)
    pre.add_argument("--steps", type=_steps, default=10000,
                     help='planned steps (length of the cosine schedule), or "auto" to fit it to --max-minutes')
    pre.add_argument("--short-side", type=int, default=None,
                     help="shrink larger training images to this shorter side (pixels) when loading")
    pre.add_argument("--history", type=Path, default=None,
                     help="folder for a weights-only copy of every checkpoint, named by step")
    pre.add_argument("--loss", choices=("mse", "psnr"), default="mse")
    pre.add_argument("--precision", choices=("fp32", "bf16"), default="bf16")
    pre.add_argument("--max-minutes", type=float, default=None, help="stop cleanly with a checkpoint after this long")
    pre.add_argument("--checkpoint-minutes", type=float, default=5.0)
    pre.add_argument("--resume", type=Path, default=None, help="continue a run from its checkpoint")
    pre.add_argument("--device", default="auto")
    pre.add_argument("--threads", type=int, default=0, help="CPU threads (0 = torch's default)")
    pre.add_argument("--seed", type=int, default=0)
    pre.set_defaults(func=_pretrain)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, OSError, MemoryError) as exc:
        print(f"napari-mpi: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("napari-mpi: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
