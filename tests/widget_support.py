"""Fixtures and helpers shared by the widget test modules (they import what they use; pytest picks
up the imported fixtures, the autouse one included). Needs napari and Qt, so engine tests never import it."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from napari.utils.notifications import NotificationSeverity, notification_manager

from napari_mpi._sample_data import clean_fluorescence, noisy_fluorescence

RUN_TIMEOUT_MS = 120_000  # generous: the CPU is shared with other jobs


def noisy(shape=(48, 48), seed=0) -> np.ndarray:
    return noisy_fluorescence(clean_fluorescence(shape, seed=seed), seed=seed + 1)


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread():
    """The GUI thread needs a core too: on a small or busy machine two torch threads make every
    iteration many times slower (measured 0.04 s vs 0.15-0.3 s per 48x48 iteration on 2 busy cores)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


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
