"""Denoising several image layers one after another with the form's settings.

The dock widget resolves which layers to denoise when Denoise is clicked (:func:`queued_layers`: the selected
image layers or all of them, top first as in napari's layer list, without the layers napari-mpi made), then
hands them to a :class:`Queue`. The queue runs one :class:`.run.Run` per layer, each with its own thread
worker, output layer and napari progress bar; it is the view those runs report to, and it passes their
progress on to the widget as "layer k of n". A layer's run is prepared when its turn comes, from the layer it
was queued for: what the user selects meanwhile changes nothing, a layer removed before its turn is skipped,
and a layer that cannot be denoised is reported while the queue goes on. Cancel (or closing the panel or the
window) ends the current layer's run as it does for one layer and starts no more.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from napari.layers import Image
from napari.utils import progress
from napari.utils.notifications import show_warning

from . import presets
from .layers import layer_data, unwrap
from .run import Run, RunView
from .texts import layer_skipped, queue_progress, queue_summary, starting

__all__ = ["Outcome", "Queue", "is_output", "parameters_for", "queued_layers"]

log = logging.getLogger(__name__)


def is_output(layer: Image) -> bool:
    """Whether napari-mpi made ``layer`` (a denoised or preview layer: its metadata names its input layer)."""
    metadata = layer.metadata or {}
    return "input_layer" in metadata and ("napari_mpi" in metadata or "napari_mpi_version" in metadata)


def queued_layers(viewer: Any, scope: str, outputs: Iterable[Image] = ()) -> list[Image]:
    """The image layers that ``scope`` ("selected" or "all") names, top first as napari's layer list shows them,
    without those napari-mpi made (``outputs``: the ones this widget added, whatever their metadata now says)."""
    made = list(outputs)
    selected = [unwrap(layer) for layer in viewer.layers.selection]
    layers = []
    for layer in reversed([unwrap(layer) for layer in viewer.layers]):
        if not isinstance(layer, Image) or is_output(layer) or any(layer is other for other in made):
            continue
        if scope == "all" or any(layer is other for other in selected):
            layers.append(layer)
    return layers


def parameters_for(layer: Image, params: dict[str, Any], *, label: str, chosen: Image | None,
                   lr_follows: bool) -> dict[str, Any]:
    """The form's ``prepare`` arguments (``params``, worked out for the chosen layer) for another ``layer``.

    A fixed preset (``label``; not Custom, not Auto's iteration cap) gives the beta and iterations of what this
    layer starts from (gray or colour), and so does the learning rate unless the user set their own
    (``lr_follows``). The channel axis applies to the layers shaped like the chosen one: as many dimensions, and
    gray or colour like it."""
    values = dict(params, rgb=bool(layer.rgb))
    if layer is not chosen:
        alike = (chosen is not None and bool(layer.rgb) == bool(chosen.rgb)
                 and len(layer_data(layer).shape) == len(layer_data(chosen).shape))
        values["channel_axis"] = params["channel_axis"] if alike else None
    start = presets.start_for(bool(layer.rgb), params["mask_ratio"])
    fixed = None if presets.is_auto(label) else presets.preset_values(label, start)
    if fixed is not None:
        values["beta"], values["iterations"] = round(fixed[0], 6), int(fixed[1])
    if lr_follows:
        values["lr"] = round(presets.start_lr(start), 8)
    return values


@dataclass
class Outcome:
    """What became of one queued layer: ``state`` is "waiting", "running", a run's end state ("done",
    "cancelled", "stopped", "failed"), "skipped" (removed before its turn) or "refused" (not started: its
    parameters or shape were refused); ``output``: the name of its output layer, if it got one."""

    name: str
    state: str = "waiting"
    output: str | None = None


class Queue:
    """The layers of one click of Denoise, denoised one after another; the view of their runs.

    ``widget``: the dock widget (a RunView that also launches runs: ``_launch(run, text)``);
    ``make_run(layer, view)``: a Run for ``layer`` reporting to ``view``, or None after a notification.
    ``finished`` is True once the last run ended and the widget was told.
    """

    def __init__(self, widget: Any, viewer: Any, layers: list[Image],
                 make_run: Callable[[Image, RunView], Run | None]) -> None:
        self.widget = widget
        self.viewer = viewer
        self.layers = list(layers)
        self.outcomes = [Outcome(layer.name) for layer in self.layers]
        self._make_run = make_run
        self.position = -1  # the layer whose turn it is
        self.run: Run | None = None  # the last run started
        self.runs: list[Run] = []
        self.stopping = False
        self.finished = False
        self.started = time.monotonic()
        self.pbar = progress(total=len(self.layers), desc=f"MPI denoise: {len(self.layers)} layers")

    # -- RunView: what each run tells, passed on to the widget -----------------------------
    @property
    def alive(self) -> bool:
        return bool(self.widget.alive)

    def output_added(self, layer: Image) -> None:
        self.outcomes[self.position].output = layer.name
        self.widget.output_added(layer)

    def show_progress(self, text: str, fraction: float) -> None:
        n = len(self.layers)
        self.widget.show_progress(queue_progress(self.position, n, self.layers[self.position].name, text),
                                  (self.position + fraction) / n)

    def run_finished(self, run: Run, text: str) -> None:
        """A run's summary, logged: the queue goes on from :meth:`_after`, which also runs when the widget is gone
        (a run then tells it nothing), and the status line shows the queue's summary at the end."""
        log.info("napari-mpi: layer %d/%d %r: %s", self.position + 1, len(self.layers), run.name, text)

    # -- the queue -------------------------------------------------------------------------
    def start(self) -> None:
        """Start the first layer that can be denoised (the queue may end at once when none can)."""
        self._next()

    def cancel(self) -> None:
        """Start no more layers (the widget's Cancel also ends the current layer's run)."""
        self.stopping = True

    def _next(self) -> None:
        while not self.stopping and self.position + 1 < len(self.layers):
            self.position += 1
            if self._launch(self.layers[self.position], self.outcomes[self.position]):
                return
            self.pbar.update(1)
        self._end()

    def _launch(self, layer: Image, outcome: Outcome) -> bool:
        """Start ``layer``'s run; False (after a notification) when it was removed or cannot be denoised."""
        if not any(unwrap(other) is layer for other in self.viewer.layers):
            outcome.state = "skipped"
            show_warning(layer_skipped(outcome.name))
            return False
        run = self._make_run(layer, self)
        if run is None:
            outcome.state = "refused"
            return False
        outcome.state = "running"
        self.run = run
        self.runs.append(run)
        run.worker.finished.connect(lambda run=run: self._after(run))  # after the run's own on_finished
        n = len(self.layers)
        self.widget._launch(run, queue_progress(self.position, n, outcome.name, starting(run.plan)))
        return True

    def _after(self, run: Run) -> None:
        """The current layer's worker ended: note how, then go on unless cancelled or the widget is gone."""
        outcome = self.outcomes[self.position]
        outcome.state = run.state
        if run.layer is not None and run.layer in self.viewer.layers:
            outcome.output = run.layer.name
        self.pbar.update(1)
        if run.state == "cancelled" or not self.alive:
            self.stopping = True
        try:
            self._next()
        except Exception:  # noqa: BLE001 (the viewer may be closing)
            log.exception("napari-mpi: the queue could not go on")
            self.stopping = True
            self._end()

    def _end(self) -> None:
        if self.finished:
            return
        self.finished = True
        self.pbar.close()
        text = queue_summary(self.outcomes, time.monotonic() - self.started)
        if self.alive:
            self.widget.run_finished(self.run, text)
