"""One denoising run: a thread worker driving the engine's generator, the live output layer, progress, cancel.

The widget validates with ``prepare`` on the GUI thread (bad input is reported at once) and hands the plan to a
:class:`Run`. The run drives ``denoise_steps`` in a napari ``create_worker`` generator, which yields after every
fill iteration: that is where ``worker.quit()`` (Cancel) takes effect. At most every :data:`REDRAW_INTERVAL`
seconds the worker thread writes the current estimate of the plane being processed into the output array (the
data of the live layer) and flags the event, and the GUI thread refreshes the layer (less often when redraws
turn out slow: see :data:`REDRAW_BUDGET`). Everything that can go wrong for a user ends in a napari
notification, never in a raw exception.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Generator
from typing import Any, Protocol

import numpy as np
import torch
from napari.layers import Image
from napari.qt.threading import create_worker
from napari.utils import progress
from napari.utils.notifications import show_error, show_warning

from .engine import DenoisePlan, DenoiseProgress, DenoiseWarning, denoise_steps
from .layers import add_output_layer, finished_metadata, move_dims_to, output_array, unwrap
from .texts import engine_warning, progress_text, run_summary, user_message, window_closed

__all__ = [
    "MAX_REDRAW_INTERVAL", "PREVIEW_REDRAW_INTERVAL", "REDRAW_BUDGET", "REDRAW_INTERVAL", "Run", "RunView",
    "denoise_job", "with_threads",
]

log = logging.getLogger(__name__)

#: Shortest time between two refreshes of the live output layer (at most ~10 redraws per second).
#: An iteration slower than this refreshes the layer after every iteration.
REDRAW_INTERVAL = 0.1
#: Shortest time between two refreshes of a preview: it is meant to end quickly, and every refresh (the
#: estimate, the layer's slicing and drawing) takes time from a CPU that the preview computes on.
PREVIEW_REDRAW_INTERVAL = 1.0
#: Longest time between two refreshes (as long as iterations are shorter than this).
MAX_REDRAW_INTERVAL = 2.0
#: A redraw may use at most this share of the GUI thread's time: when redraws are slow (a big plane,
#: software OpenGL, a busy CPU) the interval grows, up to MAX_REDRAW_INTERVAL.
REDRAW_BUDGET = 0.25


class RunView(Protocol):
    """What a run tells the widget that started it (while the widget is alive)."""

    alive: bool

    def output_added(self, layer: Image) -> None: ...

    def show_progress(self, text: str, fraction: float) -> None: ...

    def run_finished(self, run: Run, text: str) -> None: ...


def denoise_job(
    steps: Generator[DenoiseProgress, None, np.ndarray],
    out: np.ndarray,
    interval: float | Callable[[], float],
) -> Generator[tuple[DenoiseProgress, bool], None, np.ndarray]:
    """Runs in the worker thread: drive the engine and yield ``(event, fresh)`` after every iteration.

    ``fresh`` is True when the current estimate of the event's plane was just written into ``out``
    (at most once per ``interval`` seconds; a callable is asked again each time), i.e. when the GUI
    should refresh the output layer. The estimate is computed here, off the GUI thread.
    Closing this generator closes the engine's, which releases the network and its device memory.
    """
    wait = interval if callable(interval) else (lambda: interval)
    try:
        last = -math.inf
        while True:
            try:
                event = next(steps)
            except StopIteration as stop:
                return stop.value
            fresh = time.monotonic() - last >= wait()
            if fresh:
                out[event.index] = event.estimate()
                last = time.monotonic()
            yield event, fresh
    finally:
        steps.close()


def with_threads(job: Generator, threads: int, default: int) -> Generator:
    """Drive ``job`` with ``threads`` torch CPU threads (0: ``default``), then set torch back to ``default``.

    ``default`` is torch's count on the GUI thread when the run starts (its own choice, or what the user set in
    napari's console). torch keeps a thread count per thread as well as a global one: the count is set here, in
    the worker thread that computes, at the first step, and set back when the job ends or is closed.
    """
    torch.set_num_threads(threads or default)
    try:
        return (yield from job)
    finally:
        torch.set_num_threads(default)


class Failure:
    """An exception that ended the worker's generator, returned (not raised) to the GUI thread."""

    def __init__(self, error: BaseException) -> None:
        self.error = error


def _worker(job: Generator, name: str, callbacks: dict[str, Callable]) -> Any:
    """A napari GeneratorWorker (``quit()`` stops it at the next yield) that drives ``job``, not yet started."""

    def drive():
        try:
            return (yield from job)
        except Exception as exc:  # noqa: BLE001
            # handed to on_returned rather than raised: superqt takes a RuntimeError (torch's CUDA,
            # cuDNN and MPS errors) for a deleted worker and ends without "finished", which would
            # leave the run hanging; and an errored worker may get napari's raw traceback notification
            return Failure(exc)

    drive.__qualname__ = f"napari-mpi denoising of {name!r}"  # shown by napari's close dialog
    return create_worker(drive, _start_thread=False, _connect=callbacks)


class Run:
    """One denoising run: the worker, the live output layer and the progress bar.

    A plain object (not a QObject) so that its worker callbacks keep working, and free the device
    memory, even when the widget itself was destroyed mid-run (dock closed, viewer closed).
    ``state`` goes from "running" to "done", "cancelled", "stopped" (a layer was removed) or "failed";
    ``finished`` is True once the worker has ended and the run has cleaned up.

    ``threads``: torch CPU threads for the run (0: torch's own choice); ``place``: adds the output layer
    (``add_output_layer``'s arguments; a preview places its own over the crop); ``preview``: a preview run,
    whose layer keeps its name when it ends early.
    """

    def __init__(self, view: RunView, viewer: Any, source: Image, data: Any, plan: DenoisePlan,
                 settings: dict[str, Any], follow: bool, *, threads: int = 0,
                 place: Callable[..., Image] = add_output_layer, preview: bool = False) -> None:
        self.view: RunView | None = view
        self.viewer = viewer
        self.source = source
        self.name = source.name
        self.plan = plan
        self.settings = settings
        self.follow = follow
        self.preview = preview
        self._place = place
        self.out = output_array(data, plan.layout.shape)
        self.layer: Image | None = None
        self.latest: DenoiseProgress | None = None
        self.auto_reports: dict[int, Any] = {}  # plane -> the Auto preset's last report
        self.plane_reports: list[Any] = []  # how each written plane was filled (PlaneReport; the worker appends)
        self.state = "running"
        self.finished = False
        self.holder: dict[str, Any] | None = None  # the widget's holder, cleared when finished
        self.redraws = 0
        self.started = time.monotonic()
        self._followed_plane: int | None = None
        what = "preview" if preview else "denoise"
        self.pbar = progress(total=plan.layout.n_planes * plan.steps_per_plane, desc=f"MPI {what} '{self.name}'")
        self._pbar_n = 0
        self.min_redraw_interval = PREVIEW_REDRAW_INTERVAL if preview else REDRAW_INTERVAL
        self.redraw_interval = self.min_redraw_interval
        steps = denoise_steps(data, plan, self.out, reports=self.plane_reports)
        job = denoise_job(steps, self.out, lambda: self.redraw_interval)
        self.job = with_threads(job, threads, torch.get_num_threads())
        self.worker = _worker(self.job, self.name, {
            "yielded": self.on_yielded, "returned": self.on_returned, "errored": self.on_errored,
            "aborted": self.on_aborted, "finished": self.on_finished, "warned": self.on_warned,
        })

    @property
    def elapsed(self) -> float:
        return time.monotonic() - self.started

    # -- control -------------------------------------------------------------------------
    def start(self) -> None:
        self.worker.start()

    def cancel(self, state: str = "cancelled", warning: str | None = None) -> None:
        """Ask the worker to stop at its next yield (within one iteration)."""
        if self.state != "running":
            return
        self.state = state
        if warning:
            show_warning(warning)
        self.worker.quit()

    # -- worker callbacks (GUI thread) ---------------------------------------------------
    def on_yielded(self, payload: tuple[DenoiseProgress, bool]) -> None:
        event, fresh = payload
        self.latest = event
        if event.auto is not None:
            self.auto_reports[event.plane] = event.auto
        if not fresh or self.state != "running":
            return
        try:
            self._show(event)
        except Exception as exc:  # a broken display must not leave a worker running
            log.exception("napari-mpi: updating the output layer failed")
            self.cancel("failed")
            show_error(user_message(exc, self.name))

    def _show(self, event: DenoiseProgress) -> None:
        if self.layer is None:
            self._add_layer()
        else:
            begin = time.perf_counter()
            self.layer.refresh()
            cost = time.perf_counter() - begin  # slicing, thumbnail, and the GIL shared with the worker
            self.redraw_interval = min(MAX_REDRAW_INTERVAL, max(self.min_redraw_interval, cost / REDRAW_BUDGET))
        self.redraws += 1
        if self.follow and event.plane != self._followed_plane and self.plan.layout.n_planes > 1:
            self._followed_plane = event.plane
            move_dims_to(self.viewer, self.layer, self.plan.layout.iter_axes, event.index)
        done = round(event.fraction * self.pbar.total)  # planes reusing the network have fewer iterations
        self.pbar.update(done - self._pbar_n)
        self._pbar_n = done
        self._tell("show_progress", progress_text(event), event.fraction)

    def _add_layer(self) -> None:
        self.layer = unwrap(self._place(self.viewer, self.source, self.out, self.name))
        self._tell("output_added", self.layer)

    def on_warned(self, args: tuple) -> None:
        """A warning raised in the worker (the arguments of warnings.showwarning): the engine's own
        (e.g. a plane denoised in tiles after running out of memory) become notifications."""
        message, category = args[0], args[1]
        if isinstance(category, type) and issubclass(category, DenoiseWarning):
            show_warning(engine_warning(self.name, message))
        else:
            log.info("napari-mpi: warning while denoising %r: %s", self.name, message)

    def on_returned(self, result: Any) -> None:
        if isinstance(result, Failure):
            self.on_errored(result.error)
            return
        self.state = "done"

    def on_aborted(self) -> None:
        if self.state == "running":  # quit() from napari itself: closing the window cancels all tasks
            self.state = "cancelled"
            show_warning(window_closed(self.name))

    def on_errored(self, exc: BaseException) -> None:
        self.state = "failed"
        if isinstance(exc, (ValueError, MemoryError)):  # the user's data or machine: no traceback needed
            log.info("napari-mpi: denoising %r failed: %s", self.name, exc)
        else:
            log.error("napari-mpi: denoising %r failed", self.name, exc_info=(type(exc), exc, exc.__traceback__))
        show_error(user_message(exc, self.name, self.plan.device.type))

    def on_finished(self) -> None:
        latest = self.latest
        try:
            if self.state != "done" and latest is not None and latest.iteration < latest.iterations:
                try:  # keep everything computed: the estimate after the last finished iteration
                    self.out[latest.index] = latest.estimate()
                except Exception:  # noqa: BLE001 (a device in an error state: keep the last redraw)
                    log.debug("napari-mpi: could not read the last estimate", exc_info=True)
        finally:
            # release the network, the optimiser and the estimate; closing the engine's generator
            # also empties the device's memory cache
            self.latest = None
            self.job.close()
            self.pbar.close()
        self._finalize_layer(latest)
        output = self.layer.name if self.layer is not None else None
        planes = self.planes_filled() if self.plan.reuse_network and self.plan.layout.n_planes > 1 else None
        text = run_summary(self.state, self.elapsed, output, latest, list(self.auto_reports.values()), planes)
        self._tell("run_finished", self, text)
        self.view = None
        if self.holder is not None and self.holder.get("run") is self:
            self.holder["run"] = None
        self.finished = True

    def planes_filled(self) -> list[dict]:
        """How each written plane was filled (``PlaneReport.as_dict``), in plane order; read after the worker ended."""
        return [report.as_dict() for report in sorted(self.plane_reports, key=lambda report: report.plane)]

    def _finalize_layer(self, latest: DenoiseProgress | None) -> None:
        if self.layer is None and self.state == "done":
            self._add_layer()  # a run so fast that no redraw happened
        layer = self.layer
        if layer is None or layer not in self.viewer.layers:
            return
        try:
            layer.metadata = finished_metadata(self, latest)
            if self.state != "done" and not self.preview:
                layer.name = f"{self.name} denoised (partial)"
            layer.refresh()
        except Exception:  # noqa: BLE001 (the viewer may be closing)
            log.debug("napari-mpi: could not finalise the output layer", exc_info=True)

    def _tell(self, method: str, *args: Any) -> None:
        """Call ``method`` of the widget, unless the widget is gone."""
        view = self.view
        if view is None or not view.alive:
            return
        try:
            getattr(view, method)(*args)
        except RuntimeError:  # the Qt side of the widget is gone
            log.debug("napari-mpi: widget no longer available", exc_info=True)
