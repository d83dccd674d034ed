"""Denoising several layers from the dock widget (the Layers field), headless under Xvfb.

Tiny images (40x40), a few iterations and no Wiener refinement keep each layer's run short on a CPU. Every test
waits for the whole queue to end: a thread worker still running at teardown hangs pytest.
"""

from __future__ import annotations

import numpy as np
import pytest
from napari.utils.notifications import NotificationSeverity
from qtpy.QtCore import QTimer

from napari_mpi._widget.layers import add_output_layer
from napari_mpi._widget.queue import parameters_for, queued_layers

from .widget_support import (
    RUN_TIMEOUT_MS,
    _one_torch_thread,
    _settings_in_tmp,
    choose,
    click,
    item_texts,
    messages,
    noisy,
    notes,
    preset_values,
    viewer_widget,
    wait_finished,
)

SHARED_FIXTURES = (_one_torch_thread, _settings_in_tmp, notes, viewer_widget)  # pytest finds them here

SIDE = 40


@pytest.fixture
def queue_widget(viewer_widget, qtbot):
    """The viewer and widget; at teardown a queue still going is cancelled and waited for, its runs included."""
    viewer, widget = viewer_widget
    yield viewer, widget
    queue = widget._queue
    if queue is not None:
        queue.cancel()
        if widget._run is not None:
            widget._run.cancel()
        qtbot.waitUntil(lambda: queue.finished, timeout=RUN_TIMEOUT_MS)
    for run in queue.runs if queue is not None else ():
        wait_finished(qtbot, run)


def quick(widget, iterations: int = 2) -> None:
    """Custom iterations (every layer runs exactly these), no refinement: short runs."""
    widget.form.iterations.value = iterations
    widget.form.refine.value = False


def run_queue(qtbot, widget, scope: str):
    """Choose ``scope`` in the Layers field, click Denoise, wait for the whole queue; the queue."""
    choose(widget.form.scope, dict((value, label) for label, value in _scopes(widget))[scope])
    click(qtbot, widget.form.run_button)
    queue = widget._queue
    assert queue is not None and widget.form.run_button.text == "Cancel"
    wait_queue(qtbot, queue)
    return queue


def wait_queue(qtbot, queue) -> None:
    qtbot.waitUntil(lambda: queue.finished, timeout=RUN_TIMEOUT_MS)
    for run in queue.runs:
        wait_finished(qtbot, run)
        assert not run.worker.is_running and run.job.gi_frame is None


def _scopes(widget) -> list[tuple[str, str]]:
    return [(label, widget.form.scope.get_choice(label)) for label in item_texts(widget.form.scope)]


def on_output(viewer, name: str, action) -> None:
    """Call ``action`` once, just after napari added the layer ``name`` (a run's first redraw)."""

    def inserted(event):
        if event.value.name == name:
            viewer.layers.events.inserted.disconnect(inserted)
            QTimer.singleShot(0, action)  # once napari has finished inserting it

    viewer.layers.events.inserted.connect(inserted)


def single_run(qtbot, viewer, widget, name: str) -> np.ndarray:
    """The result of denoising the layer ``name`` alone (Layers: the chosen image) with the same settings."""
    choose(widget.form.scope, "The chosen image")
    choose(widget.form.layer, name)
    run = widget.start()
    wait_finished(qtbot, run)
    assert run.state == "done"
    return np.asarray(run.layer.data)


# -- which layers, with which parameters (no worker) ----------------------------------------------


def test_queued_layers_are_image_layers_top_first_without_napari_mpi_outputs(make_napari_viewer):
    viewer = make_napari_viewer()
    bottom = viewer.add_image(noisy((SIDE, SIDE)), name="bottom")
    top = viewer.add_image(noisy((SIDE, SIDE), seed=2), name="top")
    viewer.add_labels(np.zeros((SIDE, SIDE), dtype=np.uint8), name="labels")
    made = add_output_layer(viewer, bottom, np.zeros((SIDE, SIDE), np.float32), "bottom")  # as a run adds it
    renamed = viewer.add_image(noisy((SIDE, SIDE), seed=4), name="mine")  # added by a run, then its metadata lost
    assert queued_layers(viewer, "all") == [renamed, top, bottom]
    assert queued_layers(viewer, "all", outputs=[renamed]) == [top, bottom]
    assert made not in queued_layers(viewer, "all")
    viewer.layers.selection = {viewer.layers["labels"], bottom, made}
    assert queued_layers(viewer, "selected") == [bottom]
    viewer.layers.selection = {made}  # napari selects each new output layer
    assert queued_layers(viewer, "selected") == []


def test_each_layer_gets_the_parameters_of_what_it_starts_from(make_napari_viewer):
    viewer = make_napari_viewer()
    gray = viewer.add_image(noisy((SIDE, SIDE)), name="gray")
    photo = viewer.add_image(np.zeros((SIDE, SIDE, 3), np.uint8), name="photo", rgb=True)
    stack = viewer.add_image(np.zeros((2, SIDE, SIDE)), name="stack")
    params = dict(mask_ratio=0.3, beta=0.9, iterations=7, lr=0.5, channel_axis=0, rgb=False, seed=3)
    from napari_mpi._widget import presets

    colour = presets.start_for(True, 0.3)
    fast = parameters_for(photo, params, label="Fast", chosen=stack, lr_follows=True)
    assert (fast["beta"], fast["iterations"]) == preset_values("fast", colour) and fast["rgb"] is True
    assert fast["lr"] == round(presets.start_lr(colour), 8) and fast["channel_axis"] is None  # another ndim
    custom = parameters_for(photo, params, label="Custom", chosen=stack, lr_follows=False)
    assert (custom["beta"], custom["iterations"], custom["lr"], custom["seed"]) == (0.9, 7, 0.5, 3)
    auto = parameters_for(gray, dict(params, beta=None), label="Auto", chosen=stack, lr_follows=False)
    assert auto["iterations"] == 7 and auto["beta"] is None  # Auto's cap as the user set it
    same = viewer.add_image(np.zeros((3, SIDE, SIDE)), name="other stack")
    assert parameters_for(same, params, label="Custom", chosen=stack, lr_follows=False)["channel_axis"] == 0
    assert parameters_for(stack, params, label="Custom", chosen=stack, lr_follows=False)["channel_axis"] == 0


# -- queues of runs ----------------------------------------------------------------------------


def test_all_layers_are_denoised_each_into_its_own_output_as_alone(queue_widget, qtbot, notes, monkeypatch):
    viewer, widget = queue_widget
    viewer.add_image(noisy((SIDE, SIDE), seed=0), name="first", scale=(0.5, 0.5), translate=(2.0, 3.0))
    viewer.add_image(noisy((SIDE, SIDE + 8), seed=2), name="second", axis_labels=("y", "x"))
    quick(widget)
    queue = run_queue(qtbot, widget, "all")
    assert [o.state for o in queue.outcomes] == ["done", "done"]
    first, second = viewer.layers["first denoised"], viewer.layers["second denoised"]  # top first: second
    assert second.data.shape == (SIDE, SIDE + 8) and first.data.shape == (SIDE, SIDE)
    assert first.metadata["input_layer"] == "first" and first.metadata["status"] == "complete"
    assert second.metadata["input_layer"] == "second" and tuple(second.axis_labels) == ("y", "x")
    np.testing.assert_allclose(first.scale, (0.5, 0.5))
    np.testing.assert_allclose(first.translate, (2.0, 3.0))
    # a run's report within the queue: "layer k/n" and its share of one bar over the whole queue
    shown = []
    monkeypatch.setattr(widget.form, "show_progress", lambda text, fraction: shown.append((text, fraction)))
    queue.show_progress("plane 1/1, iteration 2/4", 0.5)
    assert shown == [("Layer 2/2 'first': plane 1/1, iteration 2/4", 0.75)]
    status = widget.form.status.value
    assert status.startswith("Done: 2 of 2 layers") and "'second denoised', 'first denoised'" in status
    assert widget.form.run_button.text == "Denoise" and widget.form.iterations.enabled and widget._queue is None
    assert not messages(notes())
    # the same result as denoising each layer alone with the same settings and seed
    np.testing.assert_array_equal(np.asarray(first.data), single_run(qtbot, viewer, widget, "first"))
    np.testing.assert_array_equal(np.asarray(second.data), single_run(qtbot, viewer, widget, "second"))


def test_selecting_other_layers_mid_queue_redirects_no_output(queue_widget, qtbot, notes):
    viewer, widget = queue_widget
    left = viewer.add_image(noisy((SIDE, SIDE), seed=0), name="left")
    viewer.add_image(noisy((SIDE + 8, SIDE), seed=2), name="other")
    right = viewer.add_image(noisy((SIDE, SIDE + 8), seed=4), name="right")
    viewer.layers.selection = {left, right}
    quick(widget, iterations=4)

    def select_other():
        other = viewer.layers["other"]
        viewer.layers.selection = {other}
        viewer.layers.selection.active = other
        choose(widget.form.layer, "other")  # even the chooser, programmatically: the queue holds its layers

    on_output(viewer, "right denoised", select_other)
    queue = run_queue(qtbot, widget, "selected")
    assert [o.state for o in queue.outcomes] == ["done", "done"]
    assert "other denoised" not in viewer.layers
    for name, shape in (("left", (SIDE, SIDE)), ("right", (SIDE, SIDE + 8))):
        out = viewer.layers[f"{name} denoised"]
        assert out.metadata["input_layer"] == name and out.data.shape == shape
    np.testing.assert_array_equal(np.asarray(viewer.layers["left denoised"].data),
                                  single_run(qtbot, viewer, widget, "left"))
    assert not messages(notes())


def test_cancel_mid_queue_keeps_finished_layers_and_starts_no_more(queue_widget, qtbot, notes):
    viewer, widget = queue_widget
    for name in ("third", "second", "first"):  # top first: first, second, third
        viewer.add_image(noisy((SIDE, SIDE), seed=len(name)), name=name)
    quick(widget, iterations=100)  # long enough that the click lands within the second layer's run
    on_output(viewer, "second denoised", lambda: click(qtbot, widget.form.run_button))
    queue = run_queue(qtbot, widget, "all")
    assert [o.state for o in queue.outcomes] == ["done", "cancelled", "waiting"]
    assert len(queue.runs) == 2  # the third layer's run never started
    assert viewer.layers["first denoised"].metadata["status"] == "complete"
    partial = viewer.layers["second denoised (partial)"]
    assert partial.metadata["status"] == "partial" and 0 < partial.metadata["stopped_at"]["iteration"] < 100
    assert np.abs(partial.data).sum() > 0  # what was computed is kept
    assert not any(layer.name.startswith("third ") for layer in viewer.layers)
    status = widget.form.status.value
    assert status.startswith("Cancelled: 1 of 3 layers") and "not started: 'third'" in status
    assert "'second denoised (partial)'" in status and "complete: 'first denoised'" in status
    assert widget.form.run_button.text == "Denoise" and widget.form.run_button.enabled
    assert not messages(notes())


def test_failing_and_removed_layers_are_reported_and_the_queue_goes_on(queue_widget, qtbot, notes):
    viewer, widget = queue_widget
    holes = noisy((SIDE, SIDE), seed=3).astype(np.float32)
    holes[5, 5] = np.nan
    viewer.add_image(noisy((SIDE, SIDE), seed=5), name="last")
    viewer.add_image(noisy((SIDE, SIDE), seed=6), name="gone")
    viewer.add_image(holes, name="holes")
    viewer.add_image(np.ones((4, 4), np.float32), name="tiny")
    viewer.add_image(noisy((SIDE, SIDE), seed=1), name="first")
    quick(widget)
    on_output(viewer, "first denoised", lambda: viewer.layers.remove("gone"))
    queue = run_queue(qtbot, widget, "all")
    assert [(o.name, o.state) for o in queue.outcomes] == [
        ("first", "done"), ("tiny", "refused"), ("holes", "failed"), ("gone", "skipped"), ("last", "done")]
    assert viewer.layers["last denoised"].metadata["status"] == "complete"
    errors = messages(notes())
    assert any("'tiny'" in m and "too small" in m for m in errors)
    assert any("'holes'" in m and "NaN" in m for m in errors)
    warnings = messages(notes(), NotificationSeverity.WARNING)
    assert any("'gone'" in m and "skipped" in m for m in warnings)
    status = widget.form.status.value
    assert status.startswith("Done: 2 of 5 layers") and "failed (see the notifications): 'tiny', 'holes'" in status
    assert "skipped, removed before their turn: 'gone'" in status


def test_nothing_to_queue_is_a_warning_that_says_what_to_do(queue_widget, qtbot, notes):
    viewer, widget = queue_widget
    viewer.add_image(noisy((SIDE, SIDE)), name="cells")
    viewer.add_points([[1, 1]], name="points")  # the selected layer: not an image
    choose(widget.form.scope, "Selected image layers")
    click(qtbot, widget.form.run_button)
    assert widget._queue is None and widget._run is None
    assert any("select image layers" in m for m in messages(notes(), NotificationSeverity.WARNING))
    assert widget.form.run_button.text == "Denoise"


def test_a_layer_removed_during_its_turn_stops_only_that_layer(queue_widget, qtbot, notes):
    viewer, widget = queue_widget
    viewer.add_image(noisy((SIDE, SIDE), seed=1), name="kept")
    viewer.add_image(noisy((SIDE, SIDE), seed=2), name="removed")
    quick(widget, iterations=100)
    on_output(viewer, "removed denoised", lambda: viewer.layers.remove("removed"))
    queue = run_queue(qtbot, widget, "all")
    assert [o.state for o in queue.outcomes] == ["stopped", "done"]
    assert viewer.layers["removed denoised (partial)"].metadata["status"] == "partial"
    assert viewer.layers["kept denoised"].metadata["status"] == "complete"
    assert any("'removed' was removed" in m for m in messages(notes(), NotificationSeverity.WARNING))
    assert "stopped, a layer was removed: 'removed'" in widget.form.status.value


def test_closing_the_panel_mid_queue_stops_it(queue_widget, qtbot, notes):
    viewer, widget = queue_widget
    viewer.add_image(noisy((SIDE, SIDE), seed=1), name="second")
    viewer.add_image(noisy((SIDE, SIDE), seed=2), name="first")
    quick(widget, iterations=100)
    on_output(viewer, "first denoised", lambda: viewer.window.remove_dock_widget(widget))
    queue = run_queue(qtbot, widget, "all")
    assert [o.state for o in queue.outcomes] == ["cancelled", "waiting"] and len(queue.runs) == 1
    assert "first denoised (partial)" in viewer.layers and "second denoised" not in viewer.layers
    assert any("panel was closed" in m for m in messages(notes(), NotificationSeverity.WARNING))


def test_closing_the_viewer_mid_queue_stops_every_worker(make_napari_viewer, qtbot):
    viewer = make_napari_viewer()
    _, widget = viewer.window.add_plugin_dock_widget("napari-mpi", "MPI denoise")
    viewer.add_image(noisy((SIDE, SIDE), seed=1), name="second")
    viewer.add_image(noisy((SIDE, SIDE), seed=2), name="first")
    quick(widget, iterations=100)
    on_output(viewer, "first denoised", viewer.close)
    choose(widget.form.scope, "All image layers")
    queue = widget.start_queue()
    wait_queue(qtbot, queue)
    # closing removes the layers (the run stops) and cancels napari's workers: either way, no other run starts
    assert queue.outcomes[0].state in ("stopped", "cancelled") and len(queue.runs) == 1
    assert queue.outcomes[1].state in ("waiting", "skipped")
