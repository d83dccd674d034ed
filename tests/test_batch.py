"""Big data: on-disk plane sinks, TIFF / Zarr / OME-Zarr in and out of the CLI, memory that stays per
plane, and ``--resume`` after a real ``kill`` of the CLI process. Real files, real zarr, no mocks."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import tracemalloc
from pathlib import Path

import dask.array as da
import numpy as np
import pytest
import tifffile
import zarr

import napari_mpi
from napari_mpi import _cli_denoise, cli
from napari_mpi.io.stores import MappedArray, create_tiff

from .conftest import one_line_error

FAST = ["--iterations", "2", "--weights", "random", "-q"]  # in-process runs keep the test session's torch threads


def main(*args: str) -> None:
    """The CLI in this process (no interpreter start-up: fast); a non-zero exit fails the test."""
    assert cli.main(list(args)) == 0


pytestmark = pytest.mark.usefixtures("one_thread")


# ------------------------------------------------------------------------------------------------ engine sinks


def test_mapped_array_reads_and_writes_single_planes(tmp_path):
    """Blocks are found from the leading integers, including planes strided inside a block (ZYXC)."""
    reference = np.arange(2 * 5 * 6 * 3, dtype=np.float32).reshape(2, 5, 6, 3)
    path = tmp_path / "raw.tif"
    sink = create_tiff(path, reference.shape, np.float32, "ZYXC")
    for z in range(2):
        for c in range(3):
            sink[z, :, :, c] = reference[z, :, :, c]
    assert np.array_equal(tifffile.imread(path), reference)
    with tifffile.TiffFile(path) as tif:
        offset = tif.series[0].dataoffset
    mapped = MappedArray(path, offset, reference.shape, np.float32)
    assert np.array_equal(mapped[1, :, :, 2], reference[1, :, :, 2])
    assert np.array_equal(mapped[-1], reference[-1]) and np.array_equal(np.asarray(mapped), reference)
    with pytest.raises(ValueError, match="read-only"):
        mapped[0] = 0
    with pytest.raises(IndexError):
        mapped[2]


def test_dask_in_zarr_out_equals_in_memory_run(tmp_path):
    """A lazy input and an on-disk sink give the very numbers of the in-memory run; skip leaves planes alone."""
    data = np.random.default_rng(3).integers(0, 3000, (3, 32, 36)).astype(np.uint16)
    expected = napari_mpi.denoise(data, iterations=2, weights="random", device="cpu")
    sink = zarr.create_array(str(tmp_path / "out.zarr"), shape=data.shape, chunks=(1, 32, 36), dtype="float32",
                             fill_value=-1)
    returned = napari_mpi.denoise(da.from_array(data, chunks=(1, 32, 36)), iterations=2, weights="random", device="cpu",
                                  out=sink)
    assert returned is sink
    assert np.array_equal(zarr.open_array(str(tmp_path / "out.zarr"))[:], expected)

    plan = napari_mpi.prepare(data.shape, data.dtype, iterations=2, weights="random", device="cpu")
    partial = np.full(data.shape, -1, dtype=np.float32)
    events = list(napari_mpi.denoise_steps(data, plan, partial, skip={0, 2}))
    # plane 0 is filled again to carry its network on to plane 1 (one chain), not written; plane 2 not at all
    assert {e.plane for e in events if not e.replay} == {1} and {e.plane for e in events if e.replay} == {0}
    assert np.array_equal(partial[1], expected[1]) and (partial[[0, 2]] == -1).all()
    alone = napari_mpi.prepare(data.shape, data.dtype, iterations=2, weights="random", reuse_network=False)
    assert {e.plane for e in napari_mpi.denoise_steps(data, alone, partial, skip={0, 2})} == {1}


def _peak_numpy_bytes(tmp_path: Path, planes: int, side: int = 64) -> int:
    """Peak traced allocation of one CLI run (memory-mapped TIFF in, TIFF written plane by plane out)."""
    source = tmp_path / f"stack{planes}.tif"
    tifffile.imwrite(source, np.random.default_rng(4).random((planes, side, side)), photometric="minisblack",
                     metadata={"axes": "ZYX"})
    tracemalloc.start()
    try:
        code = cli.main(["denoise", str(source), "-o", str(tmp_path / f"out{planes}.tif"), "--iterations", "1",
                         "--weights", "random", "-q"])
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert code == 0 and tifffile.imread(tmp_path / f"out{planes}.tif").shape == (planes, side, side)
    return peak


def test_reading_and_writing_stay_per_plane(tmp_path):
    """The CLI's data path never holds the stack: six times the planes, the same peak (tracemalloc sees
    numpy's allocations, not torch's; the network's memory is per plane anyway)."""
    side = 96  # planes big enough that the run's fixed costs (two networks' Python objects, ~0.8 MB) stay small
    plane_bytes = side * side * 8
    _peak_numpy_bytes(tmp_path, 2, side)  # imports and first-use caches out of the way
    small, large = _peak_numpy_bytes(tmp_path, 10, side), _peak_numpy_bytes(tmp_path, 60, side)
    assert large < small + 8 * plane_bytes, f"peak {small} bytes for 10 planes, {large} for 60"
    assert large < 60 * plane_bytes / 2


# ------------------------------------------------------------------------------------------------ CLI formats


@pytest.fixture
def hyperstack(tmp_path):
    """An ImageJ TZCYX hyperstack (the order OME-Zarr must not have)."""
    path = tmp_path / "tzc.tif"
    data = np.random.default_rng(5).integers(0, 4000, (2, 2, 2, 32, 36), dtype=np.uint16)
    tifffile.imwrite(path, data, imagej=True, metadata={"axes": "TZCYX"})
    return path, data


def test_tiff_zarr_and_ome_zarr_outputs_agree(hyperstack, tmp_path):
    source, data = hyperstack
    for name in ("out.tif", "out.zarr", "out.ome.zarr"):
        main("denoise", str(source), "-o", str(tmp_path / name), *FAST)
    tiff = tifffile.imread(tmp_path / "out.tif")
    plain = zarr.open_array(str(tmp_path / "out.zarr"))
    assert plain.attrs["axes"] == "TZCYX" and np.array_equal(plain[:], tiff)
    group = zarr.open_group(str(tmp_path / "out.ome.zarr"), mode="r")
    image = group.attrs["multiscales"][0]
    assert [a["name"] for a in image["axes"]] == ["t", "c", "z", "y", "x"] and image["version"] == "0.4"
    assert np.array_equal(group[image["datasets"][0]["path"]][:], tiff.transpose(0, 2, 1, 3, 4))
    assert not list(tmp_path.glob(".out*")), "partial files or progress records left behind"

    # and back in: OME-Zarr axes come from its metadata, plain Zarr from the "axes" attribute
    main("denoise", str(tmp_path / "out.ome.zarr"), "-o", str(tmp_path / "again.tif"), *FAST)
    with tifffile.TiffFile(tmp_path / "again.tif") as tif:  # an ImageJ hyperstack: its axes in ImageJ's order
        assert tif.is_imagej and tif.series[0].axes == "TZCYX" and tif.series[0].shape == (2, 2, 2, 32, 36)


def test_compressed_tiff_is_read_page_by_page_and_zarr_keeps_dtype(tmp_path):
    source = tmp_path / "zlib.tif"
    data = np.random.default_rng(6).integers(0, 255, (3, 32, 32), dtype=np.uint8)
    tifffile.imwrite(source, data, compression="zlib", photometric="minisblack", metadata={"axes": "ZYX"})
    with tifffile.TiffFile(source) as tif:
        assert tif.series[0].dataoffset is None  # not memory-mappable: read through tifffile's zarr view
    main("denoise", str(source), "-o", str(tmp_path / "out.zarr"), "--keep-dtype", *FAST)
    written = zarr.open_array(str(tmp_path / "out.zarr"))
    assert written.dtype == np.uint8 and written.shape == data.shape and written.chunks == (1, 32, 32)
    expected = napari_mpi.denoise(data, iterations=2, weights="random", device="cpu")
    assert np.abs(written[:].astype(float) - np.clip(expected, 0, 255)).max() <= 0.5 + 1e-3  # rounded, clipped to uint8


def test_zarr_output_errors_are_one_line(hyperstack, tmp_path, capsys):
    source, _ = hyperstack
    not_zarr = tmp_path / "notes.zarr"
    not_zarr.mkdir()
    (not_zarr / "keep.txt").write_text("mine")
    one_line_error(capsys, "not a Zarr store", "denoise", str(source), "-o", str(not_zarr), *FAST)
    assert (not_zarr / "keep.txt").read_text() == "mine"
    one_line_error(capsys, "Y and X", "denoise", str(source), "-o", str(tmp_path / "o.tif"), "--axes", "TZCXY", *FAST)
    folder = tmp_path / "plain-folder"
    folder.mkdir()
    one_line_error(capsys, "not a Zarr store", "denoise", str(folder), "-o", str(tmp_path / "o.tif"), *FAST)
    one_line_error(capsys, "--resume", "denoise", str(source), "-o", str(tmp_path / "o.png"), "--resume", *FAST)
    one_line_error(capsys, ".ome.zarr", "denoise", str(source), "-o", str(tmp_path / "o.jpg"), *FAST)
    one_line_error(capsys, "inside one another", "denoise", str(tmp_path / "notes.zarr"), "-o",
                   str(tmp_path / "notes.zarr" / "o.tif"), *FAST)
    one_line_error(capsys, "OME-Zarr holds axes", "denoise", str(source), "-o", str(tmp_path / "o.ome.zarr"),
                   "--axes", "QZCYX", *FAST)
    assert not list(tmp_path.glob(".o.*")), "a failed run left partial files"
    run = subprocess.run([sys.executable, "-m", "napari_mpi.cli", "denoise", str(source), "-o", str(not_zarr), *FAST],
                         capture_output=True, text=True, timeout=120)  # and as a real process: exit 2, no traceback
    assert run.returncode == 2 and "Traceback" not in run.stderr and len(run.stderr.strip().splitlines()) == 1


# ------------------------------------------------------------------------------------------------ resume


def _progress(path: Path) -> set[int]:
    try:
        record = json.loads(path.read_text())
    except (FileNotFoundError, ValueError):
        return set()
    return {n for low, high in record["done"] for n in range(low, high + 1)}


@pytest.mark.parametrize("name", ["out.tif", "out.ome.zarr"])
def test_resume_after_kill_equals_uninterrupted_run(tmp_path, name):
    """Kill a real CLI process once a plane is recorded; --resume skips it and the result is the
    uninterrupted run's, bit for bit."""
    source = tmp_path / "stack.tif"
    data = np.random.default_rng(7).integers(0, 4000, (5, 40, 40), dtype=np.uint16)
    tifffile.imwrite(source, data, photometric="minisblack", metadata={"axes": "ZYX"})
    args = ["denoise", str(source), "--iterations", "12", "--weights", "random", "--threads", "1"]
    reference = tmp_path / f"reference-{name}"
    main(*args, "-o", str(reference), "-q")  # uninterrupted, in this process (one thread, like the subprocesses)

    target = tmp_path / name
    progress = tmp_path / f".{name}.napari-mpi-progress.json"
    proc = subprocess.Popen([sys.executable, "-m", "napari_mpi.cli", *args, "-o", str(target), "-q"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    try:
        while not _progress(progress) and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.02)
    finally:
        proc.kill()
        proc.wait()
    finished_before = _progress(progress)
    assert finished_before and len(finished_before) < 5, f"killed too late: {finished_before}"
    assert not target.exists(), "an unfinished run must not be in place"
    [partial] = tmp_path.glob(f".{name}.partial*")
    if name.endswith(".tif"):
        on_disk, expected = tifffile.imread(partial), tifffile.imread(reference)
    else:
        on_disk, expected = zarr.open_array(str(partial / "0"))[:], zarr.open_array(str(reference / "0"))[:]
    for plane in finished_before:  # every plane the record calls finished is complete on disk
        assert np.array_equal(on_disk[plane], expected[plane]), plane

    # resume; and, as in every run without --scheduler, Dask (an optional dependency) is never imported
    probe = ("import sys; from napari_mpi.cli import main; code = main(sys.argv[1:]); "
             "assert not {'dask', 'distributed'} & set(sys.modules), 'dask imported'; sys.exit(code)")
    resumed = subprocess.run([sys.executable, "-c", probe, *args, "-o", str(target), "--resume"],
                             capture_output=True, text=True, timeout=120)
    assert resumed.returncode == 0, resumed.stderr
    assert f"resuming: {len(finished_before)} of 5 plane(s) already written" in resumed.stdout
    assert not progress.exists() and not list(tmp_path.glob(f".{name}.partial*"))
    if name.endswith(".tif"):
        assert np.array_equal(tifffile.imread(target), tifffile.imread(reference))
    else:
        assert np.array_equal(zarr.open_array(str(target / "0"))[:], zarr.open_array(str(reference / "0"))[:])


def test_resume_refuses_other_settings_and_restarts_without_flag(tmp_path, capsys):
    source = tmp_path / "stack.tif"
    tifffile.imwrite(source, np.random.default_rng(8).integers(0, 4000, (2, 32, 32), dtype=np.uint16),
                     photometric="minisblack", metadata={"axes": "ZYX"})
    target = tmp_path / "out.tif"
    # an unfinished run, as a kill leaves it: a partial output and its record
    from napari_mpi.io.batch_output import BatchOutput

    plan = napari_mpi.prepare((2, 32, 32), np.uint16, iterations=2, weights="random")
    output = BatchOutput(target, "tiff", plan.layout, np.dtype(np.float32), "ZYX",
                         _cli_denoise.fingerprint(source, np.zeros(1, np.uint16), plan), resume=False)
    output.writer[(0, slice(None), slice(None))] = np.zeros((32, 32), np.float32)
    line = one_line_error(capsys, "cannot resume", "denoise", str(source), "-o", str(target), "--resume", "--seed", "1",
                          *FAST)
    assert "parameters" in line
    assert output.partial.exists(), "a refused resume must keep the unfinished run"
    assert cli.main(["denoise", str(source), "-o", str(target), "--iterations", "2", "--weights", "random"]) == 0
    assert "starting" in capsys.readouterr().out
    assert tifffile.imread(target).shape == (2, 32, 32) and not output.partial.exists()
