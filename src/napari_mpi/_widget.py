"""The napari dock widget: parameters in, a thread worker out, a live output layer, progress, cancel.

The widget never runs the algorithm itself. It validates the parameters with
:func:`napari_mpi.prepare` on the GUI thread (so bad input is reported at once), then drives
:func:`napari_mpi.denoise_steps` in a napari ``thread_worker`` generator. The generator yields
after every fill iteration, which is where ``worker.quit()`` (Cancel) takes effect. At most
every :data:`REDRAW_INTERVAL` seconds the worker thread writes the current estimate of the plane
being processed into the output array (the data of the live layer) and flags the event, and the
GUI thread refreshes the layer (less often when redraws turn out slow: see :data:`REDRAW_BUDGET`).
Everything that can go wrong for a user ends in a napari notification, never in a raw exception.
"""

from __future__ import annotations

import logging
import math
import time
import weakref
from typing import Any, Callable, Generator

import numpy as np
from napari.layers import Image
from napari.qt.threading import create_worker
from napari.utils import progress
from napari.utils.notifications import show_error, show_warning
from qtpy.QtCore import QEvent, Qt
from qtpy.QtWidgets import (
    QCheckBox,
    QComboBox,
    QDoubleSpinBox,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QProgressBar,
    QPushButton,
    QSizePolicy,
    QSpinBox,
    QToolButton,
    QVBoxLayout,
    QWidget,
)

from .api import DenoisePlan, DenoiseProgress, DenoiseWarning, check_noise, denoise_steps, prepare
from .engine.auto import AutoReport
from .engine.devices import available_devices
from .engine.noise import CORRELATED_MASK_RATIO
from .settings import DEFAULT_MASK_RATIO, DEFAULT_PRESET, PRESETS, FillConfig, Start
from .weights import default_start

__all__ = ["MPIDenoiseWidget", "REDRAW_INTERVAL"]

log = logging.getLogger(__name__)

#: Shortest time between two refreshes of the live output layer (at most ~10 redraws per second).
#: An iteration slower than this refreshes the layer after every iteration.
REDRAW_INTERVAL = 0.1
#: Longest time between two refreshes (as long as iterations are shorter than this).
MAX_REDRAW_INTERVAL = 2.0
#: A redraw may use at most this share of the GUI thread's time: when redraws are slow (a big plane,
#: software OpenGL, a busy CPU) the interval grows, up to MAX_REDRAW_INTERVAL.
REDRAW_BUDGET = 0.25

PRESET_LABELS = ("Fast", "Quality", "Auto", "Custom")

TIPS = {
    "layer": (
        "The image layer to denoise. Only image layers are listed; RGB layers are denoised as colour.\n"
        "The input layer is never changed: the result goes to a new layer '<name> denoised'."
    ),
    "preset": (
        "Fast: beta 0.9 and 100 iterations for gray images (which start from the shipped pre-trained\n"
        "network); beta 0.95 and 300 iterations for colour (which start from the same network and still\n"
        "learn colour). A good result in a fraction of the time; start here.\n"
        "Quality: beta 0.95 and 1.5x Fast's iterations and time (gray 150, colour 450): on average +0.15 dB\n"
        "on confocal fluorescence and +0.05 dB on colour photos, but not better on every kind of data, and\n"
        "single images can lose; compare it with Fast on your own data.\n"
        "From a random start (mask ratios above 0.65) the paper's beta 0.99 and 1000 iterations, about 5x slower.\n"
        "Auto (experimental): decides for each image, without a clean reference, when to stop (at most\n"
        "'Iterations') and how many predictions to average: it holds back 10% of the pixels from training\n"
        "and stops when the network starts to learn the noise itself. Often quicker; not yet better than Fast.\n"
        "Custom: your own beta and iterations (chosen automatically when you edit them)."
    ),
    "mask_ratio": (
        "Fraction of pixels hidden from the network in each step (0.05-0.95).\n"
        "Keep 0.3 for ordinary camera noise (shot and read noise, independent from pixel to pixel).\n"
        "Raise it to 0.8-0.95 when the noise is spatially correlated (streaks, blotches, grain larger\n"
        "than one pixel, e.g. after binning, deconvolution or lossy compression): with few hidden\n"
        "pixels the network could copy such noise from the neighbours."
    ),
    "beta": (
        "Averaging weight of the running estimate (0-0.999). Higher averages more predictions:\n"
        "smoother, but it needs more iterations to settle (0.9 with Fast's iterations; Quality: 0.95 with\n"
        "150 or 450 from the pre-trained network, 0.99 with 1000 from a random start; Fast on colour images: 0.95).\n"
        "Lower it for a quick preview with few iterations."
    ),
    "iterations": (
        "Fill steps per plane; the time grows in proportion. The presets set it, fewer when the plane\n"
        "starts from the shipped pre-trained network (mask ratio up to 0.65), which learns faster and\n"
        "would start to reproduce the noise with as many steps as a random start needs; colour images\n"
        "need more than gray ones, since they also learn colour. After them the trained network makes\n"
        "up to 30 more predictions without training (about a quarter of a step's time each), which\n"
        "the progress counts too.\n"
        "Raise it when the result still looks grainy; lower it for a quick preview."
    ),
    "lr": (
        "Adam learning rate of the fine-tuning on your image (default 0.002; 0.004 for colour images,\n"
        "whose start from the gray network learns colour faster with it; it follows the chosen layer\n"
        "unless you changed it).\n"
        "Rarely needs changing: lower it (e.g. 0.001) if the result shows artefacts or blotches."
    ),
    "seed": (
        "Seeds the random masks: the same image, parameters and seed give the same result.\n"
        "Change it to check that a faint detail is real: real structure appears with every seed."
    ),
    "device": (
        "Where to compute. auto: a CUDA GPU, then Apple MPS, then the CPU.\n"
        "Choose cpu when the GPU runs out of memory or is busy with other work."
    ),
    "channel_axis": (
        "Leave at 'none' for a single-channel image, stack or time-lapse.\n"
        "Pick the axis that holds separate fluorescence channels (e.g. C in a ZCYX layer) so that each\n"
        "channel is denoised on its own as a gray image. RGB layers are handled as colour automatically."
    ),
    "reuse": (
        "For z-stacks and time-lapses whose neighbouring planes look alike: each plane after the first continues\n"
        "from the previous plane's network with ~10% of the iterations (Fast, gray: 10 steps + 10 predictions).\n"
        "Measured 4-6x faster on stacks of 10-32 planes, +0.2 to +0.6 dB on a time-lapse and a z-stack; planes\n"
        "that differ (separate fields of view, stains) lose ~0.1 dB on average, up to 0.7 dB on a 128x128 plane.\n"
        "Not with Auto."
    ),
    "refine": (
        "After each plane's fill, a block-matching Wiener filter with the fill's result as its guide and a noise\n"
        "model fitted to what the fill removed (no settings). Measured +0.25 to +0.54 dB on fluorescence and photos\n"
        "for about a third of a second per 256x256 plane. It assumes noise independent from pixel to pixel, so it\n"
        "is skipped at mask ratios above 0.65 (correlated noise). Turn it off to see the fill's own result."
    ),
    "crop": (
        "On the CPU, train each fill step on a random 256x256 window of a big gray plane (512x512 and up)\n"
        "instead of the whole plane: the plane's result gathers the windows' predictions, and the Wiener\n"
        "refinement evens them out; the windows add up to the pixels of the whole-plane steps. Measured as good or\n"
        "better on 512x512 fluorescence frames (+0.04 dB on average), 1.4x faster at 512x512 and 2x at 1024x1024,\n"
        "and the memory is one window's, so big planes need no tiles. Iterations still count whole-plane steps: the\n"
        "progress shows the window steps that stand for them. Colour planes stay whole (windows were 0.1 dB\n"
        "under on colour photos). Not with Auto. When reusing the network, the later planes continue in windows too."
    ),
    "noise_hint": (
        "napari-mpi checks whether the noise of the chosen image is shared by neighbouring pixels (colour\n"
        "cameras, resampled or filtered images). At the default mask ratio the fill then learns to copy the noise;\n"
        "0.85 hides enough pixels to avoid it (measured +2 to +5 dB on such images). The check also fires on\n"
        "some nearly clean images, where 0.85 blurs detail: compare both on a crop if unsure."
    ),
    "follow": "Move the viewer's sliders to the plane being denoised, so you can watch it improve.",
    "run": (
        "Denoise the chosen layer in the background; napari stays usable.\n"
        "While it runs this button cancels: what was computed so far is kept in a '(partial)' layer."
    ),
}


def _unwrap(obj: Any) -> Any:
    """The napari object behind a PublicOnlyProxy (for identity comparisons), or the object itself."""
    return getattr(obj, "__wrapped__", obj)


def format_duration(seconds: float) -> str:
    """``m:ss`` or ``h:mm:ss``; ``?`` when unknown."""
    if not math.isfinite(seconds) or seconds < 0:
        return "?"
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def progress_text(event: DenoiseProgress) -> str:
    """"plane i/N, iteration k/T, elapsed m:ss, ETA m:ss" for one progress event."""
    fraction = event.fraction
    eta = event.elapsed * (1.0 - fraction) / fraction if fraction > 0 else math.inf
    tiles = f" (in {event.tiles} tiles)" if event.tiles > 1 else ""
    auto = event.auto
    decided = f", auto: beta {auto.beta:g}, memorisation +{max(auto.rise, 0):.0%}" if auto is not None else ""
    return (
        f"plane {event.plane + 1}/{event.n_planes}{tiles}, iteration {event.iteration}/{event.iterations}, "
        f"elapsed {format_duration(event.elapsed)}, ETA {format_duration(eta)}{decided}"
    )


#: Outputs bigger than this, or of a lazily loaded (dask, zarr) layer, go to a disk-backed array.
IN_MEMORY_OUTPUT_LIMIT = 1 << 30


def output_array(data: Any, shape: tuple[int, ...]) -> np.ndarray:
    """The float32 array the run writes into and the output layer shows.

    In memory for ordinary layers. A layer napari opened lazily (dask or zarr: often bigger than memory)
    or an output over IN_MEMORY_OUTPUT_LIMIT gets a memory-mapped anonymous temporary file instead, so that
    only the planes being written or viewed occupy memory; the file disappears with the layer.
    """
    if isinstance(data, np.ndarray) and math.prod(shape) * 4 <= IN_MEMORY_OUTPUT_LIMIT:
        return np.zeros(shape, dtype=np.float32)
    import tempfile

    with tempfile.TemporaryFile(prefix="napari-mpi-") as backing:  # unnamed; the mapping keeps it alive
        return np.memmap(backing, dtype=np.float32, mode="w+", shape=shape)


def _denoise_job(
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


def _user_message(exc: BaseException, name: str, device: str | None = None) -> str:
    """One clear sentence for an error raised while denoising layer ``name`` on ``device`` ("cpu", "cuda", ...)."""
    text = str(exc).strip().rstrip(".")
    lowered = text.lower()
    if isinstance(exc, MemoryError) or "out of memory" in lowered or "can't allocate memory" in lowered:
        detail = text.split(";")[0].strip() or "not enough memory"  # the engine's own advice names API arguments
        advice = ("Close other programs to free memory, or denoise a smaller crop." if device == "cpu"
                  else "Close other programs using the GPU, or choose device 'cpu' under Advanced.")
        return f"Denoising '{name}' ran out of memory ({detail}). {advice}"
    if isinstance(exc, ValueError):
        return f"Cannot denoise '{name}': {text}."
    return (
        f"Denoising '{name}' stopped because of an unexpected error ({type(exc).__name__}: {text}). "
        "What was computed so far is kept."
    )


class _Failure:
    """An exception that ended the worker's generator, returned (not raised) to the GUI thread."""

    def __init__(self, error: BaseException) -> None:
        self.error = error


class _Run:
    """One denoising run: the worker, the live output layer and the progress bar.

    A plain object (not a QObject) so that its worker callbacks keep working, and free the device
    memory, even when the widget itself was destroyed mid-run (dock closed, viewer closed).
    """

    def __init__(
        self,
        widget: MPIDenoiseWidget,
        viewer: Any,
        source: Image,
        data: Any,
        plan: DenoisePlan,
        settings: dict[str, Any],
        follow: bool,
    ) -> None:
        self.widget: MPIDenoiseWidget | None = widget
        self.viewer = viewer
        self.source = source
        self.name = source.name
        self.plan = plan
        self.settings = settings
        self.follow = follow
        self.out = output_array(data, plan.layout.shape)
        self.layer: Image | None = None
        self.latest: DenoiseProgress | None = None
        self.auto_reports: dict[int, AutoReport] = {}  # plane -> the "auto" preset's last report
        self.state = "running"  # -> "done", "cancelled", "stopped" (layer removed), "failed"
        self.finished = False  # True once the worker has ended and the run has cleaned up
        self.holder: dict[str, Any] | None = None  # the widget's holder, cleared when finished
        self.redraws = 0
        self.started = time.monotonic()
        self._followed_plane: int | None = None
        total = plan.layout.n_planes * plan.steps_per_plane
        self.pbar = progress(total=total, desc=f"MPI denoise '{self.name}'")
        self._pbar_n = 0
        self.redraw_interval = REDRAW_INTERVAL
        self.job = _denoise_job(denoise_steps(data, plan, self.out), self.out, lambda: self.redraw_interval)
        job = self.job

        def drive():  # a generator function, so the worker is a GeneratorWorker with quit() at each yield
            try:
                return (yield from job)
            except Exception as exc:  # noqa: BLE001
                # handed to on_returned rather than raised: superqt takes a RuntimeError (torch's CUDA,
                # cuDNN and MPS errors) for a deleted worker and ends without "finished", which would
                # leave the run hanging; and an errored worker may get napari's raw traceback notification
                return _Failure(exc)

        drive.__qualname__ = f"napari-mpi denoising of {self.name!r}"  # shown by napari's close dialog
        self.worker = create_worker(
            drive,
            _start_thread=False,
            _connect={
                "yielded": self.on_yielded,
                "returned": self.on_returned,
                "errored": self.on_errored,
                "aborted": self.on_aborted,
                "finished": self.on_finished,
                "warned": self.on_warned,
            },
        )

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
            show_error(_user_message(exc, self.name))

    def _show(self, event: DenoiseProgress) -> None:
        if self.layer is None:
            self._add_layer()
        else:
            begin = time.perf_counter()
            self.layer.refresh()
            cost = time.perf_counter() - begin  # slicing, thumbnail, and the GIL shared with the worker
            self.redraw_interval = min(MAX_REDRAW_INTERVAL, max(REDRAW_INTERVAL, cost / REDRAW_BUDGET))
        self.redraws += 1
        if self.follow and event.plane != self._followed_plane and self.plan.layout.n_planes > 1:
            self._followed_plane = event.plane
            self._move_dims_to(event.index)
        done = round(event.fraction * self.pbar.total)  # planes reusing the network have fewer iterations
        self.pbar.update(done - self._pbar_n)
        self._pbar_n = done
        self._widget_call("_show_progress", progress_text(event), event.fraction)

    def _add_layer(self) -> None:
        src = self.source
        kwargs: dict[str, Any] = dict(
            name=f"{self.name} denoised",
            scale=src.scale,
            translate=src.translate,
            rotate=src.rotate,
            shear=src.shear,
            affine=src.affine,
            axis_labels=src.axis_labels,
            units=src.units,
            contrast_limits=src.contrast_limits,
            gamma=src.gamma,
            rgb=src.rgb,
            metadata={"napari_mpi": "running", "input_layer": self.name},
        )
        if not src.rgb:
            kwargs["colormap"] = src.colormap
        self.layer = _unwrap(self.viewer.add_image(self.out, **kwargs))
        if self.widget is not None:
            self.widget._output_layers.add(self.layer)

    def _move_dims_to(self, index: tuple) -> None:
        """Set the viewer's sliders to the plane ``index`` of the output layer."""
        layer = self.layer
        iter_axes = self.plan.layout.iter_axes
        position = [0.0] * layer.ndim
        for axis in iter_axes:
            position[axis] = float(index[axis])
        world = layer.data_to_world(position)
        dims = self.viewer.dims
        offset = dims.ndim - layer.ndim
        for axis in iter_axes:
            if offset + axis not in dims.displayed:
                dims.set_point(offset + axis, world[axis])

    def on_warned(self, args: tuple) -> None:
        """A warning raised in the worker (the arguments of warnings.showwarning): the engine's own
        (e.g. a plane denoised in tiles after running out of memory) become notifications."""
        message, category = args[0], args[1]
        if isinstance(category, type) and issubclass(category, DenoiseWarning):
            show_warning(f"Denoising '{self.name}': {message}.")
        else:
            log.info("napari-mpi: warning while denoising %r: %s", self.name, message)

    def on_returned(self, result: Any) -> None:
        if isinstance(result, _Failure):
            self.on_errored(result.error)
            return
        self.state = "done"

    def on_aborted(self) -> None:
        if self.state == "running":  # quit() from napari itself: closing the window cancels all tasks
            self.state = "cancelled"
            show_warning(f"Denoising '{self.name}' was cancelled because its napari window was closed.")

    def on_errored(self, exc: BaseException) -> None:
        self.state = "failed"
        if isinstance(exc, (ValueError, MemoryError)):  # the user's data or machine: no traceback needed
            log.info("napari-mpi: denoising %r failed: %s", self.name, exc)
        else:
            log.error("napari-mpi: denoising %r failed", self.name, exc_info=(type(exc), exc, exc.__traceback__))
        show_error(_user_message(exc, self.name, self.plan.device.type))

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
        text = self._summary(latest)
        self._widget_call("_run_finished", self, text)
        self.widget = None
        if self.holder is not None and self.holder.get("run") is self:
            self.holder["run"] = None
        self.finished = True

    def _finalize_layer(self, latest: DenoiseProgress | None) -> None:
        layer = self.layer
        if layer is None and self.state == "done":
            self._add_layer()  # a run so fast that no redraw happened
            layer = self.layer
        if layer is None or layer not in self.viewer.layers:
            return
        metadata = dict(self.plan.describe())
        metadata.update(self.settings)
        metadata.update(
            input_layer=self.name,
            status="complete" if self.state == "done" else "partial",
            elapsed_s=round(time.monotonic() - self.started, 2),
        )
        if self.auto_reports:  # what the "auto" preset decided, plane by plane
            metadata["auto"] = {
                str(plane): {"iterations": r.iteration, "stopped_early": r.stopped, "beta": r.beta,
                             "memorisation": round(r.memorisation, 4), "memorisation_rise": round(r.rise, 4)}
                for plane, r in sorted(self.auto_reports.items())
            }
        if self.state != "done" and latest is not None:
            metadata["stopped_at"] = {
                "plane": latest.plane + 1,
                "planes": latest.n_planes,
                "iteration": latest.iteration,
                "iterations": latest.iterations,
            }
        try:
            layer.metadata = metadata
            if self.state != "done":
                layer.name = f"{self.name} denoised (partial)"
            layer.refresh()
        except Exception:  # noqa: BLE001 (the viewer may be closing)
            log.debug("napari-mpi: could not finalise the output layer", exc_info=True)

    def _summary(self, latest: DenoiseProgress | None) -> str:
        elapsed = format_duration(time.monotonic() - self.started)
        if self.state == "done":
            done = f"Done in {elapsed}; the result is the layer '{self.layer.name if self.layer is not None else ''}'."
            reports = list(self.auto_reports.values())
            if len(reports) == 1:
                done += f" {reports[0].describe()}."
            elif reports:
                stops = [r.iteration for r in reports]
                done += (f" Auto ran {min(stops)}-{max(stops)} iterations per plane "
                         f"({sum(r.stopped for r in reports)} of {len(reports)} stopped early).")
            return done
        where = ""
        if latest is not None:
            where = f" at plane {latest.plane + 1}/{latest.n_planes}, iteration {latest.iteration}/{latest.iterations}"
        verb = {"cancelled": "Cancelled", "stopped": "Stopped", "failed": "Failed"}.get(self.state, "Stopped")
        kept = "; the partial result is kept" if self.layer is not None else ""
        return f"{verb}{where} after {elapsed}{kept}."

    def _widget_call(self, method: str, *args: Any) -> None:
        widget = self.widget
        if widget is None or not widget._alive:
            return
        try:
            getattr(widget, method)(*args)
        except RuntimeError:  # the Qt side of the widget is gone
            log.debug("napari-mpi: widget no longer available", exc_info=True)


def _on_widget_destroyed(holder: dict) -> None:
    """The widget's Qt object is gone (dock or viewer closed): stop a run and let it clean up."""
    holder["alive"] = False
    run: _Run | None = holder.get("run")
    if run is not None:
        run.widget = None
        run.cancel("cancelled", f"Denoising '{run.name}' was cancelled because its napari window was closed.")


class MPIDenoiseWidget(QWidget):
    """Dock widget: choose an image layer and parameters, denoise with MPI, watch the result live."""

    def __init__(self, napari_viewer: Any, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.viewer = napari_viewer
        self._run: _Run | None = None
        self._layers: list[Image] = []
        self._output_layers: weakref.WeakSet = weakref.WeakSet()
        self._holder: dict[str, Any] = {"alive": True, "run": None}
        self._docked = parent is not None
        self.destroyed.connect(lambda *_, holder=self._holder: _on_widget_destroyed(holder))
        self._build()
        self._connect_viewer()
        self._refresh_layers()

    @property
    def _alive(self) -> bool:
        return self._holder["alive"]

    def event(self, event: QEvent) -> bool:
        """Closing the dock (napari takes the widget out of it) cancels a run: no Cancel button is left."""
        if event.type() == QEvent.Type.ParentChange:
            run = self._run
            if self.parent() is None and self._docked and run is not None and run.state == "running":
                run.cancel("cancelled", f"The MPI denoise panel was closed, so denoising '{run.name}' stopped; "
                                        "what was computed so far is kept.")
            self._docked = self.parent() is not None
        return super().event(event)

    # -- layout --------------------------------------------------------------------------
    def _build(self) -> None:
        layout = QVBoxLayout(self)
        form = QFormLayout()
        form.setFieldGrowthPolicy(QFormLayout.FieldGrowthPolicy.AllNonFixedFieldsGrow)

        self.layer_combo = QComboBox()
        self.layer_combo.setToolTip(TIPS["layer"])
        self.layer_combo.setSizeAdjustPolicy(QComboBox.SizeAdjustPolicy.AdjustToMinimumContentsLengthWithIcon)
        self.layer_combo.setMinimumContentsLength(12)
        self.layer_combo.currentIndexChanged.connect(self._on_layer_chosen)
        form.addRow("Image", self.layer_combo)

        self.preset_combo = QComboBox()
        self.preset_combo.addItems(PRESET_LABELS)
        self.preset_combo.setToolTip(TIPS["preset"])
        form.addRow("Preset", self.preset_combo)

        self.mask_ratio = QDoubleSpinBox()
        self.mask_ratio.setRange(0.05, 0.95)
        self.mask_ratio.setSingleStep(0.05)
        self.mask_ratio.setDecimals(2)
        self.mask_ratio.setValue(DEFAULT_MASK_RATIO)
        self.mask_ratio.setToolTip(TIPS["mask_ratio"])
        form.addRow("Mask ratio", self.mask_ratio)
        # shown when the chosen layer's noise looks spatially correlated (napari_mpi.noise): a hint, one click to take
        self.noise_hint = QLabel("")
        self.noise_hint.setWordWrap(True)
        self.noise_hint.setToolTip(TIPS["noise_hint"])
        self.use_hint = QPushButton(f"Use {CORRELATED_MASK_RATIO:g}")
        self.use_hint.setToolTip(TIPS["noise_hint"])
        self.use_hint.clicked.connect(lambda: self.mask_ratio.setValue(CORRELATED_MASK_RATIO))
        hint_row = QHBoxLayout()
        hint_row.setContentsMargins(0, 0, 0, 0)
        hint_row.addWidget(self.noise_hint, 1)
        hint_row.addWidget(self.use_hint)
        self.hint_box = QWidget()
        self.hint_box.setLayout(hint_row)
        self.hint_box.setVisible(False)
        form.addRow("", self.hint_box)

        self.beta = QDoubleSpinBox()
        self.beta.setRange(0.0, 0.999)
        self.beta.setSingleStep(0.01)
        self.beta.setDecimals(3)
        self.beta.setToolTip(TIPS["beta"])
        form.addRow("Beta", self.beta)

        self.iterations = QSpinBox()
        self.iterations.setRange(1, 100_000)
        self.iterations.setSingleStep(50)
        self.iterations.setToolTip(TIPS["iterations"])
        form.addRow("Iterations", self.iterations)
        layout.addLayout(form)

        self.advanced_toggle = QToolButton()
        self.advanced_toggle.setText("Advanced")
        self.advanced_toggle.setCheckable(True)
        self.advanced_toggle.setChecked(False)
        self.advanced_toggle.setArrowType(Qt.ArrowType.RightArrow)
        self.advanced_toggle.setToolButtonStyle(Qt.ToolButtonStyle.ToolButtonTextBesideIcon)
        self.advanced_toggle.setStyleSheet("QToolButton { border: none; }")
        self.advanced_toggle.setToolTip("Learning rate, seed, device, channel axis and the Wiener refinement: rarely needed.")
        self.advanced_toggle.toggled.connect(self._toggle_advanced)
        layout.addWidget(self.advanced_toggle)

        self.advanced = QWidget()
        adv = QFormLayout(self.advanced)
        adv.setContentsMargins(12, 0, 0, 0)
        self.lr = QDoubleSpinBox()
        self.lr.setDecimals(5)
        self.lr.setRange(0.00001, 0.1)
        self.lr.setSingleStep(0.0005)
        self.lr.setValue(FillConfig.lr)
        self._start_lr = FillConfig.lr  # the learning rate the current start uses: the field follows it until edited
        self.lr.setToolTip(TIPS["lr"])
        adv.addRow("Learning rate", self.lr)
        self.seed = QSpinBox()
        self.seed.setRange(0, 2**31 - 1)
        self.seed.setValue(0)
        self.seed.setToolTip(TIPS["seed"])
        adv.addRow("Seed", self.seed)
        self.device = QComboBox()
        self.device.addItems(available_devices())
        self.device.setToolTip(TIPS["device"])
        adv.addRow("Device", self.device)
        self.channel_axis = QComboBox()
        self.channel_axis.setToolTip(TIPS["channel_axis"])
        adv.addRow("Channel axis", self.channel_axis)
        self.refine = QCheckBox("Wiener refinement after the fill (mask ratio up to 0.65)")
        self.refine.setChecked(True)
        self.refine.setToolTip(TIPS["refine"])
        adv.addRow("", self.refine)
        self.crop = QCheckBox("Train on 256x256 windows of big gray planes (CPU, faster)")
        self.crop.setChecked(True)
        self.crop.setToolTip(TIPS["crop"])
        adv.addRow("", self.crop)
        self.advanced.setVisible(False)
        layout.addWidget(self.advanced)

        self.reuse = QCheckBox("Reuse the network from plane to plane (faster)")
        self.reuse.setChecked(False)
        self.reuse.setToolTip(TIPS["reuse"])
        layout.addWidget(self.reuse)

        self.follow = QCheckBox("Show the plane being denoised")
        self.follow.setChecked(True)
        self.follow.setToolTip(TIPS["follow"])
        layout.addWidget(self.follow)

        self.run_button = QPushButton("Denoise")
        self.run_button.setToolTip(TIPS["run"])
        self.run_button.clicked.connect(self._on_run_clicked)
        layout.addWidget(self.run_button)

        self.progress_bar = QProgressBar()
        self.progress_bar.setRange(0, 1000)
        self.progress_bar.setValue(0)
        self.progress_bar.setTextVisible(False)
        self.progress_bar.setVisible(False)
        layout.addWidget(self.progress_bar)

        self.status = QLabel("")
        self.status.setWordWrap(True)
        self.status.setSizePolicy(QSizePolicy.Policy.Preferred, QSizePolicy.Policy.Minimum)
        layout.addWidget(self.status)
        layout.addStretch(1)

        self._parameter_widgets = [
            self.layer_combo, self.preset_combo, self.mask_ratio, self.beta, self.iterations,
            self.lr, self.seed, self.device, self.channel_axis, self.refine, self.crop, self.reuse,
        ]
        self.preset_combo.currentTextChanged.connect(self._on_preset)
        self.mask_ratio.valueChanged.connect(self._on_start_changed)
        self.beta.valueChanged.connect(self._on_value_edited)
        self.iterations.valueChanged.connect(self._on_value_edited)
        self.preset_combo.setCurrentText(DEFAULT_PRESET.capitalize())
        self._on_preset(DEFAULT_PRESET.capitalize())

    def _toggle_advanced(self, shown: bool) -> None:
        self.advanced.setVisible(shown)
        self.advanced_toggle.setArrowType(Qt.ArrowType.DownArrow if shown else Qt.ArrowType.RightArrow)

    # -- presets -------------------------------------------------------------------------
    @property
    def _auto_chosen(self) -> bool:
        """The chosen preset decides per plane itself (Auto)."""
        preset = PRESETS.get(self.preset_combo.currentText().lower())
        return preset is not None and preset.selfsup

    def _grey_out_for_auto(self) -> None:
        """Auto chooses beta itself and decides per plane: beta and network reuse are off for it."""
        for widget in (self.beta, self.reuse):
            widget.setEnabled(not self._auto_chosen)

    def _start(self) -> Start:
        """What Denoise would start from with the shipped weights (it depends on gray / colour and the mask
        ratio), which sets the presets' iterations and beta."""
        layer = self.chosen_layer()
        rgb = bool(layer.rgb) if layer is not None else False
        return default_start(3 if rgb else 1, "channel" if rgb else "pixel", self.mask_ratio.value())

    def _on_start_changed(self, *_: Any) -> None:
        """Another layer or mask ratio may change the start, and so a fixed preset's iterations and the
        learning rate (unless the user set their own)."""
        lr = PRESETS[DEFAULT_PRESET].config(self._start()).lr
        if math.isclose(self.lr.value(), self._start_lr):
            self.lr.setValue(lr)
        self._start_lr = lr
        label = self.preset_combo.currentText()
        if label.lower() in PRESETS and not self._auto_chosen:
            self._on_preset(label)

    def _on_preset(self, label: str) -> None:
        self._grey_out_for_auto()
        preset = PRESETS.get(label.lower())
        if preset is None:  # Custom: keep the current values
            return
        config = preset.config(self._start())
        beta, iterations = config.beta, config.iterations
        for widget, value in ((self.beta, beta), (self.iterations, iterations)):
            widget.blockSignals(True)
            widget.setValue(value)
            widget.blockSignals(False)

    def _on_value_edited(self, *_: Any) -> None:
        if self._auto_chosen:
            return  # Auto with another iteration cap (its beta cannot be edited)
        label = "Custom"
        start = self._start()
        for name, preset in PRESETS.items():
            if preset.selfsup:
                continue
            config = preset.config(start)
            if math.isclose(self.beta.value(), config.beta) and self.iterations.value() == config.iterations:
                label = name.capitalize()
        if self.preset_combo.currentText() != label:
            self.preset_combo.blockSignals(True)
            self.preset_combo.setCurrentText(label)
            self.preset_combo.blockSignals(False)

    # -- layer chooser -------------------------------------------------------------------
    def _connect_viewer(self) -> None:
        layers = self.viewer.layers
        layers.events.inserted.connect(self._on_inserted)
        layers.events.removed.connect(self._on_removed)
        layers.events.moved.connect(self._refresh_layers)
        layers.events.reordered.connect(self._refresh_layers)
        layers.selection.events.active.connect(self._on_active)
        for layer in layers:
            _unwrap(layer).events.name.connect(self._refresh_layers)

    def _on_inserted(self, event: Any) -> None:
        layer = _unwrap(event.value)
        layer.events.name.connect(self._refresh_layers)
        self._refresh_layers()

    def _on_removed(self, event: Any) -> None:
        layer = _unwrap(event.value)
        try:
            layer.events.name.disconnect(self._refresh_layers)
        except Exception:  # noqa: BLE001 (was not connected)
            pass
        run = self._run
        if run is not None and run.state == "running":
            if layer is run.source:
                run.cancel("stopped", f"The layer '{run.name}' was removed while it was being denoised, "
                                      "so denoising stopped.")
            elif layer is run.layer:
                run.layer = None
                run.cancel("stopped", f"The output layer '{layer.name}' was removed, so denoising of "
                                      f"'{run.name}' stopped.")
        self._refresh_layers()

    def _on_active(self, event: Any) -> None:
        layer = _unwrap(event.value)
        if (
            isinstance(layer, Image)
            and layer not in self._output_layers
            and (self._run is None)
            and layer in self._layers
        ):
            self.layer_combo.setCurrentIndex(self._layers.index(layer))

    def _refresh_layers(self, *_: Any) -> None:
        """Rebuild the list of image layers (top layer first, as in napari's layer list)."""
        current = self.chosen_layer()
        layers = [_unwrap(layer) for layer in reversed(list(self.viewer.layers))]
        self._layers = [layer for layer in layers if isinstance(layer, Image)]
        if current not in self._layers:
            active = _unwrap(self.viewer.layers.selection.active)
            if active in self._layers and active not in self._output_layers:
                current = active
            else:
                candidates = [layer for layer in self._layers if layer not in self._output_layers]
                current = (candidates or self._layers or [None])[0]
        self.layer_combo.blockSignals(True)
        self.layer_combo.clear()
        for layer in self._layers:
            self.layer_combo.addItem(layer.name + (" (RGB)" if layer.rgb else ""))
        if current is not None:
            self.layer_combo.setCurrentIndex(self._layers.index(current))
        self.layer_combo.blockSignals(False)
        self._on_layer_chosen()

    def chosen_layer(self) -> Image | None:
        """The image layer that Denoise would process."""
        index = self.layer_combo.currentIndex()
        if 0 <= index < len(self._layers):
            return self._layers[index]
        return None

    def _on_layer_chosen(self, *_: Any) -> None:
        """Offer the axes of the chosen layer as channel axes (keeping the choice when it still fits)."""
        layer = self.chosen_layer()
        previous = self.channel_axis.currentData()
        self.channel_axis.blockSignals(True)
        self.channel_axis.clear()
        self.channel_axis.addItem("none", None)
        if layer is not None:
            shape = _layer_data(layer).shape
            spatial_needed = 3 if layer.rgb else 2
            if len(shape) > spatial_needed:
                labels = list(layer.axis_labels)
                for axis in range(len(shape) - (1 if layer.rgb else 0)):
                    label = labels[axis] if axis < len(labels) else str(axis)
                    self.channel_axis.addItem(f"axis {axis} ({label}, size {shape[axis]})", axis)
        found = self.channel_axis.findData(previous)
        self.channel_axis.setCurrentIndex(found if found >= 0 else 0)
        self.channel_axis.blockSignals(False)
        self._on_start_changed()
        self._check_noise(layer)
        if self._run is None:
            self.run_button.setEnabled(layer is not None)

    def _check_noise(self, layer: Image | None) -> None:
        """Show the hint when the chosen layer's noise looks spatially correlated. Layers in memory only: a lazy
        (dask, zarr) layer would be read from disk for it."""
        data = _layer_data(layer) if layer is not None else None
        hint = None
        if isinstance(data, np.ndarray) and not isinstance(data, np.memmap):
            try:
                hint = check_noise(data, rgb=bool(layer.rgb))
            except ValueError:  # a shape the denoiser refuses too; it says why when Denoise is clicked
                hint = None
        correlated = hint is not None and hint.correlated
        if correlated:
            self.noise_hint.setText(f"Noise looks spatially correlated (score {hint.score:.2f}): a mask ratio of "
                                    f"{CORRELATED_MASK_RATIO:g} may do much better.")
        self.hint_box.setVisible(correlated)

    # -- running -------------------------------------------------------------------------
    def parameters(self) -> dict[str, Any]:
        """The keyword arguments for :func:`napari_mpi.prepare` chosen in the widget."""
        preset = self.preset_combo.currentText().lower()
        layer = self.chosen_layer()
        return dict(
            preset=preset if preset in PRESETS else "fast",
            mask_ratio=round(self.mask_ratio.value(), 4),
            beta=None if self._auto_chosen else round(self.beta.value(), 6),
            iterations=int(self.iterations.value()),
            lr=round(self.lr.value(), 8),
            seed=int(self.seed.value()),
            device=self.device.currentText(),
            channel_axis=self.channel_axis.currentData(),
            rgb=bool(layer.rgb) if layer is not None else False,
            reuse_network=self.reuse.isChecked() and not self._auto_chosen,
            refine="auto" if self.refine.isChecked() else "none",
            crop="auto" if self.crop.isChecked() else "none",
        )

    def _on_run_clicked(self) -> None:
        if self._run is not None:
            self.cancel()
        else:
            self.start()

    def start(self) -> _Run | None:
        """Validate and start denoising the chosen layer; returns the run, or None after a notification."""
        if self._run is not None:
            return None
        layer = self.chosen_layer()
        if layer is None:
            show_warning("Open or choose an image layer to denoise first.")
            return None
        data = _layer_data(layer)
        params = self.parameters()
        try:
            plan = prepare(tuple(data.shape), data.dtype, **params)
        except ValueError as exc:
            show_error(_user_message(exc, layer.name))
            return None
        except Exception as exc:  # noqa: BLE001 (e.g. a damaged weights file)
            log.exception("napari-mpi: preparing the run failed")
            show_error(f"Cannot start denoising '{layer.name}' ({type(exc).__name__}: {exc}).")
            return None
        settings = {"preset": self.preset_combo.currentText().lower(), "channel_axis": params["channel_axis"]}
        run = _Run(self, self.viewer, layer, data, plan, settings, self.follow.isChecked())
        self._run = run
        self._holder["run"] = run
        run.holder = self._holder
        self._set_running(True)
        self.status.setText(f"Starting on {plan.device.type.upper()}: {plan.layout.n_planes} plane(s) of "
                            f"{plan.describe_length()}...")
        run.start()
        return run

    def cancel(self) -> None:
        """Stop the current run within one iteration, keeping what was computed."""
        run = self._run
        if run is not None and run.state == "running":
            run.cancel()
            self.run_button.setEnabled(False)
            self.run_button.setText("Cancelling...")

    @property
    def worker(self):
        """The running thread worker, or None."""
        return self._run.worker if self._run is not None else None

    def _set_running(self, running: bool) -> None:
        for widget in self._parameter_widgets:
            widget.setEnabled(not running)
        if not running:
            self._grey_out_for_auto()
        self.run_button.setText("Cancel" if running else "Denoise")
        self.run_button.setEnabled(running or self.chosen_layer() is not None)
        self.progress_bar.setVisible(running)
        if running:
            self.progress_bar.setValue(0)

    def _show_progress(self, text: str, fraction: float) -> None:
        self.status.setText(text)
        self.progress_bar.setValue(int(round(1000 * fraction)))

    def _run_finished(self, run: _Run, text: str) -> None:
        if self._run is run:
            self._run = None
            self._holder["run"] = None
        self._set_running(False)
        self.status.setText(text)
        self._refresh_layers()


def _layer_data(layer: Image) -> Any:
    """The array to denoise: the layer's data, or the full-resolution level of a multiscale layer."""
    return layer.data[0] if layer.multiscale else layer.data
