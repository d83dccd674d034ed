"""The bad-input matrix of the API and the command line (docs/robustness.md).

API: every case ends in a result of the input's shape (float32, finite) or a ValueError / TypeError /
MemoryError with a sentence a biologist understands, and the input array is never modified.
CLI: run as users run it (``python -m napari_mpi.cli`` in a subprocess); a failure exits with status 2
and one line on stderr, and the input file is never modified.
"""

from __future__ import annotations

import itertools
import subprocess
import sys
import warnings
from importlib import import_module

import numpy as np
import pytest
import tifffile
import torch

import napari_mpi
from napari_mpi._sample_data import clean_fluorescence, expected_counts, noisy_fluorescence
from napari_mpi.api import DenoiseWarning, prepare
from napari_mpi.engine.fill import iterative_fill
from napari_mpi.engine.tiles import tile_starts, tiled_fill
from napari_mpi.io.planes import MAX_OUTLIER, normalize
from napari_mpi.settings import FillConfig

from .conftest import FEW, digest, psnr, run_cli

devices = import_module("napari_mpi.engine.devices")
plane_module = import_module("napari_mpi.engine.plane")  # fills a plane: whole, in windows or in tiles
tiles_module = import_module("napari_mpi.engine.tiles")


def noisy(shape=(48, 48), seed=0) -> np.ndarray:
    """Noisy synthetic fluorescence; a leading axis makes a stack of different planes."""
    if len(shape) == 3:
        return np.stack([noisy(shape[1:], seed=seed + 2 * i) for i in range(shape[0])])
    return noisy_fluorescence(clean_fluorescence(shape, seed=seed), seed=seed + 1)


def refuses(image, error, phrases, **kwargs):
    """``denoise(image)`` raises ``error`` whose message has every phrase; the input is untouched."""
    before = np.array(image, copy=True) if isinstance(image, np.ndarray) else None
    with pytest.raises(error) as caught:
        napari_mpi.denoise(image, **{**FEW, **kwargs})
    message = str(caught.value)
    for phrase in phrases:
        assert phrase in message, message
    assert "\n" not in message and len(message) < 300  # one sentence, not a dump
    if before is not None:
        np.testing.assert_array_equal(image, before)
    return message


# -- values ---------------------------------------------------------------------------------


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
def test_nan_or_inf_anywhere_in_a_stack_is_refused_before_any_work(bad, dtype):
    stack = noisy((3, 40, 40)).astype(dtype)
    stack[2, 39, 0] = bad  # in the last plane: found before the first plane is denoised
    events = []
    refuses(stack, ValueError, ["NaN or infinite", "replace them"], progress=events.append)
    assert events == []


def test_values_beyond_float32_are_refused():
    image = noisy().astype(np.float64)
    image[0, 0] = 1e39
    refuses(image, ValueError, ["beyond", "float32", "rescale"])


def test_far_outliers_are_clipped_for_the_network_and_the_rest_is_denoised():
    rng = np.random.default_rng(0)
    clean = np.full((64, 64), 100.0)
    image = clean + rng.normal(0, 10, clean.shape)
    image[3, 3] = 1e30  # a defect 1e28 robust ranges away (its square overflows float32)
    data, _ = normalize(image)
    assert data.max() == np.float32(1 + MAX_OUTLIER)
    result = napari_mpi.denoise(image, iterations=30, weights="random")
    assert np.isfinite(result).all()
    bulk = np.ones(image.shape, bool)
    bulk[:8, :8] = False  # away from the defect
    assert np.abs(result[bulk] - 100).mean() < 0.7 * np.abs(image[bulk] - 100).mean()  # still denoised


def test_constant_image_comes_back_unchanged():
    for image in (np.full((40, 44), 7, dtype=np.uint8), np.zeros((2, 40, 40), dtype=np.float32)):
        before = image.copy()
        result = napari_mpi.denoise(image, **FEW)
        assert result.dtype == np.float32 and result.shape == image.shape
        np.testing.assert_array_equal(result, image.astype(np.float32))
        np.testing.assert_array_equal(image, before)


# -- shapes ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "shape,phrases",
    [
        ((7, 40), ["7x40 pixels are too small", "at least 8 pixels per side"]),
        ((40, 7), ["40x7 pixels are too small"]),
        ((40, 1), ["40x1 pixels are too small"]),  # a 1-pixel-wide line scan
        ((1, 40), ["1x40 pixels are too small"]),
        ((5, 40, 1), ["40x1 pixels are too small"]),
        ((1, 1), ["1x1 pixels are too small"]),
        ((0, 40, 40), ["empty"]),
        ((40, 0), ["empty"]),
        ((40,), ["at least 2 dimensions"]),
        ((), ["at least 2 dimensions"]),
    ],
)
def test_too_small_one_pixel_wide_empty_or_flat_shapes_are_refused(shape, phrases):
    refuses(np.ones(shape, dtype=np.float32), ValueError, phrases)


@pytest.mark.parametrize("shape", [(2, 1, 1, 24, 24), (1, 2, 1, 1, 24, 24)], ids=["5-D", "6-D"])
def test_5d_and_6d_arrays_are_denoised_plane_by_plane(shape):
    rng = np.random.default_rng(1)
    image = (100 + 20 * rng.standard_normal(shape)).astype(np.float32)
    before = image.copy()
    result = napari_mpi.denoise(image, reuse_network=False, **FEW)
    assert result.shape == shape and result.dtype == np.float32 and np.isfinite(result).all()
    np.testing.assert_array_equal(image, before)
    # each plane exactly as if it were denoised alone (every plane is seeded alike)
    planes = image.reshape(-1, *shape[-2:])
    for number in (0, len(planes) - 1):
        alone = napari_mpi.denoise(planes[number], **FEW)
        np.testing.assert_array_equal(result.reshape(-1, *shape[-2:])[number], alone)
    carried = napari_mpi.denoise(image, **FEW)  # by default the network goes on from plane to plane
    assert carried.shape == shape and np.isfinite(carried).all()
    np.testing.assert_array_equal(carried.reshape(-1, *shape[-2:])[0], result.reshape(-1, *shape[-2:])[0])


def test_5d_with_a_channel_axis():
    image = np.random.default_rng(2).random((2, 3, 2, 24, 24)).astype(np.float32)
    result = napari_mpi.denoise(image, channel_axis=2, **FEW)
    assert result.shape == image.shape
    assert prepare(image.shape, image.dtype, channel_axis=2, **FEW).layout.n_planes == 12


# -- types ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "dtype,phrase",
    [(bool, "boolean (a mask?)"), (np.complex64, "complex"), (np.complex128, "complex"), (object, "object"),
     ("U3", "text"), ("datetime64[s]", "date-time")],
)
def test_bool_complex_object_and_other_dtypes_are_refused(dtype, phrase):
    image = np.zeros((40, 40), dtype=dtype)
    refuses(image, ValueError, [phrase, "integer or float pixels"])


@pytest.mark.parametrize("thing", [None, "cells.tif", 3.5, {"data": 1}])
def test_a_non_array_is_a_type_error(thing):
    refuses(thing, TypeError, ["needs an image array", type(thing).__name__])


def test_nested_lists_work_like_arrays_and_ragged_ones_are_refused():
    rows = np.random.default_rng(3).random((24, 24)).tolist()
    np.testing.assert_array_equal(napari_mpi.denoise(rows, **FEW), napari_mpi.denoise(np.array(rows), **FEW))
    refuses([[1.0] * 24, [1.0] * 23], ValueError, ["nested lists", "different lengths"])


# -- out of memory (simulated: CI has no GPU) -----------------------------------------------


def limit_memory(monkeypatch, max_pixels: int | None, error: Exception | None = None, calls: list | None = None):
    """Make the fill fail like a device without enough free memory on planes or tiles above
    ``max_pixels`` (None: on all); smaller ones run for real."""
    real = tiles_module.iterative_fill
    error = error or torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")

    def fill(image, *args, **kwargs):
        if calls is not None:
            calls.append(tuple(image.shape[-2:]))
        if max_pixels is None or image.shape[-2] * image.shape[-1] > max_pixels:
            raise error
        return real(image, *args, **kwargs)

    monkeypatch.setattr(tiles_module, "iterative_fill", fill)  # used by tiled_fill
    monkeypatch.setattr(plane_module, "iterative_fill", fill)  # used for whole planes


def test_out_of_memory_retries_the_plane_in_tiles_with_the_same_quality(monkeypatch):
    clean = clean_fluorescence((160, 160), seed=0)
    image = noisy_fluorescence(clean, seed=1)
    reference = expected_counts(clean).astype(np.float64)
    data_range = float(reference.max() - reference.min())
    whole = napari_mpi.denoise(image, iterations=20, weights="random")
    calls: list = []
    limit_memory(monkeypatch, 128 * 128, calls=calls)
    events = []
    with pytest.warns(DenoiseWarning, match=r"ran out of memory on a 160x160 plane .* 4 overlapping tiles of 128x128"):
        tiled = napari_mpi.denoise(image, iterations=20, weights="random", progress=events.append)
    assert calls[0] == (160, 160) and calls[1:] == [(128, 128)] * 4
    assert tiled.shape == image.shape and np.isfinite(tiled).all()
    assert {e.tiles for e in events} == {4} and len(events) == 4 * (20 + 20)  # each tile's steps and predictions
    iterations = [e.iteration for e in events]
    assert iterations == sorted(iterations) and iterations[0] == 0 and iterations[-1] == 40 == events[-1].iterations
    assert iterations.count(40) == 1 and events[-1].fraction == 1.0  # "plane done" exactly once
    assert events[len(events) // 2].estimate().shape == image.shape  # the live view shows the whole plane
    # as good as the whole plane at once (no visible seams would cost PSNR)
    assert psnr(tiled, reference, data_range) > psnr(image, reference, data_range) + 2.5
    assert psnr(tiled, reference, data_range) > psnr(whole, reference, data_range) - 0.5


def test_out_of_memory_in_the_middle_of_a_plane_starts_it_again_in_tiles(monkeypatch):
    real = tiles_module.iterative_fill
    failed = []

    def fill_that_fails_once(image, config, *args, **kwargs):
        for step in real(image, config, *args, **kwargs):
            if step.iteration == 2 and not failed:
                failed.append(tuple(image.shape))
                raise torch.OutOfMemoryError("CUDA out of memory.")
            yield step

    monkeypatch.setattr(plane_module, "iterative_fill", fill_that_fails_once)
    events = []
    image = noisy((2, 160, 160))
    with pytest.warns(DenoiseWarning, match="4 overlapping tiles"):
        result = napari_mpi.denoise(image, iterations=2, weights="random", progress=events.append)
    assert failed == [(1, 160, 160)] and np.isfinite(result).all()
    first_plane = [(e.iteration, e.tiles) for e in events if e.plane == 0]
    assert first_plane[:2] == [(1, 1), (0, 4)]  # iteration 1 whole; then the tiles from the start
    assert {e.tiles for e in events if e.plane == 1} == {1}  # the next plane tries the whole plane again


def test_a_cpu_plane_bigger_than_the_memory_available_is_tiled_before_it_starts(monkeypatch):
    # what a 160x160 fp32 fill needs, and what 128x128 tiles need: give it room for tiles only
    whole_need, tile_need = (devices.fill_memory(side, side, "fp32") for side in (160, 128))
    available = int((tile_need + whole_need) / 2 / devices.CPU_MEMORY_SHARE)
    monkeypatch.setattr(plane_module, "available_memory", lambda: available)
    calls: list = []
    limit_memory(monkeypatch, 10**9, calls=calls)  # counts the fills; never fails
    events = []
    image = noisy((2, 160, 160))
    warning = r"160x160 plane at once would take about .* GiB .* 4 overlapping tiles of 128x128"
    with pytest.warns(DenoiseWarning, match=warning) as caught:
        result = napari_mpi.denoise(image, iterations=3, weights="random", precision="fp32", progress=events.append)
    assert len([w for w in caught if issubclass(w.category, DenoiseWarning)]) == 1  # once per run, not per plane
    assert calls == [(128, 128)] * 8  # the whole planes were never tried
    assert {e.tiles for e in events} == {4} and np.isfinite(result).all()


def test_tiled_planes_say_they_cannot_reuse_the_network(monkeypatch):
    whole_need, tile_need = (devices.fill_memory(side, side, "fp32") for side in (160, 128))
    monkeypatch.setattr(plane_module, "available_memory",
                        lambda: int((tile_need + whole_need) / 2 / devices.CPU_MEMORY_SHARE))
    events = []
    with pytest.warns(DenoiseWarning, match="tiled planes cannot reuse the network .* each runs its full fill"):
        napari_mpi.denoise(noisy((2, 160, 160)), iterations=2, weights="random", precision="fp32", crop="none",
                           reuse_network=True, progress=events.append)
    # full fills, in tiles: 2 steps, then 2 predictions
    assert {e.plane for e in events} == {0, 1} and {e.iterations for e in events} == {4}
    assert {e.tiles for e in events} == {4}


@pytest.mark.parametrize("available", [None, 10**12], ids=["memory-unknown", "plenty"])
def test_a_cpu_plane_that_fits_or_memory_unknown_is_filled_whole(monkeypatch, available):
    monkeypatch.setattr(plane_module, "available_memory", lambda: available)
    calls: list = []
    limit_memory(monkeypatch, 10**9, calls=calls)
    with warnings.catch_warnings():
        warnings.simplefilter("error", DenoiseWarning)
        napari_mpi.denoise(noisy((160, 160)), iterations=2, weights="random")
    assert calls == [(160, 160)]


def test_cpu_memory_estimate_grows_with_the_padded_plane_and_is_lower_in_bf16():
    fill_memory = devices.fill_memory
    assert fill_memory(2048, 2048, "fp32") == 2048 * 2048 * devices.CPU_BYTES_PER_PIXEL["fp32"]
    assert fill_memory(2048, 2048, "bf16") < fill_memory(2048, 2048, "fp32")
    assert fill_memory(500, 500, "fp32") == fill_memory(512, 512, "fp32")  # padded to a multiple of 32
    # a wider network from a checkpoint needs more: the paper's 64/64 measured 5200 bytes per pixel in fp32
    assert fill_memory(2048, 2048, "fp32", {"width": 64, "skip_width": 64, "depth": 5}) == 2048 * 2048 * 5200
    available = devices.available_memory()
    assert available is None or available > 0


@pytest.mark.parametrize(
    "error,device_word",
    [(torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"), "CPU"),
     (RuntimeError("[enforce fail at alloc_cpu.cpp:117] DefaultCPUAllocator: can't allocate memory"), "CPU"),
     (MemoryError(), "CPU")],
    ids=["cuda-oom", "cpu-allocator", "numpy-memoryerror"],
)
def test_out_of_memory_even_in_the_smallest_tiles_is_a_clear_memory_error(monkeypatch, error, device_word):
    calls: list = []
    limit_memory(monkeypatch, None, error, calls)
    image = noisy((300, 300))
    with pytest.warns(DenoiseWarning):
        message = refuses(image, MemoryError, [f"{device_word} ran out of memory on a 300x300 plane",
                                               "even in tiles of 128x128 pixels", "close other programs"],
                          device="cpu")
    assert calls[0] == (300, 300) and calls[-1] == (128, 128)
    assert [c for c in calls if c != calls[0]] and len(set(calls)) == 3  # 300 -> 166 -> 128, one try each
    assert "Traceback" not in message


def test_small_planes_out_of_memory_fail_at_once(monkeypatch):
    limit_memory(monkeypatch, None)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no tiles are tried: a plane of 128x128 or less cannot shrink
        refuses(noisy((48, 48)), MemoryError, ["ran out of memory on a 48x48 plane;"])


def test_other_runtime_errors_are_not_mistaken_for_memory(monkeypatch):
    limit_memory(monkeypatch, None, RuntimeError("CUDA error: device-side assert triggered"))
    with pytest.raises(RuntimeError, match="device-side assert"):
        napari_mpi.denoise(noisy(), **FEW)


def test_tiles_cover_the_plane_and_cross_fade_between_the_tiles_own_results():
    for length, tile in [(300, 128), (160, 128), (129, 128), (128, 128), (1000, 166)]:
        starts = tile_starts(length, tile, 32)
        assert starts[0] == 0 and starts[-1] + tile == length
        assert all(b - a <= tile - 32 for a, b in itertools.pairwise(starts))  # overlap of at least 32
    # a 64x80 plane in 48x48 tiles: rows start at 0 and 16, columns at 0 and 32
    image = torch.from_numpy(np.random.default_rng(4).random((1, 64, 80), dtype=np.float32))
    config = FillConfig(iterations=2, seed=5)
    steps = list(tiled_fill(image, config, None, "cpu", (48, 48), 16))
    # each tile: 2 steps, then 2 predictions; progress in whole tiles' work
    assert len(steps) == 4 * 4 and steps[-1].iteration == 4 and steps[-2].iteration == 3
    blended = steps[-1].estimate
    assert blended.shape == image.shape and torch.isfinite(blended).all()
    own = [list(iterative_fill(image[:, y:y + 48, x:x + 48], FillConfig(iterations=2, seed=5 + number), None, "cpu"))
           [-1].estimate for number, (y, x) in enumerate([(0, 0), (0, 32), (16, 0), (16, 32)])]
    # where one tile alone covers the plane, its own result exactly
    torch.testing.assert_close(blended[:, :16, :32], own[0][:, :16, :32])
    torch.testing.assert_close(blended[:, 48:, 48:], own[3][:, 32:, 16:])
    # where the first two overlap (rows 0-15, columns 32-47): a cross-fade from one to the other
    first, second = own[0][:, :16, 32:48], own[1][:, :16, :16]
    fade = blended[:, :16, 32:48]
    assert ((fade >= torch.minimum(first, second) - 1e-6) & (fade <= torch.maximum(first, second) + 1e-6)).all()
    torch.testing.assert_close(fade[..., 0], first[..., 0] * 16 / 17 + second[..., 0] / 17)


# -- the command line -----------------------------------------------------------------------

FAST = ["--iterations", "1", "--weights", "random", "-q"]


def fails_cleanly(result: subprocess.CompletedProcess, phrase: str) -> None:
    assert result.returncode == 2, (result.returncode, result.stderr[-2000:])
    lines = [line for line in result.stderr.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and phrase in lines[0] and "Traceback" not in result.stderr, result.stderr


def _stack(path):
    data = np.random.default_rng(0).integers(0, 4000, size=(3, 40, 44), dtype=np.uint16)
    tifffile.imwrite(path, data, imagej=True, metadata={"axes": "ZYX"})


def _truncated(path):
    _stack(path)
    whole = path.read_bytes()
    path.write_bytes(whole[: len(whole) * 2 // 3])  # the last plane and the ImageJ index are cut off


CLI_FAILURES = {
    "nan": (lambda p: tifffile.imwrite(p, np.where(np.eye(32) > 0, np.nan, 1.0).astype(np.float32)), "NaN or infinite"),
    "inf": (lambda p: tifffile.imwrite(p, np.where(np.eye(32) > 0, np.inf, 1.0).astype(np.float32)), "NaN or infinite"),
    "too small": (lambda p: tifffile.imwrite(p, np.ones((5, 32), np.uint16)), "too small"),
    "1 pixel wide": (lambda p: tifffile.imwrite(p, np.ones((32, 1), np.uint16)), "too small"),
    "bool": (lambda p: tifffile.imwrite(p, np.eye(32, dtype=bool)), "boolean"),
    "complex": (lambda p: tifffile.imwrite(p, np.ones((32, 32), np.complex64)), "complex"),
    "corrupt": (lambda p: p.write_bytes(b"II*\x00" + b"\x00garbage" * 20), "cannot read"),
    "empty file": (lambda p: p.write_bytes(b""), "cannot read"),
    "header only": (lambda p: (_stack(p), p.write_bytes(p.read_bytes()[:100])), "cannot read"),
}


@pytest.mark.parametrize("case", list(CLI_FAILURES))
def test_cli_bad_input_file_is_one_line_and_exit_2(tmp_path, case):
    make, phrase = CLI_FAILURES[case]
    source = tmp_path / "in.tif"
    make(source)
    before = digest(source)
    out = tmp_path / "out.tif"
    fails_cleanly(run_cli("denoise", str(source), "-o", str(out), *FAST), phrase)
    assert digest(source) == before and not out.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.tif"]  # no partial output left behind


def test_cli_missing_file_unwritable_folder_and_output_equal_to_input(tmp_path):
    source = tmp_path / "in.tif"
    _stack(source)
    before = digest(source)
    fails_cleanly(run_cli("denoise", str(tmp_path / "nope.tif"), "-o", str(tmp_path / "o.tif"), *FAST), "not found")
    fails_cleanly(run_cli("denoise", str(source), "-o", str(tmp_path / "no" / "o.tif"), *FAST), "does not exist")
    # /proc refuses new files even for root (CI runs as root, where chmod would not stop a write)
    fails_cleanly(run_cli("denoise", str(source), "-o", "/proc/o.tif", *FAST), "cannot write")
    link = tmp_path / "link.tif"
    link.symlink_to(source)
    for same in (source, link, tmp_path / "." / "in.tif"):  # the same file under other names too
        fails_cleanly(run_cli("denoise", str(source), "-o", str(same), *FAST), "equals the input")
    assert digest(source) == before


@pytest.mark.parametrize(
    "shape,axes", [((40, 44), "YX"), ((2, 1, 2, 24, 24), "TZCYX"), ((2, 1, 1, 1, 24, 24), "QTZCYX")],
    ids=["constant", "5-D", "6-D"],
)
def test_cli_constant_5d_and_6d_files(tmp_path, shape, axes):
    source = tmp_path / "in.tif"
    data = (np.full(shape, 9, np.float32) if axes == "YX"
            else np.random.default_rng(0).random(shape).astype(np.float32))
    tifffile.imwrite(source, data, metadata={"axes": axes})
    out = tmp_path / "out.tif"
    result = run_cli("denoise", str(source), "-o", str(out), *FAST)
    assert result.returncode == 0, result.stderr
    written = tifffile.imread(out)  # an ImageJ hyperstack (TZCYX) reads back without its length-1 axes
    assert written.size == np.prod(shape) and np.isfinite(written).all()
    if axes == "YX":
        np.testing.assert_array_equal(written, 9.0)


CLI_OUT_OF_MEMORY = """
import sys, torch
from importlib import import_module
def fill(*args, **kwargs):
    raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")
import_module("napari_mpi.engine.plane").iterative_fill = import_module("napari_mpi.engine.tiles").iterative_fill = fill
from napari_mpi.cli import main
sys.exit(main(sys.argv[1:]))
"""


def test_cli_out_of_memory_is_one_line(tmp_path):
    source = tmp_path / "in.tif"
    _stack(source)
    result = subprocess.run([sys.executable, "-c", CLI_OUT_OF_MEMORY, "denoise", str(source), "-o",
                             str(tmp_path / "o.tif"), *FAST], capture_output=True, text=True, timeout=300)
    fails_cleanly(result, "ran out of memory on a 40x44 plane")


@pytest.mark.parametrize("device,advice", [("cuda", "use --device cpu"), ("cpu", "close other programs")])
def test_out_of_memory_advice_is_worded_for_each_shell(device, advice):
    """The engine's advice names the API's argument; the command line and the widget say it in their own words."""
    import pickle

    from napari_mpi import cli
    from napari_mpi._widget.texts import user_message
    from napari_mpi.engine.devices import DeviceMemoryError

    error = DeviceMemoryError(f"{device.upper()} ran out of memory on a 40x44 plane", device)
    assert str(error).startswith(f"{device.upper()} ran out of memory on a 40x44 plane; ")
    assert ("device='cpu'" in str(error)) == (device == "cuda")
    line = cli.error_text(error)
    assert advice in line and "device='cpu'" not in line and line.startswith(error.what)
    widget = user_message(error, "cells", device)
    assert "device='cpu'" not in widget and "40x44" in widget
    assert ("choose device 'cpu' under Advanced" in widget) == (device == "cuda")
    again = pickle.loads(pickle.dumps(error))  # as a Dask worker sends it back
    assert isinstance(again, DeviceMemoryError) and str(again) == str(error) and again.device == error.device


# Rows fixed in the batch reader (napari_mpi.io.stores): tifffile's logged damage is refused, and
# tifffile's repeated unknown axes ("QQQYX") get distinct letters.


def test_cli_truncated_tiff_is_refused(tmp_path):
    source = tmp_path / "in.tif"
    _truncated(source)
    fails_cleanly(run_cli("denoise", str(source), "-o", str(tmp_path / "o.tif"), *FAST), "cannot read")


def test_cli_5d_tiff_without_axes_metadata(tmp_path):
    """Either denoised plane by plane (the last two axes as Y, X), or refused with a pointer to --axes."""
    source = tmp_path / "in.tif"
    tifffile.imwrite(source, np.random.default_rng(0).random((2, 1, 2, 24, 24)).astype(np.float32))
    result = run_cli("denoise", str(source), "-o", str(tmp_path / "o.tif"), *FAST)
    if result.returncode != 0:
        fails_cleanly(result, "--axes")
