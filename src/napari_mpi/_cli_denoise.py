"""``napari-mpi denoise`` of one file: read it lazily, check the output, denoise plane by plane into a resumable
output (or on Dask workers), and say what was written. The batch over many files (:mod:`._cli_batch`) runs this
for each of them; :mod:`.cli` holds the parser."""

from __future__ import annotations

import argparse
import os
import sys
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import numpy as np

from .chains import summarise_reports

__all__ = ["REUSE", "check_threads", "denoise_file", "error_text", "fingerprint", "progress_bar", "unexpected_text"]

#: --reuse-network's choices, as reuse_network values
REUSE = {"auto": "auto", "yes": True, "no": False}


def progress_bar(**options):
    """A tqdm bar that redraws live on a terminal and only every 30 s in a log file (CI, batch jobs)."""
    from tqdm import tqdm

    return tqdm(dynamic_ncols=True, mininterval=0.1 if sys.stderr.isatty() else 30.0, **options)


#: --reuse-network's choices, as reuse_network values
_REUSE = {"auto": "auto", "yes": True, "no": False}


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


def fingerprint(source: Path, data, plan) -> dict:
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
    steps_bar = progress_bar(total=plan.steps_per_plane, unit="it", position=position, disable=quiet, leave=False)
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


def denoise_file(args: argparse.Namespace) -> dict[str, Any]:
    """Denoise ``args.input`` into ``args.output`` with the command line's options; what was written, for a batch's
    summary: shape, axes, planes carried and alone, planes from an earlier run, the run's parameters."""
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
            precision=args.precision, reuse_network=REUSE[args.reuse_network], refine=args.refine, crop=args.crop,
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
    carried = sum(1 for report in reports if report.get("start") == "carried")
    return {"shape": "x".join(map(str, plan.layout.shape)), "axes": axes, "planes_carried": carried,
            "planes_alone": len(reports) - carried, "planes_resumed": len(done), "settings": plan.describe()}


def _check_denoise_options(args: argparse.Namespace, kind: str) -> None:
    """Refuse combinations of ``denoise`` options that cannot work, before anything is read."""
    check_threads(args.threads)
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


def check_threads(threads: int) -> None:
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
                         fingerprint(args.input, data, plan), attrs=plan.describe(), resume=args.resume,
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
    planes_bar = progress_bar(total=n_planes, initial=len(done), unit="plane", position=0,
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


def error_text(exc: BaseException) -> str:
    """A user's error in the command line's words: out-of-memory advice names --device (DeviceMemoryError.advice)."""
    advice = getattr(exc, "advice", None)
    return f"{exc.what}; {advice('use --device cpu')}" if callable(advice) else str(exc)


def unexpected_text(exc: BaseException) -> str:
    """A failure the user did not cause (a driver or library error) in one line: its type and first line."""
    detail = str(exc).strip().splitlines()[0] if str(exc).strip() else "no detail"
    return f"unexpected {type(exc).__name__}: {detail}"
