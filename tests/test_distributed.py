"""Scale-out on a real Dask LocalCluster: the same planes as a local run, bit for bit (CPU, same thread
count), from the API and from the CLI; Dask stays out of runs that do not ask for it."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import tifffile

distributed = pytest.importorskip("distributed")

import napari_mpi  # noqa: E402
from napari_mpi.distributed import denoise_distributed  # noqa: E402

SEED = 3


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def cluster():
    """Two single-threaded workers inside this process (no process start-up; torch threads as the test's),
    reachable over TCP on the loopback so that a CLI subprocess can join them."""
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=False, protocol="tcp://",
                                  host="127.0.0.1", dashboard_address=None, silence_logs=40) as local, \
            distributed.Client(local) as client:
        yield local, client


def test_local_cluster_equals_local_run(cluster):
    _, client = cluster
    data = np.random.default_rng(0).integers(0, 4000, (3, 32, 32)).astype(np.uint16)
    options = dict(iterations=3, weights="random", device="cpu", seed=SEED)
    expected = napari_mpi.denoise(data, **options)
    plan = napari_mpi.prepare(data.shape, data.dtype, **options)
    result = denoise_distributed(data, plan, client, device="cpu", window=2)
    assert np.array_equal(result, expected)  # bit-equal: same engine, same per-plane seed, same threads
    assert len(client.has_what()) == 2

    # skipped planes (a resumed run) are not sent out and not touched
    partial = np.full(data.shape, -1, np.float32)
    denoise_distributed(data, plan, client, partial, skip={1}, device="cpu")
    assert (partial[1] == -1).all() and np.array_equal(partial[[0, 2]], expected[[0, 2]])


def test_workers_take_whole_chains_of_planes_that_carry_one_network(cluster):
    """Planes that carry the network come in chains; each worker takes whole chains (here 2 planes each), so the
    result and the per-plane reports equal a local run's, and a resumed run's too."""
    _, client = cluster
    data = np.random.default_rng(5).integers(0, 4000, (5, 32, 32)).astype(np.uint16)
    options = dict(iterations=3, weights="random", device="cpu", seed=SEED, tuning={"reuse_chain_planes": 2})
    plan = napari_mpi.prepare(data.shape, data.dtype, **options)
    local_reports, spread_reports = [], []
    expected = napari_mpi.drain(napari_mpi.denoise_steps(data, plan, reports=local_reports))
    assert [r.carried for r in local_reports][::2] == [False, False, False]  # planes 0, 2, 4 start a chain
    result = denoise_distributed(data, plan, client, device="cpu", reports=spread_reports)
    assert np.array_equal(result, expected)
    assert sorted(spread_reports, key=lambda r: r.plane) == local_reports

    partial = np.full(data.shape, -1, np.float32)  # resumed with planes 0 and 3 done: chains [0, 1] and [2, 3]
    denoise_distributed(data, plan, client, partial, skip={0, 3}, device="cpu")
    assert (partial[[0, 3]] == -1).all() and np.array_equal(partial[[1, 2, 4]], expected[[1, 2, 4]])


def test_worker_errors_reach_the_caller(cluster):
    _, client = cluster
    data = np.ones((2, 32, 32), np.float32)
    data[1, 3, 3] = np.nan  # the plane check runs on the worker, as in a local run
    plan = napari_mpi.prepare(data.shape, data.dtype, iterations=2, weights="random", device="cpu")
    with pytest.raises(ValueError, match="NaN"):
        denoise_distributed(np.ascontiguousarray(data), plan, client, device="cpu")


def _cli_on(local, source, target) -> subprocess.CompletedProcess:
    """``napari-mpi denoise SOURCE -o TARGET`` in a real process that joins the cluster ``local`` by address."""
    return subprocess.run(
        [sys.executable, "-m", "napari_mpi.cli", "denoise", str(source), "-o", str(target), "--iterations", "3",
         "--weights", "random", "--seed", str(SEED), "--device", "cpu", "-q", "--scheduler", local.scheduler_address],
        capture_output=True, text=True, timeout=180)


def test_cli_on_a_tcp_scheduler_equals_the_local_run(cluster, tmp_path):
    """The CLI (a real process) joins the cluster by address — its workers live in this test process —
    and writes the planes the local engine makes with the same seed and threads."""
    local, _ = cluster
    data = np.random.default_rng(1).integers(0, 4000, (3, 32, 32), dtype=np.uint16)
    source = tmp_path / "stack.tif"
    tifffile.imwrite(source, data, photometric="minisblack", metadata={"axes": "ZYX"})
    expected = napari_mpi.denoise(data, iterations=3, weights="random", seed=SEED, device="cpu")
    spread = _cli_on(local, source, tmp_path / "spread.tif")
    assert spread.returncode == 0, spread.stderr
    assert np.array_equal(tifffile.imread(tmp_path / "spread.tif"), expected)


def test_cli_batch_on_a_tcp_scheduler_equals_the_local_run(cluster, tmp_path):
    """A folder of files on the cluster: each file's planes go to the workers, one file after another, and every
    output is the local engine's."""
    local, _ = cluster
    folder = tmp_path / "in"
    folder.mkdir()
    expected = {}
    for number, shape in enumerate(((2, 32, 32), (32, 40))):
        data = np.random.default_rng(number).integers(0, 4000, shape, dtype=np.uint16)
        tifffile.imwrite(folder / f"f{number}.tif", data, photometric="minisblack",
                         metadata={"axes": "ZYX" if data.ndim == 3 else "YX"})
        expected[f"f{number}.tif"] = napari_mpi.denoise(data, iterations=3, weights="random", seed=SEED, device="cpu")
    spread = _cli_on(local, folder, tmp_path / "out")
    assert spread.returncode == 0, spread.stderr
    for name, result in expected.items():
        assert np.array_equal(tifffile.imread(tmp_path / "out" / name), result)


def test_scheduler_errors_are_one_line(tmp_path, capsys):
    import dask

    from napari_mpi import cli

    source = tmp_path / "plane.tif"
    tifffile.imwrite(source, np.random.default_rng(2).integers(0, 4000, (32, 32), dtype=np.uint16))
    args = ["denoise", str(source), "-o", str(tmp_path / "o.tif"), "--iterations", "1", "--weights", "random", "-q"]
    with dask.config.set({"distributed.comm.timeouts.connect": "1s"}):
        for extra, phrase in ((["--scheduler", "tcp://127.0.0.1:9"], "cannot reach the Dask scheduler"),
                              (["--scheduler", "nowhere"], "--scheduler must be"),
                              (["--workers", "2"], "--workers applies")):
            code = cli.main([*args, *extra])
            lines = capsys.readouterr().err.strip().splitlines()
            assert code == 2 and len(lines) == 1 and phrase in lines[0], lines
    assert not list(tmp_path.glob(".o.tif*")), "a failed run left partial files"


@pytest.mark.slow
def test_cli_local_scheduler_with_worker_processes(tmp_path):
    """--scheduler local starts its own worker processes (each imports torch: the slow part); with
    --threads 1 they compute what this process computes on one thread."""
    data = np.random.default_rng(4).integers(0, 4000, (3, 32, 32), dtype=np.uint16)
    source = tmp_path / "stack.tif"
    tifffile.imwrite(source, data, photometric="minisblack", metadata={"axes": "ZYX"})
    expected = napari_mpi.denoise(data, iterations=3, weights="random", device="cpu")
    spread = subprocess.run(
        [sys.executable, "-m", "napari_mpi.cli", "denoise", str(source), "-o", str(tmp_path / "spread.zarr"),
         "--iterations", "3", "--weights", "random", "--threads", "1", "--device", "cpu", "-q",
         "--scheduler", "local", "--workers", "2"], capture_output=True, text=True, timeout=180)
    assert spread.returncode == 0, spread.stderr
    import zarr

    assert np.array_equal(zarr.open_array(str(tmp_path / "spread.zarr"))[:], expected)
