"""The widget's bad-input matrix (docs/robustness.md): every case ends in one clear napari notification
(never napari's raw-traceback error), leaves the input layer's data untouched, leaves no thread worker
running, and the widget denoises a small image successfully afterwards.

Small images (24x24 to 160x160) and 1-3 iterations keep each run to about a second on a CPU.
"""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch
from napari.layers import Image
from napari.utils.notifications import ErrorNotification, NotificationSeverity

from napari_mpi._widget import MPIDenoiseWidget

from .widget_support import (
    RUN_TIMEOUT_MS,
    _one_torch_thread,
    _settings_in_tmp,
    click,
    messages,
    noisy,
    notes,
    plane_module,
    tiles_module,
    viewer_widget,
)
from .widget_support import wait_finished as wait_for_run

SHARED_FIXTURES = (_one_torch_thread, _settings_in_tmp, notes, viewer_widget)  # pytest finds them here

LONG = 5000  # iterations of a run that a test stops part-way


def raw_errors(records) -> list:
    """napari's own error notifications (exception type, message and a traceback button)."""
    return [n for n in records if isinstance(n, ErrorNotification)]


def wait_finished(qtbot, run) -> None:
    """As the shared one, and the run let go of everything."""
    wait_for_run(qtbot, run)
    assert_no_thread(run)


def assert_no_thread(run) -> None:
    """The worker ended and the run let go of the engine (network, optimiser, device memory)."""
    assert run.finished
    assert not run.worker.is_running
    assert run.job.gi_frame is None  # the engine's generator was closed
    assert run.latest is None


def assert_usable(viewer, widget, qtbot, notes_before: int | None = None) -> None:
    """The widget is idle and denoises a small image successfully."""
    assert widget._run is None
    assert widget.form.run_button.text == "Denoise"
    for control in (widget.form.layer, widget.form.iterations, widget.form.mask_ratio, widget.form.device):
        assert control.enabled
    layer = viewer.add_image(noisy((24, 24), seed=7), name="check")
    viewer.layers.selection.active = layer
    assert widget.chosen_layer() is layer
    widget.form.iterations.value = 1
    run = widget.start()
    assert run is not None
    wait_finished(qtbot, run)
    assert run.state == "done"
    result = viewer.layers["check denoised"]
    assert result.metadata["status"] == "complete" and np.isfinite(result.data).all()
    assert widget.form.status.value.startswith("Done")


# -- bad values and shapes ------------------------------------------------------------------


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_nan_or_inf_layer_is_one_clear_error(viewer_widget, qtbot, notes, bad):
    viewer, widget = viewer_widget
    data = noisy().astype(np.float32)
    data[5, 7] = bad
    original = data.copy()
    viewer.add_image(data, name="holes")
    widget.form.iterations.value = 2
    run = widget.start()
    assert run is not None  # the values are checked in the worker, not on the GUI thread
    wait_finished(qtbot, run)
    assert run.state == "failed"
    errors = messages(notes())
    assert len(errors) == 1, errors
    assert "'holes'" in errors[0] and "NaN or infinite" in errors[0] and "replace them" in errors[0]
    assert not raw_errors(notes())  # no exception notification with a traceback button
    assert "holes denoised" not in viewer.layers and "holes denoised (partial)" not in viewer.layers
    np.testing.assert_array_equal(viewer.layers["holes"].data, original)
    assert widget.form.status.value.startswith("Failed")
    assert_usable(viewer, widget, qtbot)


def test_constant_layer_is_its_own_result(viewer_widget, qtbot, notes):
    viewer, widget = viewer_widget
    flat = np.full((32, 40), 120, dtype=np.uint16)
    viewer.add_image(flat, name="flat")
    widget.form.iterations.value = 3
    run = widget.start()
    wait_finished(qtbot, run)
    assert run.state == "done"
    out = viewer.layers["flat denoised"]
    assert out.data.dtype == np.float32
    np.testing.assert_array_equal(out.data, 120.0)
    np.testing.assert_array_equal(viewer.layers["flat"].data, flat)
    assert not messages(notes()) and not raw_errors(notes())
    assert_usable(viewer, widget, qtbot)


@pytest.mark.parametrize(
    "shape,phrase",
    [((7, 40), "7x40 pixels are too small"), ((40, 1), "40x1 pixels are too small"),
     ((1, 40), "1x40 pixels are too small"), ((3, 40, 1), "40x1 pixels are too small")],
)
def test_too_small_or_one_pixel_wide_layer_is_refused_before_any_thread(viewer_widget, qtbot, notes, shape, phrase):
    viewer, widget = viewer_widget
    data = np.arange(np.prod(shape), dtype=np.float32).reshape(shape)
    viewer.add_image(data, name="thin")
    assert widget.start() is None
    assert widget._run is None  # no worker was created
    errors = messages(notes())
    assert len(errors) == 1 and "'thin'" in errors[0] and phrase in errors[0], errors
    assert "at least 8 pixels" in errors[0]
    np.testing.assert_array_equal(viewer.layers["thin"].data, data)
    assert_usable(viewer, widget, qtbot)


@pytest.mark.parametrize("shape", [(2, 1, 2, 24, 24), (2, 1, 1, 2, 24, 24)], ids=["5-D", "6-D"])
def test_5d_and_6d_layers_are_denoised_plane_by_plane(viewer_widget, qtbot, notes, shape):
    viewer, widget = viewer_widget
    rng = np.random.default_rng(0)
    data = (100 + 20 * rng.standard_normal(shape)).astype(np.float32)
    original = data.copy()
    viewer.add_image(data, name="nd")
    widget.form.iterations.value = 1
    run = widget.start()
    wait_finished(qtbot, run)
    assert run.state == "done"
    out = viewer.layers["nd denoised"]
    assert out.data.shape == shape and out.metadata["planes"] == int(np.prod(shape[:-2]))
    planes = out.data.reshape(-1, *shape[-2:])
    assert all(np.ptp(plane) > 0 for plane in planes)  # every plane was written
    np.testing.assert_array_equal(viewer.layers["nd"].data, original)
    assert not messages(notes()) and not raw_errors(notes())
    assert_usable(viewer, widget, qtbot)


def test_bool_layer_is_refused_with_a_reason(viewer_widget, qtbot, notes):
    viewer, widget = viewer_widget
    mask = noisy() > 110
    viewer.add_image(mask, name="mask")
    assert widget.start() is None and widget._run is None
    errors = messages(notes())
    assert len(errors) == 1 and "'mask'" in errors[0] and "boolean" in errors[0] and "integer or float" in errors[0]
    np.testing.assert_array_equal(viewer.layers["mask"].data, noisy() > 110)
    assert_usable(viewer, widget, qtbot)


@pytest.mark.filterwarnings("ignore::numpy.exceptions.ComplexWarning")
@pytest.mark.parametrize("dtype,shape", [(np.complex64, (24, 24)), (object, (24, 24)), (np.float32, (0, 24, 24))],
                         ids=["complex", "object", "empty"])
def test_complex_object_and_empty_layers_cannot_reach_the_widget(dtype, shape):
    """napari itself refuses such image layers, so the widget never sees them (the API refuses them
    with a ValueError: tests/test_robustness.py). If napari starts accepting them, this fails."""
    with pytest.raises((NotImplementedError, ValueError)):
        Image(np.zeros(shape, dtype=dtype))


def test_labels_and_points_layers_are_not_offered(viewer_widget, qtbot, notes):
    viewer, widget = viewer_widget
    labels = viewer.add_labels(np.zeros((24, 24), dtype=np.uint8), name="labels")
    viewer.add_points([[1, 1]], name="points")
    assert len(widget.form.layer) == 0 and widget.chosen_layer() is None
    assert not widget.form.run_button.enabled
    assert widget.start() is None and widget._run is None
    assert any("image layer" in m for m in messages(notes(), NotificationSeverity.WARNING))
    # an image next to them: choosing the labels layer in napari does not make it the input
    image = viewer.add_image(noisy((24, 24)), name="image")
    viewer.layers.selection.active = labels
    assert widget.chosen_layer() is image
    assert not messages(notes())
    assert_usable(viewer, widget, qtbot)


# -- interruptions --------------------------------------------------------------------------


def start_long_run(viewer, widget, qtbot, name="cells"):
    data = noisy()
    viewer.add_image(data, name=name)
    widget.form.iterations.value = LONG
    run = widget.start()
    qtbot.waitUntil(lambda: run.redraws >= 1, timeout=RUN_TIMEOUT_MS)
    return run, data.copy()


@pytest.mark.parametrize("which", ["input", "output"])
def test_layer_removed_mid_run(viewer_widget, qtbot, notes, which):
    viewer, widget = viewer_widget
    run, original = start_long_run(viewer, widget, qtbot)
    source = run.source
    viewer.layers.remove("cells" if which == "input" else "cells denoised")
    wait_finished(qtbot, run)
    assert run.state == "stopped"
    warnings = messages(notes(), NotificationSeverity.WARNING)
    assert len(warnings) == 1 and "was removed" in warnings[0] and "stopped" in warnings[0]
    assert not messages(notes()) and not raw_errors(notes())
    np.testing.assert_array_equal(source.data, original)  # removed or not, the input data is untouched
    assert widget.form.status.value.startswith("Stopped")
    assert_usable(viewer, widget, qtbot)


def test_cancel_mid_run_then_cancel_again_and_run_again(viewer_widget, qtbot, notes):
    viewer, widget = viewer_widget
    run, original = start_long_run(viewer, widget, qtbot)
    click(qtbot, widget.form.run_button)  # Cancel
    assert widget.form.run_button.text == "Cancelling..." and not widget.form.run_button.enabled
    widget.cancel()  # a second cancel (keyboard, script) while stopping is harmless
    assert widget.start() is None  # and so is a start while the run is stopping
    wait_finished(qtbot, run)
    assert run.state == "cancelled"
    assert viewer.layers["cells denoised (partial)"].metadata["status"] == "partial"
    np.testing.assert_array_equal(viewer.layers["cells"].data, original)
    assert not messages(notes()) and not raw_errors(notes())
    assert_usable(viewer, widget, qtbot)


def test_viewer_closed_mid_run(make_napari_viewer, qtbot, notes):
    viewer = make_napari_viewer()
    _, widget = viewer.window.add_plugin_dock_widget("napari-mpi", "MPI denoise")
    run, original = start_long_run(viewer, widget, qtbot)
    source = run.source
    viewer.close()
    wait_finished(qtbot, run)
    assert run.state in ("stopped", "cancelled")
    np.testing.assert_array_equal(source.data, original)
    assert not messages(notes()) and not raw_errors(notes())
    # the widget went with its window; a new window's widget works
    viewer2 = make_napari_viewer()
    _, widget2 = viewer2.window.add_plugin_dock_widget("napari-mpi", "MPI denoise")
    assert isinstance(widget2, MPIDenoiseWidget)
    assert_usable(viewer2, widget2, qtbot)


# -- out of memory (simulated: CI has no GPU) ---------------------------------------------


def limit_memory(monkeypatch, max_pixels: int | None, calls: list | None = None):
    """Make the fill raise torch's CUDA out-of-memory error on planes (or tiles) above ``max_pixels``
    (None: on all), as a GPU with too little free memory does; smaller ones run for real."""
    real = tiles_module.iterative_fill

    def fill(image, *args, **kwargs):
        if calls is not None:
            calls.append(tuple(image.shape[-2:]))
        if max_pixels is None or image.shape[-2] * image.shape[-1] > max_pixels:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")
        return real(image, *args, **kwargs)

    monkeypatch.setattr(tiles_module, "iterative_fill", fill)  # used by tiled_fill
    monkeypatch.setattr(plane_module, "iterative_fill", fill)  # used for whole planes


def test_out_of_memory_retries_in_tiles_and_says_so(viewer_widget, qtbot, notes, monkeypatch):
    viewer, widget = viewer_widget
    calls: list = []
    limit_memory(monkeypatch, 128 * 128, calls)
    data = noisy((160, 160))
    viewer.add_image(data, name="big")
    widget.form.iterations.value = 2
    run = widget.start()
    wait_finished(qtbot, run)
    assert run.state == "done"
    assert calls[0] == (160, 160) and set(calls[1:]) == {(128, 128)} and len(calls) == 5  # whole, then 2x2 tiles
    warnings = messages(notes(), NotificationSeverity.WARNING)
    assert len(warnings) == 1 and "ran out of memory" in warnings[0] and "4 overlapping tiles" in warnings[0]
    out = viewer.layers["big denoised"]
    assert out.metadata["status"] == "complete" and np.isfinite(out.data).all() and np.ptp(out.data) > 0
    np.testing.assert_array_equal(viewer.layers["big"].data, data)
    assert not messages(notes()) and not raw_errors(notes())
    monkeypatch.undo()
    assert_usable(viewer, widget, qtbot)


def test_out_of_memory_even_in_tiles_is_one_clear_error(viewer_widget, qtbot, notes, monkeypatch):
    viewer, widget = viewer_widget
    limit_memory(monkeypatch, None)
    data = noisy((160, 160))
    viewer.add_image(data, name="big")
    widget.form.iterations.value = 2
    run = widget.start()
    wait_finished(qtbot, run)
    assert run.state == "failed"
    errors = messages(notes())
    assert len(errors) == 1, errors
    assert "'big'" in errors[0] and "ran out of memory" in errors[0] and "even in tiles of 128x128" in errors[0]
    assert "ran out of memory (CPU ran out of memory on a 160x160 plane" in errors[0]  # the plan's device (CI: CPU)
    assert errors[0].endswith("Close other programs to free memory, or denoise a smaller crop.")  # what to do
    assert not raw_errors(notes())
    np.testing.assert_array_equal(viewer.layers["big"].data, data)
    monkeypatch.undo()
    assert_usable(viewer, widget, qtbot)


def test_an_unexpected_engine_error_is_one_sentence_not_a_traceback(viewer_widget, qtbot, notes, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("cuDNN error: CUDNN_STATUS_INTERNAL_ERROR")
        yield  # pragma: no cover

    monkeypatch.setattr(plane_module, "iterative_fill", broken)
    viewer, widget = viewer_widget
    viewer.add_image(noisy(), name="cells")
    run = widget.start()
    wait_finished(qtbot, run)
    assert run.state == "failed"
    errors = messages(notes())
    assert len(errors) == 1 and "unexpected error" in errors[0] and "CUDNN_STATUS_INTERNAL_ERROR" in errors[0]
    assert not raw_errors(notes())
    monkeypatch.undo()
    assert_usable(viewer, widget, qtbot)



# -- locked during runs, remembered across restarts -----------------------------------------


def _editable(widget) -> list[str]:
    """The parameter controls and their buttons that a user could change now."""
    form = widget.form
    return [control.name for control in form.parameters + form.actions if control.native.isEnabled()]


def test_no_parameter_is_editable_during_a_run_even_when_layers_change(viewer_widget, qtbot):
    viewer, widget = viewer_widget
    viewer.add_image(np.stack([noisy((24, 24), seed=s) for s in range(3)]), name="stack")
    widget.form.iterations.value = LONG
    assert {"preset", "mask_ratio", "beta", "iterations", "threads", "reuse", "reset_button",
            "preview_button"} <= set(_editable(widget))
    run = widget.start()
    seen: list[list[str]] = []
    run.worker.yielded.connect(lambda _: seen.append(_editable(widget)))
    qtbot.waitUntil(lambda: run.layer is not None and len(seen) >= 3, timeout=RUN_TIMEOUT_MS)
    # what used to unlock beta and the reuse box: the output layer's arrival, other layers, renames
    viewer.add_image(noisy((24, 24), seed=9), name="another")
    viewer.layers["another"].name = "renamed"
    viewer.layers.selection.active = viewer.layers["renamed"]
    qtbot.waitUntil(lambda: len(seen) >= 6, timeout=RUN_TIMEOUT_MS)
    assert _editable(widget) == [] and all(names == [] for names in seen), seen
    assert widget.form.run_button.enabled and widget.form.run_button.text == "Cancel"
    widget.form.follow.value = False  # the one box that still acts during a run: stop following the planes
    assert widget.form.follow.enabled and run.follow is False
    click(qtbot, widget.form.run_button)
    wait_finished(qtbot, run)
    assert "beta" in _editable(widget) and "reuse" in _editable(widget)  # unlocked after the run
    widget.form.preset.value = "Auto"  # Auto greys beta and reuse out, and they stay so after a run
    widget.form.iterations.value = 2
    run = widget.start()
    assert _editable(widget) == []
    wait_finished(qtbot, run)
    assert "beta" not in _editable(widget) and "reuse" not in _editable(widget) and "seed" in _editable(widget)


def test_settings_survive_a_restart_until_reset_to_defaults(make_napari_viewer, qtbot, _settings_in_tmp):
    def open_widget():
        viewer = make_napari_viewer()
        return viewer, viewer.window.add_plugin_dock_widget("napari-mpi", "MPI denoise")[1]

    viewer, first = open_widget()
    defaults = first.settings()
    form = first.form
    form.mask_ratio.value = 0.5
    form.preset.value = "Quality"
    form.lr.value, form.seed.value, form.device.value, form.threads.value = 0.001, 7, "cpu", 1
    form.refine.value, form.crop.value, form.reuse.value, form.follow.value = False, False, False, False
    form.advanced_toggle.value = True
    chosen = first.settings()
    assert _settings_in_tmp.exists()  # written as the values changed: nothing to do at closing
    first.close()
    viewer.close()

    viewer, second = open_widget()
    assert second is not first and second.settings() == chosen
    assert second.form.advanced.native.isVisibleTo(second)
    second.form.iterations.value = 77  # Custom keeps its own beta and iterations
    second.form.beta.value = 0.85
    assert second.form.preset.value == "Custom"
    chosen = second.settings()
    viewer.close()

    viewer, third = open_widget()
    assert third.settings() == chosen and third.form.iterations.value == 77
    click(qtbot, third.form.reset_button)
    assert third.settings() == {**defaults, "advanced": True}  # the open section stays open
    viewer.close()
    viewer, fourth = open_widget()
    assert fourth.settings() == {**defaults, "advanced": True}


def test_damaged_or_foreign_settings_mean_the_defaults(viewer_widget, make_napari_viewer, _settings_in_tmp):
    from napari_mpi._widget import store

    defaults = viewer_widget[1].settings()
    _settings_in_tmp.write_text("{not json")
    assert store.load() == {}
    _settings_in_tmp.write_text('{"version": 1, "values": {"seed": "seven", "threads": true, "mask_ratio": 9.0,'
                                ' "device": "tpu", "preset": "Sharpest", "iterations": 3}}')
    assert store.load() == {"mask_ratio": 9.0, "device": "tpu", "preset": "Sharpest", "iterations": 3}
    _, widget = make_napari_viewer().window.add_plugin_dock_widget("napari-mpi", "MPI denoise")
    restored = widget.settings()
    assert restored["mask_ratio"] == widget.form.mask_ratio.max  # kept within the field's range
    length = ("beta", "iterations")  # the preset's, which follow the mask ratio
    assert {k: v for k, v in restored.items() if k not in (*length, "mask_ratio")} == {
        k: v for k, v in defaults.items() if k not in (*length, "mask_ratio")}  # the rest: the defaults


def test_cpu_threads_reach_torch_only_for_the_run(viewer_widget, qtbot, monkeypatch):
    from napari_mpi._widget import run as run_module

    seen = []
    real = run_module.denoise_steps

    def counting(*args, **kwargs):  # runs in the worker thread
        seen.append(torch.get_num_threads())
        return (yield from real(*args, **kwargs))

    monkeypatch.setattr(run_module, "denoise_steps", counting)
    viewer, widget = viewer_widget
    viewer.add_image(noisy((24, 24)), name="cells")
    widget.form.iterations.value = 1
    assert widget.form.threads.value == 0 and widget.form.threads.current_choice == "auto"
    cores = max(widget.form.threads.choices)
    assert cores == (os.cpu_count() or 1)
    assert torch.get_num_threads() == 1  # this module's fixture: torch's choice here
    widget.form.threads.value = cores
    wait_finished(qtbot, widget.start())
    widget.form.threads.value = 0
    wait_finished(qtbot, widget.start())
    assert seen == [cores, 1]
    assert torch.get_num_threads() == 1  # set back after the run
