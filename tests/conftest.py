"""Shared fixtures. Tests run on the CPU with tiny images; one torch thread keeps them predictable."""

from __future__ import annotations

import hashlib
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

#: denoise() settings that keep a test fast: two steps (and two final predictions) from a random start
FEW = {"iterations": 2, "weights": "random"}


#: fixtures that start Qt: a test that uses one needs a working display stack
QT_FIXTURES = {"qapp", "qtbot", "make_napari_viewer", "make_napari_viewer_proxy"}


def pytest_collection_modifyitems(session, config, items):
    """Before any test runs: when some collected test starts Qt, stop with one line naming what is missing if Qt
    cannot start (Qt would abort the whole run, without a summary, at the first such test)."""
    if any(QT_FIXTURES & set(getattr(item, "fixturenames", ())) for item in items):
        from .qt_check import qt_start_problem

        problem = qt_start_problem()
        if problem is not None:
            pytest.exit(problem, returncode=3)


@pytest.fixture(autouse=True, scope="session")
def _torch_threads():
    torch.set_num_threads(max(1, min(2, torch.get_num_threads())))
    yield


@pytest.fixture
def one_thread():
    """torch on one thread for a test (CPU results depend on the thread count: the CLI subprocesses and Dask workers
    of some tests run with one, and tiny planes gain nothing from more); the earlier count afterwards."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def camera_crop() -> np.ndarray:
    """A 96x96 crop of scikit-image's bundled camera picture, float in [0, 1]."""
    from skimage import data

    return data.camera()[160:256, 200:296].astype(np.float32) / 255.0


def psnr(estimate: np.ndarray, reference: np.ndarray, data_range: float = 1.0) -> float:
    mse = float(np.mean((np.asarray(estimate, np.float64) - np.asarray(reference, np.float64)) ** 2))
    return 10.0 * np.log10(data_range**2 / mse)


def run_cli(*args: str) -> subprocess.CompletedProcess:
    """``napari-mpi ARGS`` in a fresh Python process."""
    return subprocess.run([sys.executable, "-m", "napari_mpi.cli", *args], capture_output=True, text=True, timeout=300)


def digest(path: Path) -> str:
    """sha256 of a file's bytes (to show that an input was left alone)."""
    return hashlib.sha256(path.read_bytes()).hexdigest()


def one_line_error(capsys, phrase: str, *args: str) -> str:
    """Run the CLI in this process; it must exit 2 with one line on stderr that contains ``phrase``."""
    capsys.readouterr()
    from napari_mpi import cli

    code = cli.main(list(args))
    err = capsys.readouterr().err
    lines = [line for line in err.strip().splitlines() if line]
    assert code == 2 and len(lines) == 1 and phrase in lines[0], err
    return lines[0]
