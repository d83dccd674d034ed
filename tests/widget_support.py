"""Fixtures and helpers shared by the widget test modules (they import what they use; pytest picks
up the imported fixtures, the autouse one included). Needs napari and Qt, so engine tests never import it.

The engine names and modules these tests use (to build events, read preset values, or simulate failures
inside the engine) are gathered here, in one place.
"""

from __future__ import annotations

from importlib import import_module

import numpy as np
import pytest
import torch
from napari.utils.notifications import NotificationSeverity, notification_manager
from qtpy.QtCore import Qt

from napari_mpi import DenoiseProgress  # noqa: F401 (re-exported for the tests)
from napari_mpi._sample_data import clean_fluorescence, noisy_fluorescence
from napari_mpi._widget import store
from napari_mpi.settings import config_for
from napari_mpi.weights import default_start  # noqa: F401 (re-exported for the tests)

#: The module whose ``denoise_steps`` drives the fill plane by plane (its fill and memory release are patched).
api_module = import_module("napari_mpi.api")  # the module; napari_mpi.denoise is the function
plane_module = import_module("napari_mpi.engine.plane")  # fills a plane: whole, in windows or in tiles
#: The module of the fill loop (its fill is patched where tiled planes call it).
tiles_module = import_module("napari_mpi.engine.tiles")

RUN_TIMEOUT_MS = 120_000  # generous: the CPU is shared with other jobs


def preset_values(preset: str, start: str) -> tuple[float, int]:
    """(beta, iterations) the engine's preset runs from ``start``."""
    config = config_for(preset, start=start)
    return config.beta, config.iterations


def start_lr(start: str) -> float:
    return config_for("fast", start=start).lr


def noisy(shape=(48, 48), seed=0) -> np.ndarray:
    return noisy_fluorescence(clean_fluorescence(shape, seed=seed), seed=seed + 1)


# -- driving the form like a user -----------------------------------------------------------


def click(qtbot, button) -> None:
    """A mouse click on a magicgui button."""
    qtbot.mouseClick(button.native, Qt.MouseButton.LeftButton)


def choose(combo, text: str) -> None:
    """Choose the item shown as ``text`` in a magicgui ComboBox."""
    assert text in item_texts(combo), (text, item_texts(combo))
    combo.value = combo.get_choice(text)


def item_texts(combo) -> list[str]:
    """The items a magicgui ComboBox shows, in order."""
    return [combo.native.itemText(i) for i in range(combo.native.count())]


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread():
    """The GUI thread needs a core too: on a small or busy machine two torch threads make every
    iteration many times slower (measured 0.04 s vs 0.15-0.3 s per 48x48 iteration on 2 busy cores)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(autouse=True)
def _settings_in_tmp(tmp_path, monkeypatch):
    """The widget remembers its fields in a file: here a test's own, never the user's."""
    path = tmp_path / "napari-mpi-widget.json"
    monkeypatch.setenv(store.ENVIRONMENT, str(path))
    return path


@pytest.fixture
def notes():
    """Notifications dispatched during the test (napari's notification manager records them all)."""
    start = len(notification_manager.records)
    return lambda: notification_manager.records[start:]


def messages(records, severity=NotificationSeverity.ERROR) -> list[str]:
    return [str(n.message) for n in records if n.severity == severity]


@pytest.fixture
def viewer_widget(make_napari_viewer, qtbot):
    """A viewer and the widget opened the way napari opens it: through the plugin manifest."""
    viewer = make_napari_viewer()
    _, widget = viewer.window.add_plugin_dock_widget("napari-mpi", "MPI denoise")
    yield viewer, widget
    run = widget._run
    if run is not None:  # never leave a worker running: a test that gets here has failed anyway
        run.cancel()
        qtbot.waitUntil(lambda: run.finished, timeout=RUN_TIMEOUT_MS)


def wait_finished(qtbot, run) -> None:
    qtbot.waitUntil(lambda: run.finished, timeout=RUN_TIMEOUT_MS)
