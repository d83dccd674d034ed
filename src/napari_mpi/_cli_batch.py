"""``napari-mpi denoise`` of many files: files, folders and globs in, one output folder out, a summary beside.

Each file runs exactly as ``napari-mpi denoise FILE -o OUTPUT`` would (:func:`._cli_denoise.denoise_file`), so its
output is the same bit for bit. A file that cannot be denoised (missing, damaged, not an image, axes that do not fit)
is reported in one line and skipped; the others go on, and the exit status is 2 when any failed. Existing outputs
are kept unless ``--overwrite``; with ``--resume`` a file killed mid-run continues where it stopped (its output only
takes its final name once complete, so a final name means a finished file).
"""

from __future__ import annotations

import argparse
import csv
import glob
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

from ._cli_denoise import denoise_file, error_text, progress_bar, unexpected_text

__all__ = ["IMAGE_SUFFIXES", "expand_inputs", "output_name", "run_denoise", "denoise_batch"]

#: what a folder's image files end in (a .zarr folder is one image)
IMAGE_SUFFIXES = (".tif", ".tiff", ".png", ".zarr")
#: the summary's columns
COLUMNS = ("input", "output", "shape", "axes", "seconds", "planes_carried", "planes_alone", "settings", "status")
_MAGIC = set("*?[")


def _is_folder_of_images(path: Path) -> bool:
    return path.is_dir() and not path.name.lower().endswith(".zarr")


def _images_in(folder: Path, outside: Path) -> list[tuple[Path, Path]]:
    """The image files under ``folder`` (recursively; a Zarr folder whole), with their paths relative to it, leaving
    out hidden names (a killed run's unfinished output among them) and anything inside ``outside`` (the output
    folder)."""
    found = []
    for root, dirs, files in os.walk(folder):
        here = Path(root)
        if _inside(here, outside):
            dirs[:] = []
            continue
        visible = [name for name in sorted(dirs) if not name.startswith(".")]  # hidden: e.g. a killed run's output
        found += [here / name for name in visible if name.lower().endswith(".zarr")]
        dirs[:] = [name for name in visible if not name.lower().endswith(".zarr")]
        found += [here / name for name in sorted(files)
                  if name.lower().endswith(IMAGE_SUFFIXES) and not name.startswith(".")]
    return [(path, path.relative_to(folder)) for path in sorted(found) if not _inside(path, outside)]


def _inside(path: Path, folder: Path) -> bool:
    resolved, folder = path.resolve(), folder.resolve()
    return resolved == folder or folder in resolved.parents


def expand_inputs(items: list[str], output: Path) -> list[tuple[Path, Path]]:
    """Each input as (path, its path relative to where it was named: the folder it was found in, else its name).
    Folders give their image files, globs (``**`` too) what they match; a name that matches nothing stays, so that
    it is reported as missing."""
    found: list[tuple[Path, Path]] = []
    for item in items:
        if _MAGIC & set(item):
            matches = sorted(Path(m) for m in glob.glob(item, recursive=True))
            if not matches:
                raise ValueError(f"{item} matches no file; check the pattern (quote it so that the shell leaves it)")
            found += [pair for match in matches if (match.is_dir() or match.name.lower().endswith(IMAGE_SUFFIXES))
                      and not _inside(match, output) for pair in _expand(match, output, matched=True)]
        else:
            found += _expand(Path(item), output)
    return found


def _expand(path: Path, output: Path, matched: bool = False) -> list[tuple[Path, Path]]:
    """A folder's image files, or the path itself (a file, a Zarr store, or a name that is not there). A named folder
    without images is an error; one a glob matched gives nothing."""
    if not _is_folder_of_images(path):
        return [(path, Path(path.name))]
    images = _images_in(path, output)
    if not images and not matched:
        raise ValueError(f"folder {path} is not a Zarr store and holds no .tif, .tiff, .png or .zarr image; "
                         "name an image, a Zarr store or a folder of images")
    return images


def output_name(relative: Path, suffix: str) -> Path:
    """The output's path relative to the output folder: the input's, with ``suffix`` before its extension
    (a.ome.tif -> a_denoised.ome.tif)."""
    name = relative.name
    lower = name.lower()
    ext = next((e for e in (".ome.tiff", ".ome.tif", ".ome.zarr") if lower.endswith(e)), relative.suffix)
    return relative.with_name(name[: len(name) - len(ext)] + suffix + name[len(name) - len(ext):])


def run_denoise(args: argparse.Namespace) -> int:
    """``napari-mpi denoise``: one file as always, else the batch."""
    items = args.inputs
    single = len(items) == 1 and not (_MAGIC & set(items[0])) and not _is_folder_of_images(Path(items[0]))
    if single:
        if args.suffix or args.summary:
            raise ValueError("--suffix and --summary apply to several inputs (or a folder); for one file name the "
                             "output with -o")
        denoise_file(_for_file(args, Path(items[0]), args.output))
        return 0
    return denoise_batch(args)


def _for_file(args: argparse.Namespace, source: Path, target: Path, **changes: Any) -> argparse.Namespace:
    """The options of a one-file run of ``source`` into ``target``."""
    return argparse.Namespace(**{**vars(args), "input": source, "output": target, **changes})


def _planned(args: argparse.Namespace) -> list[tuple[Path, Path]]:
    """(input, output) of every file of the batch; ValueError before anything runs when two share an output."""
    if args.output.exists() and not args.output.is_dir():
        raise ValueError(f"-o {args.output} is a file; with several inputs -o names an output folder")
    pairs = expand_inputs(args.inputs, args.output)
    if not pairs:
        raise ValueError("no image files among the inputs; name .tif, .png, .zarr files or folders holding them")
    planned, seen = [], {}
    for source, relative in pairs:
        target = args.output / output_name(relative, args.suffix)
        key = os.path.normcase(str(target.resolve()))
        if key in seen:
            raise ValueError(f"{seen[key]} and {source} would both be written to {target}; give them distinct "
                             "names, or denoise them into different output folders")
        seen[key] = source
        planned.append((source, target))
    return planned


def denoise_batch(args: argparse.Namespace) -> int:
    """Denoise every input into the output folder, one file after another; 2 when any file failed."""
    planned = _planned(args)
    summary = args.summary or args.output / "napari-mpi-summary.csv"
    if summary.suffix.lower() not in (".csv", ".json"):
        raise ValueError(f"--summary {summary} must end in .csv or .json")
    args.output.mkdir(parents=True, exist_ok=True)
    rows: list[dict[str, Any]] = []
    planes = 0
    bar = progress_bar(total=len(planned), unit="file", disable=args.quiet)
    try:
        for source, target in planned:
            row = _one_file(args, source, target, bar)
            planes += int(row.get("planes_carried") or 0) + int(row.get("planes_alone") or 0)
            rows.append(row)
            _write_summary(summary, rows)
            bar.set_postfix(planes=planes, refresh=False)
            bar.update(1)
    finally:
        bar.close()
    failed = [row for row in rows if row["status"].startswith("failed")]
    if not args.quiet:
        print(f"{len(rows) - len(failed)} of {len(rows)} file(s) done or kept, {planes} plane(s) denoised; "
              f"summary: {summary}")
    if failed:
        print(f"napari-mpi: {len(failed)} file(s) failed: {', '.join(row['input'] for row in failed)}", file=sys.stderr)
        return 2
    return 0


def _one_file(args: argparse.Namespace, source: Path, target: Path, bar) -> dict[str, Any]:
    """Denoise one file of the batch; its summary row, whatever happened."""
    row: dict[str, Any] = {"input": str(source), "output": str(target)}
    if (target.exists() or target.is_symlink()) and not args.overwrite:
        return row | {"status": "skipped: output exists (--overwrite replaces it)"}
    target.parent.mkdir(parents=True, exist_ok=True)
    start = time.monotonic()
    try:
        resume = args.resume and not target.name.lower().endswith(".png")  # a PNG is written whole: nothing to resume
        info = denoise_file(_for_file(args, source, target, quiet=True, resume=resume))  # the batch's bar instead
    except KeyboardInterrupt:
        raise
    except (ValueError, OSError, MemoryError) as exc:
        bar.write(f"napari-mpi: error: {source}: {error_text(exc)}", file=sys.stderr)
        return row | {"status": f"failed: {error_text(exc)}"}
    except Exception as exc:  # noqa: BLE001 (a library failure on one file: reported, the batch goes on)
        bar.write(f"napari-mpi: error: {source}: {unexpected_text(exc)}", file=sys.stderr)
        return row | {"status": f"failed: {unexpected_text(exc)}"}
    seconds = round(time.monotonic() - start, 2)
    status = f"resumed ({info['planes_resumed']} plane(s) from the earlier run)" if info["planes_resumed"] else "done"
    if not args.quiet:
        bar.write(f"{status}: {source} -> {target} ({info['shape']}, axes {info['axes']}, {seconds} s)")
    settings = json.dumps(info.pop("settings"), sort_keys=True, default=str)
    info.pop("planes_resumed")
    return row | info | {"seconds": seconds, "settings": settings, "status": status}


def _write_summary(path: Path, rows: list[dict[str, Any]]) -> None:
    """The summary so far, written whole under a temporary name and renamed into place (a killed batch keeps one)."""
    partial = path.with_name(f".{path.name}.partial")
    with open(partial, "w", newline="", encoding="utf-8") as handle:
        if path.suffix.lower() == ".json":
            json.dump([{column: row.get(column) for column in COLUMNS} for row in rows], handle, indent=1)
        else:
            writer = csv.DictWriter(handle, fieldnames=COLUMNS)
            writer.writeheader()
            writer.writerows({column: row.get(column, "") for column in COLUMNS} for row in rows)
    os.replace(partial, path)
