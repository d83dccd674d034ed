"""The command line, run as a real subprocess (as users run it): round trips and every error exit."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import tifffile

from .conftest import digest, run_cli

FAST = ["--iterations", "2", "--weights", "random", "-q"]


@pytest.fixture
def zstack(tmp_path):
    path = tmp_path / "stack.tif"
    data = np.random.default_rng(0).integers(0, 4000, size=(2, 40, 44), dtype=np.uint16)
    tifffile.imwrite(path, data, imagej=True, metadata={"axes": "ZYX"})
    return path, data


def test_tiff_round_trip_keeps_shape_and_axes(zstack, tmp_path):
    source, data = zstack
    before = digest(source)
    out = tmp_path / "out.tif"
    result = run_cli("denoise", str(source), "-o", str(out), *FAST)
    assert result.returncode == 0, result.stderr
    with tifffile.TiffFile(out) as tif:
        assert tif.series[0].axes == "ZYX"
        written = tif.series[0].asarray()
    assert written.shape == data.shape and written.dtype == np.float32
    assert digest(source) == before


def test_axes_option_channels_and_keep_dtype(tmp_path):
    source = tmp_path / "tc.tif"
    tifffile.imwrite(source, np.random.default_rng(1).integers(0, 255, (2, 2, 40, 40), dtype=np.uint8))
    out = tmp_path / "tc-out.tif"
    result = run_cli("denoise", str(source), "-o", str(out), "--axes", "TCYX", "--keep-dtype", "--refine", "none",
                     *FAST)
    assert result.returncode == 0, result.stderr
    with tifffile.TiffFile(out) as tif:
        assert tif.series[0].axes == "TCYX" and tif.series[0].dtype == np.uint8


def test_png_rgb_round_trip(tmp_path):
    from skimage.io import imread, imsave

    source = tmp_path / "photo.png"
    imsave(source, np.random.default_rng(2).integers(0, 255, (40, 48, 3), dtype=np.uint8), check_contrast=False)
    out = tmp_path / "photo-out.png"
    result = run_cli("denoise", str(source), "-o", str(out), *FAST)
    assert result.returncode == 0, result.stderr
    assert imread(out).shape == (40, 48, 3)


def _assert_clean_failure(result, phrase):
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.strip().splitlines() if line]
    assert len(lines) == 1 and phrase in lines[0], result.stderr


def test_missing_input(tmp_path):
    result = run_cli("denoise", str(tmp_path / "nope.tif"), "-o", str(tmp_path / "o.tif"), *FAST)
    _assert_clean_failure(result, "not found")


def test_corrupt_tiff(tmp_path):
    bad = tmp_path / "bad.tif"
    bad.write_bytes(b"II*\x00" + b"\x00garbage" * 20)
    before = digest(bad)
    _assert_clean_failure(run_cli("denoise", str(bad), "-o", str(tmp_path / "o.tif"), *FAST), "cannot read")
    assert digest(bad) == before


def test_axes_that_do_not_fit(zstack, tmp_path):
    source, _ = zstack
    result = run_cli("denoise", str(source), "-o", str(tmp_path / "o.tif"), "--axes", "TZYX", *FAST)
    _assert_clean_failure(result, "dimensions")


def test_unwritable_output_folder(zstack, tmp_path):
    source, _ = zstack
    result = run_cli("denoise", str(source), "-o", str(tmp_path / "no" / "such" / "o.tif"), *FAST)
    _assert_clean_failure(result, "does not exist")
    # /proc refuses new files even for root (CI runs as root, where chmod would not stop a write)
    unwritable = Path("/proc") if Path("/proc/self").exists() else tmp_path / "locked"
    if unwritable.name == "locked":
        unwritable.mkdir()
        unwritable.chmod(0o500)
    _assert_clean_failure(run_cli("denoise", str(source), "-o", str(unwritable / "o.tif"), *FAST), "cannot write")


def test_output_equal_to_input(zstack):
    source, _ = zstack
    before = digest(source)
    _assert_clean_failure(run_cli("denoise", str(source), "-o", str(source), *FAST), "equals the input")
    assert digest(source) == before


def test_bad_parameter_is_one_line(zstack, tmp_path):
    source, _ = zstack
    result = run_cli("denoise", str(source), "-o", str(tmp_path / "o.tif"), "--mask-ratio", "1.2", *FAST)
    _assert_clean_failure(result, "mask ratio")


def test_weights_for_another_network_are_a_one_line_error(tmp_path):
    import tifffile
    import torch

    from napari_mpi.weights import save_checkpoint

    bad = save_checkpoint(tmp_path / "other.pt", {"conv.weight": torch.zeros(3, 3)}, channels=1, mask_mode="pixel",
                          mask_ratios=(0.3, 0.3))
    source = tmp_path / "in.tif"
    tifffile.imwrite(source, (np.random.default_rng(0).random((32, 32)) * 100).astype(np.uint16))
    done = run_cli("denoise", str(source), "-o", str(tmp_path / "out.tif"), "--weights", str(bad), "--iterations", "2")
    assert done.returncode == 2
    assert done.stderr.count("\n") == 1 and "does not hold weights for napari-mpi's network" in done.stderr
    assert not (tmp_path / "out.tif").exists()


def test_unexpected_failures_are_one_line_with_a_way_to_see_more(monkeypatch, capsys):
    from napari_mpi import cli

    def broken(args):
        raise RuntimeError("cuDNN error: CUDNN_STATUS_INTERNAL_ERROR\nmore lines")

    monkeypatch.setattr(cli, "_demo", broken)  # stands in for a driver failure deep in a run
    assert cli.main(["demo"]) == 1
    assert capsys.readouterr().err == (
        "napari-mpi: error: unexpected RuntimeError: cuDNN error: CUDNN_STATUS_INTERNAL_ERROR "
        "(set NAPARI_MPI_DEBUG=1 to see the traceback)\n"
    )
    monkeypatch.setenv("NAPARI_MPI_DEBUG", "1")
    with pytest.raises(RuntimeError, match="cuDNN"):
        cli.main(["demo"])


def test_auto_preset_counts_every_plane_even_when_it_stops_early(tmp_path):
    source = tmp_path / "stack.tif"
    tifffile.imwrite(source, (np.random.default_rng(0).random((2, 48, 48)) * 100).astype(np.uint16),
                     imagej=True, metadata={"axes": "ZYX"})
    target = tmp_path / "out.tif"
    done = run_cli("denoise", str(source), "-o", str(target), "--preset", "auto", "--iterations", "80")
    assert done.returncode == 0, done.stderr
    assert "2/2" in done.stderr and "preset auto" in done.stdout
    assert tifffile.imread(target).shape == (2, 48, 48)


def test_stacks_reuse_the_network_by_default_and_say_how_each_plane_was_filled(zstack, tmp_path):
    source, data = zstack
    for name, read_back in [("out.tif", _imagej_info), ("out.ome.tif", _ome_annotation), ("out.zarr", _zarr_attrs)]:
        target = tmp_path / name
        done = run_cli("denoise", str(source), "-o", str(target), "--iterations", "4", "--weights", "random")
        assert done.returncode == 0, done.stderr
        assert "planes: " in done.stdout and "of 2 planes started from the weights" in done.stdout
        planes = read_back(target)
        assert [p["plane"] for p in planes] == [0, 1] and planes[0]["start"] == "weights"
        assert planes[0]["steps"] == 4 and planes[1]["start"] in ("carried", "weights")
    quick = ["--iterations", "2", "--weights", "random"]
    never = run_cli("denoise", str(source), "-o", str(tmp_path / "never.tif"), "--reuse-network", "no", *quick)
    assert never.returncode == 0 and "wrote" in never.stdout and "planes: " not in never.stdout
    assert [p["start"] for p in _imagej_info(tmp_path / "never.tif")] == ["weights", "weights"]
    always = run_cli("denoise", str(source), "-o", str(tmp_path / "always.tif"), "--reuse-network", *quick)
    assert always.returncode == 0 and "planes: 1 of 2 planes carried the previous plane's network" in always.stdout
    wrong = run_cli("denoise", str(source), "-o", str(tmp_path / "o.tif"), "--reuse-network", "sometimes", *FAST)
    assert wrong.returncode == 2 and "Traceback" not in wrong.stderr
    assert "--reuse-network: invalid choice: 'sometimes' (choose from 'auto', 'yes', 'no')" in wrong.stderr


def _imagej_info(path) -> list[dict]:
    with tifffile.TiffFile(path) as tif:
        line = next(x for x in tif.imagej_metadata["Info"].splitlines() if x.startswith("napari-mpi.planes_filled"))
    return json.loads(line.split(" = ", 1)[1])


def _ome_annotation(path) -> list[dict]:
    import html
    import re

    with tifffile.TiffFile(path) as tif:
        found = re.search(r'<M K="planes_filled">(.*?)</M>', tif.ome_metadata)
    return json.loads(html.unescape(found.group(1)))


def _zarr_attrs(path) -> list[dict]:
    import zarr

    return zarr.open_array(str(path), mode="r").attrs["napari_mpi"]["planes_filled"]


def test_crop_option_trains_on_windows_and_refuses_a_bad_side(tmp_path):
    source = tmp_path / "wide.tif"
    tifffile.imwrite(source, np.random.default_rng(3).integers(0, 4000, size=(96, 160), dtype=np.uint16))
    target = tmp_path / "out.tif"
    done = run_cli("denoise", str(source), "-o", str(target), "--crop", "64", "--iterations", "2", "--weights",
                   "random", "--refine", "none")
    assert done.returncode == 0, done.stderr
    # 2 steps and 2 predictions, each worth 2 x 96*160 / 64^2 = 7.5 window steps
    assert "2 iterations, then 2 predictions (as 16 steps on 64x64 windows)" in done.stdout
    assert tifffile.imread(target).shape == (96, 160)
    _assert_clean_failure(run_cli("denoise", str(source), "-o", str(tmp_path / "o.tif"), "--crop", "32", *FAST),
                          "window side of at least 64 pixels")
    refused = run_cli("denoise", str(source), "-o", str(tmp_path / "o.tif"), "--crop", "big", *FAST)  # argparse's usage
    assert refused.returncode == 2 and "Traceback" not in refused.stderr
    assert "expected auto, none or a window side" in refused.stderr.strip().splitlines()[-1]


def test_correlated_noise_gets_a_one_line_hint_unless_a_mask_ratio_is_given(tmp_path):
    from scipy.ndimage import gaussian_filter

    rng = np.random.default_rng(4)
    noise = gaussian_filter(rng.normal(0, 1, (64, 64)), 1.0)
    source = tmp_path / "blotchy.tif"
    tifffile.imwrite(source, (1000 + 300 * noise / noise.std()).astype(np.float32))
    done = run_cli("denoise", str(source), "-o", str(tmp_path / "out.tif"), "--refine", "none", *FAST)
    assert done.returncode == 0, done.stderr
    hints = [line for line in done.stderr.splitlines() if "spatially correlated" in line]
    assert len(hints) == 1 and hints[0].startswith("napari-mpi: warning:") and "--mask-ratio 0.85" in hints[0]
    chosen = run_cli("denoise", str(source), "-o", str(tmp_path / "out2.tif"), "--mask-ratio", "0.3", *FAST)
    assert chosen.returncode == 0 and "spatially correlated" not in chosen.stderr


def test_the_package_and_the_command_line_start_without_torch():
    """The public names load on first use: the command line's help (and a Ctrl-C while it starts) never waits
    for torch, and every public name resolves."""
    import subprocess
    import sys

    code = ("import sys, napari_mpi, napari_mpi.cli; assert 'torch' not in sys.modules; "
            "assert set(napari_mpi.__all__) == {*napari_mpi._HOMES, '__version__'}; "
            "[getattr(napari_mpi, name) for name in napari_mpi.__all__]; assert 'torch' in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=300)
