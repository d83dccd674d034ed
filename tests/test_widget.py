"""The napari dock widget, headless (pytest-qt + napari's viewer fixture, under Xvfb).

Tiny images (48x48) and a handful of iterations keep every run to about a second on a CPU.
Every test waits for its worker to finish: a thread worker still running at teardown hangs pytest.
"""

from __future__ import annotations

import math
import re
import time

import numpy as np
import pytest
import torch
from napari.utils.notifications import NotificationSeverity
from qtpy.QtCore import QElapsedTimer, QTimer

from napari_mpi._widget import MPIDenoiseWidget
from napari_mpi._widget import run as run_module
from napari_mpi._widget.run import denoise_job
from napari_mpi._widget.texts import TIPS, format_duration, progress_text

from .widget_support import (
    RUN_TIMEOUT_MS,
    DenoiseProgress,
    _one_torch_thread,
    _settings_in_tmp,
    api_module,
    choose,
    click,
    default_start,
    item_texts,
    messages,
    noisy,
    notes,
    plane_module,
    preset_values,
    start_lr,
    viewer_widget,
    wait_finished,
)

SHARED_FIXTURES = (_one_torch_thread, _settings_in_tmp, notes, viewer_widget)  # pytest finds them here

# -- pure helpers ---------------------------------------------------------------------------


def _fake_steps(count: int, delay: float):
    plane = np.zeros((8, 8), dtype=np.float32)
    start = time.monotonic()
    for iteration in range(1, count + 1):
        time.sleep(delay)
        yield DenoiseProgress(plane=0, n_planes=1, index=(slice(None), slice(None)), iteration=iteration,
                              iterations=count, elapsed=time.monotonic() - start, _plane_data=plane + iteration)
    return "result"


def test_redraws_are_throttled_but_regular():
    out = np.zeros((8, 8), dtype=np.float32)
    fast = list(denoise_job(_fake_steps(300, 0.001), out, 0.1))  # ~1000 iterations per second
    fresh = sum(flag for _, flag in fast)
    assert len(fast) == 300  # a yield (a cancellation point) after every iteration
    assert 1 <= fresh <= 8  # ~0.35 s of work: at most ~10 redraws per second
    assert fast[0][1]  # the live layer appears at the first step
    slow = list(denoise_job(_fake_steps(4, 0.12), out, 0.1))
    assert all(flag for _, flag in slow)  # slower iterations: a redraw after every one
    assert out[0, 0] == 4  # the estimate of the last fresh event went into the output
    asked = []
    adaptive = list(denoise_job(_fake_steps(5, 0.01), out, lambda: asked.append(1) or 10.0))
    assert [flag for _, flag in adaptive] == [True, False, False, False, False]  # the interval is asked each time
    assert len(asked) == 5


def test_progress_text():
    event = DenoiseProgress(plane=1, n_planes=4, index=(1,), iteration=50, iterations=200, elapsed=30.0)
    assert progress_text(event) == "plane 2/4, iteration 50/200, elapsed 0:30, ETA 1:06"
    assert format_duration(3725) == "1:02:05"
    assert format_duration(float("inf")) == "?"


def test_tooltips_give_advice_and_point_to_the_benchmarks_not_figures():
    for name, tip in TIPS.items():
        assert not re.search(r"dB|\d(\.\d+)?x (faster|slower)|\d s\b|%", tip), name  # no measurements
        assert "session" not in tip.lower() and "issue" not in tip.lower(), name  # no development history
    assert "0.8-0.95" in TIPS["mask_ratio"] and "streaky" in TIPS["mask_ratio"]  # when to change it
    pointing = ("preset", "mask_ratio", "reuse", "refine", "crop", "threads")
    assert all("docs/benchmarks.md" in TIPS[name] for name in pointing)


# -- the widget -----------------------------------------------------------------------------


def test_opens_through_manifest_and_in_layers_filter_menu(viewer_widget):
    from npe2 import PluginManifest

    viewer, widget = viewer_widget
    assert isinstance(widget, MPIDenoiseWidget)
    manifest = PluginManifest.from_distribution("napari-mpi")
    filter_menu = manifest.contributions.menus["napari/layers/filter"]
    assert [item.command for item in filter_menu] == ["napari-mpi.denoise_widget"]
    # presets fill in beta and iterations (fewer from the shipped pre-trained network, which gray images at
    # ordinary mask ratios start from); editing them switches to Custom
    assert widget.form.preset.value == "Fast"
    start = default_start(1, "pixel", widget.form.mask_ratio.value)
    assert (widget.form.beta.value, widget.form.iterations.value) == (0.9, preset_values("fast", start)[1])
    widget.form.mask_ratio.value = 0.9  # no shipped checkpoint serves it: a random start, the paper's 200
    assert (widget.form.preset.value, widget.form.iterations.value) == ("Fast", 200)
    widget.form.preset.value = "Quality"
    assert (widget.form.beta.value, widget.form.iterations.value) == (0.99, 1000)
    widget.form.mask_ratio.value = 0.3
    assert (widget.form.preset.value, widget.form.beta.value, widget.form.iterations.value) == (
        "Quality", *preset_values("quality", start))
    widget.form.iterations.value = 300
    assert widget.form.preset.value == "Custom"
    assert not widget.form.advanced.native.isVisibleTo(widget)  # the advanced section starts collapsed
    widget.form.advanced_toggle.value = True
    assert not widget.form.advanced.native.isHidden()
    widget.form.advanced_toggle.value = False
    assert widget.form.advanced.native.isHidden()
    devices = item_texts(widget.form.device)
    assert devices[:2] == ["auto", "cpu"] and ("cuda" in devices) == torch.cuda.is_available()
    form = widget.form
    for control in (form.layer, form.preset, form.mask_ratio, form.beta, form.iterations,
                    form.lr, form.seed, form.device, form.channel_axis, form.run_button):
        assert control.tooltip and control.native.toolTip() == control.tooltip


def test_run_updates_the_output_live_and_keeps_the_layer_geometry(viewer_widget, qtbot, notes, monkeypatch):
    # redraws slow down on a busy CPU (REDRAW_BUDGET); cap the interval so that this short run sees several
    monkeypatch.setattr(run_module, "MAX_REDRAW_INTERVAL", 0.3)
    viewer, widget = viewer_widget
    data = noisy()
    original = data.copy()
    source = viewer.add_image(data, name="cells", scale=(0.5, 0.25), translate=(3.0, 4.0),
                              axis_labels=("y", "x"), units=("um", "um"), contrast_limits=(95, 140))
    assert widget.chosen_layer() is source
    widget.form.iterations.value = 20

    updates: list[np.ndarray] = []
    stalls = []
    clock = QElapsedTimer()
    probe = QTimer()
    probe.setInterval(10)

    def tick():
        stalls.append(clock.restart())

    probe.timeout.connect(tick)

    def on_inserted(event):
        layer = event.value
        layer.events.set_data.connect(lambda *_: updates.append(np.array(layer.data)))

    viewer.layers.events.inserted.connect(on_inserted)
    clock.start()
    probe.start()
    click(qtbot, widget.form.run_button)
    run = widget._run
    assert run is not None and widget.form.run_button.text == "Cancel"
    assert not widget.form.iterations.enabled  # parameters are locked while running
    wait_finished(qtbot, run)
    probe.stop()

    assert run.state == "done"
    assert run.redraws >= 2  # at least two intermediate updates of the output layer
    assert len(updates) >= 3  # the first step, later steps, the final refresh
    assert not np.array_equal(updates[0], updates[-1])  # the live estimate changed
    out = viewer.layers["cells denoised"]
    assert out.data.shape == data.shape and out.data.dtype == np.float32
    np.testing.assert_allclose(out.scale, (0.5, 0.25))
    np.testing.assert_allclose(out.translate, (3.0, 4.0))
    assert tuple(out.axis_labels) == ("y", "x")
    assert [str(u) for u in out.units] == [str(u) for u in source.units]
    assert tuple(out.contrast_limits) == (95, 140)
    meta = out.metadata
    assert meta["status"] == "complete" and meta["iterations"] == 20 and meta["preset"] == "custom"
    assert meta["napari_mpi_version"] and meta["input_layer"] == "cells" and meta["mask_ratio"] == 0.3
    np.testing.assert_array_equal(source.data, original)  # the input is never modified
    assert widget.form.run_button.text == "Denoise" and widget.form.run_button.enabled
    assert widget.form.status.value.startswith("Done")
    assert not messages(notes())
    # napari stayed responsive: the GUI thread never stalled long (generous bound: shared CPU)
    assert max(stalls) < 2000, f"longest event-loop stall {max(stalls)} ms"


def test_cancel_stops_within_an_iteration_and_keeps_the_partial_result(viewer_widget, qtbot, notes, monkeypatch):
    freed = []
    monkeypatch.setattr(api_module, "free_device_memory", freed.append)
    viewer, widget = viewer_widget
    viewer.add_image(noisy(), name="cells")
    widget.form.iterations.value = 5000
    click(qtbot, widget.form.run_button)
    run = widget._run
    qtbot.waitUntil(lambda: run.redraws >= 2, timeout=RUN_TIMEOUT_MS)
    click(qtbot, widget.form.run_button)  # the button now says Cancel
    assert widget.form.run_button.text == "Cancelling..."
    t0 = time.monotonic()
    wait_finished(qtbot, run)
    assert time.monotonic() - t0 < 10  # one iteration of a 48x48 plane is ~0.1 s
    assert run.state == "cancelled"
    partial = viewer.layers["cells denoised (partial)"]
    assert partial.metadata["status"] == "partial"
    assert 0 < partial.metadata["stopped_at"]["iteration"] < 5000
    assert np.abs(partial.data).sum() > 0  # what was computed is kept
    assert run.job.gi_frame is None  # the engine's generator (network, optimiser) was released
    assert freed == [run.plan.device] and run.latest is None  # then the device's cache was emptied
    assert widget.form.run_button.text == "Denoise" and widget.form.run_button.enabled
    assert widget.form.status.value.startswith("Cancelled")
    assert not messages(notes())


def test_stack_is_denoised_plane_by_plane_and_keeps_shape_and_scale(viewer_widget, qtbot, monkeypatch):
    monkeypatch.setattr(run_module, "REDRAW_INTERVAL", 0.0)  # a redraw after every iteration
    monkeypatch.setattr(run_module, "REDRAW_BUDGET", 1e9)  # however slow the redraws are
    viewer, widget = viewer_widget
    stack = np.stack([noisy(seed=s) for s in range(3)])
    viewer.add_image(stack, name="zstack", scale=(2.0, 0.5, 0.5), axis_labels=("z", "y", "x"))
    viewer.dims.set_point(0, 0)
    widget.form.iterations.value = 2
    run = widget.start()
    wait_finished(qtbot, run)
    out = viewer.layers["zstack denoised"]
    assert out.data.shape == stack.shape
    np.testing.assert_allclose(out.scale, (2.0, 0.5, 0.5))
    assert out.metadata["planes"] == 3 and out.metadata["status"] == "complete"
    assert all(np.ptp(plane) > 0 for plane in out.data)  # every plane was written
    assert viewer.dims.current_step[0] == 2  # the viewer followed the plane being denoised


def test_rgb_layer_is_denoised_as_colour(viewer_widget, qtbot):
    viewer, widget = viewer_widget
    rng = np.random.default_rng(0)
    photo = rng.integers(0, 256, size=(48, 48, 3), dtype=np.uint8)
    viewer.add_image(photo, name="photo", rgb=True)
    assert widget.form.layer.current_choice == "photo (RGB)"
    assert widget.parameters()["rgb"] is True
    assert len(widget.form.channel_axis) == 1  # only "none": the colour axis is not a channel axis
    # colour starts from the gray weights spread over the channels, which still learn colour: its own lengths
    start = default_start(3, "channel", widget.form.mask_ratio.value)
    assert (widget.form.beta.value, widget.form.iterations.value) == preset_values("fast", start) == (0.95, 300)
    widget.form.preset.value = "Quality"
    assert (widget.form.beta.value, widget.form.iterations.value) == preset_values("quality", start)
    assert math.isclose(widget.form.lr.value, start_lr(start))  # 0.004 from the gray weights as colour
    viewer.add_image(noisy(seed=1), name="gray")  # another start: the learning rate follows it...
    choose(widget.form.layer, "gray")
    assert math.isclose(widget.form.lr.value, start_lr(default_start(1, "pixel", widget.form.mask_ratio.value)))
    widget.form.lr.value = 0.001  # ...until the user sets their own
    choose(widget.form.layer, "photo (RGB)")
    assert math.isclose(widget.form.lr.value, 0.001)
    widget.form.iterations.value = 2
    run = widget.start()
    wait_finished(qtbot, run)
    out = viewer.layers["photo denoised"]
    assert out.rgb and out.data.shape == photo.shape
    assert out.metadata["rgb"] is True and out.metadata["mask_mode"] == "channel"
    if start == "gray_as_colour":
        assert out.metadata["weights"] == "gray-pixel.pt (gray weights for colour)"


def test_channel_axis_is_offered_and_used(viewer_widget, qtbot):
    viewer, widget = viewer_widget
    cells = np.stack([noisy(seed=1), noisy(seed=2)], axis=0)  # (C, Y, X)
    viewer.add_image(cells, name="two channels")
    assert item_texts(widget.form.channel_axis)[0] == "none"
    widget.form.channel_axis.value = 0
    assert widget.parameters()["channel_axis"] == 0
    widget.form.iterations.value = 1
    run = widget.start()
    wait_finished(qtbot, run)
    out = viewer.layers["two channels denoised"]
    assert out.data.shape == cells.shape and out.metadata["channel_axis"] == 0


def test_user_errors_become_notifications(viewer_widget, qtbot, notes, monkeypatch):
    viewer, widget = viewer_widget
    # no layer at all
    assert widget.start() is None
    assert any("image layer" in m for m in messages(notes(), NotificationSeverity.WARNING))
    # too small: reported before any thread starts
    viewer.add_image(np.ones((4, 4), dtype=np.float32), name="tiny")
    assert widget.start() is None
    assert any("too small" in m and "'tiny'" in m for m in messages(notes()))
    # NaN: reported from the worker, as a notification, not an exception
    bad = noisy().astype(np.float32)
    bad[3, 3] = np.nan
    viewer.add_image(bad, name="holes")
    widget.form.iterations.value = 2
    run = widget.start()
    wait_finished(qtbot, run)
    assert run.state == "failed"
    assert any("NaN" in m and "'holes'" in m for m in messages(notes()))
    # out of GPU memory inside the engine
    def oom(*args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        yield  # pragma: no cover

    monkeypatch.setattr(plane_module, "iterative_fill", oom)
    viewer.add_image(noisy(), name="big")
    run = widget.start()
    wait_finished(qtbot, run)
    assert any("ran out of memory" in m and "'big'" in m for m in messages(notes()))
    monkeypatch.undo()
    # and the widget works again afterwards
    assert widget.form.run_button.text == "Denoise" and widget.form.run_button.enabled
    widget.form.iterations.value = 1
    run = widget.start()
    wait_finished(qtbot, run)
    assert run.state == "done" and "big denoised" in viewer.layers


@pytest.mark.parametrize("which", ["input", "output"])
def test_layer_removed_mid_run_stops_with_a_warning(viewer_widget, qtbot, notes, which):
    viewer, widget = viewer_widget
    viewer.add_image(noisy(), name="cells")
    widget.form.iterations.value = 5000
    run = widget.start()
    qtbot.waitUntil(lambda: run.redraws >= 1, timeout=RUN_TIMEOUT_MS)
    viewer.layers.remove("cells" if which == "input" else "cells denoised")
    wait_finished(qtbot, run)
    assert run.state == "stopped"
    warnings = messages(notes(), NotificationSeverity.WARNING)
    assert any("was removed" in m and "stopped" in m for m in warnings)
    assert not messages(notes())
    if which == "input":
        assert viewer.layers["cells denoised (partial)"].metadata["status"] == "partial"
    assert widget.form.run_button.text == "Denoise"


def test_closing_the_dock_mid_run_cancels_it(viewer_widget, qtbot, notes):
    viewer, widget = viewer_widget
    viewer.add_image(noisy(), name="cells")
    widget.form.iterations.value = 5000
    run = widget.start()
    qtbot.waitUntil(lambda: run.redraws >= 1, timeout=RUN_TIMEOUT_MS)
    viewer.window.remove_dock_widget(widget)  # what the dock's close button does
    wait_finished(qtbot, run)
    assert run.state == "cancelled"
    assert any("panel was closed" in m for m in messages(notes(), NotificationSeverity.WARNING))
    assert "cells denoised (partial)" in viewer.layers


def test_closing_the_viewer_mid_run_stops_the_worker(make_napari_viewer, qtbot):
    viewer = make_napari_viewer()
    _, widget = viewer.window.add_plugin_dock_widget("napari-mpi", "MPI denoise")
    viewer.add_image(noisy(), name="cells")
    widget.form.iterations.value = 5000
    run = widget.start()
    qtbot.waitUntil(lambda: run.redraws >= 1, timeout=RUN_TIMEOUT_MS)
    viewer.close()
    wait_finished(qtbot, run)
    assert run.state in ("stopped", "cancelled")
    assert run.job.gi_frame is None


def test_chooser_follows_layers(make_napari_viewer, qtbot):
    viewer = make_napari_viewer()
    viewer.add_image(noisy(), name="a")
    viewer.add_image(noisy(seed=3), name="b")
    viewer.add_labels(np.zeros((48, 48), dtype=np.uint8), name="labels")
    viewer.add_points([[1, 1]], name="points")
    viewer.layers.selection.active = viewer.layers["a"]
    _, widget = viewer.window.add_plugin_dock_widget("napari-mpi", "MPI denoise")

    def names():
        return item_texts(widget.form.layer)

    assert sorted(names()) == ["a", "b"]  # other layer types are not offered
    assert widget.form.layer.current_choice == "a"  # defaults to the selected layer
    viewer.add_image(noisy(seed=5), name="c")  # napari selects a new layer: the chooser follows
    assert "c" in names() and widget.form.layer.current_choice == "c"
    viewer.layers["c"].name = "renamed"
    assert "renamed" in names() and "c" not in names()
    assert widget.form.layer.current_choice == "renamed"
    viewer.layers.remove("renamed")
    assert sorted(names()) == ["a", "b"]
    assert widget.chosen_layer() is not None
    viewer.layers.selection.active = viewer.layers["b"]
    assert widget.form.layer.current_choice == "b"
    choose(widget.form.layer, "a")
    widget.form.container.reset_choices()  # what magicgui does when the form is docked or undocked
    assert sorted(names()) == ["a", "b"] and widget.chosen_layer() is viewer.layers["a"]
    viewer.layers.clear()
    assert names() == [] and not widget.form.run_button.enabled


def test_auto_preset_chooses_beta_itself_and_reports_its_decision(viewer_widget, qtbot, notes):
    viewer, widget = viewer_widget
    viewer.add_image(noisy((64, 64)), name="cells")
    widget.form.preset.value = "Auto"
    assert not widget.form.beta.enabled  # Auto picks its running mean by held-out error
    widget.form.iterations.value = 60  # the cap; editing it keeps Auto
    assert widget.form.preset.value == "Auto"
    params = widget.parameters()
    assert params["preset"] == "auto" and params["beta"] is None and params["iterations"] == 60
    run = widget.start()
    wait_finished(qtbot, run)
    assert run.state == "done"
    decision = viewer.layers["cells denoised"].metadata["auto"]["0"]
    assert decision["iterations"] <= 60 and decision["beta"] in (0.8, 0.9, 0.95, 0.98, 0.99)
    assert "Auto " in widget.form.status.value and "held-out error" in widget.form.status.value
    assert not widget.form.beta.enabled  # still Auto after the run re-enabled the controls
    widget.form.preset.value = "Fast"
    assert widget.form.beta.enabled


def test_stacks_reuse_the_network_by_default_and_the_run_says_how_each_plane_went(viewer_widget, qtbot, notes):
    viewer, widget = viewer_widget
    viewer.add_image(np.stack([noisy(seed=2 * z) for z in range(3)]), name="stack")
    widget.form.iterations.value = 30
    assert widget.form.reuse.value == "auto" and widget.parameters()["reuse_network"] == "auto"
    run = widget.start()
    assert not widget.form.reuse.enabled  # no changes while it runs
    wait_finished(qtbot, run)
    assert run.state == "done" and widget.form.reuse.enabled
    layer = viewer.layers["stack denoised"]
    assert layer.metadata["reuse_network"] == "auto" and np.isfinite(layer.data).all()
    planes = layer.metadata["planes_filled"]
    assert [p["plane"] for p in planes] == [0, 1, 2] and planes[0]["start"] == "weights"
    assert "of 3 planes" in widget.form.status.value  # what the planes did, in the status line
    assert layer.metadata["refine"] == "wiener"  # the Wiener refinement is on by default
    widget.form.refine.value = False
    assert widget.parameters()["refine"] == "none"
    assert layer.metadata["crop"] == 0  # small planes train whole
    assert widget.parameters()["crop"] == "auto"  # windows of big planes on the CPU, by default
    widget.form.crop.value = False
    assert widget.parameters()["crop"] == "none"
    for value in (True, False):
        widget.form.reuse.value = value
        assert widget.parameters()["reuse_network"] is value
    widget.form.preset.value = "Auto"  # Auto decides per plane: the choice is off for it
    assert not widget.form.reuse.enabled and widget.parameters()["reuse_network"] is False
    widget.form.preset.value = "Fast"
    widget.form.reuse.value = True
    assert widget.form.reuse.enabled and widget.parameters()["reuse_network"] is True


def test_lazy_layer_is_denoised_plane_by_plane_into_a_disk_backed_output(viewer_widget, qtbot, notes):
    import threading

    import dask
    import dask.array as da
    from dask.callbacks import Callback

    import napari_mpi

    viewer, widget = viewer_widget
    stack = np.stack([noisy(seed=s) for s in range(3)])
    computes: list[list[int]] = []  # per dask compute: the planes it loaded
    current = threading.local()

    class Spy(Callback):
        def _start(self, dsk):
            current.planes = []
            computes.append(current.planes)

    def load(block, block_info=None):
        current.planes.append(block_info[0]["chunk-location"][0])
        return block

    lazy = da.from_array(stack, chunks=(1, 48, 48)).map_blocks(load, dtype=stack.dtype)
    with dask.config.set(scheduler="synchronous"), Spy():  # tasks run in the computing thread
        viewer.add_image(lazy, name="movie")
        widget.form.iterations.value = 3
        computes.clear()
        run = widget.start()
        wait_finished(qtbot, run)
    assert run.state == "done"
    out = viewer.layers["movie denoised"].data
    assert isinstance(out, np.memmap)  # only the planes being written or viewed occupy memory
    loaded = sorted(p for planes in computes for p in planes)
    assert set(loaded) == {0, 1, 2} and max(len(planes) for planes in computes) == 1  # one plane per read
    np.testing.assert_array_equal(np.asarray(out), napari_mpi.denoise(stack, iterations=3))


def test_a_big_plane_trains_on_windows_and_reports_their_steps(viewer_widget, qtbot, notes, monkeypatch):
    viewer, widget = viewer_widget
    shown = []  # (iteration, iterations) of every status line
    text = run_module.progress_text
    monkeypatch.setattr(run_module, "progress_text", lambda event: shown.append(
        (event.iteration, event.iterations)) or text(event))
    viewer.add_image(noisy((512, 512)), name="frame")
    widget.form.iterations.value = 2
    widget.form.refine.value = False
    widget.form.device.value = "cpu"
    run = widget.start()
    # 2 whole-plane steps' pixels in 256² windows, then as many predictions
    assert run.plan.crop == 256 and run.plan.steps_per_plane == 16
    assert "2 iterations, then 2 predictions (as 16 steps on 256x256 windows)" in widget.form.status.value
    wait_finished(qtbot, run)
    assert run.state == "done" and shown and {total for _, total in shown} == {16} and run.pbar.total == 16
    layer = viewer.layers["frame denoised"]
    assert layer.metadata["crop"] == 256 and np.isfinite(layer.data).all()
    assert not messages(notes())
