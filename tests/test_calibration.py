"""Calibration end to end: pixel sizes and units read from OME-TIFF, ImageJ TIFF and OME-Zarr inputs and
written back by the command line, the run's parameters in every output, and napari's save through the
napari-mpi writer. Real files read back with tifffile and zarr; tiny images."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import tifffile
import zarr

from napari_mpi import cli
from napari_mpi.io.calibration import Calibration, read_calibration, unit_name

FAST = ["--iterations", "2", "--weights", "random", "-q"]
STACK = np.random.default_rng(0).integers(0, 4000, (3, 32, 36)).astype(np.uint16)


pytestmark = pytest.mark.usefixtures("one_thread")


def main(*args: str) -> None:
    assert cli.main(list(args)) == 0


def ome_pixels(path: Path) -> dict:
    with tifffile.TiffFile(path) as tif:
        assert tif.is_ome
        ome = tifffile.xml2dict(tif.ome_metadata)["OME"]
    return ome


def ome_annotation(ome: dict) -> dict:
    annotation = ome["StructuredAnnotations"]["MapAnnotation"]
    assert annotation["Namespace"] == "napari-mpi"
    values = annotation["Value"]["M"]
    return {m["K"]: m["value"] for m in (values if isinstance(values, list) else [values])}


def imagej_run(info: str) -> dict:
    return dict(line.removeprefix("napari-mpi.").split(" = ", 1) for line in info.splitlines())


@pytest.fixture
def ome_tiff(tmp_path):
    path = tmp_path / "cells.ome.tif"
    tifffile.imwrite(path, STACK, ome=True, metadata={
        "axes": "ZYX", "PhysicalSizeX": 0.108, "PhysicalSizeY": 0.108, "PhysicalSizeZ": 0.5,
        "PhysicalSizeXUnit": "µm", "PhysicalSizeYUnit": "µm", "PhysicalSizeZUnit": "µm"})
    return path


@pytest.fixture
def imagej_tiff(tmp_path):
    path = tmp_path / "hyper.tif"
    tifffile.imwrite(path, STACK, imagej=True, resolution=(1 / 0.108, 1 / 0.108),
                     metadata={"axes": "ZYX", "spacing": 0.5, "unit": "micron"})
    return path


EXPECTED = {"Z": (0.5, "micrometer"), "Y": (0.108, "micrometer"), "X": (0.108, "micrometer")}


def assert_sizes(found: dict, expected: dict = EXPECTED) -> None:
    assert set(found) == set(expected), found
    for letter, (size, unit) in expected.items():
        assert found[letter][0] == pytest.approx(size, rel=1e-6) and found[letter][1] == unit


def test_units_and_calibration_by_axis():
    assert unit_name("µm") == unit_name("micron") == unit_name("um") == unit_name("\\u00B5m") == "micrometer"
    assert unit_name("pixel") is None and unit_name(None) is None and unit_name("sec") == "second"
    calibration = Calibration.from_letters("TZYX", {"Z": (0.5, "micrometer"), "X": (0.1, "micrometer")})
    assert calibration.of("TZYX", "Z") == (0.5, "micrometer") and calibration.of("TZYX", "T") == (None, None)
    assert calibration.describe("TZYX") == {"Z": {"size": 0.5, "unit": "micrometer"},
                                            "X": {"size": 0.1, "unit": "micrometer"}}


def test_pixel_sizes_are_read_from_ome_tiff_imagej_and_ome_zarr(ome_tiff, imagej_tiff, tmp_path):
    assert_sizes(read_calibration(ome_tiff))
    assert_sizes(read_calibration(imagej_tiff))
    root = zarr.open_group(str(tmp_path / "in.ome.zarr"), mode="w", zarr_format=2)
    root.create_array("0", shape=STACK.shape, dtype="uint16")
    root.attrs["multiscales"] = [{"version": "0.4", "axes": [
        {"name": "z", "type": "space", "unit": "micrometer"}, {"name": "y", "type": "space", "unit": "micrometer"},
        {"name": "x", "type": "space", "unit": "micrometer"}],
        "datasets": [{"path": "0", "coordinateTransformations": [{"type": "scale", "scale": [0.5, 0.108, 0.108]}]}]}]
    assert_sizes(read_calibration(tmp_path / "in.ome.zarr"))
    plain = tmp_path / "plain.tif"
    tifffile.imwrite(plain, STACK, photometric="minisblack")
    assert read_calibration(plain) == {}


def test_ome_tiff_in_gives_ome_tiff_imagej_and_ome_zarr_out_with_its_pixel_sizes_and_the_run(ome_tiff, tmp_path):
    ome_out, imagej_out, zarr_out = tmp_path / "out.ome.tif", tmp_path / "out.tif", tmp_path / "out.ome.zarr"
    for target in (ome_out, imagej_out, zarr_out):
        main("denoise", str(ome_tiff), "-o", str(target), "--seed", "3", *FAST)
    # OME-TIFF: PhysicalSize per axis, and the run in a MapAnnotation
    ome = ome_pixels(ome_out)
    pixels = ome["Image"]["Pixels"]
    assert (pixels["PhysicalSizeX"], pixels["PhysicalSizeZ"], pixels["PhysicalSizeXUnit"]) == (0.108, 0.5, "µm")
    run = ome_annotation(ome)
    assert str(run["seed"]) == "3" and run["preset"] == "fast" and run["napari_mpi_version"]
    assert_sizes(read_calibration(ome_out))
    # ImageJ hyperstack: resolution in pixels per micron, z spacing, the run in the Info text
    with tifffile.TiffFile(imagej_out) as tif:
        assert tif.is_imagej and tif.series[0].axes == "ZYX"
        meta = tif.imagej_metadata
        assert meta["unit"] == "micron" and meta["spacing"] == 0.5
        assert 1 / tif.pages.first.resolution[0] == pytest.approx(0.108, rel=1e-6)
        assert imagej_run(meta["Info"])["seed"] == "3"
    assert_sizes(read_calibration(imagej_out))
    # OME-Zarr: scale and unit per axis, the run in the attributes
    attrs = dict(zarr.open_group(str(zarr_out), mode="r").attrs)
    image = attrs["multiscales"][0]
    assert [a.get("unit") for a in image["axes"]] == ["micrometer"] * 3
    assert image["datasets"][0]["coordinateTransformations"][0]["scale"] == [0.5, 0.108, 0.108]
    assert attrs["napari_mpi"]["seed"] == 3 and attrs["napari_mpi"]["napari_mpi_version"]
    # the pixels are the same whichever the format
    np.testing.assert_array_equal(tifffile.imread(ome_out), tifffile.imread(imagej_out))
    np.testing.assert_array_equal(tifffile.imread(ome_out), zarr.open_array(str(zarr_out / "0"))[:])


def test_imagej_and_ome_zarr_inputs_keep_their_pixel_sizes(imagej_tiff, tmp_path):
    zarr_out = tmp_path / "out.ome.zarr"
    main("denoise", str(imagej_tiff), "-o", str(zarr_out), *FAST)
    assert_sizes(read_calibration(zarr_out))
    back = tmp_path / "back.ome.tif"
    main("denoise", str(zarr_out), "-o", str(back), *FAST)
    assert_sizes(read_calibration(back))
    plain_zarr = tmp_path / "out.zarr"
    main("denoise", str(imagej_tiff), "-o", str(plain_zarr), *FAST)
    assert zarr.open_array(str(plain_zarr)).attrs["pixel_sizes"]["Z"] == {"size": 0.5, "unit": "micrometer"}


def test_imagej_output_puts_the_axes_in_imagej_order(tmp_path):
    """A ZTYX input becomes a TZYX hyperstack whose planes are the very planes of the Zarr output."""
    source = tmp_path / "zt.tif"
    data = np.random.default_rng(1).integers(0, 4000, (2, 3, 32, 32)).astype(np.uint16)
    tifffile.imwrite(source, data, metadata={"axes": "ZTYX"}, photometric="minisblack")
    main("denoise", str(source), "-o", str(tmp_path / "out.tif"), "--refine", "none", *FAST)
    main("denoise", str(source), "-o", str(tmp_path / "out.zarr"), "--refine", "none", *FAST)
    with tifffile.TiffFile(tmp_path / "out.tif") as tif:
        assert tif.is_imagej and tif.series[0].axes == "TZYX"
        hyperstack = tif.series[0].asarray()
    np.testing.assert_array_equal(hyperstack, np.transpose(zarr.open_array(str(tmp_path / "out.zarr"))[:],
                                                           (1, 0, 2, 3)))


def test_a_resumed_imagej_output_in_imagej_order_gets_every_plane_in_its_place(tmp_path):
    from napari_mpi.io.batch_output import BatchOutput
    from napari_mpi.io.planes import plane_layout

    planes = np.arange(2 * 3 * 8 * 8, dtype=np.float32).reshape(2, 3, 8, 8)  # Z, T, Y, X
    layout = plane_layout(planes.shape)
    target = tmp_path / "out.tif"
    calibration = Calibration.from_letters("ZTYX", {"Z": (0.5, "micrometer"), "X": (0.1, "micrometer"),
                                                    "Y": (0.1, "micrometer"), "T": (2.0, "second")})

    def output(resume: bool) -> BatchOutput:
        return BatchOutput(target, "tiff", layout, np.float32, "ZTYX", {"input": "x"}, {"preset": "fast"}, resume,
                           calibration)

    first = output(False)
    indices = list(layout.indices())
    for index in indices[:2]:
        first.writer[index] = planes[index]
    again = output(True)  # as after a killed run
    assert again.resumed and again.done == {0, 1}
    for number, index in enumerate(indices):
        if number not in again.done:
            again.writer[index] = planes[index]
    again.finish()
    with tifffile.TiffFile(target) as tif:
        assert tif.is_imagej and tif.series[0].axes == "TZYX" and tif.imagej_metadata["finterval"] == 2.0
        np.testing.assert_array_equal(tif.series[0].asarray(), planes.transpose(1, 0, 2, 3))
    assert read_calibration(target)["T"] == (2.0, "second")


def test_tiff_that_imagej_cannot_hold_is_plain_with_a_warning_and_keeps_the_metadata(ome_tiff, tmp_path, capsys):
    source = tmp_path / "q.tif"
    tifffile.imwrite(source, STACK, metadata={"axes": "QYX"}, photometric="minisblack")
    target = tmp_path / "out.tif"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        main("denoise", str(source), "-o", str(target), *FAST)
    assert any("out.tif is a plain TIFF, not an ImageJ hyperstack: ImageJ names axes T, Z, C, Y, X only"
               in str(w.message) for w in caught)
    with tifffile.TiffFile(target) as tif:
        assert tif.shaped_metadata[0]["napari_mpi"]["preset"] == "fast"
    # an OME-TIFF of such axes is refused before any work, with the way out
    line_phrase = "an OME-TIFF names axes T, Z, C, Y, X and S (RGB), and this image's axes are QYX"
    capsys.readouterr()
    assert cli.main(["denoise", str(source), "-o", str(tmp_path / "q.ome.tif"), *FAST]) == 2
    err = capsys.readouterr().err
    assert line_phrase in err and "--axes ZYX" in err


# ------------------------------------------------------------------------------------------------ napari writer


LAYER = {"name": "cells denoised", "scale": [0.5, 0.108, 0.108], "translate": [1.0, 2.0, 3.0],
         "units": ("micrometer", "micrometer", "micrometer"), "axis_labels": ("z", "y", "x"), "rgb": False,
         "metadata": {"preset": "fast", "mask_ratio": 0.3, "napari_mpi_version": "1.0", "network": {"width": 48}}}


def test_napari_writer_keeps_scale_units_translate_labels_and_the_run(tmp_path):
    from napari_mpi._writer import write_ome_tiff

    data = np.random.default_rng(2).random((3, 16, 20)).astype(np.float32)
    target = tmp_path / "saved.ome.tif"
    assert write_ome_tiff(str(target), data, LAYER) == [str(target)]
    with tifffile.TiffFile(target) as tif:
        assert tif.series[0].axes == "ZYX"
        np.testing.assert_array_equal(tif.series[0].asarray(), data)
    ome = ome_pixels(target)
    assert ome["Image"]["Name"] == "cells denoised"
    assert_sizes(read_calibration(target))
    values = ome_annotation(ome)
    layer = json.loads(values["napari_layer"])
    assert layer["translate"] == [1.0, 2.0, 3.0] and layer["axis_labels"] == ["z", "y", "x"]
    assert layer["scale"] == [0.5, 0.108, 0.108] and layer["units"] == ["micrometer"] * 3
    assert values["preset"] == "fast" and json.loads(values["network"]) == {"width": 48}


def test_napari_writer_with_pint_units_rgb_dask_and_default_labels(tmp_path):
    import dask.array as da
    import pint

    from napari_mpi._writer import layer_axes, write_ome_tiff

    units = pint.UnitRegistry()
    rgb = np.random.default_rng(3).integers(0, 255, (16, 20, 3)).astype(np.uint8)
    meta = {"scale": [0.2, 0.2], "units": (units.nanometer, units.nanometer), "rgb": True,
            "axis_labels": ("-2", "-1"), "metadata": {}}
    write_ome_tiff(str(tmp_path / "rgb.ome.tif"), rgb, meta)
    assert tifffile.imread(tmp_path / "rgb.ome.tif").shape == (16, 20, 3)
    assert read_calibration(tmp_path / "rgb.ome.tif")["X"] == (0.2, "nanometer")
    stack = da.from_array(np.random.default_rng(4).random((2, 3, 16, 16)).astype(np.float32), chunks=(1, 1, 16, 16))
    write_ome_tiff(str(tmp_path / "tz.ome.tif"), stack, {"scale": [1, 1, 1, 1], "units": ("pixel",) * 4})
    with tifffile.TiffFile(tmp_path / "tz.ome.tif") as tif:
        assert tif.series[0].axes == "TZYX"
        np.testing.assert_array_equal(tif.series[0].asarray(), stack.compute())
    assert read_calibration(tmp_path / "tz.ome.tif") == {}
    assert layer_axes(3, False, ("t", "y", "x")) == "TYX" and layer_axes(5, False, None) == "CTZYX"
    with pytest.raises(ValueError, match="at most 5 axes"):
        layer_axes(6, False, None)


def test_the_manifest_offers_the_writer_for_image_layers():
    from importlib.resources import files

    from npe2 import PluginManifest

    manifest = PluginManifest.from_file(str(files("napari_mpi") / "napari.yaml"))
    [writer] = manifest.contributions.writers
    assert writer.layer_types == ["image"] and ".ome.tif" in writer.filename_extensions
    [command] = [c for c in manifest.contributions.commands if c.id == writer.command]
    from napari_mpi._writer import write_ome_tiff

    assert command.python_name == "napari_mpi._writer:write_ome_tiff" and callable(write_ome_tiff)
