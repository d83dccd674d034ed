"""Trying settings before a long run: the noise hint that suggests a mask ratio, and Preview on the view (the part
of the current plane on screen, at most 256x256, denoised with the Fast preset and the form's other settings into
a layer "<input> preview" placed over it).

The crop is checked against napari's camera; the runs are shortened (a few iterations and predictions) so that
each takes about a second on a CPU, and every test waits for its worker to finish.
"""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
from napari.utils.notifications import NotificationSeverity

from napari_mpi._widget import preview as preview_module
from napari_mpi._widget import widget as widget_module
from napari_mpi._widget.preview import MAX_SIDE, MIN_SIDE, view_crop

from .widget_support import (
    RUN_TIMEOUT_MS,
    _one_torch_thread,
    _settings_in_tmp,
    choose,
    click,
    messages,
    noisy,
    notes,
    viewer_widget,
    wait_finished,
)

SHARED_FIXTURES = (_one_torch_thread, _settings_in_tmp, notes, viewer_widget)  # found by pytest among these names


@pytest.fixture
def plans(monkeypatch):
    """Shorten every run (``plans.iterations`` iterations, few predictions); ``plans.asked``: what prepare() was
    asked for."""
    plans = SimpleNamespace(asked=[], iterations=3)
    real = widget_module.prepare

    def short(shape, dtype, **params):
        plans.asked.append(dict(params, shape=shape))
        return real(shape, dtype, **{**params, "iterations": plans.iterations, "tuning": {"final_predictions": 2}})

    monkeypatch.setattr(widget_module, "prepare", short)
    return plans


def test_correlated_noise_shows_a_hint_that_sets_the_mask_ratio_in_one_click(viewer_widget):
    from scipy.ndimage import gaussian_filter

    viewer, widget = viewer_widget
    noise = gaussian_filter(np.random.default_rng(5).normal(0, 1, (96, 96)), 1.0)
    viewer.add_image(noisy((96, 96)), name="independent")
    assert widget.chosen_layer().name == "independent" and widget.form.hint_box.native.isHidden()
    viewer.add_image((0.5 + 0.1 * noise / noise.std()).astype(np.float32), name="blotchy")
    assert widget.chosen_layer().name == "blotchy"
    assert not widget.form.hint_box.native.isHidden() and "spatially correlated" in widget.form.noise_hint.value
    assert widget.form.mask_ratio.value == pytest.approx(0.3)
    widget.form.use_hint.native.click()
    assert widget.form.mask_ratio.value == pytest.approx(0.85) and widget.parameters()["mask_ratio"] == 0.85
    choose(widget.form.layer, "independent")  # no hint there
    assert widget.form.hint_box.native.isHidden()


def test_preview_of_a_2d_image_covers_the_view_and_replaces_the_last(viewer_widget, qtbot, notes, plans):
    viewer, widget = viewer_widget
    data = noisy((320, 90))
    source = viewer.add_image(data, name="cells", scale=(0.5, 2.0), translate=(10.0, -4.0))
    viewer.reset_view()  # all of it on screen: at most 256 rows around its middle
    crop = view_crop(viewer, source)
    assert (crop.plane, crop.top, crop.height, crop.left, crop.width) == ((), 32, MAX_SIDE, 0, 90)
    widget.form.preset.value = "Quality"  # the preview runs Fast whatever the form says...
    widget.form.mask_ratio.value = 0.5  # ...with the form's mask ratio, seed and refinement
    widget.form.seed.value = 3
    run = widget.preview()
    assert widget.form.run_button.text == "Cancel" and not widget.form.mask_ratio.enabled
    wait_finished(qtbot, run)
    assert run.state == "done" and not messages(notes())
    asked = plans.asked[-1]
    assert (asked["preset"], asked["mask_ratio"], asked["seed"], asked["beta"]) == ("fast", 0.5, 3, None)
    assert asked["shape"] == (MAX_SIDE, 90) and not asked["reuse_network"]
    layer = viewer.layers["cells preview"]
    assert layer.data.shape == (MAX_SIDE, 90) and np.isfinite(layer.data).all() and np.ptp(layer.data) > 0
    np.testing.assert_allclose(layer.scale, (0.5, 2.0))
    np.testing.assert_allclose(layer.translate, (10.0 + 0.5 * 32, -4.0))  # over the crop
    np.testing.assert_allclose(layer.data_to_world((0, 0)), source.data_to_world((32, 0)))
    assert layer.metadata["status"] == "complete" and layer.metadata["preview"]["top"] == 32
    assert widget.form.status.value.startswith("Done") and widget.form.mask_ratio.enabled
    assert widget.chosen_layer() is source  # the preview is not offered as the next input

    # zoomed in on the lower part: the crop follows the camera and stays within what is on screen
    viewer.scene.camera.center = (0.0, *source.data_to_world((250, 45)))
    viewer.scene.camera.zoom = max(viewer.canvas.viewbox_size(viewer.layers)) / 40  # ~40 world units, 80 rows
    crop = view_crop(viewer, source)
    assert MIN_SIDE <= crop.height < MAX_SIDE and crop.top <= 250 < crop.top + crop.height
    assert crop.top + crop.height <= 320
    assert crop.width == MIN_SIDE and crop.left <= 45 < crop.left + crop.width  # ~20 columns shown: 64 taken
    wait_finished(qtbot, widget.preview())
    previews = [layer for layer in viewer.layers if layer.name.startswith("cells preview")]
    assert len(previews) == 1 and previews[0].data.shape == (crop.height, crop.width)  # the last one replaced
    assert previews[0].metadata["preview"]["top"] == crop.top

    viewer.scene.camera.center = (0.0, 5000.0, 5000.0)  # nothing of the image on screen: a warning, no run
    assert widget.preview() is None
    assert any("not on screen" in text for text in messages(notes(), NotificationSeverity.WARNING))
    assert widget._run is None and widget.form.run_button.text == "Denoise"


def test_preview_of_a_stack_takes_the_current_plane_and_cancels_like_a_run(viewer_widget, qtbot, notes, plans):
    viewer, widget = viewer_widget
    stack = np.stack([noisy((40, 40), seed=10 * z) for z in range(3)])
    stack[2] += 400  # the third plane is brighter: the preview must come from it
    source = viewer.add_image(stack, name="zstack", scale=(3.0, 1.0, 1.0))
    viewer.reset_view()
    viewer.dims.set_point(0, 6.0)  # world z 6 = plane 2
    crop = view_crop(viewer, source)
    assert (crop.plane, crop.height, crop.width) == ((2,), 40, 40)  # smaller than MIN_SIDE: the whole plane
    wait_finished(qtbot, widget.preview())
    layer = viewer.layers["zstack preview"]
    assert layer.data.shape == (1, 40, 40)  # shown on that plane only
    np.testing.assert_allclose(layer.translate, (6.0, 0.0, 0.0))
    assert layer.data.mean() > stack[:2].mean() + 200
    viewer.dims.set_point(0, 0.0)
    assert view_crop(viewer, source).plane == (0,)

    # Cancel works as for a run; the partial preview keeps its name
    plans.iterations = 5000
    run = widget.preview()
    qtbot.waitUntil(lambda: run.layer is not None, timeout=RUN_TIMEOUT_MS)
    assert not widget.form.preview_button.enabled and not widget.form.reset_button.enabled
    click(qtbot, widget.form.run_button)
    wait_finished(qtbot, run)
    assert run.state == "cancelled"
    partial = viewer.layers["zstack preview"]
    assert partial.metadata["status"] == "partial" and partial.metadata["preview"]["plane"] == [0]
    assert widget.form.status.value.startswith("Cancelled") and widget.form.preview_button.enabled
    assert not messages(notes())


def test_preview_of_an_rgb_layer_keeps_its_colours(viewer_widget, qtbot, notes, plans):
    viewer, widget = viewer_widget
    photo = np.random.default_rng(0).integers(0, 256, size=(300, 40, 3), dtype=np.uint8)
    viewer.add_image(photo, name="photo", rgb=True)
    viewer.reset_view()
    wait_finished(qtbot, widget.preview())
    assert plans.asked[-1]["rgb"] is True and plans.asked[-1]["shape"] == (MAX_SIDE, 40, 3)
    layer = viewer.layers["photo preview"]
    assert layer.rgb and layer.data.shape == (MAX_SIDE, 40, 3) and not messages(notes())
    np.testing.assert_allclose(layer.translate, (22.0, 0.0))  # rows 22-277 of 300


def test_preview_needs_a_2d_view_of_the_image_axes(viewer_widget, notes):
    viewer, widget = viewer_widget
    viewer.add_image(np.stack([noisy((32, 32), seed=s) for s in range(3)]), name="zstack")
    viewer.dims.ndisplay = 3
    assert widget.preview() is None
    viewer.dims.ndisplay = 2
    viewer.dims.order = (1, 0, 2)  # Z and X on screen
    assert widget.preview() is None
    warnings = messages(notes(), NotificationSeverity.WARNING)
    assert len(warnings) == 2 and "3-D view" in warnings[0] and "last two axes" in warnings[1]
    assert widget._run is None and widget.form.preview_button.enabled
    viewer.layers.clear()
    assert not widget.form.preview_button.enabled  # nothing to preview


def test_only_the_crop_is_read():
    pixels = np.arange(4 * 50 * 60, dtype=np.float32).reshape(4, 50, 60)
    reads = []

    class Lazy:  # an array that records what is read from it
        shape = pixels.shape

        def __getitem__(self, index):
            reads.append(index)
            return pixels[index]

    layer = SimpleNamespace(multiscale=False, data=Lazy())
    out = preview_module.crop_data(layer, preview_module.ViewCrop((1,), 5, 6, 20, 30))
    np.testing.assert_array_equal(out, pixels[1, 5:25, 6:36])
    assert reads == [(1, slice(5, 25), slice(6, 36))]
