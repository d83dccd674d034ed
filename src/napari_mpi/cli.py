"""Command line: ``napari-mpi denoise``, ``napari-mpi pretrain``, ``napari-mpi demo``."""

from __future__ import annotations

import argparse
import os
import sys
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import numpy as np

from .chains import summarise_reports
from .settings import DEFAULT_PRESET, PRESET_NAMES


def _progress_bar(**options):
    """A tqdm bar that redraws live on a terminal and only every 30 s in a log file (CI, batch jobs)."""
    from tqdm import tqdm

    return tqdm(dynamic_ncols=True, mininterval=0.1 if sys.stderr.isatty() else 30.0, **options)


#: --reuse-network's choices, as reuse_network values
_REUSE = {"auto": "auto", "yes": True, "no": False}


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
    )
    _check_threads(args.threads)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    run = pretrain(args.images, args.out, config, resume=args.resume, init=args.init, max_minutes=args.max_minutes,
                   device=device, history=args.history)
    with _progress_bar(total=config.steps or None, unit="step") as bar:
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


def _read_image(path: Path, axes: str | None, stack: ExitStack) -> tuple[Any, str, Any]:
    """Open TIFF (plane by plane), Zarr / OME-Zarr (a folder) or another image format lazily where possible;
    return data, its axes (from --axes, else the file's metadata) and its pixel sizes (OME, ImageJ, OME-Zarr)."""
    from .io.calibration import Calibration, read_calibration
    from .io.stores import open_image

    data, found = open_image(path, stack)
    known = read_calibration(path) if len(found) == data.ndim else {}
    calibration = Calibration.from_letters(found, known) if known else Calibration.unknown(data.ndim)
    axes_used = (axes or found or "").upper()
    if not axes_used:
        axes_used = "YX" if data.ndim == 2 else "Q" * (data.ndim - 2) + "YX"
    if len(axes_used) != data.ndim:
        raise ValueError(
            f"--axes {axes_used} has {len(axes_used)} letters but {path.name} has {data.ndim} dimensions {data.shape}"
        )
    _check_axes(axes_used, "--axes" if axes else f"the axes of {path.name}")
    return data, axes_used, calibration


def _check_axes(axes: str, what: str) -> None:
    """Every axis its own letter, Y and X among them."""
    repeated = sorted({a for a in axes if axes.count(a) > 1})
    if repeated:
        raise ValueError(f"{what} {axes}: {', '.join(repeated)} appears more than once; give every axis its own "
                         "letter, e.g. TZCYX (letters other than Y, X, C and S, such as Q, I, J, are denoised plane "
                         "by plane)")
    if "Y" not in axes or "X" not in axes:
        raise ValueError(f"{what} {axes} must include Y and X (the rows and columns of a plane), e.g. YX, ZYX, TZCYX, "
                         "YXS for RGB")


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


def _check_output(source: Path, target: Path, overwrite: bool = False) -> str:
    """Refuse outputs that would overwrite the input, replace an existing file unasked or cannot be written;
    return the output kind."""
    from .io.stores import output_kind

    kind = output_kind(target)
    source_path, target_path = source.resolve(), target.resolve()
    if target_path == source_path:
        raise ValueError("output path equals the input path; choose another name so the input is never overwritten")
    if source_path in target_path.parents or target_path in source_path.parents:
        raise ValueError(
            f"output {target} and input {source} lie inside one another; choose another place for the output"
        )
    if kind in ("zarr", "ome-zarr"):
        if target.is_file():
            raise ValueError(f"output {target} is a file, not a Zarr folder; remove it or choose another name")
        if target.is_dir() and any(target.iterdir()) and not any(
                (target / name).is_file() for name in (".zarray", ".zgroup", "zarr.json")):
            raise ValueError(f"output folder {target} exists and is not a Zarr store; it is not replaced")
    elif target.is_dir():
        raise ValueError(f"output {target} is a folder; name a file")
    if (target.exists() or target.is_symlink()) and not overwrite:
        raise ValueError(f"output {target} exists; add --overwrite to replace it, or choose another name")
    folder = target.parent if str(target.parent) else Path(".")
    if not folder.is_dir():
        raise ValueError(f"output folder does not exist: {folder}")
    probe = folder / f".{target.name}.napari-mpi-probe"
    try:
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise ValueError(f"cannot write to output folder {folder}: {exc.strerror or exc}") from exc
    return kind


def _fingerprint(source: Path, data, plan) -> dict:
    """What makes two runs the same run, for --resume: the input file and every parameter that changes
    the numbers (not the device: a run may resume on another machine)."""
    stat = source.stat()
    described = {k: v for k, v in plan.describe().items() if k not in ("device", "napari_mpi_version")}
    return {
        "input": str(source.resolve()),
        "input_size": None if source.is_dir() else stat.st_size,
        "input_mtime_ns": None if source.is_dir() else stat.st_mtime_ns,
        "input_dtype": np.dtype(data.dtype).str,
        "parameters": described,
    }


def _local_planes(data, plan, sink, done: set[int], quiet: bool, reports: list):
    """Denoise on this machine with the engine's generator; yields plane numbers as they are written (a plane that a
    resumed run fills again only to carry its network on is not written, and not yielded)."""
    from .api import denoise_steps

    position = 1 if plan.layout.n_planes > 1 else 0
    steps_bar = _progress_bar(total=plan.steps_per_plane, unit="it", position=position, disable=quiet, leave=False)
    current = None
    try:
        for event in denoise_steps(data, plan, sink, skip=done, reports=reports):
            if current is None or event.plane != current.plane:
                if current is not None and not current.replay:
                    yield current.plane  # denoise_steps writes a plane before it starts the next
                steps_bar.reset(total=event.iterations)  # fewer for planes reusing the previous plane's network
                # "carried": it continues the previous plane's network; "again": a resumed run fills it only for that
                carried, again = " carried" * event.start.carried, " again" * event.replay
                steps_bar.set_description(f"plane {event.plane}{carried}{again}", refresh=False)
            elif event.iteration < steps_bar.n:
                steps_bar.reset()
            steps_bar.total = event.iterations  # a plane that still learns trains on
            current = event
            steps_bar.update(event.iteration - steps_bar.n)
        if current is not None and not current.replay:
            yield current.plane  # a plane may end before its last iteration ("auto" stops by itself)
    finally:
        steps_bar.close()


def _denoise(args: argparse.Namespace) -> int:
    from .api import prepare, warn_if_noise_looks_correlated
    from .io.checked import CheckedSource
    from .io.png import check_png, write_png

    kind = _check_output(args.input, args.output, args.overwrite)
    _check_denoise_options(args, kind)
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    with ExitStack() as stack:
        data, axes, calibration = _read_image(args.input, args.axes, stack)
        if kind == "png":
            check_png(data, axes)
        plan = prepare(
            data.shape, data.dtype, preset=args.preset, mask_ratio=args.mask_ratio, beta=args.beta,
            iterations=args.iterations, seed=args.seed, device=args.device, weights=args.weights,
            precision=args.precision, reuse_network=_REUSE[args.reuse_network], refine=args.refine, crop=args.crop,
            **_roles(axes, data.shape),
        )
        if not isinstance(data, np.ndarray):  # read plane by plane: name the file and plane of a damaged one
            data = CheckedSource(data, args.input, plan.layout, axes)
        warn_if_noise_looks_correlated(data, args.mask_ratio, option="run with --mask-ratio ",
                                       **_roles(axes, data.shape))
        output, sink, done = _open_sink(args, kind, data, axes, plan, calibration)
        reports = _run_planes(args, data, plan, sink, done, output, stack)
        if output is not None:
            reports = output.finish()
        else:
            write_png(args.output, sink, data.dtype, plan.describe() | {"planes_filled": reports})
    if not args.quiet:
        n_planes = plan.layout.n_planes
        resumed = f", {len(done)} from the earlier run" if done else ""
        print(f"wrote {args.output} ({'x'.join(map(str, plan.layout.shape))}, axes {axes}, {n_planes} plane(s)"
              f"{resumed}, preset {plan.preset}, mask ratio {plan.config.mask_ratio}, {plan.describe_length()})")
        if plan.reuse_network and n_planes > 1:
            print(f"planes: {summarise_reports(reports)}")
    return 0


def _check_denoise_options(args: argparse.Namespace, kind: str) -> None:
    """Refuse combinations of ``denoise`` options that cannot work, before anything is read."""
    _check_threads(args.threads)
    if args.resume and kind == "png":
        raise ValueError("--resume needs a .tif, .zarr or .ome.zarr output (a PNG is written whole at the end)")
    if args.workers is not None and args.scheduler != "local":
        raise ValueError("--workers applies to --scheduler local only")
    if args.workers is not None and args.workers < 1:
        raise ValueError(f"--workers must be 1 or more, got {args.workers}")
    if args.scheduler and args.scheduler != "local" and "://" not in args.scheduler:
        raise ValueError(
            f"--scheduler must be 'local' or a scheduler address like tcp://host:8786, got {args.scheduler!r}"
        )


def _check_threads(threads: int) -> None:
    if threads < 0:
        raise ValueError(f"--threads must be 0 (torch's default) or a number of CPU threads, got {threads}")


def _open_sink(args: argparse.Namespace, kind: str, data, axes: str, plan, calibration):
    """Where the planes go: (the resumable output or None, the sink to write into, planes already written).
    A PNG is filled in memory and written whole at the end."""
    from .io.batch_output import BatchOutput
    from .io.stores import output_dtype

    if kind == "png":
        done: set[int] = set()
        return None, np.zeros(plan.layout.shape, dtype=np.float32), done
    output = BatchOutput(args.output, kind, plan.layout, output_dtype(data.dtype, kind, args.keep_dtype), axes,
                         _fingerprint(args.input, data, plan), attrs=plan.describe(), resume=args.resume,
                         calibration=calibration)
    if output.restarted and not args.quiet:
        print(f"starting {args.output} over (an unfinished run was there; --resume continues one)")
    if args.resume and not args.quiet:
        print(f"resuming: {len(output.done)} of {plan.layout.n_planes} plane(s) already written" if output.resumed
              else "resuming: no unfinished run of this output found; starting from the first plane")
    return output, output.writer, output.done


def _run_planes(args: argparse.Namespace, data, plan, sink, done: set[int], output, stack: ExitStack) -> list[dict]:
    """Denoise the planes not yet ``done`` into ``sink``, here or on a Dask cluster, with a progress bar; the
    planes' reports (``PlaneReport.as_dict``), each also recorded in ``output``. A run that fails before any plane is
    written leaves no partial output behind."""
    reports: list = []
    recorded = 0
    n_planes = plan.layout.n_planes
    planes_bar = _progress_bar(total=n_planes, initial=len(done), unit="plane", position=0,
                               disable=args.quiet or n_planes == 1)
    try:
        if args.scheduler:
            from .distributed import connect, distributed_steps

            client = stack.enter_context(connect(args.scheduler, workers=args.workers))
            threads = args.threads or None
            if args.scheduler == "local" and threads is None:  # share this machine's cores among its workers
                threads = max(1, (os.cpu_count() or 1) // max(1, len(client.nthreads())))
            planes = distributed_steps(data, plan, client, sink, skip=done, device=args.device, threads=threads,
                                       reports=reports)
        else:
            planes = _local_planes(data, plan, sink, done, args.quiet, reports)
        for _ in planes:
            planes_bar.update(1)
            for report in reports[recorded:]:
                if output is not None:
                    output.record(report.as_dict())
            recorded = len(reports)
    except Exception:
        if output is not None and not output.done:  # nothing to resume: leave no partial files behind
            output.discard()
        raise
    finally:
        planes_bar.close()
    return [report.as_dict() for report in reports]


def _demo(args: argparse.Namespace) -> int:
    from ._sample_data import clean_fluorescence, expected_counts, noisy_fluorescence
    from .api import denoise

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
    den = sub.add_parser("denoise", help="denoise a TIFF, Zarr / OME-Zarr or PNG image plane by plane")
    den.add_argument("input", type=Path, help="noisy image: .tif/.tiff (any N-D), a Zarr or OME-Zarr folder, or .png")
    den.add_argument("-o", "--output", required=True, type=Path,
                     help="where to write the result: .tif/.tiff, .zarr, .ome.zarr (written plane by plane) or .png")
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
    den.add_argument("--reuse-network", choices=tuple(_REUSE), default="auto", nargs="?", const="yes",
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
    den.set_defaults(func=_denoise)


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
    pre.add_argument("--precision", choices=("fp32", "bf16"), default="bf16")
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


def error_text(exc: BaseException) -> str:
    """A user's error in the command line's words: out-of-memory advice names --device (DeviceMemoryError.advice)."""
    advice = getattr(exc, "advice", None)
    return f"{exc.what}; {advice('use --device cpu')}" if callable(advice) else str(exc)


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
        detail = str(exc).strip().splitlines()[0] if str(exc).strip() else "no detail"
        print(f"napari-mpi: error: unexpected {type(exc).__name__}: {detail} "
              "(set NAPARI_MPI_DEBUG=1 to see the traceback)", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
