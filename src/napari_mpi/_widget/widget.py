"""The dock widget: the form's reactions, the layer chooser, and starting, cancelling and ending runs.

napari's manifest docks :class:`MPIDenoiseWidget` (a QWidget holding the magicgui form). Its reactions: a preset
fills in beta and iterations for what the run would start from, and editing them switches the preset to the one
they match (else Custom); the image chooser follows napari's layers and selection; the chosen layer's noise is
checked for the mask-ratio hint. The run itself is a :class:`.run.Run`; so is a preview of the part of the current
plane on screen (:mod:`.preview`), and each layer of a :mod:`.queue` (the Layers field: selected or all image
layers, one after another). Every parameter is locked while any of them runs. The fields are remembered when
napari closes and opens again (:mod:`.store`), until *Reset to defaults*."""

from __future__ import annotations

import logging
import math
import os
import weakref
from functools import partial
from typing import Any

import numpy as np
from napari.layers import Image
from napari.utils.notifications import show_error, show_warning
from qtpy.QtCore import QEvent
from qtpy.QtWidgets import QVBoxLayout, QWidget

from . import presets, store
from .engine import DenoisePlan, available_devices, check_noise, prepare
from .form import CUSTOM, REUSE_CHOICES, DenoiseForm, quietly
from .layers import axis_choices, layer_data, layer_label, unwrap
from .preview import add_preview_layer, crop_data, view_crop
from .queue import Queue, parameters_for, queued_layers
from .run import Run, RunView
from .texts import (
    NO_LAYER,
    NO_QUEUED_LAYER,
    cannot_preview,
    cannot_start,
    input_removed,
    noise_hint,
    output_removed,
    panel_closed,
    preview_starting,
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


def _within(widget: Any, value: float) -> float:
    """``value`` kept within a spin box's range (a remembered value may come from another version)."""
    return type(widget.value)(min(max(value, widget.min), widget.max))


class MPIDenoiseWidget(QWidget):
    """Dock widget: choose an image layer and parameters, denoise with MPI, watch the result live."""

    def __init__(self, napari_viewer: Any, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.viewer = napari_viewer
        self._run: Run | None = None
        self._queue: Queue | None = None  # the layers of one click of Denoise, when the Layers field names several
        self._layers: list[Image] = []
        self._output_layers: weakref.WeakSet = weakref.WeakSet()
        self._holder: dict[str, Any] = {"alive": True, "run": None}
        self._docked = parent is not None
        self._start_lr = presets.start_lr("random")  # the field follows the start's learning rate until edited
        self._hint_ratio: float | None = None
        self.destroyed.connect(lambda *_, holder=self._holder: _on_widget_destroyed(holder))
        self.form = DenoiseForm(presets=presets.NAMES, devices=available_devices(),
                                mask_ratio=presets.DEFAULT_MASK_RATIO, lr=self._start_lr,
                                max_threads=os.cpu_count() or 1)
        layout = QVBoxLayout(self)
        layout.addWidget(self.form.container.native)
        layout.addStretch(1)
        self._connect_form()
        self._connect_viewer()
        self._refresh_layers()
        self._remembering = False
        self._apply_settings(store.load())
        self._connect_memory()

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
        form.preview_button.changed.connect(self._on_preview_clicked)
        form.reset_button.changed.connect(self.reset_to_defaults)
        form.follow.changed.connect(self._on_follow)
        form.preset.value = presets.DEFAULT_LABEL
        self._on_preset(presets.DEFAULT_LABEL)

    # -- presets -------------------------------------------------------------------------
    @property
    def _auto_chosen(self) -> bool:
        return presets.is_auto(self.form.preset.value)

    def _grey_out(self) -> None:
        """Auto chooses beta itself and decides per plane: beta and network reuse are off for it. Without an
        image there is nothing to preview. (During a run the form keeps every parameter locked anyway.)"""
        names = {"beta", "reuse"} if self._auto_chosen else set()
        if self.chosen_layer() is None:
            names.add("preview_button")
        self.form.grey_out(names)

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
        self._grey_out()
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

    # -- remembered settings -------------------------------------------------------------
    def _connect_memory(self) -> None:
        """Remember the form whenever one of its remembered values changes."""
        form = self.form
        for widget in (form.preset, form.mask_ratio, form.beta, form.iterations, form.lr, form.seed, form.device,
                       form.threads, form.refine, form.crop, form.reuse, form.follow, form.advanced_toggle):
            widget.changed.connect(self._remember)

    def settings(self) -> dict[str, Any]:
        """The values of the form that are remembered (:data:`.store.DEFAULTS` names them)."""
        form = self.form
        return dict(
            preset=form.preset.value, mask_ratio=round(form.mask_ratio.value, 4), beta=round(form.beta.value, 6),
            iterations=int(form.iterations.value),
            lr=None if math.isclose(form.lr.value, self._start_lr) else round(form.lr.value, 8),
            seed=int(form.seed.value), device=form.device.value, threads=int(form.threads.value),
            refine=form.refine.value, crop=form.crop.value, reuse_network=form.reuse.value, follow=form.follow.value,
            advanced=form.advanced_toggle.value,
        )

    def _remember(self, *_: Any) -> None:
        if not self._remembering:
            store.save(self.settings())

    def _apply_settings(self, values: dict[str, Any]) -> None:
        """Set the form to ``values`` (remembered ones; defaults for those missing), as a user would: the preset
        then sets beta and iterations for the chosen layer, unless it is Custom (or Auto's iteration cap)."""
        form = self.form
        values = {**store.DEFAULTS, "preset": presets.DEFAULT_LABEL, "mask_ratio": presets.DEFAULT_MASK_RATIO,
                  **{name: value for name, value in values.items() if value is not None}}
        self._remembering = True
        try:
            form.mask_ratio.value = _within(form.mask_ratio, values["mask_ratio"])
            label = values["preset"] if values["preset"] in form.preset.choices else presets.DEFAULT_LABEL
            with quietly(form.preset):
                form.preset.value = label
            self._on_preset(label)
            with quietly(form.beta, form.iterations):
                if label == CUSTOM and values["beta"] is not None:
                    form.beta.value = _within(form.beta, values["beta"])
                if label == CUSTOM or presets.is_auto(label):
                    form.iterations.value = _within(form.iterations, values["iterations"] or form.iterations.value)
            self._on_value_edited()
            form.lr.value = _within(form.lr, values["lr"] if values["lr"] is not None else self._start_lr)
            form.seed.value = _within(form.seed, values["seed"])
            form.threads.value = values["threads"] if values["threads"] in form.threads.choices else 0
            if values["device"] in form.device.choices:
                form.device.value = values["device"]
            for name in ("refine", "crop", "follow"):
                getattr(form, name).value = values[name]
            if values["reuse_network"] in [value for _, value in REUSE_CHOICES]:
                form.reuse.value = values["reuse_network"]
            form.advanced_toggle.value = values["advanced"]
        finally:
            self._remembering = False

    def reset_to_defaults(self, *_: Any) -> None:
        """Every field back to its default (the Advanced section stays as it is); remembered at once."""
        if self._run is None:
            self._apply_settings({"advanced": self.form.advanced_toggle.value})
            self._remember()

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
        self.form.set_choices(self.form.layer, [(layer_label(layer), layer) for layer in self._layers], current)
        self._on_layer_chosen()

    def chosen_layer(self) -> Image | None:
        """The image layer that Denoise would process."""
        layer = self.form.layer.value
        return layer if any(layer is known for known in self._layers) else None

    def _on_layer_chosen(self, *_: Any) -> None:
        """Offer the axes of the chosen layer as channel axes (keeping the choice when it still fits)."""
        layer = self.chosen_layer()
        form = self.form
        form.set_choices(form.channel_axis, axis_choices(layer), form.channel_axis.value)
        self._on_start_changed()
        self._check_noise(layer)
        self._grey_out()
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
            reuse_network=False if auto else form.reuse.value,
            refine="auto" if form.refine.value else "none",
            crop="auto" if form.crop.value else "none",
        )

    def _on_run_clicked(self, *_: Any) -> None:
        if self._run is not None:
            self.cancel()
        elif self.form.scope.value == "chosen":
            self.start()
        else:
            self.start_queue()

    def _on_preview_clicked(self, *_: Any) -> None:
        if self._run is None:
            self.preview()

    def _layer_to_run(self) -> Image | None:
        """The chosen layer when nothing runs; None (with a warning when no layer is chosen) otherwise."""
        if self._run is not None:
            return None
        layer = self.chosen_layer()
        if layer is None:
            show_warning(NO_LAYER)
        return layer

    def _plan(self, data: Any, params: dict[str, Any], name: str) -> DenoisePlan | None:
        """``prepare``'s plan for ``data``, or None after an error notification."""
        try:
            return prepare(tuple(data.shape), data.dtype, **params)
        except ValueError as exc:
            show_error(user_message(exc, name))
        except Exception as exc:  # noqa: BLE001 (e.g. a damaged weights file)
            log.exception("napari-mpi: preparing the run failed")
            show_error(cannot_start(exc, name))
        return None

    def start(self) -> Run | None:
        """Validate and start denoising the chosen layer; returns the run, or None after a notification."""
        layer = self._layer_to_run()
        if layer is None:
            return None
        run = self._make_run(layer, self, self.parameters())
        return None if run is None else self._launch(run, starting(run.plan))

    def _make_run(self, layer: Image, view: RunView, params: dict[str, Any]) -> Run | None:
        """A run of ``layer`` with ``prepare``'s arguments ``params``, telling ``view``; None after a notification."""
        data = layer_data(layer)
        plan = self._plan(data, params, layer.name)
        if plan is None:
            return None
        settings = {"preset": self.form.preset.value.lower(), "channel_axis": params["channel_axis"]}
        return Run(view, self.viewer, layer, data, plan, settings, self.form.follow.value,
                   threads=self.form.threads.value)

    def start_queue(self) -> Queue | None:
        """Denoise the layers the Layers field names (selected or all image layers) one after another with the
        form's settings, each into its own output layer; returns the queue, or None after a notification."""
        if self._run is not None:
            return None
        layers = queued_layers(self.viewer, self.form.scope.value, self._output_layers)
        if not layers:
            show_warning(NO_QUEUED_LAYER)
            return None
        params, chosen, label = self.parameters(), self.chosen_layer(), self.form.preset.value
        follows = math.isclose(self.form.lr.value, self._start_lr)
        self._queue = queue = Queue(self, self.viewer, layers, lambda layer, view: self._make_run(
            layer, view, parameters_for(layer, params, label=label, chosen=chosen, lr_follows=follows)))
        queue.start()
        return queue

    def preview(self) -> Run | None:
        """Denoise the part of the chosen layer's current plane that is on screen (at most 256x256) with the
        Fast preset and the form's other settings, into the layer "<name> preview" over it; returns the run,
        or None after a notification."""
        layer = self._layer_to_run()
        if layer is None:
            return None
        try:
            crop = view_crop(self.viewer, layer)
            data = crop_data(layer, crop)
        except ValueError as exc:
            show_warning(cannot_preview(exc, layer.name))
            return None
        params = dict(self.parameters(), preset=presets.PREVIEW_NAME, beta=None, iterations=None,
                      channel_axis=None, reuse_network=False)
        plan = self._plan(data, params, layer.name)
        if plan is None:
            return None
        settings = {"preset": presets.PREVIEW_NAME, "channel_axis": None, "preview": crop.describe()}
        run = Run(self, self.viewer, layer, data, plan, settings, False, threads=self.form.threads.value,
                  place=partial(add_preview_layer, crop=crop), preview=True)
        return self._launch(run, preview_starting(plan, crop))

    def _launch(self, run: Run, text: str) -> Run:
        self._run = run
        self._holder["run"] = run
        run.holder = self._holder
        self._set_running(True)
        self.form.status.value = text
        run.start()
        return run

    def cancel(self) -> None:
        """Stop the current run within one iteration, keeping what was computed."""
        run = self._run
        if self._queue is not None:
            self._queue.cancel()
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
        self.form.run_button.enabled = running or self.chosen_layer() is not None

    def _on_follow(self, follow: bool) -> None:
        """Following the plane being denoised can be switched on and off during a run."""
        if self._run is not None:
            self._run.follow = follow

    # -- what a run tells the widget (RunView) -------------------------------------------
    def output_added(self, layer: Image) -> None:
        self._output_layers.add(layer)

    def show_progress(self, text: str, fraction: float) -> None:
        self.form.show_progress(text, fraction)

    def run_finished(self, run: Run | None, text: str) -> None:
        if self._run is run:
            self._run = None
            self._holder["run"] = None
        if self._queue is not None and self._queue.finished:
            self._queue = None
        self._set_running(False)
        self.form.status.value = text
        self._refresh_layers()
