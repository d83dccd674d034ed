"""Scale-out: spread the planes of one run over Dask distributed workers.

Each worker denoises whole planes with :func:`napari_mpi.api.denoise_plane` — the same engine and
the same per-plane seed as a local run — and sends the plane back; the client reads the input and
writes every result itself (one writer, so the output and its resume record stay consistent). At most
``window`` planes are in flight, so the client holds a few planes, never the stack.

Dask is an optional dependency (``pip install "napari-mpi[batch]"``), imported only here and only when
a scheduler is asked for. One GPU per worker: ``connect("local")`` starts one worker process per
visible GPU with ``CUDA_VISIBLE_DEVICES`` set to that GPU; on a cluster start workers the same way
(``dask-cuda``'s ``dask cuda worker``, or one ``dask worker --nworkers 1 --nthreads 1`` per GPU with
``CUDA_VISIBLE_DEVICES`` set) and ``device="auto"`` on a worker picks the GPU it sees.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Container, Generator, Iterator
from contextlib import contextmanager
from dataclasses import replace
from typing import Any

import numpy as np

from .api import DenoisePlan, PlaneSink, denoise_plane

__all__ = ["ClusterError", "connect", "distributed_steps", "denoise_distributed"]


class ClusterError(OSError):
    """The cluster could not run the planes (no scheduler at the address, workers that keep dying)."""


def _require_distributed():
    try:
        import distributed
    except ImportError as exc:
        raise ValueError('--scheduler needs Dask distributed: pip install "napari-mpi[batch]"') from exc
    return distributed


def _visible_gpus() -> list[str]:
    """The GPUs this machine lets us use, as CUDA_VISIBLE_DEVICES entries."""
    import torch

    if not torch.cuda.is_available():
        return []
    listed = os.environ.get("CUDA_VISIBLE_DEVICES")
    if listed:
        return [d.strip() for d in listed.split(",") if d.strip()][: torch.cuda.device_count()]
    return [str(i) for i in range(torch.cuda.device_count())]


@contextmanager
def connect(scheduler: str, *, workers: int | None = None, timeout: float | str | None = None) -> Iterator[Any]:
    """A ``distributed.Client`` for ``scheduler``: "local" starts a cluster on this machine (one worker
    process per GPU, or ``workers`` CPU worker processes, default one per 4 cores), "tcp://host:port"
    joins a running one (waiting ``timeout``, default Dask's ``distributed.comm.timeouts.connect``).
    Closes what it started on exit."""
    distributed = _require_distributed()
    if timeout is None:
        import dask

        timeout = dask.config.get("distributed.comm.timeouts.connect")
    if scheduler == "local":
        gpus = _visible_gpus()
        if gpus:
            specs = {  # one process per GPU, each seeing only its GPU (as dask-cuda does)
                i: {"cls": distributed.Nanny, "options": {
                    "nthreads": 1, "host": "127.0.0.1", "env": {"CUDA_VISIBLE_DEVICES": gpus[i % len(gpus)]}}}
                for i in range(workers or len(gpus))
            }
            scheduler_spec = {"cls": distributed.Scheduler, "options": {"host": "127.0.0.1", "dashboard_address": None}}
            cluster = distributed.SpecCluster(workers=specs, scheduler=scheduler_spec, silence_logs=40)
        else:
            count = workers or max(1, (os.cpu_count() or 1) // 4)
            cluster = distributed.LocalCluster(n_workers=count, threads_per_worker=1, processes=True, host="127.0.0.1",
                                               dashboard_address=None, silence_logs=40)
        try:
            with distributed.Client(cluster) as client:
                yield client
        finally:
            cluster.close()
        return
    if "://" not in scheduler:
        raise ValueError(f"--scheduler must be 'local' or a scheduler address like tcp://host:8786, got {scheduler!r}")
    try:
        client = distributed.Client(scheduler, timeout=timeout)
    except (OSError, TimeoutError) as exc:
        raise ClusterError(f"cannot reach the Dask scheduler at {scheduler}: {exc}") from exc
    with client:
        yield client


def _denoise_task(plane: np.ndarray, plan: DenoisePlan, device: str, threads: int | None) -> np.ndarray:
    """Run on a worker: resolve the device there (its own GPU), then denoise the plane."""
    import torch

    from .engine.devices import resolve_device

    if threads:
        torch.set_num_threads(threads)
    return denoise_plane(plane, replace(plan, device=resolve_device(device)))


def distributed_steps(
    image,
    plan: DenoisePlan,
    client,
    out: PlaneSink,
    *,
    skip: Container[int] = (),
    device: str = "auto",
    threads: int | None = None,
    window: int | None = None,
) -> Generator[int, None, PlaneSink]:
    """Denoise ``image`` on the cluster behind ``client``; yield each plane number once it is in ``out``.

    ``device`` is resolved on each worker; ``threads`` sets torch's CPU threads there (None keeps the
    worker's). Results equal :func:`napari_mpi.denoise_steps` run with the same device and thread count
    (CPU results depend on the thread count, so keep it the same to compare). ``window`` planes at most
    are in flight (default: twice the cluster's threads).
    """
    distributed = _require_distributed()
    layout = plan.layout
    if plan.reuse_network:
        raise ValueError("reusing the network across planes runs them one after the other: it cannot spread them "
                         "over Dask workers; drop one of the two")
    if tuple(image.shape) != layout.shape:
        raise ValueError(f"image shape {tuple(image.shape)} does not match the plan's {layout.shape}")
    window = window or 2 * max(1, sum(client.nthreads().values()))
    # the plan (with any pre-trained weights) goes to every worker once, not with every plane
    [shared_plan] = client.scatter([plan], broadcast=True, hash=False)
    todo = ((n, index) for n, index in enumerate(layout.indices()) if n not in skip)
    token = os.urandom(4).hex()
    pending: dict[str, tuple[int, tuple, Any]] = {}
    running = distributed.as_completed()

    def submit(count: int) -> None:
        for number, index in itertools.islice(todo, count):
            [plane] = client.scatter([layout.take(image, index)], hash=False)
            future = client.submit(_denoise_task, plane, shared_plan, device, threads, pure=False,
                                   key=f"napari-mpi-plane-{number}-{token}")
            pending[future.key] = (number, index, future)
            running.add(future)

    try:
        submit(window)
        for future in running:
            number, index, _ = pending.pop(future.key)
            out[index] = _plane_result(future, number, distributed)
            future.release()
            yield number
            submit(1)
    finally:
        if pending:  # cancelled, or an error: nothing keeps running on the workers for us
            client.cancel([future for _, _, future in pending.values()], force=True)
        client.cancel([shared_plan], force=True)
    return out


def _plane_result(future, number: int, distributed) -> np.ndarray:
    """A finished plane's result; a cancelled plane or dying workers as a ClusterError."""
    try:
        return future.result()
    except distributed.client.FutureCancelledError as exc:
        raise ClusterError(f"plane {number} was cancelled by the cluster: {exc}") from exc
    except Exception as exc:
        if type(exc).__name__ == "KilledWorker":
            raise ClusterError(f"Dask workers died on plane {number} (out of memory?); "
                               "fix the workers, then rerun with --resume") from exc
        raise


def denoise_distributed(image, plan: DenoisePlan, client, out: PlaneSink | None = None, **options) -> PlaneSink:
    """:func:`distributed_steps` run to the end; ``out`` defaults to a float32 array in memory."""
    if out is None:
        out = np.zeros(plan.layout.shape, dtype=np.float32)
    steps = distributed_steps(image, plan, client, out, **options)
    for _ in steps:
        pass
    return out
