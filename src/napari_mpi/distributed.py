"""Scale-out: spread the planes of one run over Dask distributed workers.

Each worker denoises a whole chain of planes with :func:`napari_mpi.api.denoise_chain` (one plane each without
network reuse; with it, the planes that carry one network, ``napari_mpi.chains.plane_chains``) — the same engine
and the same seeds as a local run — and sends the planes back; the client reads the input and writes every
result itself (one writer, so the output and its resume record stay consistent). At most ``window`` chains are
in flight, so the client holds a few chains, never the stack.

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

from .api import DenoisePlan, PlaneSink, denoise_chain
from .chains import PlaneReport, needed_planes, plane_chains

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


def _denoise_task(planes: list[np.ndarray], plan: DenoisePlan, device: str,
                  threads: int | None) -> tuple[list[np.ndarray], list[PlaneReport]]:
    """Run on a worker: resolve the device there (its own GPU), then denoise the chain of planes."""
    import torch

    from .engine.devices import resolve_device

    if threads:
        torch.set_num_threads(threads)
    return denoise_chain(planes, replace(plan, device=resolve_device(device)))


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
    reports: list[PlaneReport] | None = None,
) -> Generator[int, None, PlaneSink]:
    """Denoise ``image`` on the cluster behind ``client``; yield each plane number once it is in ``out``.

    ``device`` is resolved on each worker; ``threads`` sets torch's CPU threads there (None keeps the
    worker's). Results equal :func:`napari_mpi.denoise_steps` run with the same device and thread count
    (CPU results depend on the thread count, so keep it the same to compare): each worker takes whole chains
    (``plane_chains``), and a chain with planes in ``skip`` is filled from its start, its skipped planes not
    written. ``window`` chains at most are in flight (default: twice the cluster's threads). ``reports`` (a
    list) receives a :class:`~napari_mpi.chains.PlaneReport` for every plane written.
    """
    distributed = _require_distributed()
    layout = plan.layout
    if tuple(image.shape) != layout.shape:
        raise ValueError(f"image shape {tuple(image.shape)} does not match the plan's {layout.shape}")
    window = window or 2 * max(1, sum(client.nthreads().values()))
    # the plan (with any pre-trained weights) goes to every worker once, not with every plane
    [shared_plan] = client.scatter([plan], broadcast=True, hash=False)
    todo = (chain for chain in (needed_planes(c, skip) for c in plane_chains(plan)) if chain)
    token = os.urandom(4).hex()
    pending: dict[str, tuple[list[tuple[int, tuple]], Any]] = {}
    running = distributed.as_completed()

    def submit(count: int) -> None:
        for chain in itertools.islice(todo, count):
            [planes] = client.scatter([[layout.take(image, index) for _, index in chain]], hash=False)
            future = client.submit(_denoise_task, planes, shared_plan, device, threads, pure=False,
                                   key=f"napari-mpi-planes-{chain[0][0]}-{token}")
            pending[future.key] = (chain, future)
            running.add(future)

    try:
        submit(window)
        for future in running:
            chain, _ = pending.pop(future.key)
            results, chain_reports = _plane_result(future, chain[0][0], distributed)
            future.release()
            for (number, index), result, report in zip(chain, results, chain_reports, strict=True):
                if number in skip:
                    continue
                out[index] = result
                if reports is not None:
                    reports.append(replace(report, plane=number, index=index))
                yield number
            submit(1)
    finally:
        if pending:  # cancelled, or an error: nothing keeps running on the workers for us
            client.cancel([future for _, future in pending.values()], force=True)
        client.cancel([shared_plan], force=True)
    return out


def _plane_result(future, number: int, distributed) -> tuple[list[np.ndarray], list[PlaneReport]]:
    """A finished chain's result (its first plane's ``number``); a cancelled chain or dying workers as a
    ClusterError."""
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
