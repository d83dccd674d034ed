"""The dock widget: the form's reactions, the layer chooser, and starting, cancelling and ending runs.

napari's manifest docks :class:`MPIDenoiseWidget` (a QWidget holding the magicgui form). Its reactions:
a preset fills in beta and iterations for what the run would start from, and editing them switches the
preset to the one they match (else Custom); the image chooser follows napari's layers and selection; the
chosen layer's noise is checked for the mask-ratio hint. The run itself is a :class:`.run.Run`.
"""

from __future__ import annotations

import logging
import math
import weakref
from typing import Any

import numpy as np
from napari.layers import Image
from napari.utils.notifications import show_error, show_warning
from qtpy.QtCore import QEvent
from qtpy.QtWidgets import QVBoxLayout, QWidget

from . import presets
from .engine import available_devices, check_noise, prepare
from .form import DenoiseForm, quietly
from .layers import layer_data, unwrap
from .run import Run
from .texts import (
    NO_LAYER,
    cannot_start,
    input_removed,
    noise_hint,
    output_removed,
    panel_closed,
    starting,
    user_message,
    window_closed,
)

__all__ = ["MPIDenoiseWidget"]

log = logging.getLogger(__name__)


def _on_widget_destroyed(holder: dict) -> None:
    """The widget's Qt object is gone (dock or viewer closed): stop a run and let it clean up."""
    holder["alive"] = False
    run: Run | None = holder.get("run")
    if run is not None:
        run.view = None
        run.cancel("cancelled", window_closed(run.name))


def _layer_label(layer: Image) -> str:
    return layer.name + (" (RGB)" if layer.rgb else "")


def _axis_choices(layer: Image | None) -> list[tuple[str, int | None]]:
    """"none", then the axes of ``layer`` that could hold channels (none for a single plane)."""
    choices: list[tuple[str, int | None]] = [("none", None)]
    if layer is None:
        return choices
    shape = layer_data(layer).shape
    if len(shape) > (3 if layer.rgb else 2):
        labels = list(layer.axis_labels)
        for axis in range(len(shape) - (1 if layer.rgb else 0)):
            label = labels[axis] if axis < len(labels) else str(axis)
            choices.append((f"axis {axis} ({label}, size {shape[axis]})", axis))
    return choices


class MPIDenoiseWidget(QWidget):
    """Dock widget: choose an image layer and parameters, denoise with MPI, watch the result live."""

    def __init__(self, napari_viewer: Any, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.viewer = napari_viewer
        self._run: Run | None = None
        self._layers: list[Image] = []
        self._output_layers: weakref.WeakSet = weakref.WeakSet()
        self._holder: dict[str, Any] = {"alive": True, "run": None}
        self._docked = parent is not None
        self._start_lr = presets.start_lr("random")  # the field follows the start's learning rate until edited
        self._hint_ratio: float | None = None
        self.destroyed.connect(lambda *_, holder=self._holder: _on_widget_destroyed(holder))
        self.form = DenoiseForm(presets=presets.NAMES, devices=available_devices(),
                                mask_ratio=presets.DEFAULT_MASK_RATIO, lr=self._start_lr)
        layout = QVBoxLayout(self)
        layout.addWidget(self.form.container.native)
        layout.addStretch(1)
        self._connect_form()
        self._connect_viewer()
        self._refresh_layers()

    @property
    def alive(self) -> bool:
        """False once the Qt side of the widget is gone (runs then stop telling it their progress)."""
        return self._holder["alive"]

    def event(self, event: QEvent) -> bool:
        """Closing the dock (napari takes the widget out of it) cancels a run: no Cancel button is left.
        Shown (in napari's theme), the form lines up its fields."""
        if event.type() == QEvent.Type.Show:
            self.form.align_labels()
        if event.type() == QEvent.Type.ParentChange:
            run = self._run
            if self.parent() is None and self._docked and run is not None and run.state == "running":
                run.cancel("cancelled", panel_closed(run.name))
            self._docked = self.parent() is not None
        return super().event(event)

    def _connect_form(self) -> None:
        form = self.form
        form.layer.changed.connect(self._on_layer_chosen)
        form.preset.changed.connect(self._on_preset)
        form.mask_ratio.changed.connect(self._on_start_changed)
        form.beta.changed.connect(self._on_value_edited)
        form.iterations.changed.connect(self._on_value_edited)
        form.use_hint.changed.connect(self._use_hint)
        form.run_button.changed.connect(self._on_run_clicked)
        form.preset.value = presets.DEFAULT_LABEL
        self._on_preset(presets.DEFAULT_LABEL)

    # -- presets -------------------------------------------------------------------------
    @property
    def _auto_chosen(self) -> bool:
        return presets.is_auto(self.form.preset.value)

    def _grey_out_for_auto(self) -> None:
        """Auto chooses beta itself and decides per plane: beta and network reuse are off for it."""
        for widget in (self.form.beta, self.form.reuse):
            widget.enabled = not self._auto_chosen

    def _start(self) -> str:
        """What Denoise would start from with the shipped weights (it depends on gray / colour and the mask
        ratio), which sets the presets' iterations and beta."""
        layer = self.chosen_layer()
        return presets.start_for(bool(layer.rgb) if layer is not None else False, self.form.mask_ratio.value)

    def _on_start_changed(self, *_: Any) -> None:
        """Another layer or mask ratio may change the start, and so a fixed preset's iterations and the
        learning rate (unless the user set their own)."""
        lr = presets.start_lr(self._start())
        if math.isclose(self.form.lr.value, self._start_lr):
            self.form.lr.value = lr
        self._start_lr = lr
        label = self.form.preset.value
        if presets.name_for(label) is not None and not self._auto_chosen:
            self._on_preset(label)

    def _on_preset(self, label: str) -> None:
        self._grey_out_for_auto()
        values = presets.preset_values(label, self._start())
        if values is None:  # Custom: keep the current values
            return
        form = self.form
        with quietly(form.beta, form.iterations):
            form.beta.value, form.iterations.value = values

    def _on_value_edited(self, *_: Any) -> None:
        if self._auto_chosen:
            return  # Auto with another iteration cap (its beta cannot be edited)
        form = self.form
        label = presets.matching_label(form.beta.value, form.iterations.value, self._start())
        if form.preset.value != label:
            with quietly(form.preset):
                form.preset.value = label

    # -- layer chooser -------------------------------------------------------------------
    def _connect_viewer(self) -> None:
        layers = self.viewer.layers
        layers.events.inserted.connect(self._on_inserted)
        layers.events.removed.connect(self._on_removed)
        layers.events.moved.connect(self._refresh_layers)
        layers.events.reordered.connect(self._refresh_layers)
        layers.selection.events.active.connect(self._on_active)
        for layer in layers:
            unwrap(layer).events.name.connect(self._refresh_layers)

    def _on_inserted(self, event: Any) -> None:
        unwrap(event.value).events.name.connect(self._refresh_layers)
        self._refresh_layers()

    def _on_removed(self, event: Any) -> None:
        layer = unwrap(event.value)
        try:
            layer.events.name.disconnect(self._refresh_layers)
        except Exception:  # noqa: BLE001 (was not connected)
            pass
        run = self._run
        if run is not None and run.state == "running":
            if layer is run.source:
                run.cancel("stopped", input_removed(run.name))
            elif layer is run.layer:
                run.layer = None
                run.cancel("stopped", output_removed(layer.name, run.name))
        self._refresh_layers()

    def _on_active(self, event: Any) -> None:
        layer = unwrap(event.value)
        offered = isinstance(layer, Image) and layer in self._layers and layer not in self._output_layers
        if offered and self._run is None:
            self.form.layer.value = layer

    def _refresh_layers(self, *_: Any) -> None:
        """Rebuild the list of image layers (top layer first, as in napari's layer list)."""
        current = self.chosen_layer()
        layers = [unwrap(layer) for layer in reversed(list(self.viewer.layers))]
        self._layers = [layer for layer in layers if isinstance(layer, Image)]
        if current not in self._layers:
            active = unwrap(self.viewer.layers.selection.active)
            if active in self._layers and active not in self._output_layers:
                current = active
            else:
                candidates = [layer for layer in self._layers if layer not in self._output_layers]
                current = (candidates or self._layers or [None])[0]
        self.form.set_choices(self.form.layer, [(_layer_label(layer), layer) for layer in self._layers], current)
        self._on_layer_chosen()

    def chosen_layer(self) -> Image | None:
        """The image layer that Denoise would process."""
        layer = self.form.layer.value
        return layer if any(layer is known for known in self._layers) else None

    def _on_layer_chosen(self, *_: Any) -> None:
        """Offer the axes of the chosen layer as channel axes (keeping the choice when it still fits)."""
        layer = self.chosen_layer()
        form = self.form
        form.set_choices(form.channel_axis, _axis_choices(layer), form.channel_axis.value)
        self._on_start_changed()
        self._check_noise(layer)
        if self._run is None:
            form.run_button.enabled = layer is not None

    def _check_noise(self, layer: Image | None) -> None:
        """Show the hint when the chosen layer's noise looks spatially correlated. Layers in memory only: a lazy
        (dask, zarr) layer would be read from disk for it."""
        data = layer_data(layer) if layer is not None else None
        hint = None
        if isinstance(data, np.ndarray) and not isinstance(data, np.memmap):
            try:
                hint = check_noise(data, rgb=bool(layer.rgb))
            except ValueError:  # a shape the denoiser refuses too; it says why when Denoise is clicked
                hint = None
        correlated = hint is not None and hint.correlated
        if correlated:
            self._hint_ratio = hint.mask_ratio
            self.form.noise_hint.value = noise_hint(hint.score, hint.mask_ratio)
            self.form.use_hint.text = f"Use {hint.mask_ratio:g}"
        self.form.hint_box.visible = correlated

    def _use_hint(self, *_: Any) -> None:
        if self._hint_ratio is not None:
            self.form.mask_ratio.value = self._hint_ratio

    # -- running -------------------------------------------------------------------------
    def parameters(self) -> dict[str, Any]:
        """The keyword arguments for :func:`napari_mpi.prepare` chosen in the widget."""
        form = self.form
        layer = self.chosen_layer()
        auto = self._auto_chosen
        return dict(
            preset=presets.name_for(form.preset.value) or presets.DEFAULT_NAME,
            mask_ratio=round(form.mask_ratio.value, 4),
            beta=None if auto else round(form.beta.value, 6),
            iterations=int(form.iterations.value),
            lr=round(form.lr.value, 8),
            seed=int(form.seed.value),
            device=form.device.value,
            channel_axis=form.channel_axis.value,
            rgb=bool(layer.rgb) if layer is not None else False,
            reuse_network=form.reuse.value and not auto,
            refine="auto" if form.refine.value else "none",
            crop="auto" if form.crop.value else "none",
        )

    def _on_run_clicked(self, *_: Any) -> None:
        if self._run is not None:
            self.cancel()
        else:
            self.start()

    def start(self) -> Run | None:
        """Validate and start denoising the chosen layer; returns the run, or None after a notification."""
        if self._run is not None:
            return None
        layer = self.chosen_layer()
        if layer is None:
            show_warning(NO_LAYER)
            return None
        data = layer_data(layer)
        params = self.parameters()
        try:
            plan = prepare(tuple(data.shape), data.dtype, **params)
        except ValueError as exc:
            show_error(user_message(exc, layer.name))
            return None
        except Exception as exc:  # noqa: BLE001 (e.g. a damaged weights file)
            log.exception("napari-mpi: preparing the run failed")
            show_error(cannot_start(exc, layer.name))
            return None
        settings = {"preset": self.form.preset.value.lower(), "channel_axis": params["channel_axis"]}
        run = Run(self, self.viewer, layer, data, plan, settings, self.form.follow.value)
        self._run = run
        self._holder["run"] = run
        run.holder = self._holder
        self._set_running(True)
        self.form.status.value = starting(plan)
        run.start()
        return run

    def cancel(self) -> None:
        """Stop the current run within one iteration, keeping what was computed."""
        run = self._run
        if run is not None and run.state == "running":
            run.cancel()
            self.form.run_button.enabled = False
            self.form.run_button.text = "Cancelling..."

    @property
    def worker(self):
        """The running thread worker, or None."""
        return self._run.worker if self._run is not None else None

    def _set_running(self, running: bool) -> None:
        self.form.lock(running)
        if not running:
            self._grey_out_for_auto()
        self.form.run_button.enabled = running or self.chosen_layer() is not None

    # -- what a run tells the widget (RunView) -------------------------------------------
    def output_added(self, layer: Image) -> None:
        self._output_layers.add(layer)

    def show_progress(self, text: str, fraction: float) -> None:
        self.form.show_progress(text, fraction)

    def run_finished(self, run: Run, text: str) -> None:
        if self._run is run:
            self._run = None
            self._holder["run"] = None
        self._set_running(False)
        self.form.status.value = text
        self._refresh_layers()
