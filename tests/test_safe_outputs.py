"""Nothing lost on the way out: PNGs refused for data they cannot hold, ``out=`` arrays never wrapped, existing
outputs kept unless --overwrite, a full disk and damaged input planes as one line naming file and plane, and
messages that say what to change. Real files, tiny images."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import uuid
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch
import zarr

import napari_mpi
from napari_mpi import cli
from napari_mpi.io.checked import MissingChunkWarning

from .conftest import FEW, one_line_error, run_cli

FAST = ["--iterations", "2", "--weights", "random", "-q"]


def fails_cleanly(result: subprocess.CompletedProcess, phrase: str) -> str:
    assert result.returncode == 2, (result.returncode, result.stderr[-2000:])
    lines = [line for line in result.stderr.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and phrase in lines[0] and "Traceback" not in result.stderr, result.stderr
    return lines[0]


@pytest.fixture
def no_work(monkeypatch):
    """Any plane computed fails the test: refusals must come before the work."""
    import napari_mpi.api

    def refuse(*args, **kwargs):
        raise AssertionError("a plane was computed before the refusal")

    monkeypatch.setattr(napari_mpi.api, "fill_plane", refuse)


# ------------------------------------------------------------------------------------------------ PNG


@pytest.mark.parametrize("data,phrase", [
    (np.random.default_rng(0).random((32, 32)).astype(np.float32), "this image is float (float32)"),
    (np.arange(32 * 32, dtype=np.uint32).reshape(32, 32), "this image is 32-bit (uint32)"),
    (np.arange(32 * 32, dtype=np.int16).reshape(32, 32), "this image is signed (int16)"),
    (np.zeros((8, 32, 32), np.uint16) + np.arange(32, dtype=np.uint16), "this one is 3-D (axes ZYX"),
    (np.zeros((2, 1, 2, 32, 32), np.uint8), "this one is 5-D"),
], ids=["float", "32-bit", "signed", "3-D stack", "5-D stack"])
def test_png_is_refused_for_data_it_cannot_hold_before_any_work(tmp_path, capsys, no_work, data, phrase):
    source = tmp_path / "in.tif"
    tifffile.imwrite(source, data, metadata={"axes": {2: "YX", 3: "ZYX", 5: "TZCYX"}[data.ndim]},
                     photometric="minisblack")
    line = one_line_error(capsys, phrase, "denoise", str(source), "-o", str(tmp_path / "out.png"), *FAST)
    assert "write .tif" in line and not (tmp_path / "out.png").exists()


def test_png_keeps_its_type_and_records_the_run(tmp_path):
    from PIL import Image

    source = tmp_path / "in.png"
    Image.fromarray(np.random.default_rng(1).integers(0, 60000, (32, 40)).astype(np.uint16)).save(source)
    out = tmp_path / "out.png"
    assert cli.main(["denoise", str(source), "-o", str(out), *FAST]) == 0
    with Image.open(out) as image:
        assert image.size == (40, 32) and np.asarray(image).dtype.itemsize == 2
        assert '"preset": "fast"' in image.text["napari-mpi"]


# ------------------------------------------------------------------------------------------------ out=


def test_a_narrower_out_array_is_rounded_and_clipped_never_wrapped():
    image = (953 + 767 * np.random.default_rng(2).random((32, 32))).astype(np.float32)  # 953-1720
    expected = napari_mpi.denoise(image, **FEW)
    with pytest.warns(napari_mpi.DenoiseWarning, match="beyond the range of out='s uint8 .0 to 255.*clipped"):
        small = napari_mpi.denoise(image, out=np.zeros(image.shape, np.uint8), **FEW)
    np.testing.assert_array_equal(small, 255)  # every value is above 255: clipped to it, not wrapped
    wide = napari_mpi.denoise(image, out=np.zeros(image.shape, np.uint16), **FEW)
    np.testing.assert_array_equal(wide, np.rint(expected).astype(np.uint16))
    with pytest.raises(ValueError, match="out= holds bool.*pass a float32 array"):
        napari_mpi.denoise(image, out=np.zeros(image.shape, bool), **FEW)


# ------------------------------------------------------------------------------------------------ --overwrite


def test_an_existing_output_is_kept_unless_overwrite_is_given(tmp_path, capsys, no_work):
    source = tmp_path / "in.tif"
    tifffile.imwrite(source, np.random.default_rng(3).integers(0, 4000, (32, 32)).astype(np.uint16))
    old_tif = tmp_path / "old.tif"
    old_tif.write_bytes(b"precious")
    pyramid = tmp_path / "old.ome.zarr"
    root = zarr.open_group(str(pyramid), mode="w", zarr_format=2)
    for level in range(3):
        root.create_array(str(level), shape=(32 >> level, 32 >> level), dtype="uint8")
    before = sorted(p.name for p in pyramid.iterdir())
    for target in (old_tif, pyramid):
        line = one_line_error(capsys, "exists", "denoise", str(source), "-o", str(target), *FAST)
        assert "add --overwrite to replace it" in line
    assert old_tif.read_bytes() == b"precious" and sorted(p.name for p in pyramid.iterdir()) == before


def test_overwrite_replaces_an_existing_output(tmp_path):
    source = tmp_path / "in.tif"
    tifffile.imwrite(source, np.random.default_rng(3).integers(0, 4000, (32, 32)).astype(np.uint16))
    target = tmp_path / "out.tif"
    target.write_bytes(b"old")
    assert cli.main(["denoise", str(source), "-o", str(target), "--overwrite", *FAST]) == 0
    assert tifffile.imread(target).shape == (32, 32)


# ------------------------------------------------------------------------------------------------ a full disk


@pytest.fixture
def small_disk(tmp_path):
    """A 40 kB file system (tmpfs; root only)."""
    if not hasattr(os, "geteuid") or os.geteuid() != 0 or not shutil.which("mount"):
        pytest.skip("mounting a small tmpfs needs root")
    folder = tmp_path / f"disk-{uuid.uuid4().hex[:6]}"
    folder.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=40k", "tmpfs", str(folder)]).returncode != 0:
        pytest.skip("cannot mount a tmpfs here")
    yield folder
    subprocess.run(["umount", str(folder)], check=False)


def test_a_full_disk_is_one_line_naming_the_file_and_the_plane(tmp_path, small_disk):
    source = tmp_path / "in.tif"
    tifffile.imwrite(source, np.random.default_rng(4).integers(0, 4000, (4, 48, 48)).astype(np.uint16),
                     imagej=True, metadata={"axes": "ZYX"})  # 4 float32 planes of 9 kB: the last does not fit
    target = small_disk / "out.tif"
    result = run_cli("denoise", str(source), "-o", str(target), *FAST)
    line = fails_cleanly(result, "No space left on device")  # not SIGBUS
    assert re.search(rf"cannot write plane [2-4] of 4 \(Z=[1-3]\) of {re.escape(str(target))}: ", line), line
    assert "run again with --resume" in line
    assert not target.exists()


# ------------------------------------------------------------------------------------------------ damaged input


def _damaged_tiff(path: Path) -> None:
    data = np.random.default_rng(5).integers(0, 4000, (3, 32, 32)).astype(np.uint16)
    tifffile.imwrite(path, data, compression="zlib", imagej=True, metadata={"axes": "ZYX"})
    with tifffile.TiffFile(path) as tif:
        offset = tif.pages[1].dataoffsets[0]
    raw = bytearray(path.read_bytes())
    raw[offset + 10:offset + 40] = b"\xff" * 30
    path.write_bytes(bytes(raw))


def _zarr_stack(path: Path) -> None:
    array = zarr.create_array(str(path), shape=(3, 32, 32), chunks=(1, 32, 32), dtype="uint16", zarr_format=2,
                              chunk_key_encoding={"name": "v2", "separator": "/"}, attributes={"axes": "ZYX"})
    array[:] = np.random.default_rng(6).integers(1, 4000, (3, 32, 32))


def _damaged_zarr(path: Path) -> None:
    _zarr_stack(path)
    (path / "1" / "0" / "0").write_bytes(b"garbage" * 10)


@pytest.mark.parametrize("make,name", [(_damaged_tiff, "in.tif"), (_damaged_zarr, "in.zarr")], ids=["tiff", "zarr"])
def test_a_damaged_plane_or_chunk_is_one_line_naming_file_and_plane(tmp_path, capsys, make, name):
    source = tmp_path / name
    make(source)
    line = one_line_error(capsys, "cannot read plane 2 of 3 (Z=1) of " + name, "denoise", str(source), "-o",
                          str(tmp_path / "out.tif"), *FAST)
    assert "its data are damaged" in line and "repair or export the file again" in line


def test_a_missing_zarr_chunk_is_read_as_the_fill_value_with_a_warning(tmp_path):
    source = tmp_path / "in.zarr"
    _zarr_stack(source)
    (source / "2" / "0" / "0").unlink()
    out = tmp_path / "out.zarr"
    result = run_cli("denoise", str(source), "-o", str(out), *FAST)
    assert result.returncode == 0, result.stderr
    warnings = [line for line in result.stderr.splitlines() if "not stored" in line]
    assert len(warnings) == 1 and "plane 3 of 3 (Z=2) are not stored; read as the fill value 0" in warnings[0]
    np.testing.assert_array_equal(zarr.open_array(str(out))[2], 0)  # a constant plane is its own result
    assert (out / "2" / "0" / "0").is_file()  # outputs store every chunk: a missing one is always a lost one
    with pytest.warns(MissingChunkWarning):  # the reader itself, in this process
        from napari_mpi.io.checked import CheckedSource
        from napari_mpi.io.planes import plane_layout

        array = zarr.open_array(str(source), mode="r")
        CheckedSource(array, source, plane_layout(array.shape), "ZYX")[2]


# ------------------------------------------------------------------------------------------------ messages


def test_cli_messages_say_what_to_change(tmp_path, capsys, no_work):
    source = tmp_path / "in.tif"
    tifffile.imwrite(source, np.random.default_rng(7).integers(0, 4000, (32, 32)).astype(np.uint16))
    out = str(tmp_path / "out.tif")
    one_line_error(capsys, "--threads must be 0 (torch's default) or a number of CPU threads, got -1",
                   "denoise", str(source), "-o", out, "--threads", "-1", *FAST)
    one_line_error(capsys, "seed must be a whole number from 0 to 4294967295", "denoise", str(source), "-o", out,
                   "--seed", str(2**70), *FAST)
    empty = tmp_path / "empty.tif"
    tifffile.imwrite(empty, np.zeros((0, 32, 32), np.uint16))
    one_line_error(capsys, "it holds no image data (shape (0, 32, 32)); choose a file with at least one plane",
                   "denoise", str(empty), "-o", out, *FAST)
    five = tmp_path / "five.tif"
    tifffile.imwrite(five, np.zeros((2, 1, 2, 24, 24), np.float32))
    one_line_error(capsys, "--axes QQQYX: Q appears more than once; give every axis its own letter", "denoise",
                   str(five), "-o", out, "--axes", "QQQYX", *FAST)
    one_line_error(capsys, "--axes ZC must include Y and X", "denoise", str(source), "-o", out, "--axes", "ZC", *FAST)


def test_ctrl_c_is_one_line_and_exit_130(monkeypatch, capsys):
    def interrupted(args):
        raise KeyboardInterrupt  # e.g. while torch is still importing

    monkeypatch.setattr(cli, "run_denoise", interrupted)
    assert cli.main(["denoise", "in.tif", "-o", "out.tif"]) == 130
    assert capsys.readouterr().err == "napari-mpi: interrupted (run again with --resume to continue)\n"


def test_api_messages_say_what_to_change():
    import dask.array as da

    image = np.random.default_rng(8).random((2, 32, 32)).astype(np.float32)
    unknown = da.from_array(image, chunks=(1, 32, 32))
    unknown = unknown[unknown[:, 0, 0] > -1]  # boolean indexing: lengths unknown until computed
    with pytest.raises(ValueError, match=r"unknown lengths .*call \.compute_chunk_sizes\(\)"):
        napari_mpi.denoise(unknown, **FEW)
    with pytest.raises(ValueError, match="preset must be the name of a preset .*leave it out for 'fast'.*None"):
        napari_mpi.denoise(image, preset=None, **FEW)
    with pytest.raises(TypeError, match=r"not a torch tensor; pass tensor\.detach\(\)\.cpu\(\)\.numpy\(\)"):
        napari_mpi.denoise(torch.from_numpy(image), **FEW)
    with pytest.raises(TypeError, match=r"not a numpy data type.*tensor\.detach\(\)\.cpu\(\)\.numpy\(\)"):
        napari_mpi.prepare((32, 32), torch.float32)
    for device in (torch.device("meta"), "meta"):
        with pytest.raises(ValueError, match="device 'meta' cannot run the network; use 'auto', 'cpu'"):
            napari_mpi.denoise(image, device=device, **FEW)
    with pytest.raises(ValueError, match="seed must be a whole number from 0 to 4294967295"):
        napari_mpi.prepare((32, 32), np.float32, seed=2**70)
